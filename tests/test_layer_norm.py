"""LayerNorm is pruned exactly: removed zero entries still count in the statistics.

Each test zeroes ZIGs, constructs with verify=True and also compares on inputs of
another batch size; the property test draws the normalised shape, the affine terms
and the pruned fraction.
"""
import torch
import torch.fx as fx
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import fxprune
from fxprune.metrics import count_params

from prune_check import assert_same, group, perturbed, prune


class PreNormMLP(nn.Module):
    """A transformer-style residual stream: every block reads it through a LayerNorm."""

    def __init__(self, width=16, hidden=24, blocks=2, bias=True, affine=True):
        super().__init__()
        self.embed = nn.Linear(6, width)
        self.norms = nn.ModuleList(nn.LayerNorm(width, bias=bias, elementwise_affine=affine) for _ in range(blocks))
        self.fc1 = nn.ModuleList(nn.Linear(width, hidden) for _ in range(blocks))
        self.fc2 = nn.ModuleList(nn.Linear(hidden, width) for _ in range(blocks))
        self.final = nn.LayerNorm(width, bias=bias, elementwise_affine=affine)
        self.head = nn.Linear(width, 3)

    def forward(self, x):
        x = self.embed(x)
        for norm, fc1, fc2 in zip(self.norms, self.fc1, self.fc2):
            x = x + fc2(F.gelu(fc1(norm(x))))
        return self.head(self.final(x))


def test_residual_stream_through_layer_norms_is_prunable_and_exact():
    model = perturbed(PreNormMLP(), 0.3)
    space, small = prune(model, torch.randn(2, 5, 6))
    stream = group(space, "embed.weight[dim 0]")
    assert stream.prunable
    assert small.embed.out_features < 16 and small.final.weight.shape == (small.embed.out_features,)
    assert count_params(small) < count_params(model)
    # the statistics still count the removed channels: the node is written out in standard ops
    assert not any(n.op == "call_module" and isinstance(small.get_submodule(n.target), nn.LayerNorm)
                   for n in small.graph.nodes)
    assert any(n.target is torch.rsqrt for n in small.graph.nodes)
    assert_same(small, model, torch.randn(3, 7, 6))


def test_layer_norm_without_shift_is_prunable_and_exact():
    model = perturbed(PreNormMLP(bias=False), 0.3)
    space, small = prune(model, torch.randn(2, 5, 6))
    assert group(space, "embed.weight[dim 0]").prunable
    assert_same(small, model, torch.randn(1, 4, 6))


def test_layer_norm_without_scale_blocks_its_channels_with_the_reason():
    model = perturbed(PreNormMLP(affine=False), 0.3)
    space, small = prune(model, torch.randn(2, 5, 6))
    stream = group(space, "embed.weight[dim 0]")
    assert not stream.prunable and "norms.0" in stream.reason and "LayerNorm" in stream.reason
    assert group(space, "fc1.0.weight[dim 0]").prunable  # the hidden dims do not pass a LayerNorm
    assert_same(small, model, torch.randn(3, 2, 6))


class SigmoidThenNorm(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 8)
        self.norm = nn.LayerNorm(8)
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        return self.head(self.norm(torch.sigmoid(self.fc(x))))


def test_channels_not_zero_when_zeroed_cannot_leave_the_statistics():
    space, _ = prune(perturbed(SigmoidThenNorm(), 0.3), torch.randn(3, 4))
    fc = group(space, "fc.weight[dim 0]")
    assert not fc.prunable and "layer norm" in fc.reason and "sigmoid" in fc.reason


class ChannelsFirstLayerNorm(nn.Module):
    """ConvNeXt's LayerNorm2d: permute to channels-last, ``F.layer_norm`` with stored tensors, permute back."""

    def __init__(self, c=12, computed_scale=False):
        super().__init__()
        self.conv = nn.Conv2d(3, c, 3, padding=1)
        self.weight = nn.Parameter(torch.randn(c))
        self.bias = nn.Parameter(torch.randn(c))
        self.computed_scale = computed_scale
        self.out = nn.Conv2d(c, 4, 1)

    def forward(self, x):
        x = self.conv(x).permute(0, 2, 3, 1)
        weight = self.weight * 2 if self.computed_scale else self.weight
        x = F.layer_norm(x, (x.shape[-1],), weight, self.bias, 1e-6)
        return self.out(F.relu(x.permute(0, 3, 1, 2)))


def test_functional_layer_norm_with_stored_scale_and_shift_is_exact():
    model = ChannelsFirstLayerNorm().eval()
    space, small = prune(model, torch.randn(2, 3, 6, 6))
    assert group(space, "conv.weight[dim 0]").prunable
    assert small.conv.out_channels < 12 and small.weight.shape == (small.conv.out_channels,)
    assert_same(small, model, torch.randn(1, 3, 5, 7))


def test_functional_layer_norm_with_a_computed_scale_is_a_barrier():
    space, small = prune(ChannelsFirstLayerNorm(computed_scale=True).eval(), torch.randn(2, 3, 6, 6))
    conv = group(space, "conv.weight[dim 0]")
    assert not conv.prunable and "layer_norm" in conv.reason
    assert small.conv.out_channels == 12


class NormOverChannelsAndPixels(nn.Module):
    """LayerNorm over (C, H, W): a channel is a whole slab of the normalised entries."""

    def __init__(self, c, hw, bias):
        super().__init__()
        self.conv = nn.Conv2d(2, c, 3, padding=1)
        self.norm = nn.LayerNorm((c, hw, hw), bias=bias)
        self.out = nn.Conv2d(c, 3, 1)

    def forward(self, x):
        return self.out(self.norm(self.conv(x)))


@settings(max_examples=25, deadline=None)
@given(c=st.integers(2, 10), hw=st.integers(1, 4), bias=st.booleans(), fraction=st.floats(0.1, 0.9),
       seed=st.integers(0, 2**16))
def test_layer_norm_over_several_dims_is_exact(c, hw, bias, fraction, seed):
    torch.manual_seed(seed)
    model = perturbed(NormOverChannelsAndPixels(c, hw, bias), 0.3)
    space, small = prune(model, torch.randn(2, 2, hw, hw), fraction, seed)
    assert group(space, "conv.weight[dim 0]").prunable
    assert small.norm.weight.shape[1:] == (hw, hw) and small.norm.weight.shape[0] == small.conv.out_channels
    assert_same(small, model, torch.randn(3, 2, hw, hw))


def test_low_precision_statistics_are_kept_in_float32():
    torch.manual_seed(0)
    model = perturbed(PreNormMLP(), 0.3).to(torch.bfloat16)
    x = torch.randn(2, 5, 6, dtype=torch.bfloat16)
    space = fxprune.trace(model, x)
    space.zero_random_groups(0.5, seed=0)
    small = space.construct_subnet()
    with torch.no_grad():
        y, y_small = model(x), small(x)
    assert y_small.dtype == torch.bfloat16
    torch.testing.assert_close(y_small.float(), y.float(), rtol=0.05, atol=0.05)


class PixelLayerNorm(nn.LayerNorm):
    """A user leaf that subclasses LayerNorm but normalises channels-first input (its own forward)."""

    def forward(self, x):
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class WithPixelNorm(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 1)
        self.norm = PixelLayerNorm(8)
        self.out = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        return self.out(self.norm(self.conv(x)))


def test_a_subclass_with_its_own_forward_does_not_inherit_the_rule():
    model = perturbed(WithPixelNorm(), 0.3)
    space, small = prune(model, torch.randn(1, 3, 4, 4))  # traced through: exact and prunable
    assert group(space, "conv.weight[dim 0]").prunable
    space = fxprune.trace(model, torch.randn(1, 3, 4, 4), leaf_modules=[PixelLayerNorm])
    conv = group(space, "conv.weight[dim 0]")
    assert not conv.prunable and "no channel rule" in conv.reason and "PixelLayerNorm" in conv.reason
    space.zero_random_groups(0.5, seed=0)
    assert_same(space.construct_subnet(verify=True), model, torch.randn(2, 3, 4, 4))


def test_compact_layer_norm_compiles():
    model = perturbed(PreNormMLP(blocks=1), 0.3)
    _, small = prune(model, torch.randn(2, 5, 6))
    assert isinstance(small, fx.GraphModule)
    x = torch.randn(2, 5, 6)
    compiled = torch.compile(small, backend="inductor")
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), small(x), rtol=1e-4, atol=1e-5)


class StackedNorms(nn.Module):
    """A LayerNorm reading another rewritten LayerNorm, and one reading a rewritten attention output."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(4, 8)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(8), nn.LayerNorm(8), nn.LayerNorm(8)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        x = self.norm2(self.norm1(self.embed(x)))
        return self.head(self.norm3(self.attn(x, x, x, need_weights=False)[0]))


def test_rewrites_that_read_another_rewritten_node():
    model = perturbed(StackedNorms(), 0.3)
    space, small = prune(model, torch.randn(2, 3, 4))
    assert group(space, "embed.weight[dim 0]").prunable and small.embed.out_features < 8
    assert_same(small, model, torch.randn(3, 5, 4))
