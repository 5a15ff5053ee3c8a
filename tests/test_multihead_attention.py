"""nn.MultiheadAttention: whole heads and the embedding channels around it are pruned exactly.

Each test zeroes ZIGs, constructs with verify=True and compares on inputs of another
batch size and sequence length.
"""
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import fxprune
from fxprune.metrics import count_params


def _prune(model, x, fraction=0.5, seed=0):
    space = fxprune.trace(model, x)
    space.zero_random_groups(fraction, seed=seed)
    return space, space.construct_subnet(verify=True)


def _assert_same(small, model, *inputs):
    with torch.no_grad():
        torch.testing.assert_close(small(*inputs), model(*inputs), rtol=1e-4, atol=1e-5)


def _group(space, name):
    return next(g for g in space.groups if g.name == name)


def _perturbed(model):
    with torch.no_grad():  # LayerNorm starts at scale 1, shift 0 and biases at 0: make every entry matter
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return model.eval()


class Encoder(nn.Module):
    """Pre-norm transformer blocks with a residual stream, as in ViT."""

    def __init__(self, width=16, heads=4, hidden=24, blocks=2, batch_first=True, bias=True, dropout=0.0,
                 need_weights=False):
        super().__init__()
        self.embed = nn.Linear(5, width)
        self.norm1 = nn.ModuleList(nn.LayerNorm(width) for _ in range(blocks))
        self.attn = nn.ModuleList(nn.MultiheadAttention(width, heads, dropout=dropout, bias=bias,
                                                        batch_first=batch_first) for _ in range(blocks))
        self.norm2 = nn.ModuleList(nn.LayerNorm(width) for _ in range(blocks))
        self.mlp = nn.ModuleList(nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))
                                 for _ in range(blocks))
        self.head = nn.Linear(width, 3)
        self.need_weights = need_weights

    def forward(self, x):
        x = self.embed(x)
        for norm1, attn, norm2, mlp in zip(self.norm1, self.attn, self.norm2, self.mlp):
            y = norm1(x)
            y, _ = attn(y, y, y, need_weights=self.need_weights)
            x = x + y
            x = x + mlp(norm2(x))
        return self.head(x)


def test_heads_and_residual_stream_are_prunable_and_exact():
    model = _perturbed(Encoder())
    space, small = _prune(model, torch.randn(2, 6, 5))
    assert _group(space, "embed.weight[dim 0]").prunable
    heads = [g for g in space.groups if g.name.startswith("attn.0.in_proj_weight[dim 0]")]
    assert len(heads) == 1 and heads[0].prunable and heads[0].channels == 4  # one ZIG per head
    assert count_params(small) < count_params(model)
    rows, width = small.get_submodule("attn.0").in_proj_weight.shape
    assert rows % (3 * 4) == 0 and rows < 48 and width == small.embed.out_features < 16
    assert any(n.target is F.scaled_dot_product_attention for n in small.graph.nodes)
    _assert_same(small, model, torch.randn(3, 9, 5))


@settings(max_examples=20, deadline=None)
@given(heads=st.sampled_from([1, 2, 4]), head_dim=st.integers(1, 4), batch_first=st.booleans(),
       bias=st.booleans(), need_weights=st.booleans(), fraction=st.floats(0.1, 0.9), seed=st.integers(0, 2**16))
def test_multihead_attention_variants_are_exact(heads, head_dim, batch_first, bias, need_weights, fraction, seed):
    torch.manual_seed(seed)
    model = _perturbed(Encoder(width=heads * head_dim, heads=heads, blocks=1, batch_first=batch_first, bias=bias,
                               need_weights=need_weights))
    _, small = _prune(model, torch.randn(2, 3, 5), fraction, seed)
    _assert_same(small, model, torch.randn(4, 2, 5))


def test_attention_dropout_is_kept_as_a_module_that_follows_train_and_eval():
    model = _perturbed(Encoder(dropout=0.5, blocks=1))
    _, small = _prune(model, torch.randn(2, 6, 5))
    assert any(isinstance(m, nn.Dropout) and m.p == 0.5 for m in small.modules())
    x = torch.randn(2, 6, 5)
    _assert_same(small, model, x)  # eval: no dropout
    small.train()
    torch.manual_seed(0)
    with torch.no_grad():
        assert not torch.allclose(small(x), small(x))


class CrossAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.q = nn.Linear(4, 8)
        self.kv = nn.Linear(3, 8)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.out = nn.Linear(8, 2)

    def forward(self, x, memory):
        q, kv = self.q(x), torch.relu(self.kv(memory))
        return self.out(self.attn(q, kv, kv, need_weights=False)[0])


def test_cross_attention_couples_query_and_memory_channels_and_is_exact():
    model = _perturbed(CrossAttention())
    x, memory = torch.randn(2, 5, 4), torch.randn(2, 7, 3)
    space, small = _prune(model, (x, memory))
    query = _group(space, "q.weight[dim 0]")
    assert query.prunable and ("kv.weight", 0) in {(s.name, s.dim) for s in query.slices}  # one column set reads both
    _assert_same(small, model, torch.randn(3, 4, 4), torch.randn(3, 6, 3))


class UsesWeights(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(4, 8)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.out = nn.Linear(8, 2)

    def forward(self, x):
        x = self.embed(x)
        y, weights = self.attn(x, x, x)
        return self.out(y) + weights.sum()


class Masked(UsesWeights):
    def __init__(self):
        super().__init__()
        self.register_buffer("mask", torch.ones(5, 5, dtype=torch.bool).triu(1))

    def forward(self, x):
        x = self.embed(x)
        return self.out(self.attn(x, x, x, attn_mask=self.mask, need_weights=False)[0])


def test_used_attention_weights_and_masks_keep_the_channels_with_a_reason():
    for model, reason in ((UsesWeights(), "its attention weights used"), (Masked(), "called with a mask")):
        space, small = _prune(_perturbed(model), torch.randn(2, 5, 4))
        embed = _group(space, "embed.weight[dim 0]")
        assert not embed.prunable and reason in embed.reason and "MultiheadAttention" in embed.reason
        assert small.attn.in_proj_weight.shape == (24, 8)
        _assert_same(small, model, torch.randn(3, 5, 4))


def test_compact_attention_compiles():
    model = _perturbed(Encoder(blocks=1))
    _, small = _prune(model, torch.randn(2, 6, 5))
    x = torch.randn(2, 6, 5)
    compiled = torch.compile(small, backend="inductor")
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), small(x), rtol=1e-4, atol=1e-5)
