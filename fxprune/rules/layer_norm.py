"""LayerNorm (``nn.LayerNorm`` and ``F.layer_norm``), pruned exactly.

LayerNorm normalises each position over its last k dims with statistics of all
N entries there.  A zeroed channel is exactly zero at its input and (its scale and
shift being producers of the ZIG) exactly zero at its output, but it still counts
in the statistics: a plain smaller LayerNorm over the N' kept entries would divide
by N' and change every other channel.  So when a rewrite removes entries, the node
becomes the same normalisation written out in standard ops, with the statistics
still over N entries of which N − N' are zeros:

    mean = Σ x / N
    var  = (Σ (x − mean)² + (N − N')·mean²) / N
    y    = (x − mean) · rsqrt(var + eps) · weight + bias

A removed entry must be exactly zero, so channels that are not zero when zeroed
(after a sigmoid, say) are unprunable here.  Without a scale the zero channel's
output is −mean/σ, not zero: those channels keep a non-zero mark.
"""
from __future__ import annotations

import math
import operator

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from fxprune.labels import TensorLabels
from fxprune.layout import PRODUCER

from .common import CONST, KEEP, elementwise, require_zero, set_nonzero, stored_or_absent
from .registry import RULES


def _layer_norm_channels(ctx, node, x: TensorLabels | None, n_normalized: int, weight: str | None,
                         bias: str | None) -> TensorLabels | None:
    """Labels of a LayerNorm over the last ``n_normalized`` dims, for the module and the function alike.

    ``weight``/``bias``: qualified names of the stored scale and shift, None when absent.
    """
    # Positions are normalised independently: an all-zero position comes out as the shift.
    out = elementwise(ctx, node, [x], CONST if bias is not None else KEEP)
    if x is None:
        return out
    first = x.ndim - n_normalized
    for d in range(first, x.ndim):
        lab = x.dims[d]
        if lab is None:
            for name in (weight, bias):
                if name is not None:
                    ctx.block_if_shared(name, d - first, node)
            continue
        require_zero(ctx, lab, node, "the layer norm")  # a removed entry must be an exact zero in the statistics
        for name in (weight, bias):
            if name is not None:
                ctx.atoms.unify(lab.atoms, ctx.param_atoms(name, d - first, PRODUCER, like=lab.atoms),
                                ctx.describe(node))
    return set_nonzero(out, range(first, x.ndim), 0 if weight is not None else ctx.code(node))


def _normalized_count(shape) -> int:
    return 1 if isinstance(shape, int) else len(shape)


def _layer_norm(ctx, node):
    m = ctx.module(node)
    weight = f"{node.target}.weight" if m.weight is not None else None
    bias = f"{node.target}.bias" if m.bias is not None else None
    return _layer_norm_channels(ctx, node, ctx.labels(node.args[0]), len(m.normalized_shape), weight, bias)


def _functional_layer_norm(ctx, node):
    from passes.channel_analysis import unknown_op

    stored = [ctx.arg(node, i, k) for i, k in ((2, "weight"), (3, "bias"))]
    if not node.args or not stored_or_absent(*stored):
        return unknown_op(ctx, node)  # a computed scale or shift: nothing says how its entries couple
    weight, bias = (None if t is None else t.target for t in stored)
    shape = ctx.arg(node, 1, "normalized_shape")
    if isinstance(shape, torch.fx.Node):  # e.g. x.shape[1:], computed in the graph: its length is its value's
        shape = ctx.value(shape)
        if not isinstance(shape, (tuple, list)):
            return unknown_op(ctx, node)
    n = _normalized_count(shape)
    return _layer_norm_channels(ctx, node, ctx.labels(node.args[0]), n, weight, bias)


# (x.shape[-1],) as normalized_shape: the rewrite writes the statistics out with the dense entry count
_functional_layer_norm.handles_sizes = True


# ----- rewrite ------------------------------------------------------------------------------


def _normalized_shapes(rw, node, n_normalized: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The normalised dims' sizes in the dense model and in the compact one."""
    labels: TensorLabels | None = rw.input_labels(node)
    shape = rw.input_shape(node)
    dense = shape[len(shape) - n_normalized:]
    if labels is None:
        return dense, dense
    compact = tuple(size if lab is None else rw.kept_count(lab)
                    for size, lab in zip(dense, labels.dims[len(shape) - n_normalized:]))
    return dense, compact


def _write_exact_layer_norm(rw, node: fx.Node, n_normalized: int, total: int, kept: int,
                            weight: fx.Node | None, bias: fx.Node | None, eps: float) -> None:
    """Replace ``node`` by the LayerNorm over ``total`` entries of which ``total - kept`` are removed zeros."""
    graph = node.graph
    x = node.args[0]
    dtype = x.meta["val"].dtype
    low_precision = dtype in (torch.float16, torch.bfloat16)  # like the kernel: statistics in float32
    dims = tuple(range(-n_normalized, 0))

    def op(fn, *args, **kwargs):
        return graph.call_function(fn, args, kwargs)

    with graph.inserting_before(node):
        xs = graph.call_method("float", (x,)) if low_precision else x
        mean = op(operator.truediv, op(torch.sum, xs, dims, keepdim=True), total)
        centered = op(operator.sub, xs, mean)
        squares = op(torch.sum, op(operator.mul, centered, centered), dims, keepdim=True)
        # each removed entry is an exact zero: it adds (0 - mean)² to the sum of squares
        squares = op(operator.add, squares, op(operator.mul, op(operator.mul, mean, mean), float(total - kept)))
        inv_std = op(torch.rsqrt, op(operator.add, op(operator.truediv, squares, total), eps))
        y = op(operator.mul, centered, inv_std)
        if weight is not None:
            y = op(operator.mul, y, weight)
        if bias is not None:
            y = op(operator.add, y, bias)
        if low_precision:
            y = graph.call_method("to", (y, dtype))
    rw.replace(node, y)


def _rewrite_layer_norm(rw, node):
    m = rw.module(node)
    n = len(m.normalized_shape)
    dense, compact = _normalized_shapes(rw, node, n)
    if compact == dense:
        return
    m.normalized_shape = compact  # the module stays as the holder of its (sliced) scale and shift
    graph = node.graph
    with graph.inserting_before(node):
        weight = graph.get_attr(f"{node.target}.weight") if m.weight is not None else None
        bias = graph.get_attr(f"{node.target}.bias") if m.bias is not None else None
    _write_exact_layer_norm(rw, node, n, math.prod(dense), math.prod(compact), weight, bias, m.eps)


def _rewrite_functional_layer_norm(rw, node):
    n = _normalized_count(rw.arg(node, 1, "normalized_shape"))
    dense, compact = _normalized_shapes(rw, node, n)
    if compact == dense:
        return
    _write_exact_layer_norm(rw, node, n, math.prod(dense), math.prod(compact), rw.arg(node, 2, "weight"),
                            rw.arg(node, 3, "bias"), rw.arg(node, 4, "eps", 1e-5))


RULES.module(nn.LayerNorm, rewrite=_rewrite_layer_norm)(_layer_norm)
RULES.function(F.layer_norm, rewrite=_rewrite_functional_layer_norm)(_functional_layer_norm)
