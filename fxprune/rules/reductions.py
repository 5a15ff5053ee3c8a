"""Pooling and reductions.

Pooling works on each channel alone: channel dims pass through, zeros stay zeros.
A reduction *over* a channel dim is a consumption: a sum (or p-norm) ignores zero
channels, so it is exact if they are zero; a mean, max, variance or log-sum-exp over
channels changes when a channel is removed, so those channels are unprunable.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fxprune.labels import TensorLabels

from .common import block_dims, carry, normalize_dim, require_zero, set_nonzero
from .registry import RULES

POOL_MODULES = {
    nn.MaxPool1d: 1, nn.MaxPool2d: 2, nn.MaxPool3d: 3, nn.AvgPool1d: 1, nn.AvgPool2d: 2, nn.AvgPool3d: 3,
    nn.AdaptiveAvgPool1d: 1, nn.AdaptiveAvgPool2d: 2, nn.AdaptiveAvgPool3d: 3, nn.AdaptiveMaxPool1d: 1,
    nn.AdaptiveMaxPool2d: 2, nn.AdaptiveMaxPool3d: 3, nn.Upsample: 0, nn.UpsamplingNearest2d: 2,
    nn.UpsamplingBilinear2d: 2, nn.ZeroPad1d: 1, nn.ZeroPad2d: 2, nn.ZeroPad3d: 3,
}
POOL_FUNCTIONS = {
    F.max_pool1d: 1, F.max_pool2d: 2, F.max_pool3d: 3, F.avg_pool1d: 1, F.avg_pool2d: 2, F.avg_pool3d: 3,
    F.adaptive_avg_pool1d: 1, F.adaptive_avg_pool2d: 2, F.adaptive_avg_pool3d: 3, F.adaptive_max_pool1d: 1,
    F.adaptive_max_pool2d: 2, F.adaptive_max_pool3d: 3, F.interpolate: 0, F.upsample: 0,
}


def _spatial_op(ctx, node, n_spatial: int):
    """Leading (batch, channel) dims pass through; the trailing spatial dims are resized."""
    x = ctx.labels(node.args[0])
    val = ctx.meta_value(node)
    if isinstance(val, tuple):  # max pool with return_indices: indices are not values
        vals = val
        out = _spatial_op_shape(ctx, node, x, tuple(vals[0].shape), n_spatial)
        return (out, TensorLabels.blank(vals[1].shape))
    return _spatial_op_shape(ctx, node, x, ctx.out_shape(node), n_spatial)


def _spatial_op_shape(ctx, node, x, out_shape, n_spatial):
    if x is None:
        return TensorLabels.blank(out_shape)
    if n_spatial == 0:  # interpolate / upsample: every dim after (N, C)
        n_spatial = max(x.ndim - 2, 1)
    lead = x.ndim - n_spatial
    if x.dims[lead:].count(None) < x.ndim - lead:  # (some dim after ``lead`` carries channels)
        block_dims(ctx, x, range(lead, x.ndim), f"{ctx.describe(node)} treats a channel dim as spatial")
    return carry(x, out_shape, {d: d for d in range(lead)})


for _cls, _n in POOL_MODULES.items():
    RULES.module(_cls)(lambda ctx, node, _n=_n: _spatial_op(ctx, node, _n))
for _fn, _n in POOL_FUNCTIONS.items():
    RULES.function(_fn)(lambda ctx, node, _n=_n: _spatial_op(ctx, node, _n))


@RULES.function(F.pad)
def _pad(ctx, node):
    x = ctx.labels(node.args[0])
    pad = ctx.arg(node, 1, "pad")
    value = ctx.arg(node, 3, "value", None)
    out = _spatial_op_shape(ctx, node, x, ctx.out_shape(node), len(pad) // 2)
    if value not in (None, 0, 0.0) and x is not None:
        out = set_nonzero(out, out.labeled(), ctx.code(node))
    return out


# Padding modules pad the last len(padding) // 2 dims.  Reflecting, replicating or wrapping a
# zero channel leaves it zero; a constant pad with a non-zero value does not.
PAD_MODULES = (nn.ReflectionPad1d, nn.ReflectionPad2d, nn.ReflectionPad3d, nn.ReplicationPad1d,
               nn.ReplicationPad2d, nn.ReplicationPad3d, nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d,
               nn.CircularPad1d, nn.CircularPad2d, nn.CircularPad3d)


@RULES.module(*PAD_MODULES)
def _pad_module(ctx, node):
    m = ctx.module(node)
    x = ctx.labels(node.args[0])
    out = _spatial_op_shape(ctx, node, x, ctx.out_shape(node), len(m.padding) // 2)
    if getattr(m, "value", 0) != 0 and x is not None:
        out = set_nonzero(out, out.labeled(), ctx.code(node))
    return out


SUM_LIKE = {torch.sum: "sum", "sum": "sum", torch.norm: "sum", "norm": "sum", torch.linalg.vector_norm: "sum",
            torch.nansum: "sum", "nansum": "sum"}
CHANNEL_SENSITIVE = {torch.mean: "mean", "mean": "mean", torch.amax: "max", "amax": "max", torch.amin: "min",
                     "amin": "min", torch.var: "variance", "var": "variance", torch.std: "std", "std": "std",
                     torch.logsumexp: "log-sum-exp", "logsumexp": "log-sum-exp", torch.max: "max", "max": "max",
                     torch.min: "min", "min": "min", torch.prod: "product", "prod": "product"}


def _zero_blind_order(order) -> bool:
    """A norm order for which a zero entry adds nothing: p > 0 (∞ included), p = 0 (a count), Frobenius."""
    if order is None or order == "fro":
        return True
    return isinstance(order, (int, float)) and not isinstance(order, bool) and order >= 0


def _reduce(ctx, node):
    x = ctx.labels(node.args[0])
    val = ctx.meta_value(node)
    kind = SUM_LIKE.get(node.target) or CHANNEL_SENSITIVE.get(node.target)
    if x is None:
        from passes.channel_analysis import blank_like

        return blank_like(val)
    dim_arg = ctx.arg(node, 1, "dim")  # (or NumPy's axis=)
    if kind in ("max", "min") and (isinstance(dim_arg, torch.fx.Node) or not isinstance(dim_arg, (int, list, tuple))):
        if dim_arg is not None:  # torch.max(a, b) is elementwise
            from passes.channel_analysis import unknown_op

            return unknown_op(ctx, node)
    if kind == "sum" and node.target in (torch.norm, "norm", torch.linalg.vector_norm):
        dim_arg = ctx.arg(node, 2, "dim")
        order = ctx.arg(node, 1, "ord", 2) if node.target is torch.linalg.vector_norm else ctx.arg(node, 1, "p", "fro")
        if not _zero_blind_order(order):
            kind = f"norm of order {order}"  # min-like: a zero entry changes it
    if dim_arg is None:
        reduced = list(range(x.ndim))
    else:
        dims = dim_arg if isinstance(dim_arg, (list, tuple)) else [dim_arg]
        reduced = sorted(normalize_dim(d, x.ndim) for d in dims)
    for d in reduced:
        lab = x.dims[d]
        if lab is None:
            continue
        if kind == "sum":
            require_zero(ctx, lab, node, "the sum")
        else:
            ctx.atoms.block(lab.atoms, f"{ctx.describe(node)} takes the {kind} over these channels")
    first = val[0] if isinstance(val, tuple) else val
    keepdim = first.ndim == x.ndim  # read from the shapes: every spelling of keepdim agrees
    kept = [d for d in range(x.ndim) if keepdim or d not in reduced]
    out = carry(x, tuple(first.shape), {o: i for o, i in enumerate(kept)} if not keepdim else
                {d: d for d in range(x.ndim) if d not in reduced})
    if kind == "log-sum-exp":
        out = set_nonzero(out, out.labeled(), ctx.code(node))
    if isinstance(val, tuple):  # (values, indices)
        return (out, TensorLabels.blank(val[1].shape))
    return out


RULES.function(*[k for k in list(SUM_LIKE) + list(CHANNEL_SENSITIVE) if not isinstance(k, str)])(_reduce)
RULES.method(*[k for k in list(SUM_LIKE) + list(CHANNEL_SENSITIVE) if isinstance(k, str)])(_reduce)
