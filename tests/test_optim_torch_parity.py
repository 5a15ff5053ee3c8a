"""Parameters (and slices) in no prunable ZIG train exactly like torch's SGD / Adam / AdamW.

Both optimizers receive the same synthetic gradients each step (a seeded generator),
so the comparison isolates the update rule from the pruning's effect on the loss.
"""
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from fxprune.layout import PRODUCER, SliceMap, ZigLayout
from fxprune.optim import DHSPG, HESSO, HSPG

TOL = dict(rtol=1e-6, atol=1e-6)

CASES = {
    "sgd": (dict(variant="sgd", lr=0.05), torch.optim.SGD, dict(lr=0.05)),
    "sgd-momentum-wd-dampening": (dict(variant="sgd", lr=0.05, momentum=0.9, dampening=0.1, weight_decay=1e-3),
                                  torch.optim.SGD, dict(lr=0.05, momentum=0.9, dampening=0.1, weight_decay=1e-3)),
    "sgd-nesterov": (dict(variant="sgd", lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
                     torch.optim.SGD, dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3)),
    "adam": (dict(variant="adam", lr=1e-2, betas=(0.8, 0.99), eps=1e-6, weight_decay=1e-2),
             torch.optim.Adam, dict(lr=1e-2, betas=(0.8, 0.99), eps=1e-6, weight_decay=1e-2)),
    "adamw": (dict(variant="adamw", lr=1e-2, weight_decay=0.1), torch.optim.AdamW, dict(lr=1e-2, weight_decay=0.1)),
}


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3)
        self.bn = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, 4)


def half_prunable_space(model: Net):
    """Output channels 0-3 of conv/bn are ZIGs 0-3; channels 4-5 are in no ZIG; fc is not in the layout."""
    zig = torch.tensor([0, 1, 2, 3, -1, -1])
    maps = tuple(SliceMap(n, 0, zig, PRODUCER) for n in ("conv.weight", "conv.bias", "bn.weight", "bn.bias"))
    return SimpleNamespace(model=model, layout=ZigLayout(4, maps, torch.zeros(4, dtype=torch.int64)))


def run(model, opt, steps, seed=0):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        for p in model.parameters():
            p.grad = torch.randn(p.shape, generator=gen)
        opt.step()


def make_pruner(kind, space, kwargs):
    if kind == "dhspg":
        return DHSPG(space, target_group_sparsity=0.5, start_pruning_step=3, pruning_steps=6, **kwargs)
    if kind == "hesso":
        return HESSO(space, target_group_sparsity=0.5, start_pruning_step=3, pruning_steps=6, pruning_periods=2, **kwargs)
    return HSPG(space, lmbda=20.0, epsilon=0.9, warmup_steps=2, **kwargs)


@pytest.mark.parametrize("kind", ["dhspg", "hesso", "hspg"])
@pytest.mark.parametrize("case", list(CASES))
def test_non_prunable_parameters_follow_torch(kind, case):
    ours_kwargs, torch_cls, torch_kwargs = CASES[case]
    torch.manual_seed(0)
    ours_model = Net()
    ref_model = Net()
    ref_model.load_state_dict(ours_model.state_dict())
    ours = make_pruner(kind, half_prunable_space(ours_model), ours_kwargs)
    ref = torch_cls(ref_model.parameters(), **torch_kwargs)

    run(ours_model, ours, 15)
    run(ref_model, ref, 15)

    assert ours.group_sparsity() > 0  # the pruning really acted on the prunable slices
    for name, ref_param in ref_model.named_parameters():
        ours_param = dict(ours_model.named_parameters())[name]
        if name.startswith("fc."):
            torch.testing.assert_close(ours_param, ref_param, **TOL)
        else:  # channels 4 and 5 are in no ZIG
            torch.testing.assert_close(ours_param[4:], ref_param[4:], **TOL)


@pytest.mark.parametrize("case", list(CASES))
def test_everything_follows_torch_before_pruning(case):
    ours_kwargs, torch_cls, torch_kwargs = CASES[case]
    torch.manual_seed(0)
    ours_model, ref_model = Net(), Net()
    ref_model.load_state_dict(ours_model.state_dict())
    ours = DHSPG(half_prunable_space(ours_model), start_pruning_step=10, pruning_steps=5, **ours_kwargs)
    ref = torch_cls(ref_model.parameters(), **torch_kwargs)
    run(ours_model, ours, 10)
    run(ref_model, ref, 10)
    for (name, a), (_, b) in zip(ours_model.named_parameters(), ref_model.named_parameters()):
        torch.testing.assert_close(a, b, **TOL, msg=name)


def test_a_layout_without_zigs_is_plain_training():
    torch.manual_seed(0)
    ours_model, ref_model = Net(), Net()
    ref_model.load_state_dict(ours_model.state_dict())
    empty = SimpleNamespace(model=ours_model, layout=ZigLayout(0, (), torch.zeros(0, dtype=torch.int64)))
    ours = DHSPG(empty, lr=0.05, momentum=0.9, target_group_sparsity=0.5, start_pruning_step=0, pruning_steps=3)
    ref = torch.optim.SGD(ref_model.parameters(), lr=0.05, momentum=0.9)
    run(ours_model, ours, 5)
    run(ref_model, ref, 5)
    for (name, a), (_, b) in zip(ours_model.named_parameters(), ref_model.named_parameters()):
        torch.testing.assert_close(a, b, **TOL, msg=name)
    assert ours.group_sparsity() == 0.0
