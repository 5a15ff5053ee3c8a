"""The torchvision classifier zoo as fxprune exercises it: names, input sizes, one check.

Shared by the zoo test and the zoo benchmark so both run the same thing.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torchvision
from torch import nn

# Models that fix their input resolution (position embeddings, window partitions)
FIXED_RESOLUTION = {"vit": 224, "maxvit": 224}
# The smallest convenient resolution each family accepts (inception's stem needs >= 75)
SMALL_RESOLUTION = {"inception": 96}
# Too large for a 2-core CI run (hundreds of millions of parameters to initialise, copy and run);
# the zoo benchmark still runs them.
CI_LEAVE_OUT = {
    "vit_h_14": "632M parameters: initialising, copying and running it alone takes minutes on 2 cores",
    "regnet_y_128gf": "645M parameters: as above",
}


def zoo_names() -> list[str]:
    return sorted(torchvision.models.list_models(module=torchvision.models))


def input_size(name: str, small: bool) -> int:
    for prefix, size in FIXED_RESOLUTION.items():
        if name.startswith(prefix):
            return size
    if name.startswith("inception"):
        return SMALL_RESOLUTION["inception"] if small else 299
    return 64 if small else 224


def build(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    kwargs = {"init_weights": True} if name in ("googlenet", "inception_v3") else {}
    return torchvision.models.get_model(name, weights=None, **kwargs).eval()


def example_input(name: str, small: bool, batch: int = 1, seed: int = 0) -> torch.Tensor:
    size = input_size(name, small)
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


@dataclass
class ZeroInvarianceResult:
    max_abs_diff: float
    max_abs_output: float
    params_dense: int
    params_compact: int
    zigs: int
    zeroed: int

    @property
    def tolerance(self) -> float:
        return 1e-4 * max(1.0, self.max_abs_output)

    @property
    def exact(self) -> bool:
        return self.max_abs_diff <= self.tolerance


# Families whose every conv/linear output channel (but the logits) must be prunable
FULL_COVERAGE_FAMILIES = ("resnet", "resnext", "wide_resnet", "vgg", "alexnet", "densenet", "googlenet",
                          "inception", "mobilenet", "mnasnet", "efficientnet", "regnet", "shufflenet", "squeezenet")
OUTPUT_REASON = "network output"


def unprunable_layer_outputs(space, model: nn.Module) -> dict[str, str]:
    """Conv/linear layers with an output channel outside every prunable ZIG (not the logits), and why."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
            reasons = [r for r in space.reasons_for(f"{name}.weight", 0) if r is not None and OUTPUT_REASON not in r]
            if reasons:
                out[name] = reasons[0]
    return out


TRANSFORMER_FAMILIES = ("convnext", "vit", "swin", "maxvit")


def mlp_hidden_layers(space) -> list[str]:
    """Linear layers whose output feeds a GELU: the first layer of each transformer-style MLP."""
    gm = space.graph_module
    names = []
    for node in gm.graph.nodes:
        if node.op == "call_module" and isinstance(gm.get_submodule(node.target), nn.Linear):
            for user in node.users:
                is_gelu = (user.op == "call_module" and isinstance(gm.get_submodule(user.target), nn.GELU)) or (
                    user.op == "call_function" and user.target is torch.nn.functional.gelu)
                if is_gelu:
                    names.append(node.target)
    return names


def prunable_weight_fraction(space, model: nn.Module) -> float:
    """Share of conv/linear weight elements that some prunable ZIG can remove (by output or input channel)."""
    total = covered = 0
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
            w = m.weight
            per_row = w[0].numel()
            rows = sum(r is None for r in space.reasons_for(f"{name}.weight", 0))
            cols = sum(r is None for r in space.reasons_for(f"{name}.weight", 1)) if w.ndim > 1 else 0
            total += w.numel()
            covered += rows * per_row + (w.shape[0] - rows) * cols * (per_row // max(w.shape[1], 1))
    return covered / max(total, 1)


def check_zero_invariance(model: nn.Module, x: torch.Tensor, fraction: float = 0.5, seed: int = 0):
    """Trace, zero ``fraction`` of the prunable ZIGs in ``model``, construct, compare every output.

    Returns the result and the space (for timings and the summary).
    """
    from passes.verify import compare_outputs

    from .metrics import count_params
    from .space import trace

    space = trace(model, x)
    zeroed = space.zero_random_groups(fraction, seed=seed)
    with torch.no_grad():
        y = model(x)
        small = space.construct_subnet()
        y_small = small.eval()(x)
    diff, scale = compare_outputs(y, y_small)
    result = ZeroInvarianceResult(diff, scale, count_params(model), count_params(small), space.num_zigs,
                                  int(zeroed.numel()))
    return result, space, small
