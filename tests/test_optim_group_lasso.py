"""Group-lasso least squares with a known support: HSPG and DHSPG find it; DHSPG hits the count."""
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from fxprune.layout import PRODUCER, SliceMap, ZigLayout
from fxprune.optim import DHSPG, HSPG

NUM_GROUPS, GROUP_DIM, NUM_SAMPLES, NUM_TRUE_ZERO = 20, 5, 200, 8


def make_problem(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    true_x = torch.randn(NUM_GROUPS, GROUP_DIM, generator=gen, dtype=torch.float64)
    true_x = true_x / true_x.norm(dim=1, keepdim=True) * (1 + torch.rand(NUM_GROUPS, 1, generator=gen, dtype=torch.float64))
    zero_groups = torch.randperm(NUM_GROUPS, generator=gen)[:NUM_TRUE_ZERO]
    true_x[zero_groups] = 0
    a = torch.randn(NUM_SAMPLES, NUM_GROUPS * GROUP_DIM, generator=gen, dtype=torch.float64) / NUM_SAMPLES**0.5
    b = a @ true_x.reshape(-1) + 0.01 * torch.randn(NUM_SAMPLES, generator=gen, dtype=torch.float64) / NUM_SAMPLES**0.5
    truth = torch.zeros(NUM_GROUPS, dtype=torch.bool)
    truth[zero_groups] = True
    return a, b, truth


class Regression(nn.Module):
    def __init__(self, seed: int = 1):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.x = nn.Parameter(torch.randn(NUM_GROUPS, GROUP_DIM, generator=gen, dtype=torch.float64))

    def loss(self, a, b):
        return 0.5 * (a @ self.x.reshape(-1) - b).square().sum()


def space_for(model: Regression):
    layout = ZigLayout(NUM_GROUPS, (SliceMap("x", 0, torch.arange(NUM_GROUPS), PRODUCER),),
                       torch.zeros(NUM_GROUPS, dtype=torch.int64))
    return SimpleNamespace(model=model, layout=layout)


def train(opt, model, a, b, steps):
    for _ in range(steps):
        opt.zero_grad()
        model.loss(a, b).backward()
        opt.step()


def oracle_objective(a, b, support_zero):
    """Least squares restricted to the true support: the best any correct sparse solution can do."""
    cols = (~support_zero).repeat_interleave(GROUP_DIM)
    sol = torch.linalg.lstsq(a[:, cols], b.unsqueeze(1)).solution.squeeze(1)
    return 0.5 * (a[:, cols] @ sol - b).square().sum()


def test_hspg_recovers_the_support():
    a, b, truth = make_problem()
    model = Regression()
    opt = HSPG(space_for(model), lr=0.2, lmbda=0.02, epsilon=0.5, warmup_steps=100)
    train(opt, model, a, b, 400)
    assert torch.equal(opt.zero_zigs(), truth)


# Adam's normalised steps need longer before magnitudes separate the groups.
@pytest.mark.parametrize("variant, lr, start", [("sgd", 0.2, 30), ("adam", 0.02, 150)])
def test_dhspg_recovers_the_support_with_the_exact_count(variant, lr, start):
    a, b, truth = make_problem()
    model = Regression()
    opt = DHSPG(space_for(model), lr=lr, variant=variant, target_group_sparsity=NUM_TRUE_ZERO / NUM_GROUPS,
                start_pruning_step=start, pruning_steps=100)
    train(opt, model, a, b, start + 100)
    assert int(opt.zero_zigs().sum()) == NUM_TRUE_ZERO
    assert torch.equal(opt.zero_zigs(), truth)
    assert torch.equal(opt.redundant_zigs(), truth)
    # After pruning the free groups train on, and reach the oracle least-squares fit.
    train(opt, model, a, b, 1500)
    assert torch.equal(opt.zero_zigs(), truth)
    objective = model.loss(a, b).item()
    oracle = oracle_objective(a, b, truth).item()
    assert objective <= oracle * 1.01 + 1e-9
