"""torch.nn's transformer modules are traced through, so their heads, feed-forward widths
and residual stream are prunable; each case is constructed with verify=True and compared
on inputs of another batch size and sequence length."""
import pytest
import torch
from torch import nn

import fxprune
from fxprune.metrics import count_params

from prune_check import assert_same, perturbed, prune


class EncoderModel(nn.Module):
    def __init__(self, norm_first=False, batch_first=True, activation="relu", mask=False):
        super().__init__()
        self.embed = nn.Linear(5, 16)
        layer = nn.TransformerEncoderLayer(16, 4, 24, batch_first=batch_first, norm_first=norm_first,
                                           activation=activation)
        self.encoder = nn.TransformerEncoder(layer, 2, norm=nn.LayerNorm(16), enable_nested_tensor=False)
        self.head = nn.Linear(16, 3)
        self.mask = mask

    def forward(self, x, padding=None):
        x = self.embed(x)
        if self.mask:
            return self.head(self.encoder(x, src_key_padding_mask=padding))
        return self.head(self.encoder(x))


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("activation", ["relu", nn.GELU()])
def test_transformer_encoder_is_prunable_and_exact(norm_first, batch_first, activation):
    torch.manual_seed(0)
    model = perturbed(EncoderModel(norm_first, batch_first, activation), 0.2)
    space = fxprune.trace(model, torch.randn(4, 2, 5))
    names = {g.name: g for g in space.groups}
    assert names["embed.weight[dim 0]"].prunable  # the residual stream
    assert names["encoder.layers.0.linear1.weight[dim 0]"].prunable  # the feed-forward width
    assert names["encoder.layers.1.self_attn.in_proj_weight[dim 0]"].prunable  # the heads
    space.zero_random_groups(0.5, seed=0)
    small = space.construct_subnet(verify=True)
    assert count_params(small) < count_params(model)
    assert_same(small, model, torch.randn(6, 3, 5))


def test_padding_mask_keeps_attention_channels_but_not_the_feed_forward():
    torch.manual_seed(0)
    model = perturbed(EncoderModel(mask=True), 0.2)
    padding = torch.tensor([[False] * 4 + [True] * 2] * 3)  # the last 2 of 6 tokens
    space = fxprune.trace(model, (torch.randn(3, 6, 5), padding))
    names = {g.name: g for g in space.groups}
    assert not names["embed.weight[dim 0]"].prunable and "called with a mask" in names["embed.weight[dim 0]"].reason
    assert names["encoder.layers.0.linear1.weight[dim 0]"].prunable
    space.zero_random_groups(0.5, seed=0)
    assert_same(space.construct_subnet(verify=True), model, torch.randn(3, 6, 5), padding)


class Seq2Seq(nn.Module):
    def __init__(self):
        super().__init__()
        self.src, self.tgt = nn.Linear(4, 16), nn.Linear(3, 16)
        self.transformer = nn.Transformer(16, 2, num_encoder_layers=1, num_decoder_layers=2, dim_feedforward=24,
                                          batch_first=True)
        self.head = nn.Linear(16, 2)

    def forward(self, src, tgt):
        return self.head(self.transformer(self.src(src), self.tgt(tgt)))


def test_encoder_decoder_transformer_is_prunable_and_exact():
    torch.manual_seed(0)
    model = perturbed(Seq2Seq(), 0.2)
    space = fxprune.trace(model, (torch.randn(2, 5, 4), torch.randn(2, 3, 3)))
    names = {g.name: g for g in space.groups}
    assert names["transformer.decoder.layers.1.multihead_attn.in_proj_weight[dim 0]"].prunable  # cross-attention heads
    space.zero_random_groups(0.5, seed=0)
    small = space.construct_subnet(verify=True)
    assert count_params(small) < count_params(model)
    assert_same(small, model, torch.randn(3, 6, 4), torch.randn(3, 4, 3))


def test_a_declared_leaf_transformer_layer_stays_a_barrier():
    model = perturbed(EncoderModel(), 0.2)
    space = fxprune.trace(model, torch.randn(2, 4, 5), leaf_modules=[nn.TransformerEncoderLayer])
    embed = next(g for g in space.groups if g.name == "embed.weight[dim 0]")
    assert not embed.prunable and "TransformerEncoderLayer" in embed.reason


def test_dhspg_trains_a_transformer_encoder_to_an_exact_compact_model():
    torch.manual_seed(0)
    model = EncoderModel(norm_first=True)
    x, y = torch.randn(16, 6, 5), torch.randint(0, 3, (16, 6))
    space = fxprune.trace(model, x[:2])
    opt = fxprune.DHSPG(space, lr=0.05, momentum=0.9, target_group_sparsity=0.5, start_pruning_step=10,
                        pruning_steps=30)
    for _ in range(60):
        loss = nn.functional.cross_entropy(model(x).reshape(-1, 3), y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert int(opt.zero_zigs().sum()) == space.num_zigs // 2
    small = space.construct_subnet(verify=True)
    assert count_params(small) < count_params(model)
    assert_same(small.eval(), model.eval(), x)  # (dropout off in both)


def test_compact_transformer_saves_and_loads_as_plain_torch(tmp_path):
    model = perturbed(EncoderModel(norm_first=True), 0.2)
    _, small = prune(model, torch.randn(2, 4, 5))
    torch.save(small, tmp_path / "small.pt")
    loaded = torch.load(tmp_path / "small.pt", weights_only=False).eval()
    assert {type(m).__module__.split(".")[0] for m in loaded.modules()} == {"torch"}  # no user or fxprune classes
    assert_same(loaded, model, torch.randn(3, 6, 5))
