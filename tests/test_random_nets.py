"""Property-based tests: random nets from a grammar of blocks (tests/netgen.py) against the oracles.

- zero-invariance: zero random ZIGs in the dense model -> construct -> same outputs, fewer params;
- empty solution: nothing zeroed -> construct -> same outputs, same param count;
- non-mutation: trace / construct never change the user's model.

Profiles: ``ci`` (default; 200 derandomized examples, so CI is reproducible) and
``explore`` (``FXPRUNE_HYPOTHESIS_PROFILE=explore``: random examples, 1000 or
``FXPRUNE_HYPOTHESIS_EXAMPLES``, to hunt for new failures).
"""
from __future__ import annotations

import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fxprune

from netgen import KINDS, NetSpec, build, net_specs, spec_for

settings.register_profile("ci", max_examples=200, deadline=None, derandomize=True, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("explore", max_examples=int(os.environ.get("FXPRUNE_HYPOTHESIS_EXAMPLES", 1000)),
                          deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
PROFILE = os.environ.get("FXPRUNE_HYPOTHESIS_PROFILE", "ci")



@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny convs: intra-op threads only contend (6x slower on a loaded 2-core runner)."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def snapshot(m: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


def assert_same_state(before: dict[str, torch.Tensor], model: torch.nn.Module, when: str) -> None:
    after = model.state_dict()
    assert list(after) == list(before), f"{when}: the model's state_dict keys changed"
    for k, v in before.items():
        assert after[k].shape == v.shape, f"{when}: {k} changed shape {tuple(v.shape)} -> {tuple(after[k].shape)}"
        assert torch.equal(after[k], v), f"{when}: {k} changed values"


def assert_close(y: torch.Tensor, y_small: torch.Tensor, what: str) -> None:
    assert y_small.shape == y.shape, f"{what}: output shape {tuple(y_small.shape)} != {tuple(y.shape)}"
    diff = (y.double() - y_small.double()).abs().max().item()
    tol = 1e-4 * max(1.0, y.double().abs().max().item())
    assert diff <= tol, f"{what}: max abs diff {diff:.3g} > tolerance {tol:.3g}"


def run(m: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return m.eval()(x)


def check_zero_invariance(spec: NetSpec, fraction: float, seed: int) -> None:
    model = build(spec)
    x = spec.input()
    space = fxprune.trace(model, x)
    ids = space.zero_random_groups(fraction, seed=seed)
    assert len(ids) == int(fraction * space.num_zigs)
    y = run(model, x)
    small = space.construct_subnet()
    removed = bool(space.removable_zigs().any())
    assert_close(y, run(small, x), "zero-invariance on the example input")
    # the compact model is a function, not a lookup table: other inputs and batch sizes agree too
    x2 = spec.input(batch=spec.batch + 1, seed=spec.seed + 7)
    assert_close(run(model, x2), run(small, x2), "zero-invariance on a fresh input with another batch size")
    if removed:
        assert n_params(small) < n_params(model), "ZIGs were removed but the compact model is not smaller"
    else:
        assert n_params(small) == n_params(model), "nothing was removed but the parameter count changed"


def check_empty_solution(spec: NetSpec) -> None:
    model = build(spec)
    x = spec.input()
    space = fxprune.trace(model, x)
    assert not space.removable_zigs().any()
    small = space.construct_subnet()
    assert n_params(small) == n_params(model)
    assert_close(run(model, x), run(small, x), "empty solution")


def check_no_mutation(spec: NetSpec, fraction: float, seed: int) -> None:
    model = build(spec)
    x = spec.input()
    structure, before = repr(model), snapshot(model)
    identity = [(n, id(p), p.requires_grad) for n, p in model.named_parameters()]
    y_before = run(model, x)
    space = fxprune.trace(model, x)
    assert_same_state(before, model, "after trace")
    assert [(n, id(p), p.requires_grad) for n, p in model.named_parameters()] == identity, \
        "trace replaced the model's parameters (a user's optimizer would hold stale ones)"
    space.zero_random_groups(fraction, seed=seed)  # mutates the model's params, by design
    zeroed = snapshot(model)
    y_zeroed = run(model, x)
    small = space.construct_subnet()
    space.construct_subnet()  # a second construction must not see a changed model either
    assert_same_state(zeroed, model, "after construct_subnet")
    assert [(n, id(p), p.requires_grad) for n, p in model.named_parameters()] == identity
    assert repr(model) == structure, "construct_subnet changed the model's modules"
    assert not model.training
    assert torch.equal(run(model, x), y_zeroed), "the model computes something else after construct_subnet"
    if fraction == 0:
        assert torch.equal(y_zeroed, y_before)
    small.train()  # training-mode on the compact model must not reach back into the user's model
    with torch.no_grad():
        small(x)
    assert_same_state(zeroed, model, "after running the compact model in train mode")


# ---------------------------------------------------------------------------------------------
# property-based
# ---------------------------------------------------------------------------------------------
fractions = st.one_of(st.sampled_from([0.0, 1.0, 0.5]), st.floats(0.0, 1.0))
seeds = st.integers(0, 2**16)


@settings(settings.get_profile(PROFILE))
@given(spec=net_specs(), fraction=fractions, seed=seeds)
def test_zero_invariance_random_nets(spec, fraction, seed):
    check_zero_invariance(spec, fraction, seed)


@settings(settings.get_profile(PROFILE))
@given(spec=net_specs())
def test_empty_solution_random_nets(spec):
    check_empty_solution(spec)


@settings(settings.get_profile(PROFILE))
@given(spec=net_specs(), fraction=fractions, seed=seeds)
def test_model_not_mutated_random_nets(spec, fraction, seed):
    check_no_mutation(spec, fraction, seed)


# ---------------------------------------------------------------------------------------------
# one block at a time, by hand: a failure here names the block
# ---------------------------------------------------------------------------------------------
ONE_BLOCK = {
    "conv-k3-bias": ("conv", 8, {"cout": 12, "k": 3, "bias": True}),
    "conv-k1-nobias": ("conv", 8, {"cout": 6, "k": 1, "bias": False}),
    "bn": ("bn", 8, {}),
    "gn": ("gn", 12, {"groups": 4}),
    "gn-one-group": ("gn", 8, {"groups": 1}),
    "in": ("in", 8, {}),
    **{f"act-{a}": ("act", 8, {"act": a}) for a in ("relu", "gelu", "silu", "hardswish", "siggate")},
    "dropout": ("dropout", 8, {"2d": False}),
    "dropout2d": ("dropout", 8, {"2d": True}),
    "maxpool": ("pool", 8, {"max": True}),
    "avgpool": ("pool", 8, {"max": False}),
    "res-identity": ("res", 8, {"proj": False, "cout": 8, "mid": 6, "k": 3, "act": "relu"}),
    "res-projection": ("res", 8, {"proj": True, "cout": 12, "mid": 6, "k": 3, "act": "silu"}),
    "cat-two-branches": ("cat", 8, {"a": 6, "b": 4, "k": 3, "act": "relu"}),
    "cat-with-input": ("cat", 8, {"a": 6, "b": 0, "k": 1, "act": "gelu"}),
    "split-chunk": ("split", 8, {"how": "chunk", "first": 4, "d0": 6, "d1": 4, "k": 3, "act": "relu",
                                 "swap": False}),
    "split-method-chunk-identity": ("split", 8, {"how": "method_chunk", "first": 4, "d0": 0, "d1": 0, "k": 1,
                                                 "act": "relu", "swap": True}),
    "split-int": ("split", 8, {"how": "split_int", "first": 4, "d0": 4, "d1": 0, "k": 3, "act": "relu",
                               "swap": False}),
    "split-list-uneven": ("split", 10, {"how": "split_list", "first": 3, "d0": 5, "d1": 0, "k": 3,
                                        "act": "silu", "swap": True}),
    "gconv": ("gconv", 8, {"groups": 4, "cout": 12, "k": 3, "bias": True}),
    "gconv-2": ("gconv", 12, {"groups": 2, "cout": 8, "k": 1, "bias": False}),
    "dwconv": ("dwconv", 8, {"mult": 1, "k": 3, "bias": True}),
    "dwconv-mult2": ("dwconv", 8, {"mult": 2, "k": 3, "bias": False}),
    "shuffle": ("shuffle", 12, {"groups": 3}),
    "shuffle-g2": ("shuffle", 8, {"groups": 2}),
    "se": ("se", 8, {"r": 4, "mean": False}),
    "se-mean": ("se", 8, {"r": 2, "mean": True}),
    "layerscale": ("layerscale", 8, {}),
    "slice": ("slice", 8, {"k": 5}),
    "slice-offset": ("slice", 8, {"k": 4, "start": 3, "neg": False}),
    "slice-negative-to-end": ("slice", 8, {"k": 4, "start": 4, "neg": True}),
    "act-relu-inplace": ("act", 8, {"act": "relu_inplace"}),
    "act-relu6": ("act", 8, {"act": "relu6"}),
    "act-leaky": ("act", 8, {"act": "leaky"}),
    "act-prelu": ("act", 8, {"act": "prelu"}),
    "res-iadd": ("res", 8, {"proj": False, "cout": 8, "mid": 6, "k": 3, "act": "prelu", "op": "iadd"}),
    "res-sub-projection": ("res", 8, {"proj": True, "cout": 6, "mid": 4, "k": 1, "act": "relu", "op": "sub"}),
    "cat-negative-dim": ("cat", 8, {"a": 6, "b": 4, "k": 3, "act": "relu", "dim": -3}),
    **{f"const-{op}": ("const", 8, {"op": op})
       for op in ("sigmoid", "hardsigmoid", "plus1", "rsub", "clamp_min", "exp_neg_sq")},
    "down-conv": ("down", 8, {"how": "conv", "cout": 10, "bias": True}),
    "down-max": ("down", 8, {"how": "max", "cout": 8, "bias": False}),
    "down-avg": ("down", 8, {"how": "avg", "cout": 8, "bias": False}),
    "up-nearest": ("up", 8, {"mode": "nearest", "cout": 8, "bias": False}),
    "up-bilinear": ("up", 8, {"mode": "bilinear", "cout": 8, "bias": False}),
    "up-transposed-conv": ("up", 8, {"mode": "convT", "cout": 6, "bias": True}),
    "clmlp": ("clmlp", 8, {"hidden": 12, "ln": False, "res": True}),
    "clmlp-layernorm": ("clmlp", 8, {"hidden": 12, "ln": True, "res": False}),
    "se-linear-view": ("sel", 8, {"r": 4, "hard": False}),
    "se-linear-hardsigmoid": ("sel", 8, {"r": 3, "hard": True}),
    "global-context": ("gc", 8, {"bias": True}),
    "mulgate-sigmoid": ("mulgate", 8, {"cout": 6, "k": 3, "gate": "sigmoid"}),
    "mulgate-gelu": ("mulgate", 8, {"cout": 6, "k": 1, "gate": "gelu"}),
    "halves-add": ("halves", 8, {"op": "add"}),
    "halves-mul": ("halves", 8, {"op": "mul"}),
    "cbam": ("cbam", 8, {}),
    # bugs found by this suite: /tmp/fxprune_bugs/{linear_bias_on_non_channel_dim,
    # conv_bias_on_channels_in_batch_dim,batchnorm_on_non_channel_dim}.py
    "mixer-token-mlp": ("mixer", 8, {"side": 8, "hidden": 6, "bias": True}),
    "mixer-token-mlp-nobias": ("mixer", 8, {"side": 8, "hidden": 6, "bias": False}),
    "fold-channels-into-batch": ("fold", 8, {"bias": True}),
    "fold-channels-into-batch-nobias": ("fold", 8, {"bias": False}),
    "bn-on-transposed": ("tnorm", 8, {"side": 8}),
    "mha-prenorm-residual": ("mha", 8, {"heads": 2, "ln": True, "bias": True, "batch_first": True, "res": True}),
    "mha-seq-first-nobias": ("mha", 8, {"heads": 4, "ln": False, "bias": False, "batch_first": False, "res": False}),
    "einsum-attention": ("einsum", 8, {"heads": 2, "dim": 3, "bias": True}),
    "sdpa-default-scale": ("sdpa", 8, {"heads": 2, "dim": 4, "bias": False}),
    # one head of width 1: the q/k/v factor carries the channels and unbind takes it apart
    "sdpa-unbind-labelled-dim": ("sdpa", 4, {"heads": 1, "dim": 1, "bias": False}),
    **{f"where-{fill}": ("where", 8, {"fill": fill}) for fill in ("scaled", "zero", "minus1")},
    **{f"pad-{how}": ("pad", 8, {"how": how, "value": 0.5, "cout": 6})
       for how in ("reflect", "replicate", "circular", "constant")},
    "pad-constant-zero": ("pad", 8, {"how": "constant", "value": 0.0, "cout": 6}),
    "pixshuf": ("pixshuf", 8, {"r": 2, "mid": 3}),
    "glu": ("glu", 8, {"cout": 5}),
}
HEADS = {
    "gap-flatten": ("gap", {"flat": "flatten", "hidden": 0}),
    "gap-view-mlp": ("gap", {"flat": "view", "hidden": 6}),
    "gap-mean": ("gap", {"flat": "mean", "hidden": 0}),
    "flatten-full": ("flatten", {"cout": 4, "pool": False, "hidden": 0}),
    "flatten-pool-mlp": ("flatten", {"cout": 3, "pool": True, "hidden": 5}),
    "tokens": ("tokens", {"dim": 6, "mlp": 12, "out": 5, "res": False, "hidden": 0}),
    "tokens-res-mlp": ("tokens", {"dim": 6, "mlp": 12, "out": 5, "res": True, "hidden": 4}),
}


def test_grammar_covers_every_block_kind():
    assert {kind for kind, _, _ in ONE_BLOCK.values()} == set(KINDS)


@pytest.mark.parametrize("fraction", [0.4, 1.0])
@pytest.mark.parametrize("name", list(ONE_BLOCK))
def test_one_block_zero_invariance(name, fraction):
    kind, c, o = ONE_BLOCK[name]
    for seed in range(2):
        check_zero_invariance(spec_for(kind, c, o, seed=seed), fraction, seed)


@pytest.mark.parametrize("name", list(ONE_BLOCK))
def test_one_block_empty_solution_and_no_mutation(name):
    kind, c, o = ONE_BLOCK[name]
    spec = spec_for(kind, c, o)
    check_empty_solution(spec)
    check_no_mutation(spec, 0.5, 1)


@pytest.mark.parametrize("fraction", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("name", list(HEADS))
def test_one_head_zero_invariance(name, fraction):
    for seed in range(3):
        check_zero_invariance(spec_for("bn", 8, {}, head=HEADS[name], seed=seed, size=8 if seed else 16,
                                       batch=1 + seed % 2), fraction, seed)


def test_one_block_nets_have_prunable_groups():
    """Guard against a vacuous suite: a plain conv block must expose prunable ZIGs."""
    kind, c, o = ONE_BLOCK["conv-k3-bias"]
    spec = spec_for(kind, c, o)
    space = fxprune.trace(build(spec), spec.input())
    assert space.num_zigs >= 8 + 12
