"""Matrix products, softmax and attention.

A matmul contracts the last dim of its left operand with the second-to-last of its
right operand: those channels are consumed (exact if zero), batch dims align like an
elementwise op.  Softmax over a channel dim is channel-sensitive.  Scaled-dot-product
attention contracts the head dim like a matmul; its default scale 1/sqrt(head_dim)
reads the head dim's size, so the rewrite passes the dense model's scale explicitly.
``nn.MultiheadAttention`` is in multihead_attention.py.
"""
from __future__ import annotations

import math
import operator

import torch
import torch.nn.functional as F
from torch import nn

from fxprune.labels import TensorLabels

from .common import ADD, CONST, block_dims, elementwise, normalize_dim, require_product_zero
from .registry import RULES


def _strip(x: TensorLabels, keep_last: int) -> TensorLabels:
    """Labels of the batch dims only (the last ``keep_last`` dims replaced by size-1 untracked dims)."""
    shape = x.shape[: x.ndim - keep_last] + (1,) * keep_last
    dims = x.dims[: x.ndim - keep_last] + (None,) * keep_last
    return TensorLabels(shape, dims)


@RULES.function(operator.matmul, torch.matmul, torch.bmm)
@RULES.method("matmul", "bmm", "__matmul__")
def _matmul(ctx, node):
    a, b = ctx.value(node.args[0]), ctx.value(node.args[1])
    out_shape = ctx.out_shape(node)
    a_shape = tuple(node.args[0].meta["val"].shape)
    b_shape = tuple(node.args[1].meta["val"].shape)
    if len(a_shape) < 2 or len(b_shape) < 2 or not isinstance(a, TensorLabels) or not isinstance(b, TensorLabels):
        from passes.channel_analysis import unknown_op

        return unknown_op(ctx, node)
    # contraction: a[..., k] * b[..., k, :], zero if either side is zero
    ka, kb = a.dims[-1], b.dims[-2]
    if ka is not None and kb is not None:
        ctx.atoms.unify(ka.atoms, kb.atoms, f"{ctx.describe(node)} contraction")
        require_product_zero(ctx, node, [ka, kb], "product")
    elif (ka is None) != (kb is None):  # the other operand keeps its full width: nothing may go
        ctx.atoms.block((ka if ka is not None else kb).atoms,
                        f"{ctx.describe(node)} contracts these channels with an untracked dimension")
    batch = elementwise(ctx, node, [_strip(a, 2), _strip(b, 2)], ADD, out_shape[:-2] + (1, 1))
    # a zero row of ``a`` (or column of ``b``) gives a zero row (column) of the product
    dims = list(batch.dims[:-2]) + [a.dims[-2], b.dims[-1]]
    return TensorLabels(tuple(out_shape), tuple(dims))


def _softmax(ctx, node, dim):
    x = ctx.labels(node.args[0])
    out = elementwise(ctx, node, [x], CONST)
    if x is not None and dim is not None:
        block_dims(ctx, x, [normalize_dim(dim, x.ndim)], f"{ctx.describe(node)} normalises over these channels")
    return out


@RULES.function(F.softmax, torch.softmax, F.log_softmax, torch.log_softmax)
@RULES.method("softmax", "log_softmax")
def _softmax_fn(ctx, node):
    return _softmax(ctx, node, ctx.arg(node, 1, "dim"))


@RULES.module(nn.Softmax, nn.LogSoftmax)
def _softmax_module(ctx, node):
    return _softmax(ctx, node, ctx.module(node).dim)


def _sdpa_scale(node):
    return node.kwargs.get("scale", node.args[6] if len(node.args) > 6 else None)


def _sdpa(ctx, node):
    q, k, v = (ctx.labels(a) for a in node.args[:3])
    out_shape = ctx.out_shape(node)
    # an attention mask (or anything else passed along) is read whole: its channels stay
    extras = list(node.args[3:6]) + [v for key, v in node.kwargs.items() if key not in ("scale", "is_causal",
                                                                                       "dropout_p", "enable_gqa")]
    ctx.block_value(ctx.value(extras), f"{ctx.describe(node)} reads this tensor whole")
    # q·k over the head dim: a removed pair is zero on one side at least.  The default scale
    # 1/sqrt(head_dim) is written in explicitly by the rewrite, so it stays the dense one.
    if q is not None and k is not None and q.dims[-1] is not None and k.dims[-1] is not None:
        ctx.atoms.unify(q.dims[-1].atoms, k.dims[-1].atoms, "attention head dim")
        require_product_zero(ctx, node, [q.dims[-1], k.dims[-1]], "product")
    else:
        for t in (q, k):
            if t is not None and t.dims[-1] is not None:
                ctx.atoms.block(t.dims[-1].atoms, f"{ctx.describe(node)} contracts these channels with an "
                                                  "untracked dimension")
    # keys/values: softmax over the key axis makes removed tokens matter
    for t in (k, v):
        block_dims(ctx, t, [t.ndim - 2] if t is not None else [], f"{ctx.describe(node)} attends over these channels")
    batch = elementwise(ctx, node, [_strip(t, 2) for t in (q, k, v) if t is not None], ADD, out_shape[:-2] + (1, 1))
    dims = list(batch.dims[:-2]) + [q.dims[-2] if q is not None else None, v.dims[-1] if v is not None else None]
    if dims[-2] is not None:
        dims[-2] = dims[-2].with_nonzero(ctx.code(node))
    return TensorLabels(tuple(out_shape), tuple(dims))


def _rewrite_sdpa(rw, node):
    """A default scale reads the (now smaller) head dim: pass the dense model's 1/sqrt(head_dim)."""
    q_labels = rw.input_labels(node)
    if _sdpa_scale(node) is not None or not isinstance(q_labels, TensorLabels) or q_labels.dims[-1] is None:
        return
    if rw.kept_count(q_labels.dims[-1]) != q_labels.shape[-1]:
        node.kwargs = {**node.kwargs, "scale": 1.0 / math.sqrt(q_labels.shape[-1])}


RULES.function(F.scaled_dot_product_attention, rewrite=_rewrite_sdpa)(_sdpa)
