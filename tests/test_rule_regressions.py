"""Patterns from real architectures (timm, hand-written attention) that once broke a rule.

Each builds a small module with the pattern, zeroes ZIGs, constructs with verify=True
and compares outputs on a batch size other than the traced one.
"""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fxprune
from prune_check import perturbed


def _prune_and_compare(model, x, x_other, fraction=0.5):
    space = fxprune.trace(model, x)
    space.zero_random_groups(fraction, seed=0)
    small = space.construct_subnet(verify=True)
    with torch.no_grad():
        torch.testing.assert_close(small(x_other), model(x_other), rtol=1e-4, atol=1e-5)
    return space, small


class KeywordLinear(nn.Module):  # timm attention: F.linear(input=..., weight=..., bias=<computed>)
    def __init__(self, bias="scaled"):
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.qkv = nn.Linear(16, 12, bias=False)
        self.q_bias = nn.Parameter(torch.randn(4))
        self.register_buffer("k_bias", torch.zeros(4), persistent=False)
        self.v_bias = nn.Parameter(torch.randn(4))
        self.fc2 = nn.Linear(12, 4)
        self.bias = bias

    def forward(self, x):
        x = torch.relu(self.fc1(x))
        if self.bias == "beit":  # BEiT: zeros for k
            bias = torch.cat((self.q_bias, self.k_bias, self.v_bias))
        elif self.bias == "scaled":
            bias = torch.cat((self.q_bias, self.k_bias, self.v_bias)) * 2
        else:  # through an op without a rule: nothing tracks the bias's channels
            bias = torch.cat((self.q_bias, self.k_bias, self.v_bias)).flip(0)
        return self.fc2(F.linear(input=x, weight=self.qkv.weight, bias=bias))


def test_functional_linear_with_a_computed_bias_prunes_its_output_channels():
    for bias in ("beit", "scaled"):
        space, small = _prune_and_compare(KeywordLinear(bias).eval(), torch.randn(2, 8), torch.randn(3, 8))
        by_bias = {s.name: g for g in space.groups for s in g.slices if s.name.endswith("_bias")}
        assert by_bias["q_bias"].prunable and by_bias["v_bias"].prunable
        # the buffer's zeros are not zeroed with the group: those channels reach fc2 non-zero
        assert not by_bias["k_bias"].prunable and "not zero when zeroed" in by_bias["k_bias"].reason
        assert 4 <= small.qkv.weight.shape[0] < 12 and small.fc1.out_features < 16


def test_functional_linear_with_an_untracked_computed_bias_is_a_barrier():
    space, _ = _prune_and_compare(KeywordLinear("flipped").eval(), torch.randn(2, 8), torch.randn(3, 8))
    fc1 = next(g for g in space.groups if g.name == "fc1.weight[dim 0]")
    assert not fc1.prunable and "linear" in fc1.reason


class TracedLinear(nn.Linear):  # like timm.layers.Linear: FX traces into F.linear with get_attr weights
    def forward(self, x):
        return F.linear(x, self.weight, self.bias)


class FunctionalLinearOnInput(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = TracedLinear(8, 16)
        self.out = nn.Linear(16, 4)

    def forward(self, x):
        return self.out(torch.relu(self.fc(x)))


def test_functional_linear_on_untracked_input_keeps_its_columns():
    space, small = _prune_and_compare(FunctionalLinearOnInput().eval(), torch.randn(2, 8), torch.randn(5, 8), 1.0)
    assert small.fc.weight.shape[1] == 8
    assert any(g.name == "fc.weight[dim 0]" and g.prunable for g in space.groups)


class WeightReadForDtype(nn.Module):  # xcit: a weight read directly (get_attr) besides its module call
    def __init__(self):
        super().__init__()
        self.proj = nn.Conv2d(6, 8, 1)
        self.out = nn.Conv2d(8, 3, 1)

    def forward(self, x):
        pos = torch.arange(24, device=x.device).reshape(1, 6, 2, 2).to(self.proj.weight.dtype).sin()
        return x + self.out(torch.relu(self.proj(pos)))


def test_directly_read_weight_keeps_dims_no_op_couples():
    _, small = _prune_and_compare(WeightReadForDtype().eval(), torch.randn(1, 3, 2, 2), torch.randn(2, 3, 2, 2), 1.0)
    assert small.proj.in_channels == 6


class ClassAttentionLike(nn.Module):  # cait/gcvit: reshape back to (B, N, C) with C the residual width
    def __init__(self, dim=16, heads=2):
        super().__init__()
        self.heads = heads
        self.norm = nn.LayerNorm(dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        x = self.norm(x)
        b, n, c = x.shape
        v = torch.relu(self.v(x).reshape(b, n, self.heads, c // self.heads).permute(0, 2, 1, 3))
        return self.proj(v.transpose(1, 2).reshape(b, n, c))


def test_reshape_size_read_from_another_tensor_is_rewritten():
    _, small = _prune_and_compare(ClassAttentionLike().eval(), torch.randn(1, 3, 16), torch.randn(2, 4, 16))
    assert small.v.out_features < 16 and small.v.out_features % 2 == 0


class QueryAgainstUntrackedKeys(nn.Module):  # halonet: keys come through an op without a rule
    def __init__(self):
        super().__init__()
        self.q = nn.Linear(8, 8)
        self.k = nn.Linear(8, 8)
        self.out = nn.Linear(5, 2)

    def forward(self, x):
        q = self.q(x)
        k = self.k(x).flip(-1)  # flip has no rule: k's channels are untracked
        return self.out(q @ k.transpose(-1, -2))


def test_contraction_with_an_untracked_operand_keeps_the_width():
    space, _ = _prune_and_compare(QueryAgainstUntrackedKeys().eval(), torch.randn(1, 5, 8), torch.randn(2, 5, 8))
    q = next(g for g in space.groups if g.name == "q.weight[dim 0]")
    assert not q.prunable and "untracked" in q.reason


class BatchNormAct(nn.BatchNorm2d):  # like timm's BatchNormAct2d: FX traces into F.batch_norm
    def forward(self, x):
        x = F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.1, self.eps)
        return torch.relu(x)


class ConvBnAct(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = BatchNormAct(8)
        self.conv2 = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.conv2(self.bn1(self.conv1(x)))


def test_functional_batch_norm_prunes_with_its_stored_tensors():
    model = ConvBnAct().eval()
    with torch.no_grad():
        model.bn1.running_mean.uniform_(-1, 1)
        model.bn1.running_var.uniform_(0.5, 2)
    space, small = _prune_and_compare(model, torch.randn(1, 3, 6, 6), torch.randn(2, 3, 6, 6))
    group = next(g for g in space.groups if g.name == "conv1.weight[dim 0]")
    assert group.prunable and {s.name for s in group.slices} >= {"bn1.weight", "bn1.running_var"}
    assert small.bn1.running_mean.shape[0] == small.conv1.out_channels < 8


class WindowMask(nn.Module):  # timm Swin: a (windows, N, N) mask buffer added to (B*windows, N, N) scores
    def __init__(self, windows=4, n=5, c=8):
        super().__init__()
        self.windows, self.n = windows, n
        self.fc1, self.fc2 = nn.Linear(c, c), nn.Linear(c, c)
        self.register_buffer("mask", torch.randn(windows, n, n))

    def forward(self, x):  # (B, windows * n, c)
        x = self.fc1(x).reshape(-1, self.n, x.shape[-1])
        b_, n, _ = x.shape
        a = (x @ x.transpose(1, 2)).view(-1, self.windows, n, n) + self.mask.unsqueeze(0)
        y = a.view(-1, n, n).softmax(-1) @ x
        return self.fc2(y.reshape(b_, n, -1))


def test_batch_sizes_stay_live_when_a_buffer_labels_the_batch_dim():
    model = WindowMask().eval()
    _, small = _prune_and_compare(model, torch.randn(1, 20, 8), torch.randn(3, 20, 8))
    reshape = [n for n in small.graph.nodes if n.op == "call_method" and n.target == "reshape"][-1]
    assert all(not isinstance(a, int) or a == -1 for a in reshape.args[1:])  # no traced batch literal


class TokenSlice(nn.Module):  # timm PiT: y[:, :n] with n = tokens.shape[1], a run-time bound
    def __init__(self):
        super().__init__()
        self.tok = nn.Parameter(torch.randn(1, 2, 8))
        self.fc1, self.fc2 = nn.Linear(8, 16), nn.Linear(16, 8)

    def forward(self, x):
        t = self.tok.expand(x.shape[0], -1, -1)
        y = self.fc2(self.fc1(torch.cat((t, x), dim=1)).relu())
        return y[:, :t.shape[1]]


class StepSlice(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 8, 1), nn.Conv2d(4, 6, 1)

    def forward(self, x):
        return self.conv2(self.conv1(x)[:, ::2])


def test_slices_with_run_time_bounds_or_a_step_keep_their_index():
    space, _ = _prune_and_compare(TokenSlice().eval(), torch.randn(1, 5, 8), torch.randn(2, 5, 8))
    space, small = _prune_and_compare(StepSlice().eval(), torch.randn(1, 3, 4, 4), torch.randn(2, 3, 4, 4))
    conv1 = next(g for g in space.groups if g.name == "conv1.weight[dim 0]")
    assert not conv1.prunable and "step" in conv1.reason
    getitem = next(n for n in small.graph.nodes if n.op == "call_function" and "getitem" in n.name)
    assert getitem.args[1][1] == slice(None, None, 2)


class FunctionalGroupNorm(nn.Module):  # timm GroupNormAct / GroupNorm1: F.group_norm with stored tensors
    def __init__(self, affine=True):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 5, 1)
        self.weight = nn.Parameter(torch.rand(16) + 0.5) if affine else None
        self.bias = nn.Parameter(torch.randn(16)) if affine else None

    def forward(self, x):
        y = F.group_norm(self.conv1(x), 4, self.weight, self.bias, 1e-5)
        return self.conv2(torch.relu(y))


def test_functional_group_norm_prunes_whole_norm_groups():
    model = FunctionalGroupNorm().eval()
    space, small = _prune_and_compare(model, torch.randn(1, 3, 6, 6), torch.randn(2, 3, 6, 6))
    conv1 = next(g for g in space.groups if g.name == "conv1.weight[dim 0]")
    assert conv1.prunable and conv1.channels == 4  # one ZIG per norm group of 4 channels
    assert {s.name for s in conv1.slices} >= {"weight", "bias", "conv2.weight"}
    assert small.conv1.out_channels == 8  # half of the 4 groups zeroed and removed
    node = next(n for n in small.graph.nodes if n.target is F.group_norm)
    assert node.args[1] == 2

    _prune_and_compare(FunctionalGroupNorm(affine=False).eval(), torch.randn(1, 3, 6, 6), torch.randn(2, 3, 6, 6))


class ParameterMatmul(nn.Module):  # x @ W with a free parameter whose columns feed a Linear
    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(3, 6)
        self.w = nn.Parameter(torch.randn(6, 5))
        self.out = nn.Linear(5, 2)

    def forward(self, x):
        return self.out(torch.relu(torch.relu(self.inp(x)) @ self.w))


def test_free_parameter_dim_read_straight_into_a_consumer_is_prunable():
    # the consumer adopts the parameter's atoms (no union edge): that still gives the dim a channel meaning
    space, small = _prune_and_compare(ParameterMatmul().eval(), torch.randn(2, 3), torch.randn(4, 3))
    columns = next(g for g in space.groups if g.name == "w[dim 1]")
    assert columns.prunable and small.w.shape[1] == small.out.in_features < 5


class FunctionalConvs(nn.Module):  # convs written with F.conv2d on stored tensors, plain and grouped
    def __init__(self, weight_standardised=False):
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(8, 3, 3, 3))
        self.b1 = nn.Parameter(torch.randn(8))
        self.w2 = nn.Parameter(torch.randn(8, 4, 3, 3))  # groups=2
        self.head = nn.Conv2d(8, 2, 1)
        self.standardised = weight_standardised
        self.pre, self.post = nn.Conv2d(3, 6, 1), nn.Conv2d(6, 3, 1)  # prunable whatever the convs below do

    def forward(self, x):
        x = self.post(F.relu(self.pre(x)))
        w1, w2 = self.w1, self.w2
        if self.standardised:  # NFNet-style: computed weights, the grouped one too
            w1 = w1 - w1.mean((1, 2, 3), keepdim=True)
            w2 = w2 - w2.mean((1, 2, 3), keepdim=True)
        x = F.relu(F.conv2d(x, w1, self.b1, padding=1))
        x = F.relu(F.conv2d(x, w2, None, 1, 1, 1, 2))
        return self.head(x)


def test_functional_convs_on_stored_weights_are_prunable():
    space, small = _prune_and_compare(FunctionalConvs().eval(), torch.randn(1, 3, 6, 6), torch.randn(2, 3, 5, 5))
    # the grouped conv ties its input and output channels per conv group: 2 ZIGs of 4 channels
    w1 = next(g for g in space.groups if g.name == "w1[dim 0]")
    assert w1.prunable and w1.channels == 2 and ("w2", 0) in {(s.name, s.dim) for s in w1.slices}
    assert small.w1.shape[0] == small.w2.shape[0] == 4  # one conv group removed: groups 2 -> 1


def test_functional_conv_with_a_computed_weight_is_a_barrier():
    # (the grouped one's rewrite must leave it alone while the rest of the net is sliced)
    space, small = _prune_and_compare(FunctionalConvs(True).eval(), torch.randn(1, 3, 6, 6), torch.randn(2, 3, 5, 5))
    w1 = next(g for g in space.groups if g.name == "b1[dim 0]")
    assert not w1.prunable and "conv2d" in w1.reason
    assert small.pre.out_channels < 6 and small.w2.shape[0] == 8


class ViewAsConvInput(nn.Module):  # a 1-d conv over flattened pixels, viewed back to its input's shape
    def __init__(self, untracked_other=False):
        super().__init__()
        self.c1 = nn.Conv2d(8, 8, 3, padding=1)
        self.c1d = nn.Conv1d(8, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 4, 3, padding=1)
        self.untracked_other = untracked_other

    def forward(self, x):
        h = F.relu(self.c1(x))
        shape_source = torch.cumsum(h, 1) if self.untracked_other else h  # cumsum has no channel rule
        return self.c2(self.c1d(h.flatten(2)).view_as(shape_source))


def test_view_as_prunes_both_sides_of_each_dim_together():
    torch.manual_seed(0)
    space, small = _prune_and_compare(ViewAsConvInput().eval(), torch.randn(1, 8, 6, 6), torch.randn(2, 8, 5, 7))
    c1 = next(g for g in space.groups if g.name == "c1.weight[dim 0]")
    assert c1.prunable and ("c1d.weight", 0) in {(s.name, s.dim) for s in c1.slices}
    assert small.c1.out_channels == small.c1d.out_channels < 8


def test_view_as_a_tensor_fxprune_cannot_follow_keeps_the_width():
    torch.manual_seed(0)
    space, small = _prune_and_compare(ViewAsConvInput(True).eval(), torch.randn(1, 8, 6, 6), torch.randn(2, 8, 5, 7))
    c1d = next(g for g in space.groups if g.name == "c1d.weight[dim 0]")
    assert not c1d.prunable and "view_as" in c1d.reason
    assert small.c1d.out_channels == 8


class KeywordSpellings(nn.Module):
    """Calls that name their operands (``other=``, ``input=``) or use NumPy's ``axis=``: torch accepts both."""

    def __init__(self, variant):
        super().__init__()
        self.variant = variant
        self.c1 = nn.Conv2d(8, 8, 3, padding=1)
        self.a = nn.Conv2d(8, 8, 3, padding=1)
        self.c2 = nn.Conv2d(16 if variant in ("cat_axis", "stack_axis") else 8, 4, 3, padding=1)

    def forward(self, x):
        h = F.relu(self.c1(x))
        v = self.variant
        if v == "other_scalar":  # +1 on a zeroed channel enters the channel sum: blocked
            h = h.add(other=1.0).sum(1, keepdim=True) * h
        elif v == "input_other_scalar":
            h = torch.add(input=h, other=1.0).sum(1, keepdim=True) * h
        elif v == "other_residual":
            h = torch.add(h, other=self.a(h))
        elif v == "cat_axis":
            h = torch.cat((self.a(h), h), axis=1)
        elif v == "stack_axis":
            h = torch.stack((self.a(h), h), axis=2).flatten(1, 2)
        elif v == "chunk_axis":
            h = torch.cat(torch.chunk(h, 2, axis=1)[::-1], 1)
        elif v == "chunk_axis_sum":  # a channel sum of one chunk scales every channel (zeros add nothing)
            h = h.chunk(2, axis=1)[1].sum(1, keepdim=True) * h
        elif v == "tensor_split_axis":
            h = torch.cat(torch.tensor_split(h, 2, axis=1)[::-1], 1)
        return self.c2(h)


PRUNABLE_SPELLINGS = {"other_residual": True, "cat_axis": True, "stack_axis": True, "chunk_axis": True,
                      "tensor_split_axis": True, "chunk_axis_sum": True, "other_scalar": False,
                      "input_other_scalar": False}


@pytest.mark.parametrize("variant", sorted(PRUNABLE_SPELLINGS))
def test_keyword_and_numpy_spellings_are_read_like_positional_ones(variant):
    torch.manual_seed(0)
    model = perturbed(KeywordSpellings(variant), 0.5)
    space, _ = _prune_and_compare(model, torch.randn(1, 8, 6, 6), torch.randn(2, 8, 5, 7))
    c1 = next(g for g in space.groups if g.name == "c1.weight[dim 0]")
    assert c1.prunable == PRUNABLE_SPELLINGS[variant]


class NonZeroQuotients(nn.Module):
    """A zeroed channel that an op turns into nan or inf, which nan_to_num then makes a number."""

    def __init__(self, variant):
        super().__init__()
        self.variant = variant
        self.c1 = nn.Conv2d(8, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 4, 3, padding=1)

    def forward(self, x):
        h, v = self.c1(x), self.variant
        if v == "times_inf":
            h = h * float("inf")
        elif v == "over_zero":
            h = h / 0.0
        elif v == "scalar_over":
            h = 1.0 / h
        elif v == "broadcast_over":  # the numerator has no channel dim: a zeroed denominator channel gives inf
            h = x[:, :1] / h
        return self.c2(torch.nan_to_num(h, nan=3.0, posinf=1.0, neginf=-1.0))


@pytest.mark.parametrize("variant", ["times_inf", "over_zero", "scalar_over", "broadcast_over"])
def test_ops_that_make_a_zeroed_channel_nan_or_inf_keep_it(variant):
    torch.manual_seed(0)
    space, _ = _prune_and_compare(NonZeroQuotients(variant).eval(), torch.randn(1, 8, 6, 6), torch.randn(2, 8, 5, 7))
    assert not next(g for g in space.groups if g.name == "c1.weight[dim 0]").prunable
