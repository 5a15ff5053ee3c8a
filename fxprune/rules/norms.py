"""Normalisation layers.

BatchNorm / InstanceNorm normalise each channel alone: their scale and shift are
producers of the channel (zeroing them zeroes it, whatever the statistics), running
statistics are buffers sliced along.  GroupNorm normalises whole groups of channels,
so the channels of one norm group form one ZIG.  LayerNorm is in layer_norm.py.
"""
from __future__ import annotations

import numpy as np
import torch.nn.functional as F
from torch import nn

from fxprune.labels import TensorLabels
from fxprune.layout import BUFFER, PRODUCER

from .common import block_dims, keep_zeros, set_nonzero, stored_or_absent
from .registry import RULES

BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
IN_TYPES = (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)


_CHANNEL_TENSORS = (("weight", PRODUCER), ("bias", PRODUCER), ("running_mean", BUFFER), ("running_var", BUFFER))


def _attribute(m: nn.Module, name: str):
    """``getattr(m, name, None)``, reading the registered tensors first: nn.Module.__getattr__ is slow."""
    params = m._parameters
    if name in params:
        return params[name]
    buffers = m._buffers
    if name in buffers:
        return buffers[name]
    return getattr(m, name, None)


def _attach_channel_params(ctx, node, m, x: TensorLabels, dim: int) -> list[str]:
    """Couple the norm's per-channel tensors to the channels of ``x``'s ``dim``; returns their names."""
    lab = x.dims[dim]
    prefix = node.target + "."
    present = []  # (plain loops here and below: a comprehension is a function call of its own, per norm layer)
    for pname, role in _CHANNEL_TENSORS:
        if _attribute(m, pname) is None:
            continue
        present.append(pname)
        if lab is None:
            ctx.block_if_shared(prefix + pname, 0, node)
            continue
        atoms = ctx.param_atoms(prefix + pname, 0, role, like=lab.atoms)
        if atoms is not lab.atoms:  # (a tensor seen before, or one that could not adopt these atoms)
            ctx.atoms.unify(lab.atoms, atoms, ctx.describe(node))
    return present


def _block_statistics_dims(ctx, node, x: TensorLabels, channel_dim: int) -> None:
    """Channels laid along any other dim enter the statistics (batch or spatial): unprunable."""
    others = []
    for d, lab in enumerate(x.dims):
        if lab is not None and d != channel_dim:
            others.append(d)
    if others:
        block_dims(ctx, x, others, f"{ctx.describe(node)} computes statistics across these channels")


_UNBATCHED_RANK = {nn.InstanceNorm1d: 2, nn.InstanceNorm2d: 3, nn.InstanceNorm3d: 4}  # (BatchNorm has none)


def _per_channel_norm(ctx, node):
    m = ctx.module(node)
    x = ctx.labels(node.args[0])
    out = keep_zeros(ctx, node, x)
    if x is None:
        return out
    ndim = len(x.shape)
    dim = 0 if ndim == _UNBATCHED_RANK.get(type(m), -1) else 1
    if ndim <= dim:
        return out
    _block_statistics_dims(ctx, node, x, dim)
    present = _attach_channel_params(ctx, node, m, x, dim)
    affine = "weight" in present and "bias" in present
    uses_running_stats = getattr(m, "track_running_stats", False)
    if affine:  # scale and shift are zeroed with the channel: the output is exactly zero
        if out.dims[dim] is not None and not out.dims[dim].all_zero():
            out = set_nonzero(out, [dim], 0)
    elif uses_running_stats:  # (0 - running_mean) / std is a non-zero constant in eval mode
        out = set_nonzero(out, [dim], ctx.code(node))
    return out


def _rewrite_per_channel_norm(rw, node):
    m = rw.module(node)
    labels: TensorLabels = rw.input_labels(node)
    dim = 1 if labels.ndim > 1 else 0
    if labels.dims[dim] is not None:
        m.num_features = rw.kept_count(labels.dims[dim])


RULES.module(*BN_TYPES, *IN_TYPES, rewrite=_rewrite_per_channel_norm)(_per_channel_norm)


def _norm_groups(ctx, node, x: TensorLabels | None, num_groups: int, scale_shift: list[str], affine: bool):
    """GroupNorm's channel semantics, for the module and ``F.group_norm`` alike.

    ``scale_shift``: the names of the stored per-channel scale and shift that are present.
    """
    out = keep_zeros(ctx, node, x)
    if x is None or x.dims[1] is None:
        return out
    _block_statistics_dims(ctx, node, x, 1)
    lab = x.dims[1]
    if (lab.atoms < 0).any():
        ctx.atoms.block(lab.atoms, f"{ctx.describe(node)} normalises partly untracked channels")
        return out
    per_group = x.shape[1] // num_groups
    # statistics are shared within a norm group: its channels go (or stay) together
    ctx.atoms.unify(lab.atoms, np.repeat(lab.atoms[::per_group], per_group), "group norm group")
    for name in scale_shift:
        ctx.atoms.unify(lab.atoms, ctx.param_atoms(name, 0, PRODUCER, like=lab.atoms), ctx.describe(node))
    return set_nonzero(out, [1], 0 if affine else ctx.code(node))


def _group_norm(ctx, node):
    m = ctx.module(node)
    present = [f"{node.target}.{k}" for k in ("weight", "bias") if _attribute(m, k) is not None]
    return _norm_groups(ctx, node, ctx.labels(node.args[0]), m.num_groups, present, m.affine)


def _rewrite_group_norm(rw, node):
    m = rw.module(node)
    lab = rw.input_labels(node).dims[1]
    if lab is None:
        return
    per_group = m.num_channels // m.num_groups
    m.num_channels = rw.kept_count(lab)
    m.num_groups = m.num_channels // per_group


RULES.module(nn.GroupNorm, rewrite=_rewrite_group_norm)(_group_norm)


@RULES.function(F.batch_norm)
def _functional_batch_norm(ctx, node):
    """``F.batch_norm(x, running_mean, running_var, weight, bias, ...)`` with stored tensors (timm's BatchNormAct)."""
    from passes.channel_analysis import unknown_op

    x = ctx.labels(ctx.arg(node, 0, "input"))
    names = ("running_mean", "running_var", "weight", "bias")
    tensors = {k: ctx.arg(node, i + 1, k) for i, k in enumerate(names)}
    if x is None or x.ndim < 2 or not stored_or_absent(*tensors.values()):
        return unknown_op(ctx, node)
    out = keep_zeros(ctx, node, x)
    _block_statistics_dims(ctx, node, x, 1)
    lab = x.dims[1]
    if lab is None:
        return out  # the stored tensors stay whole (nothing couples them)
    for k, t in tensors.items():
        if t is not None:
            role = BUFFER if k.startswith("running") else PRODUCER
            ctx.atoms.unify(lab.atoms, ctx.param_atoms(t.target, 0, role, like=lab.atoms), ctx.describe(node))
    if tensors["weight"] is not None and tensors["bias"] is not None:
        return set_nonzero(out, [1], 0)  # scale and shift zeroed with the channel
    return set_nonzero(out, [1], ctx.code(node)) if tensors["running_mean"] is not None else out


def _functional_group_norm(ctx, node):
    """``F.group_norm(x, num_groups, weight, bias)`` with stored tensors (timm's GroupNormAct, GroupNorm1)."""
    from passes.channel_analysis import unknown_op

    x = ctx.labels(node.args[0]) if node.args else None  # (the rewrite reads the positional input)
    num_groups = ctx.arg(node, 1, "num_groups")
    tensors = {k: ctx.arg(node, i + 2, k) for i, k in enumerate(("weight", "bias"))}
    if (x is None or x.ndim < 2 or not isinstance(num_groups, int) or num_groups <= 0 or x.shape[1] % num_groups
            or not stored_or_absent(*tensors.values())):
        return unknown_op(ctx, node)
    present = [t.target for t in tensors.values() if t is not None]
    affine = tensors["weight"] is not None and tensors["bias"] is not None
    return _norm_groups(ctx, node, x, num_groups, present, affine)


def _rewrite_functional_group_norm(rw, node):
    lab = rw.input_labels(node).dims[1]
    if lab is None:
        return
    per_group = lab.size // rw.arg(node, 1, "num_groups")
    num_groups = rw.kept_count(lab) // per_group
    if len(node.args) > 1:
        node.args = (node.args[0], num_groups, *node.args[2:])
    else:
        node.kwargs = {**node.kwargs, "num_groups": num_groups}


RULES.function(F.group_norm, rewrite=_rewrite_functional_group_norm)(_functional_group_norm)
