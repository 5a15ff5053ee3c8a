"""Hyper-parameter and layout checks that fail early with actionable messages."""
from __future__ import annotations

import math
from numbers import Integral, Real

import torch
from torch import nn

from ..layout import BUFFER, CONSUMER, PRODUCER, ZigLayout
from .base_rules import VARIANTS


def _fail(what: str, got, hint: str) -> None:
    raise ValueError(f"{what}, got {got!r}. {hint}")


def check_real(name: str, value, *, low=None, high=None, low_open=False, high_open=False, hint=""):
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
        _fail(f"{name} must be a finite real number", value, hint)
    if low is not None and (value < low or (low_open and value == low)):
        _fail(f"{name} must be {'>' if low_open else '>='} {low}", value, hint)
    if high is not None and (value > high or (high_open and value == high)):
        _fail(f"{name} must be {'<' if high_open else '<='} {high}", value, hint)


def check_int(name: str, value, *, low: int, hint=""):
    if isinstance(value, bool) or not isinstance(value, Integral):
        _fail(f"{name} must be an integer", value, hint)
    if value < low:
        _fail(f"{name} must be >= {low}", value, hint)


def check_base(variant, lr, momentum, dampening, weight_decay, nesterov, betas, eps) -> None:
    if variant not in VARIANTS:
        _fail(f"variant must be one of {VARIANTS}", variant, "Pick the base optimizer the pruning wraps.")
    check_real("lr", lr, low=0, hint="Use a non-negative learning rate (schedulers may change it later).")
    check_real("weight_decay", weight_decay, low=0, hint="Use 0 to disable weight decay.")
    if variant == "sgd":
        check_real("momentum", momentum, low=0, hint="Use 0 for plain SGD, e.g. 0.9 with momentum.")
        check_real("dampening", dampening, low=0, high=1, hint="Dampening is a fraction in [0, 1].")
        if nesterov and (momentum <= 0 or dampening != 0):
            _fail("nesterov=True needs momentum > 0 and dampening = 0", (momentum, dampening),
                  "Set momentum (e.g. 0.9) and dampening=0, or nesterov=False.")
    else:
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            _fail("betas must be a pair (beta1, beta2)", betas, "For example betas=(0.9, 0.999).")
        for i, b in enumerate(betas):
            check_real(f"betas[{i}]", b, low=0, high=1, high_open=True, hint="Each beta must lie in [0, 1).")
        check_real("eps", eps, low=0, hint="Use a small positive value such as 1e-8.")


def check_sparsity(name: str, value) -> None:
    check_real(name, value, low=0, high=1, high_open=True,
               hint="It is the fraction of prunable ZIGs to zero, in [0, 1); e.g. 0.5 prunes half.")


def check_epsilon(value) -> None:
    check_real("epsilon", value, low=0, high=1, high_open=True,
               hint="The half-space threshold must lie in [0, 1); larger projects more eagerly (0.9 is common).")


def check_schedule(start_pruning_step, pruning_steps, pruning_periods) -> None:
    check_int("start_pruning_step", start_pruning_step, low=0, hint="It counts optimizer steps from 0.")
    check_int("pruning_steps", pruning_steps, low=1,
              hint="The target is reached after start_pruning_step + pruning_steps steps; use at least 1.")
    check_int("pruning_periods", pruning_periods, low=1, hint="Use 1 to partition once.")
    if pruning_periods > pruning_steps:
        _fail("pruning_periods must not exceed pruning_steps", (pruning_periods, pruning_steps),
              "Each period needs at least one step.")


def check_width_multiple(value) -> None:
    if value is not None:
        check_int("width_multiple", value, low=1, hint="Use None for no constraint, or e.g. 8 to keep widths multiples of 8.")


def check_space(space) -> tuple[nn.Module, ZigLayout]:
    model, layout = getattr(space, "model", None), getattr(space, "layout", None)
    if not isinstance(model, nn.Module) or not isinstance(layout, ZigLayout):
        raise ValueError(
            "The first argument must be a PruneSpace (an object with .model: nn.Module and .layout: ZigLayout), "
            f"got {type(space).__name__}. Build it with fxprune.trace(model, example_inputs)."
        )
    check_layout(layout, model)
    return model, layout


def check_layout(layout: ZigLayout, model: nn.Module) -> None:
    params = dict(model.named_parameters())
    tensors = {**dict(model.named_buffers()), **params}
    num = layout.num_zigs
    if not isinstance(num, Integral) or num < 0:
        _fail("layout.num_zigs must be a non-negative integer", num, "Rebuild the PruneSpace.")
    missing = sorted({m.name for m in layout.maps if m.name not in tensors})
    if missing:
        _fail("the layout names tensors the model does not have", missing[:5],
              "Was the PruneSpace traced from a different model instance? Pass the space built from this model.")
    if tuple(layout.zig_group.shape) != (num,):
        _fail(f"layout.zig_group must have shape [{num}]", tuple(layout.zig_group.shape), "Rebuild the PruneSpace.")
    covered = torch.zeros(num, dtype=torch.bool)
    for m in layout.maps:
        if m.role not in (PRODUCER, CONSUMER, BUFFER):
            _fail(f"slice map {m.name!r} has an unknown role", m.role, f"Use one of {(PRODUCER, CONSUMER, BUFFER)}.")
        tensor = tensors[m.name]
        if m.role == PRODUCER and m.name not in params:
            _fail(f"producer slice {m.name!r} is not a parameter of the model", m.name,
                  "Only trained parameters can form x_g; mark buffers with role 'buffer'.")
        if not 0 <= m.dim < tensor.dim():
            _fail(f"slice map {m.name!r} has a dim outside the tensor's {tensor.dim()} dims", m.dim, "Rebuild the PruneSpace.")
        if m.zig.dtype != torch.int64 or tuple(m.zig.shape) != (tensor.shape[m.dim],):
            _fail(f"slice map {m.name!r}.zig must be int64 of shape [{tensor.shape[m.dim]}]",
                  (m.zig.dtype, tuple(m.zig.shape)), "Rebuild the PruneSpace.")
        if m.zig.numel() and (int(m.zig.min()) < -1 or int(m.zig.max()) >= num):
            _fail(f"slice map {m.name!r}.zig has ids outside [-1, {num})",
                  (int(m.zig.min()), int(m.zig.max())), "Rebuild the PruneSpace.")
        if m.role == PRODUCER:
            covered[m.zig[m.zig >= 0].cpu()] = True
    if not bool(covered.all()):
        orphans = (~covered).nonzero().squeeze(1)[:5].tolist()
        _fail("every ZIG needs at least one producer slice; these have none", orphans,
              "A ZIG without producer values can never be trained to zero; drop it from the layout.")


def check_capacity(target: float, wanted: int, limit: int, num_zigs: int, width_multiple: int | None) -> None:
    if wanted > limit:
        keep = f"a positive multiple of {width_multiple}" if width_multiple else "at least one"
        raise ValueError(
            f"target_group_sparsity={target} asks for {wanted} zero ZIGs, but every layer must keep {keep} "
            f"channel(s), which allows at most {limit} of {num_zigs}; lower the target"
            + (" or width_multiple." if width_multiple else ".")
        )
