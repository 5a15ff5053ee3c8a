"""``nn.MultiheadAttention``: whole heads and the embedding channels around it are prunable.

Three kinds of channels meet in the module:

* its input channels (the last dim of query, key and value) are consumed by the
  columns of ``in_proj_weight``: exact to remove when they are zero;
* each head is one ZIG: its rows of the q, k and v projections (and biases) are
  producers, its columns of ``out_proj.weight`` consumers.  A zeroed head has
  q = k = 0, so uniform attention over v = 0: it adds exactly nothing;
* its output channels are produced by the rows of ``out_proj`` (weight and bias).

A standard ``nn.MultiheadAttention`` cannot express an input or output width that
differs from ``num_heads × head_dim``, so when anything was removed the rewrite writes
the attention out in standard ops: the projections as ``F.linear`` on the module's
(sliced) parameters, ``F.scaled_dot_product_attention`` with the original
1/sqrt(head_dim) scale, then ``out_proj``.  Calls the rewrite cannot reproduce
exactly (masks, causal hints, cross-width key/value projections, extra key/value
biases, zero attention, used attention weights) keep every channel they touch.
"""
from __future__ import annotations

import math
import operator

import numpy as np
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from fxprune.labels import DimLabel, TensorLabels
from fxprune.layout import CONSUMER, PRODUCER

from .common import block_dims, require_zero
from .registry import RULES

_INPUTS = ("query", "key", "value")
_OPTIONS = ("key_padding_mask", "need_weights", "attn_mask", "average_attn_weights", "is_causal")


def _call_inputs(node: fx.Node) -> dict:
    """The call's arguments by name (forward(query, key, value, key_padding_mask, need_weights, ...))."""
    named = dict(zip(_INPUTS + _OPTIONS, node.args))
    named.update(node.kwargs)
    return named


def _unsupported(node: fx.Node, m: nn.MultiheadAttention) -> str | None:
    """Why the rewrite could not reproduce this call exactly, or None."""
    if not m._qkv_same_embed_dim:
        return "projects key/value from another width (kdim/vdim)"
    if m.bias_k is not None or m.add_zero_attn:
        return "adds a key/value bias or zero attention"
    args = _call_inputs(node)
    if any(args.get(k) is not None for k in ("key_padding_mask", "attn_mask")):
        return "is called with a mask"
    if args.get("is_causal", False) is not False:
        return "is called with is_causal"
    for name in _INPUTS:
        x = args.get(name)
        val = x.meta.get("val") if isinstance(x, fx.Node) else None
        if not isinstance(val, torch.Tensor) or val.ndim != 3:
            return "is called on unbatched or non-tensor inputs"
    for user in node.users:
        if user.op != "call_function" or user.target is not operator.getitem or user.args[1] not in (0, 1):
            return "has its output tuple used whole"
        if user.args[1] == 1 and user.users:
            return "has its attention weights used"
    return None


def _multihead_attention(ctx, node):
    m = ctx.module(node)
    args = _call_inputs(node)
    inputs = [ctx.labels(args.get(k)) for k in _INPUTS]
    out_val = ctx.meta_value(node)
    why = _unsupported(node, m)
    if why is not None:
        from passes.channel_analysis import blank_like

        ctx.block_value(inputs, f"{ctx.describe(node)} {why}")
        return blank_like(out_val)
    t = node.target
    embed, heads = m.embed_dim, m.num_heads
    head_dim = embed // heads
    # input channels: consumed by the projection columns, whichever of query/key/value they come from
    columns = ctx.param_atoms(f"{t}.in_proj_weight", 1, CONSUMER)
    for x in inputs:
        block_dims(ctx, x, range(x.ndim - 1) if x is not None else [],
                   f"{ctx.describe(node)} attends across these channels")
        lab = x.dims[-1] if x is not None else None
        if lab is None:
            ctx.atoms.block(columns, f"{ctx.describe(node)} reads untracked channels")
            continue
        ctx.atoms.unify(lab.atoms, columns, ctx.describe(node))
        require_zero(ctx, lab, node, "the attention projection")
    # heads: row r of in_proj (q, k or v part) belongs to head (r mod E) // head_dim
    rows = ctx.param_atoms(f"{t}.in_proj_weight", 0, PRODUCER)
    head_first_row = (np.arange(3 * embed) % embed) // head_dim * head_dim
    ctx.atoms.unify(rows, rows[head_first_row], "attention head")
    if m.in_proj_bias is not None:
        ctx.atoms.unify(rows, ctx.param_atoms(f"{t}.in_proj_bias", 0, PRODUCER, like=rows), "attention head")
    v_rows = rows[2 * embed:]
    ctx.atoms.unify(v_rows, ctx.param_atoms(f"{t}.out_proj.weight", 1, CONSUMER, like=v_rows), "attention head")
    # output channels: the rows of out_proj
    out_rows = ctx.param_atoms(f"{t}.out_proj.weight", 0, PRODUCER)
    if m.out_proj.bias is not None:
        ctx.atoms.unify(out_rows, ctx.param_atoms(f"{t}.out_proj.bias", 0, PRODUCER, like=out_rows), ctx.describe(node))
    out_shape = tuple(out_val[0].shape)
    out = TensorLabels(out_shape, (None,) * (len(out_shape) - 1) + (DimLabel(out_rows, np.zeros(embed, np.int64)),))
    weights = out_val[1]
    return out, (TensorLabels.blank(weights.shape) if isinstance(weights, torch.Tensor) else None)


def _rewrite_multihead_attention(rw, node):
    m = rw.module(node)  # the compact copy: its parameters are already sliced
    head_dim = m.embed_dim // m.num_heads
    kept_rows, width_in = m.in_proj_weight.shape
    width_out = m.out_proj.weight.shape[0]
    if (kept_rows, width_in, width_out) == (3 * m.embed_dim, m.embed_dim, m.embed_dim):
        return
    graph = node.graph
    t = node.target
    args = _call_inputs(node)
    query, key, value = (args[k] for k in _INPUTS)
    inner = kept_rows // 3  # kept heads × head_dim

    def op(fn, *a, **kw):
        return graph.call_function(fn, a, kw)

    def method(name, *a):
        return graph.call_method(name, a)

    with graph.inserting_before(node):
        weight = graph.get_attr(f"{t}.in_proj_weight")
        bias = graph.get_attr(f"{t}.in_proj_bias") if m.in_proj_bias is not None else None
        if not m.batch_first:  # (L, N, E) -> (N, L, E), once per distinct input
            batch_first: dict[fx.Node, fx.Node] = {}
            for x in (query, key, value):
                if x not in batch_first:
                    batch_first[x] = method("transpose", x, 0, 1)
            query, key, value = (batch_first[x] for x in (query, key, value))
        if query is key is value:
            qkv = op(F.linear, query, weight, bias)
            q, k, v = (op(operator.getitem, method("chunk", qkv, 3, -1), i) for i in range(3))
        else:
            q, k, v = (op(F.linear, x, op(operator.getitem, weight, slice(i * inner, (i + 1) * inner)),
                          None if bias is None else op(operator.getitem, bias, slice(i * inner, (i + 1) * inner)))
                       for i, x in enumerate((query, key, value)))
        # (N, L, heads·head_dim) -> (N, heads, L, head_dim)
        q, k, v = (method("transpose", method("unflatten", x, -1, (inner // head_dim, head_dim)), 1, 2)
                   for x in (q, k, v))
        scale = 1.0 / math.sqrt(head_dim)
        if m.dropout > 0:  # a Dropout module follows train()/eval() of the compact model
            m.add_module("attention_dropout", nn.Dropout(m.dropout).train(m.training))
            scores = op(operator.mul, op(operator.matmul, q, method("transpose", k, -2, -1)), scale)
            attention = graph.call_module(f"{t}.attention_dropout", (op(torch.softmax, scores, -1),))
            out = op(operator.matmul, attention, v)
        else:
            out = op(F.scaled_dot_product_attention, q, k, v, scale=scale)
        out = method("flatten", method("transpose", out, 1, 2), 2)
        out_bias = graph.get_attr(f"{t}.out_proj.bias") if m.out_proj.bias is not None else None
        out = op(F.linear, out, graph.get_attr(f"{t}.out_proj.weight"), out_bias)
        if not m.batch_first:
            out = method("transpose", out, 0, 1)
    for user in list(node.users):  # getitem 0 is the output; getitem 1 (weights) is unused
        if user.args[1] == 0:
            rw.replace(user, out)
        else:
            graph.erase_node(user)
    graph.erase_node(node)


RULES.module(nn.MultiheadAttention, rewrite=_rewrite_multihead_attention)(_multihead_attention)
