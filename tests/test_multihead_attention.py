"""nn.MultiheadAttention: whole heads and the embedding channels around it are pruned exactly.

Each test zeroes ZIGs, constructs with verify=True and compares on inputs of another
batch size and sequence length.
"""
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from fxprune.metrics import count_params

from prune_check import assert_same, group, perturbed, prune


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
    model = perturbed(Encoder(), 0.2)
    space, small = prune(model, torch.randn(2, 6, 5))
    assert group(space, "embed.weight[dim 0]").prunable
    heads = [g for g in space.groups if g.name.startswith("attn.0.in_proj_weight[dim 0]")]
    assert len(heads) == 1 and heads[0].prunable and heads[0].channels == 4  # one ZIG per head
    assert count_params(small) < count_params(model)
    rows, width = small.get_submodule("attn.0").in_proj_weight.shape
    assert rows % (3 * 4) == 0 and rows < 48 and width == small.embed.out_features < 16
    assert any(n.target is F.scaled_dot_product_attention for n in small.graph.nodes)
    assert_same(small, model, torch.randn(3, 9, 5))


@settings(max_examples=20, deadline=None)
@given(heads=st.sampled_from([1, 2, 4]), head_dim=st.integers(1, 4), batch_first=st.booleans(),
       bias=st.booleans(), need_weights=st.booleans(), fraction=st.floats(0.1, 0.9), seed=st.integers(0, 2**16))
def test_multihead_attention_variants_are_exact(heads, head_dim, batch_first, bias, need_weights, fraction, seed):
    torch.manual_seed(seed)
    model = perturbed(Encoder(width=heads * head_dim, heads=heads, blocks=1, batch_first=batch_first, bias=bias,
                              need_weights=need_weights), 0.2)
    _, small = prune(model, torch.randn(2, 3, 5), fraction, seed)
    assert_same(small, model, torch.randn(4, 2, 5))


def test_attention_dropout_is_kept_as_a_module_that_follows_train_and_eval():
    model = perturbed(Encoder(dropout=0.5, blocks=1), 0.2)
    _, small = prune(model, torch.randn(2, 6, 5))
    assert any(isinstance(m, nn.Dropout) and m.p == 0.5 for m in small.modules())
    x = torch.randn(2, 6, 5)
    assert_same(small, model, x)  # eval: no dropout
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
    model = perturbed(CrossAttention(), 0.2)
    x, memory = torch.randn(2, 5, 4), torch.randn(2, 7, 3)
    space, small = prune(model, (x, memory))
    query = group(space, "q.weight[dim 0]")
    assert query.prunable and ("kv.weight", 0) in {(s.name, s.dim) for s in query.slices}  # one column set reads both
    assert_same(small, model, torch.randn(3, 4, 4), torch.randn(3, 6, 3))


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
        space, small = prune(perturbed(model, 0.2), torch.randn(2, 5, 4))
        embed = group(space, "embed.weight[dim 0]")
        assert not embed.prunable and reason in embed.reason and "MultiheadAttention" in embed.reason
        assert small.attn.in_proj_weight.shape == (24, 8)
        assert_same(small, model, torch.randn(3, 5, 4))


def test_compact_attention_compiles():
    model = perturbed(Encoder(blocks=1), 0.2)
    _, small = prune(model, torch.randn(2, 6, 5))
    x = torch.randn(2, 6, 5)
    compiled = torch.compile(small, backend="inductor")
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), small(x), rtol=1e-4, atol=1e-5)
