"""Bad hyper-parameters and bad spaces fail early with a ValueError that says what to do."""
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from fxprune.layout import BUFFER, PRODUCER, SliceMap, ZigLayout
from fxprune.optim import DHSPG, HESSO, HSPG
from fxprune.optim.manual_layout import stand_in_space


def cnn():
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))


DHSPG_CASES = [
    (dict(target_group_sparsity=1.0), "target_group_sparsity must be < 1"),
    (dict(target_group_sparsity=-0.1), "target_group_sparsity must be >= 0"),
    (dict(lr=-0.1), "lr must be >= 0"),
    (dict(epsilon=1.0), "epsilon must be < 1"),
    (dict(epsilon=-0.5), "epsilon must be >= 0"),
    (dict(pruning_steps=0), "pruning_steps must be >= 1"),
    (dict(pruning_steps=2.5), "pruning_steps must be an integer"),
    (dict(start_pruning_step=-1), "start_pruning_step must be >= 0"),
    (dict(pruning_periods=11), "pruning_periods must not exceed pruning_steps"),
    (dict(variant="rmsprop"), "variant must be one of"),
    (dict(momentum=-0.9), "momentum must be >= 0"),
    (dict(nesterov=True), "nesterov=True needs momentum > 0"),
    (dict(variant="adam", betas=(0.9, 1.0)), r"betas\[1\] must be < 1"),
    (dict(variant="adam", betas=0.9), r"betas must be a pair"),
    (dict(lr=float("inf")), "lr must be a finite real number"),
    (dict(weight_decay=-1e-4), "weight_decay must be >= 0"),
    (dict(lmbda=-1.0), "lmbda must be >= 0"),
    (dict(hat_lmbda_coeff=0.5), "hat_lmbda_coeff must be >= 1"),
    (dict(width_multiple=0), "width_multiple must be >= 1"),
    (dict(target_group_sparsity=0.9), "allows at most 6 of 8"),  # each of the 2 layers keeps a channel
    (dict(target_group_sparsity=0.5, width_multiple=4), "allows at most 0 of 8"),  # widths 4 = one chunk
]


@pytest.mark.parametrize("kwargs, message", DHSPG_CASES)
def test_dhspg_rejects_bad_hyper_parameters(kwargs, message):
    args = dict(lr=0.1, pruning_steps=10) | kwargs
    with pytest.raises(ValueError, match=message) as info:
        DHSPG(stand_in_space(cnn()), **args)
    assert len(str(info.value)) > len(message) + 30  # beyond the fact, the message says what to do


@pytest.mark.parametrize("kwargs, message", [
    (dict(epsilon=1.2), "epsilon must be < 1"),
    (dict(warmup_steps=-3), "warmup_steps must be >= 0"),
    (dict(max_group_sparsity=1.5), "max_group_sparsity must be < 1"),
    (dict(lmbda=float("nan")), "lmbda must be a finite real number"),
])
def test_hspg_rejects_bad_hyper_parameters(kwargs, message):
    with pytest.raises(ValueError, match=message):
        HSPG(stand_in_space(cnn()), lr=0.1, **kwargs)


def test_hesso_rejects_unknown_importance_criteria():
    with pytest.raises(ValueError, match="unknown criteria"):
        HESSO(stand_in_space(cnn()), lr=0.1, pruning_steps=5, importance_weights={"magnitud": 1.0})


def layout_with(*maps, num_zigs=4):
    return ZigLayout(num_zigs, tuple(maps), torch.zeros(num_zigs, dtype=torch.int64))


@pytest.mark.parametrize("layout, message", [
    (layout_with(SliceMap("conv9.weight", 0, torch.arange(4), PRODUCER)), "does not have"),
    (layout_with(SliceMap("1.running_mean", 0, torch.arange(4), PRODUCER)), "is not a parameter"),
    (layout_with(SliceMap("0.weight", 4, torch.arange(4), PRODUCER)), "dim outside"),
    (layout_with(SliceMap("0.weight", 0, torch.arange(3), PRODUCER)), "must be int64 of shape"),
    (layout_with(SliceMap("0.weight", 0, torch.tensor([0, 1, 2, 7]), PRODUCER)), "ids outside"),
    (layout_with(SliceMap("0.weight", 0, torch.tensor([0, 1, 2, -1]), PRODUCER)), "have none"),
    (layout_with(SliceMap("0.weight", 0, torch.arange(4), "owner")), "unknown role"),
    (layout_with(SliceMap("1.running_mean", 0, torch.arange(4), BUFFER)), "have none"),
])
def test_bad_layouts_are_rejected(layout, message):
    with pytest.raises(ValueError, match=message):
        DHSPG(SimpleNamespace(model=cnn(), layout=layout), lr=0.1, pruning_steps=5)


def test_a_non_space_is_rejected():
    model = cnn()
    with pytest.raises(ValueError, match="must be a PruneSpace"):
        DHSPG(model.parameters(), lr=0.1, pruning_steps=5)


def test_extra_param_groups_are_rejected():
    opt = DHSPG(stand_in_space(cnn()), lr=0.1, pruning_steps=5)
    with pytest.raises(ValueError, match="single parameter group"):
        opt.add_param_group({"params": [nn.Parameter(torch.zeros(1))]})
