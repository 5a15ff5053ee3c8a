"""Padding modules, pixel (un)shuffle and GLU: the channel coupling each implies, checked by
zeroing half the ZIGs, constructing and comparing on inputs of another shape."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prune_check import perturbed, prune

PADS = {
    "reflect": lambda: nn.ReflectionPad2d(1), "replicate": lambda: nn.ReplicationPad2d((1, 2, 0, 1)),
    "circular": lambda: nn.CircularPad2d(1), "constant_zero": lambda: nn.ConstantPad2d(1, 0.0),
    "constant_half": lambda: nn.ConstantPad2d(1, 0.5),
}


class Net(nn.Module):
    def __init__(self, middle: nn.Module | None, functional=None, c2_in=16, c2_padding=1):
        super().__init__()
        self.c1 = nn.Conv2d(3, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.middle = middle if middle is not None else nn.Identity()
        self.functional = functional
        self.c2 = nn.Conv2d(c2_in, 8, 3, padding=c2_padding)

    def forward(self, x):
        h = self.middle(F.relu(self.bn(self.c1(x))))
        if self.functional is not None:
            h = self.functional(h)
        return self.c2(h)


def _check(model, x, x_other):
    torch.manual_seed(0)
    model = perturbed(model, 0.3)
    with torch.no_grad():
        model.bn.running_mean.normal_()
        model.bn.running_var.uniform_(0.5, 2.0)
    space, small = prune(model, x)
    with torch.no_grad():
        torch.testing.assert_close(small(x_other), model(x_other), rtol=1e-4, atol=1e-5)
    return space, small


@pytest.mark.parametrize("kind", sorted(PADS))
def test_padding_modules_keep_channels_prunable_unless_they_pad_with_a_non_zero(kind):
    space, small = _check(Net(PADS[kind](), c2_padding=0), torch.randn(1, 3, 8, 8), torch.randn(2, 3, 6, 7))
    c1 = next(g for g in space.groups if g.name == "c1.weight[dim 0]")
    if kind == "constant_half":  # a zeroed channel padded with 0.5 is not zero
        assert not c1.prunable and "ConstantPad2d" in c1.reason
    else:
        assert c1.prunable and small.c1.out_channels == small.c2.in_channels < 16


def test_padding_an_unbatched_input_pads_only_the_spatial_dims():
    torch.manual_seed(0)
    model = perturbed(nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.ReflectionPad2d(1),
                                    nn.Conv2d(16, 8, 3)), 0.3)
    space, small = prune(model, torch.randn(3, 8, 8))  # (C, H, W): the channels are dim 0
    assert small.get_submodule("0").out_channels == small.get_submodule("3").in_channels < 16
    with torch.no_grad():
        x = torch.randn(3, 5, 6)
        torch.testing.assert_close(small(x), model(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("spelling", ["module", "functional"])
def test_pixel_shuffle_prunes_each_run_of_r_squared_channels_together(spelling):
    middle, fn = (nn.PixelShuffle(2), None) if spelling == "module" else (None, lambda h: F.pixel_shuffle(h, 2))
    space, small = _check(Net(middle, fn, c2_in=4), torch.randn(1, 3, 4, 4), torch.randn(2, 3, 5, 3))
    c1 = next(g for g in space.groups if g.name == "c1.weight[dim 0]")
    assert c1.prunable and len(c1.zigs) == 4  # 16 channels in runs of 4
    assert small.c1.out_channels % 4 == 0 and small.c2.in_channels == small.c1.out_channels // 4


def test_pixel_unshuffle_prunes_a_channel_with_its_run_of_outputs():
    space, small = _check(Net(nn.PixelUnshuffle(2), c2_in=64), torch.randn(1, 3, 8, 8), torch.randn(2, 3, 6, 4))
    assert small.c1.out_channels < 16 and small.c2.in_channels == 4 * small.c1.out_channels


def test_shuffle_then_unshuffle_keeps_the_runs():
    fn = lambda h: F.pixel_unshuffle(F.pixel_shuffle(h, 2), 2)  # noqa: E731
    space, small = _check(Net(None, fn), torch.randn(1, 3, 4, 4), torch.randn(2, 3, 3, 5))
    assert small.c1.out_channels == small.c2.in_channels and small.c1.out_channels % 4 == 0


def test_glu_over_channels_pairs_each_channel_with_its_gate():
    space, small = _check(Net(nn.GLU(1), c2_in=8), torch.randn(1, 3, 6, 6), torch.randn(2, 3, 4, 5))
    c1 = next(g for g in space.groups if g.name == "c1.weight[dim 0]")
    assert c1.prunable and len(c1.zigs) == 8  # channel i with gate i + 8
    assert small.c1.out_channels == 2 * small.c2.in_channels < 16


def test_glu_over_another_dim_passes_the_channels_through():
    _, small = _check(Net(None, lambda h: F.glu(h, -1)), torch.randn(1, 3, 6, 6), torch.randn(2, 3, 4, 8))
    assert small.c1.out_channels == small.c2.in_channels < 16
