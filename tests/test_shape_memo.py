"""Memoised shape propagation reuses a result only for an exactly equal configuration and input."""
from __future__ import annotations

import torch
import torch.fx as fx
from torch import nn

import fxprune
from passes.shape_memo import _UNKEYABLE, ShapeMemo, module_key
from passes.shape_prop import propagate_shapes


class Repeat(nn.Module):
    """Output width set by a plain attribute, not by any parameter shape."""

    def __init__(self, times: int):
        super().__init__()
        self.times = times
        self.scale = nn.Parameter(torch.ones(4))

    def forward(self, x):
        return (x * self.scale).repeat(1, self.times)


class TwoRepeats(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = Repeat(2), Repeat(3)

    def forward(self, x):
        return self.a(x), self.b(x)


class Opaque:
    pass


def test_modules_that_differ_only_in_an_attribute_are_not_conflated():
    tracer = fx.Tracer()
    tracer.is_leaf_module = lambda m, name: isinstance(m, Repeat) or fx.Tracer.is_leaf_module(tracer, m, name)
    model = TwoRepeats()
    gm = fx.GraphModule(model, tracer.trace(model))
    propagate_shapes(gm, (torch.randn(2, 4),))
    shapes = {n.target: tuple(n.meta["val"].shape) for n in gm.graph.nodes if n.op == "call_module"}
    assert shapes == {"a": (2, 8), "b": (2, 12)}


def test_keys_tell_configurations_apart_and_refuse_unknown_attributes():
    assert module_key(Repeat(2)) == module_key(Repeat(2))
    assert module_key(Repeat(2)) != module_key(Repeat(3))
    assert module_key(nn.MultiheadAttention(8, 2)) != module_key(nn.MultiheadAttention(8, 4))
    assert module_key(nn.MultiheadAttention(8, 2)) != module_key(nn.MultiheadAttention(8, 2, batch_first=True))
    odd = Repeat(2)
    odd.config = Opaque()
    assert module_key(odd) is _UNKEYABLE
    hooked = Repeat(2)
    hooked.register_forward_hook(lambda m, i, o: o)
    assert module_key(hooked) is _UNKEYABLE


def test_a_cached_result_is_a_fresh_tensor_each_time():
    memo = ShapeMemo()
    x = torch.empty(2, 3, device="meta")
    key = memo.key_for_module(nn.Identity(), (x,), {})
    memo.store(key, x)
    first, second = memo.lookup(key), memo.lookup(key)
    assert first is not second and first.shape == second.shape == x.shape
    first.unsqueeze_(0)  # an in-place op downstream must not reshape the cached value
    assert memo.lookup(key).shape == x.shape


def test_repeated_attention_layers_are_exact_after_memoised_shapes():
    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList(nn.MultiheadAttention(16, 4, batch_first=True) for _ in range(3))
            self.fc = nn.Linear(16, 32)
            self.head = nn.Linear(32, 5)

        def forward(self, x):
            for attn in self.layers:
                x = x + attn(x, x, x, need_weights=False)[0]
            return self.head(torch.relu(self.fc(x)))

    model = Encoder().eval()
    x = torch.randn(2, 7, 16)
    space = fxprune.trace(model, x)
    assert any(g.prunable for g in space.groups)
    space.zero_random_groups(0.5, seed=0)
    space.construct_subnet(verify=True)
