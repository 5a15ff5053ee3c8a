"""Model size metrics: parameter counts and forward FLOPs.

FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` (so one
multiply-add is 2 FLOPs) while the forward runs on fake tensors: shapes are
propagated but no arithmetic is done, so counting a large model is cheap, and
the module's own parameters and buffers are never touched.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._pytree import tree_map
from torch.utils.flop_counter import FlopCounterMode


def count_params(module: nn.Module) -> int:
    """Number of parameter elements; a parameter shared by several modules counts once."""
    # parameters() already skips repeated Parameter objects (tied weights).
    return sum(p.numel() for p in module.parameters())


def conv_linear_weight_params(module: nn.Module) -> int:
    """Weight elements of all Conv*d / ConvTranspose*d / Linear submodules (biases excluded).

    The denominator for "what fraction of the prunable weights does the analysis cover".
    """
    seen: set[int] = set()
    total = 0
    for m in module.modules():
        if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)) and m.weight is not None:
            if id(m.weight) not in seen:  # a weight shared by two layers counts once
                seen.add(id(m.weight))
                total += m.weight.numel()
    return total


def count_flops(module: nn.Module, example_inputs: Any, example_kwargs: dict | None = None) -> int:
    """Forward FLOPs of ``module(*example_inputs, **example_kwargs)`` as FlopCounterMode counts them.

    ``example_inputs`` is one tensor or a tuple of positional arguments (nested
    containers are fine). The module runs in its current train/eval mode on fake
    copies of its parameters and buffers, so e.g. BatchNorm's running stats and
    ``.training`` stay exactly as they were. Outputs of any structure are discarded.
    A forward that reads tensor *values* (``.item()``, data-dependent branching)
    cannot run on fake tensors and raises.
    """
    args = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    kwargs = example_kwargs or {}
    # allow_non_fake_inputs: tensors the forward creates outside the mode (globals,
    # closures) reach the ops as real tensors; the mode fakes them instead of refusing.
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    fake = lambda x: mode.from_tensor(x) if isinstance(x, torch.Tensor) else x  # noqa: E731
    # functional_call swaps these fakes in for the duration of the call and restores the
    # originals; that is what keeps in-place updates (BN running stats, a forward that
    # writes a plain tensor attribute) off the real module.
    state = {n: fake(t) for n, t in _module_tensors(module).items()}
    args, kwargs = tree_map(fake, args), tree_map(fake, kwargs)
    counter = FlopCounterMode(display=False)
    with mode, counter, torch.no_grad():
        torch.func.functional_call(module, state, args, kwargs)
    return int(counter.get_total_flops())


def _module_tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    """Parameters, buffers and plain tensor attributes by qualified name."""
    out: dict[str, torch.Tensor] = dict(module.named_parameters())
    out.update(module.named_buffers())
    for prefix, m in module.named_modules():
        # Parameters and buffers live in _parameters/_buffers, so tensors left in
        # __dict__ are plain attributes.
        for name, value in vars(m).items():
            if isinstance(value, torch.Tensor):
                out[f"{prefix}.{name}" if prefix else name] = value
    return out
