"""Edge cases an adversarial sweep of the optimizers found: each once broke a promise silently."""
import warnings

import pytest
import torch
from torch import nn

import fxprune


def _net(width=16):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                         nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10))


def _train(model, opt, steps, x=None, y=None):
    x = torch.randn(8, 3, 16, 16) if x is None else x
    y = torch.randint(0, 10, (8,)) if y is None else y
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


def test_groups_zero_before_training_count_towards_the_target():
    model = _net()
    space = fxprune.trace(model, torch.randn(1, 3, 16, 16))
    space.zero_groups_by_id([0, 1, 2])  # e.g. a model pruned before
    opt = fxprune.DHSPG(space, lr=0.05, momentum=0.9, target_group_sparsity=0.25, start_pruning_step=1,
                        pruning_steps=4)
    _train(model, opt, 8)
    assert int(opt.zero_zigs().sum()) == opt.target_zero_count == 8
    assert bool(opt.zero_zigs()[[0, 1, 2]].all())  # (they are marked first: zero groups are the most redundant)


def test_more_groups_zero_than_the_target_warns():
    model = _net()
    space = fxprune.trace(model, torch.randn(1, 3, 16, 16))
    space.zero_groups_by_id(list(range(10)))
    opt = fxprune.DHSPG(space, lr=0.05, target_group_sparsity=0.1, start_pruning_step=0, pruning_steps=3)
    with pytest.warns(UserWarning, match="already exactly zero"):
        _train(model, opt, 1)


def test_a_parameter_frozen_mid_pruning_is_not_changed():
    model = _net()
    space = fxprune.trace(model, torch.randn(1, 3, 16, 16))
    opt = fxprune.DHSPG(space, lr=0.05, momentum=0.9, target_group_sparsity=0.25, start_pruning_step=1,
                        pruning_steps=6)
    _train(model, opt, 2)  # the partition is made
    model[3].weight.requires_grad_(False)
    frozen = model[3].weight.detach().clone()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (it warns when a marked ZIG holds the frozen weight)
        _train(model, opt, 6)
    assert torch.equal(model[3].weight, frozen)


def test_adamw_whose_decay_wipes_x_stays_finite():
    model = _net()
    space = fxprune.trace(model, torch.randn(1, 3, 16, 16))
    opt = fxprune.DHSPG(space, lr=1.0, variant="adamw", weight_decay=1.0, target_group_sparsity=0.25,
                        start_pruning_step=1, pruning_steps=3)  # lr·weight_decay = 1: decay factor 0
    _train(model, opt, 5)
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())
    assert int(opt.zero_zigs().sum()) == opt.target_zero_count


def test_sparse_gradients_get_a_clear_error():
    class Bag(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(20, 8, sparse=True)
            self.fc1 = nn.Linear(8, 16)
            self.fc2 = nn.Linear(16, 4)

        def forward(self, idx):
            return self.fc2(torch.relu(self.fc1(self.emb(idx).mean(1))))

    model = Bag()
    idx = torch.randint(0, 20, (4, 5))
    space = fxprune.trace(model, idx)
    opt = fxprune.DHSPG(space, lr=0.1, target_group_sparsity=0.25, pruning_steps=3)
    model(idx).sum().backward()
    with pytest.raises(ValueError, match="sparse=False"):
        opt.step()


def _saved(opt_factory):
    model = _net()
    space = fxprune.trace(model, torch.randn(1, 3, 16, 16))
    opt = opt_factory(space)
    _train(model, opt, 2)
    return opt.state_dict()


@pytest.mark.parametrize("saved_with, loaded_into, message", [
    (lambda sp: fxprune.DHSPG(sp, lr=0.1, momentum=0.9, pruning_steps=4),
     lambda sp: fxprune.DHSPG(sp, lr=0.1, variant="adam", pruning_steps=4), "variant='sgd'"),
    (lambda sp: fxprune.HSPG(sp, lr=0.1), lambda sp: fxprune.DHSPG(sp, lr=0.1, pruning_steps=4), "saved by HSPG"),
    (lambda sp: fxprune.DHSPG(sp, lr=0.1, target_group_sparsity=0.5, pruning_steps=4),
     lambda sp: fxprune.DHSPG(sp, lr=0.1, target_group_sparsity=0.25, pruning_steps=4), "target_zero_count=16"),
])
def test_a_state_dict_that_does_not_fit_is_refused_before_loading(saved_with, loaded_into, message):
    state = _saved(saved_with)
    model = _net()
    opt = loaded_into(fxprune.trace(model, torch.randn(1, 3, 16, 16)))
    with pytest.raises(ValueError, match=message):
        opt.load_state_dict(state)
    assert opt.steps_taken == 0 and not opt.state  # nothing was half-loaded


def test_a_state_dict_from_a_model_with_other_shapes_is_refused():
    state = _saved(lambda sp: fxprune.DHSPG(sp, lr=0.1, momentum=0.9, pruning_steps=4))
    model = _net()
    model[8] = nn.Linear(16, 7)  # another classifier width
    opt = fxprune.DHSPG(fxprune.trace(model, torch.randn(1, 3, 16, 16)), lr=0.1, momentum=0.9, pruning_steps=4)
    with pytest.raises(ValueError, match="shape"):
        opt.load_state_dict(state)


def test_verify_never_reads_nan_as_agreement():
    model = _net().eval()
    x = torch.randn(1, 3, 16, 16)
    space = fxprune.trace(model, x)

    class Nan(nn.Module):
        def forward(self, x):
            return torch.full((1, 10), float("nan"))

    with pytest.raises(fxprune.VerificationError):
        space.verify(Nan())
