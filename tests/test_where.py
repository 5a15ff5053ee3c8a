"""torch.where and tensor comparisons align channels like elementwise ops.

A where's output channel is zero when both value operands are zero there, whatever
the condition; a comparison's result is marked non-zero (0 < 1 is True).
"""
import torch
from torch import nn

from prune_check import assert_same, group, prune


def _prune(model, x):
    space, small = prune(model, x)
    assert_same(small, model, torch.randn(3, *x.shape[1:]))
    return space, small


class Gated(nn.Module):
    def __init__(self, form):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 4, 1)
        self.form = form

    def forward(self, x):
        y = self.a(x)
        if self.form == "where":  # a leaky ReLU written by hand
            y = torch.where(y > 0, y, 0.1 * y)
        elif self.form == "method":
            y = y.where(y.gt(0), torch.zeros_like(y))
        elif self.form == "mask-mul":
            y = y * (y > 0).float()
        else:  # "fill": a zeroed channel becomes -1 where the condition is false
            y = torch.where(y > 0, y, -1.0)
        return self.b(y)


def test_where_and_comparisons_keep_channels_prunable():
    for form in ("where", "method", "mask-mul"):
        space, small = _prune(Gated(form).eval(), torch.randn(2, 3, 8, 8))
        a = group(space, "a.weight[dim 0]")
        assert a.prunable, form
        assert small.a.out_channels < 8, form


def test_where_with_a_non_zero_fill_keeps_the_channels_with_a_reason():
    space, small = _prune(Gated("fill").eval(), torch.randn(2, 3, 8, 8))
    a = group(space, "a.weight[dim 0]")
    assert not a.prunable and "where" in a.reason and "not zero when zeroed" in a.reason
    assert small.a.out_channels == 8
