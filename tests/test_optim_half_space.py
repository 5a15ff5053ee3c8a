"""The batched half-space projection and adaptive penalty against their per-group definitions."""
import math
from types import SimpleNamespace

import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch import nn

from fxprune.layout import PRODUCER, SliceMap, ZigLayout
from fxprune.optim import HSPG
from fxprune.optim.half_space import adaptive_lambda, half_space_step

GROUP_DIM = 4
finite = st.floats(min_value=-3, max_value=3, allow_nan=False, allow_infinity=False)


@st.composite
def groups(draw):
    """x and a gradient as [num_groups, GROUP_DIM] float64; some groups exactly zero."""
    n = draw(st.integers(1, 6))
    x = torch.tensor(draw(st.lists(finite, min_size=n * GROUP_DIM, max_size=n * GROUP_DIM)),
                     dtype=torch.float64).view(n, GROUP_DIM)
    zero_rows = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    x[torch.tensor(zero_rows)] = 0
    g = torch.tensor(draw(st.lists(finite, min_size=n * GROUP_DIM, max_size=n * GROUP_DIM)),
                     dtype=torch.float64).view(n, GROUP_DIM)
    return x, g


class Holder(nn.Module):
    def __init__(self, x):
        super().__init__()
        self.w = nn.Parameter(x.clone())


@settings(max_examples=150, deadline=None)
@given(groups(), st.floats(0.01, 1.0), st.floats(0.0, 0.5), st.floats(0.0, 0.99))
def test_hspg_step_matches_the_definition(data, lr, lmbda, epsilon):
    x, g = data
    n = x.shape[0]
    # Skip draws that sit on the decision boundary, where rounding may go either way.
    for row in range(n):
        norm = x[row].norm()
        if norm > 0:
            trial = x[row] - lr * (g[row] + lmbda * x[row] / norm)
            margin = torch.dot(trial, x[row]) - epsilon * norm**2
            assume(abs(float(margin)) > 1e-9 * (1 + float(norm) ** 2))

    model = Holder(x)
    layout = ZigLayout(n, (SliceMap("w", 0, torch.arange(n), PRODUCER),), torch.zeros(n, dtype=torch.int64))
    opt = HSPG(SimpleNamespace(model=model, layout=layout), lr=lr, lmbda=lmbda, epsilon=epsilon, warmup_steps=0)
    model.w.grad = g.clone()
    opt.step()

    expected = torch.stack([half_space_step(x[r], g[r], lmbda, lr, epsilon) for r in range(n)])
    assert torch.allclose(model.w.detach(), expected, rtol=1e-12, atol=1e-12)
    # Zeros are exact, not merely small.
    assert torch.equal(model.w.detach().norm(dim=1) == 0, expected.norm(dim=1) == 0)


def reference_lambda(x, d, lmbda, amplify, hat):
    """OTOv2's rule for one group, written out as in the paper/reference."""
    inner, norm_x = float(torch.dot(x, d)), float(x.norm())
    if not (inner < 0 and norm_x > 0):
        return lmbda
    lam_lb = -inner / norm_x
    lam_ub = -float(d.norm()) ** 2 * norm_x / inner
    lam = min(max(amplify * lam_lb, lmbda), hat * lmbda)
    if lam >= lam_ub:
        lam = 0.5 * (lam_lb + lam_ub)
    return lam


@settings(max_examples=150, deadline=None)
@given(groups(), st.floats(1e-4, 1.0), st.floats(1.0, 30.0), st.floats(1.0, 1e3))
def test_adaptive_lambda_matches_the_rule(data, lmbda, amplify, hat):
    x, d = data
    got = adaptive_lambda((x * x).sum(1), (x * d).sum(1), (d * d).sum(1), lmbda, amplify, hat)
    for r in range(x.shape[0]):
        want = reference_lambda(x[r], d[r], lmbda, amplify, hat)
        assert math.isclose(float(got[r]), want, rel_tol=1e-9, abs_tol=1e-12)
        # Whenever the rule picks λ_g inside (λ_lb, λ_ub), the penalised direction shrinks the group
        # and stays a descent direction: the two properties the bounds exist for.
        inner = float(torch.dot(x[r], d[r]))
        if inner < 0 and x[r].norm() > 0 and float(got[r]) > -inner / float(x[r].norm()):
            step = d[r] + float(got[r]) * x[r] / x[r].norm()
            assert float(torch.dot(step, x[r])) > -1e-12
            assert float(torch.dot(step, d[r])) > -1e-12
