"""Frozen parameters (requires_grad=False) and parameters without a gradient.

torch's optimizers never change a parameter whose .grad is None.  The pruning optimizers
keep that promise: a ZIG that holds a frozen parameter is never penalised, projected or
marked, the target is met among the others (or refused up front), and a prunable
parameter without a gradient gets no base step (no AdamW decay) either.
"""
import pytest
import torch
from torch import nn

import fxprune


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))


OPTIMIZERS = {
    "dhspg-sgd": lambda sp: fxprune.DHSPG(sp, lr=0.05, momentum=0.9, target_group_sparsity=0.4,
                                          start_pruning_step=2, pruning_steps=5),
    "dhspg-adamw": lambda sp: fxprune.DHSPG(sp, lr=0.01, variant="adamw", weight_decay=0.1,
                                            target_group_sparsity=0.4, start_pruning_step=2, pruning_steps=5),
    "hesso": lambda sp: fxprune.HESSO(sp, lr=0.05, target_group_sparsity=0.4, start_pruning_step=2, pruning_steps=5),
    "hspg": lambda sp: fxprune.HSPG(sp, lr=0.1, lmbda=2.0, epsilon=0.0),
}


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_frozen_parameters_are_never_changed(name):
    model = _net()
    for p in model[0].parameters():
        p.requires_grad_(False)
    frozen_before = [p.detach().clone() for p in model[0].parameters()]
    x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,))
    space = fxprune.trace(model, x[:1])
    opt = OPTIMIZERS[name](space)
    for _ in range(10):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    assert all(torch.equal(a, p) for a, p in zip(frozen_before, model[0].parameters()))
    frozen = opt.frozen_zigs()
    assert int(frozen.sum()) == 16  # conv0's channels (with bn0's scale and shift)
    zero = opt.zero_zigs()
    assert not bool((zero & frozen).any())
    if name != "hspg":  # the targets land exactly, among the trainable ZIGs
        assert int(zero.sum()) == opt.target_zero_count == 12
    else:
        assert int(zero.sum()) > 0  # (a huge λ with ε = 0 zeroes trainable groups)


def test_a_target_that_needs_frozen_zigs_is_refused_up_front():
    model = _net()
    for p in model[0].parameters():
        p.requires_grad_(False)
    space = fxprune.trace(model, torch.randn(1, 3, 16, 16))
    # 16 of 32 ZIGs are frozen; the 16 others belong to one layer that must keep a channel
    with pytest.raises(ValueError, match="requires_grad=False"):
        fxprune.DHSPG(space, lr=0.1, target_group_sparsity=0.5, pruning_steps=5)


def test_a_prunable_parameter_without_a_gradient_is_not_decayed():
    model = _net()
    space = fxprune.trace(model, torch.randn(1, 3, 16, 16))
    # Target 0 inside the pruning window: every step takes the group path, with nothing to prune.
    opt = fxprune.DHSPG(space, lr=0.01, variant="adamw", weight_decay=0.1, target_group_sparsity=0.0,
                        start_pruning_step=0, pruning_steps=5)
    ref = torch.optim.AdamW(_net().parameters(), lr=0.01, weight_decay=0.1)
    ref_params = list(ref.param_groups[0]["params"])
    for p, q in zip(model.parameters(), ref_params):
        q.data.copy_(p.data)
    bn_weight = model[1].weight
    for step in range(3):
        for i, (p, q) in enumerate(zip(model.parameters(), ref_params)):
            g = None if p is bn_weight else torch.full_like(p, 0.01 * (step + 1))
            p.grad, q.grad = g, (None if g is None else g.clone())
        opt.step()
        ref.step()
        assert opt.stats()["last_step"]["plan"] == "prune"
    for p, q in zip(model.parameters(), ref_params):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_freezing_after_construction_is_refused_before_the_step_touches_anything():
    model = _net()
    space = fxprune.trace(model, torch.randn(1, 3, 16, 16))
    opt = fxprune.DHSPG(space, lr=0.05, momentum=0.9, target_group_sparsity=0.5, start_pruning_step=1,
                        pruning_steps=4)
    x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,))
    opt.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    for p in model[0].parameters():
        p.requires_grad_(False)  # now the target needs ZIGs that may not change
    opt.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match="requires_grad=False"):
        opt.step()
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))
    assert opt.steps_taken == 1
