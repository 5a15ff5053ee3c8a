"""Ops that assemble, cut or inspect tensors: cat/stack, split/chunk, indexing, sizes."""
from __future__ import annotations

import builtins
import operator

import numpy as np
import torch
import torch.fx as fx

from fxprune.labels import DimLabel, SizeTaint, TensorLabels

from .common import ADD, elementwise, normalize_dim
from .elementwise import compare_tensors
from .registry import RULES


def _concat_labels(parts: list[TensorLabels | None], shapes: list[tuple[int, ...]], dim: int) -> DimLabel | None:
    if all(p is None or p.dims[dim] is None for p in parts):
        return None
    atoms, nonzero = [], []
    for p, shape in zip(parts, shapes):
        lab = p.dims[dim] if p is not None else None
        if lab is None:  # an untracked piece: its indices carry no channel
            atoms.append(np.full(shape[dim], -1, dtype=np.int64))
            nonzero.append(np.zeros(shape[dim], dtype=np.int64))
        else:
            atoms.append(lab.atoms)
            nonzero.append(lab.nonzero)
    return DimLabel(np.concatenate(atoms), np.concatenate(nonzero))


def _tensor_list(ctx, node):
    tensors = ctx.arg(node, 0, "tensors")
    if isinstance(tensors, fx.Node):  # the tuple a split/chunk/unbind returned, passed on whole
        parts = ctx.value(tensors)
        vals = tensors.meta["val"]
        parts = list(parts) if isinstance(parts, (tuple, list)) else [None] * len(vals)
        return tensors, [p if isinstance(p, TensorLabels) else None for p in parts], [tuple(v.shape) for v in vals]
    return tensors, [ctx.labels(t) for t in tensors], [tuple(t.meta["val"].shape) for t in tensors]


@RULES.function(torch.cat, torch.concat, torch.concatenate)
def _cat(ctx, node):
    tensors, parts, shapes = _tensor_list(ctx, node)
    out_shape = ctx.out_shape(node)
    dim = normalize_dim(ctx.arg(node, 1, "dim", 0), len(out_shape))
    # every dim but the cat dim is aligned across the pieces, like an elementwise op
    others = [p.replace(dim, None) if p is not None else 1 for p in parts]
    out = elementwise(ctx, node, others, ADD, out_shape)
    return out.replace(dim, _concat_labels(parts, shapes, dim))


@RULES.function(torch.stack)
def _stack(ctx, node):
    tensors, parts, _ = _tensor_list(ctx, node)
    out_shape = ctx.out_shape(node)
    dim = normalize_dim(ctx.arg(node, 1, "dim", 0), len(out_shape))
    expanded = []
    for p in parts:
        if p is None:
            expanded.append(1)
            continue
        dims = list(p.dims)
        dims.insert(dim, None)
        shape = list(p.shape)
        shape.insert(dim, 1)
        expanded.append(TensorLabels(tuple(shape), tuple(dims)))
    return elementwise(ctx, node, expanded, ADD, out_shape)


def _pieces(ctx, node, x: TensorLabels | None, dim: int, sizes: list[int]):
    outs = []
    start = 0
    for size in sizes:
        shape = list(x.shape)
        shape[dim] = size
        lab = x.dims[dim]
        piece = TensorLabels(tuple(shape), x.dims).replace(dim, lab.take(slice(start, start + size)) if lab else None)
        outs.append(piece)
        start += size
    return tuple(outs)


def _op_name(node) -> str:
    return node.target if isinstance(node.target, str) else node.target.__name__


def _split_like(ctx, node):
    x = ctx.labels(node.args[0])
    vals = ctx.meta_value(node)
    if x is None:
        return tuple(TensorLabels.blank(v.shape) for v in vals)
    name = _op_name(node)
    dim_arg = ctx.arg(node, 2, "dim", 0) if name != "unbind" else ctx.arg(node, 1, "dim", 0)
    dim = normalize_dim(dim_arg, x.ndim)
    if name == "unbind":
        if x.dims[dim] is not None:
            ctx.atoms.block(x.dims[dim].atoms, f"{ctx.describe(node)} takes single channels apart")
        dims = [lab for d, lab in enumerate(x.dims) if d != dim]
        return tuple(TensorLabels(tuple(v.shape), tuple(dims)) for v in vals)
    return _pieces(ctx, node, x, dim, [int(v.shape[dim]) for v in vals])


def _rewrite_split(rw, node):
    """split/chunk along a channel dim become ``torch.split`` with the pruned piece sizes."""
    x_labels: TensorLabels = rw.input_labels(node)
    outs = node.meta["fxprune.channels"]
    if _op_name(node) == "unbind":
        return  # the analysis kept the unbound dim whole: its pieces have no channel dim left to resize
    dim = normalize_dim(rw.arg(node, 2, "dim", 0), x_labels.ndim)
    if x_labels.dims[dim] is None:
        return
    sizes = [rw.kept_count(o.dims[dim]) for o in outs]
    node.op, node.target = "call_function", torch.split
    node.args, node.kwargs = (node.args[0], sizes, dim), {}


RULES.function(torch.split, torch.chunk, torch.tensor_split, torch.unbind, rewrite=_rewrite_split)(_split_like)
RULES.method("split", "chunk", "tensor_split", "unbind", rewrite=_rewrite_split)(_split_like)


def _index_items(index, ndim):
    """Expand an index (int/slice/None/Ellipsis or a tuple of them) to per-item kinds."""
    items = list(index) if isinstance(index, tuple) else [index]
    n_consuming = sum(1 for it in items if it is not None and it is not Ellipsis)
    out = []
    for it in items:
        if it is Ellipsis:
            out.extend([slice(None)] * (ndim - n_consuming))
        else:
            out.append(it)
    while sum(1 for it in out if it is not None) < ndim:
        out.append(slice(None))
    return out


def _constant_bounds(it: slice) -> bool:
    return all(isinstance(v, (int, type(None))) for v in (it.start, it.stop, it.step))


def _getitem(ctx, node):
    container, index = node.args
    value = ctx.value(container)
    if isinstance(value, (tuple, list)):  # picking from split outputs, sizes, module tuples
        if isinstance(index, slice):
            return tuple(value[index])
        return value[index] if isinstance(index, int) and -len(value) <= index < len(value) else None
    if isinstance(value, SizeTaint):
        return value
    x = value if isinstance(value, TensorLabels) else None
    from passes.channel_analysis import size_taints_in

    for taint in size_taints_in(ctx.value(index)):  # x[..., :C]: the bound would follow the pruned width
        ctx.atoms.block(taint.atoms, f"a channel count is used as an index bound by {ctx.describe(node)}")
    if not ctx.is_tensor(node):
        return None
    out_shape = ctx.out_shape(node)
    if x is None:
        return TensorLabels.blank(out_shape)
    if isinstance(index, fx.Node) or (isinstance(index, tuple) and any(isinstance(i, (fx.Node, list)) for i in index)):
        ctx.block_value(x, f"{ctx.describe(node)} indexes with a tensor")
        return TensorLabels.blank(out_shape)
    items = _index_items(index, x.ndim)
    dims: list[DimLabel | None] = []
    d = 0
    for it in items:
        if it is None:
            dims.append(None)
            continue
        lab = x.dims[d]
        if isinstance(it, int):
            if lab is not None:
                ctx.atoms.block(lab.atoms, f"{ctx.describe(node)} picks single channels")
        elif isinstance(it, slice):
            if lab is not None:
                if not _constant_bounds(it):
                    ctx.atoms.block(lab.atoms, f"{ctx.describe(node)} slices channels with run-time bounds")
                    lab = None
                elif it.step not in (None, 1):
                    ctx.atoms.block(lab.atoms, f"{ctx.describe(node)} slices channels with a step")
                    lab = None
                else:
                    lab = lab.take(np.arange(lab.size)[it])
            dims.append(lab)
        else:
            ctx.block_value(x, f"{ctx.describe(node)} indexes channels in a way fxprune cannot follow")
            return TensorLabels.blank(out_shape)
        d += 1
    if len(dims) != len(out_shape):
        ctx.block_value(x, f"{ctx.describe(node)} indexes channels in a way fxprune cannot follow")
        return TensorLabels.blank(out_shape)
    return TensorLabels(tuple(out_shape), tuple(lab if lab is None or lab.size == s else None
                                                for lab, s in zip(dims, out_shape)))


_getitem.handles_sizes = True  # indexing a shape tuple passes its taint on; tensor index bounds are blocked above


def _rewrite_getitem(rw, node):
    """Slices over channel dims get bounds that count only the kept channels."""
    x_labels = rw.input_labels(node)
    if not isinstance(x_labels, TensorLabels):
        return
    index = node.args[1]
    items = _index_items(index, x_labels.ndim)
    new_items, d, changed = [], 0, False
    for it in items:
        if it is None:
            new_items.append(it)
            continue
        lab = x_labels.dims[d]
        # (slices with run-time bounds or a step blocked their channels: nothing to recount)
        if isinstance(it, slice) and lab is not None and it != slice(None) and _constant_bounds(it) \
                and it.step in (None, 1):
            kept = rw.kept(lab)
            start, stop, _ = it.indices(lab.size)
            new = slice(int(kept[:start].sum()), int(kept[:stop].sum()))
            changed |= new != it
            it = new
        new_items.append(it)
        d += 1
    if changed:
        node.args = (node.args[0], tuple(new_items))


RULES.function(operator.getitem, rewrite=_rewrite_getitem)(_getitem)


def _size(ctx, node):
    x = ctx.labels(node.args[0])
    dim = ctx.arg(node, 1, "dim")
    if x is None:
        return None
    taints = tuple(SizeTaint(lab.atoms) if lab is not None else None for lab in x.dims)
    if dim is None:
        return taints
    return taints[normalize_dim(dim, x.ndim)]


RULES.method("size")(_size)


@RULES.function(builtins.getattr)
def _getattr(ctx, node):
    x = ctx.labels(node.args[0])
    if node.args[1] == "shape" and x is not None:
        return tuple(SizeTaint(lab.atoms) if lab is not None else None for lab in x.dims)
    if node.args[1] in ("shape", "dtype", "device", "ndim", "is_cuda", "requires_grad"):
        return None
    if x is not None:
        ctx.block_value(x, f"{ctx.describe(node)} reads tensor attribute '{node.args[1]}'")
    return None


@RULES.method("dim")
def _dim(ctx, node):
    return None


@RULES.method("numel")
def _numel(ctx, node):
    x = ctx.labels(node.args[0])
    return SizeTaint(x.all_atoms()) if x is not None and x.labeled() else None


@RULES.function(torch._assert)
def _assert(ctx, node):
    ctx.block_value(ctx.value(node.args[0]), f"a channel count is checked by {ctx.describe(node)}")
    return None


def _compare(ctx, node):
    if ctx.is_tensor(node):
        return compare_tensors(ctx, node)
    # comparing a channel count to a constant would give another answer after pruning
    ctx.block_value(ctx.value(node.args), f"a channel count is compared by {ctx.describe(node)}")
    return None


RULES.function(operator.eq, operator.ne, operator.lt, operator.le, operator.gt, operator.ge)(_compare)
