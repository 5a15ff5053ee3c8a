"""torch.einsum: kept letters align channels like a product, summed letters contract them.

Each test zeroes ZIGs, constructs with verify=True and compares on inputs of another
batch size.
"""
import pytest
import torch
from torch import nn

from fxprune.metrics import count_params

from prune_check import assert_same, group, prune


class EinsumAttention(nn.Module):
    """Heads written with einsum and an explicit scale, as in MaxViT or hand-written attention."""

    def __init__(self, width=12, heads=3, head_dim=4):
        super().__init__()
        self.heads, self.scale = heads, head_dim**-0.5
        self.q, self.k, self.v = (nn.Linear(width, heads * head_dim) for _ in range(3))
        self.proj = nn.Linear(heads * head_dim, width)

    def forward(self, x):
        b, n, _ = x.shape
        q, k, v = (f(x).view(b, n, self.heads, -1).transpose(1, 2) for f in (self.q, self.k, self.v))
        attn = torch.einsum("bhid,bhjd->bhij", q * self.scale, k).softmax(-1)
        out = torch.einsum("bhij,bhjd->bhid", attn, v)
        return self.proj(out.transpose(1, 2).flatten(2))


def test_einsum_attention_prunes_head_dims_exactly():
    model = EinsumAttention().eval()
    space, small = prune(model, torch.randn(2, 5, 12))
    assert group(space, "q.weight[dim 0]").prunable and group(space, "v.weight[dim 0]").prunable
    assert small.q.out_features == small.k.out_features < 12  # contracted together
    assert count_params(small) < count_params(model)
    assert_same(small, model, torch.randn(3, 7, 12))


class Bilinear(nn.Module):
    """Free parameters contracted and kept through einsum, with an ellipsis."""

    def __init__(self, equation):
        super().__init__()
        self.equation = equation
        self.inp = nn.Linear(3, 6)
        self.weight = nn.Parameter(torch.randn(6, 5))
        self.out = nn.Linear(5, 2)

    def forward(self, x):
        return self.out(torch.relu(torch.einsum(self.equation, torch.relu(self.inp(x)), self.weight)))


@pytest.mark.parametrize("equation", ["...c,cd->...d", "bnc,cd->bnd", "bnc,cz", "b n c , c d -> b n d"])
def test_einsum_with_parameters_is_exact(equation):
    model = Bilinear(equation).eval()
    space, small = prune(model, torch.randn(2, 4, 3))
    assert group(space, "inp.weight[dim 0]").prunable  # contracted with weight's dim 0
    assert group(space, "weight[dim 1]").prunable  # kept: produced by the parameter's columns
    assert small.weight.shape[0] == small.inp.out_features < 6 and small.weight.shape[1] < 5
    assert_same(small, model, torch.randn(3, 2, 3))


class GatedContraction(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(3, 6), nn.Linear(3, 6)
        self.out = nn.Linear(4, 2)

    def forward(self, x):
        # both factors are sigmoids: a zeroed channel is 0.5 on each side, so its term is not zero
        return self.out(torch.einsum("bnc,bmc->bnm", torch.sigmoid(self.a(x)), torch.sigmoid(self.b(x))))


def test_contracting_channels_that_are_not_zero_when_zeroed_keeps_them():
    model = GatedContraction().eval()
    space, small = prune(model, torch.randn(2, 4, 3))
    a = group(space, "a.weight[dim 0]")
    assert not a.prunable and "einsum" in a.reason and "not zero when zeroed" in a.reason
    assert_same(small, model, torch.randn(3, 4, 3))


class SigmoidTimesParameter(Bilinear):
    def forward(self, x):
        return self.out(torch.einsum(self.equation, torch.sigmoid(self.inp(x)), self.weight))


def test_contracting_with_a_parameter_zeroed_alongside_is_exact():
    # the parameter's rows are producers of the same ZIG: each removed term is zero on that side
    model = SigmoidTimesParameter("bnc,cd->bnd").eval()
    space, small = prune(model, torch.randn(2, 4, 3))
    assert group(space, "inp.weight[dim 0]").prunable
    assert_same(small, model, torch.randn(3, 4, 3))


class Diagonal(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 4)

    def forward(self, x):
        return torch.einsum("bii->bi", self.a(x))


def test_repeated_letters_keep_the_channels_with_a_reason():
    model = Diagonal().eval()
    space, small = prune(model, torch.randn(2, 4, 4))
    a = group(space, "a.weight[dim 0]")
    assert not a.prunable and "equation fxprune does not follow" in a.reason
    assert_same(small, model, torch.randn(1, 4, 4))
