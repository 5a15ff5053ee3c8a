"""View-like ops: reshape/view/flatten/unflatten/squeeze/unsqueeze, permute/transpose, expand.

Reshapes are analysed from the input and output shapes alone, so every spelling
(``view``, ``reshape``, ``flatten``, ``nn.Flatten``...) shares one rule:
- a dimension kept as is keeps its labels;
- dimensions merged into one (conv -> flatten -> linear) repeat the one channel
  label over the merged run (two channel dims merged into one is a barrier);
- a channel dimension split into several (channel shuffle, heads) keeps the labels
  on its largest factor and ties the channels along the other factors together, so
  that removing a channel keeps the split rectangular.
Size arguments of the labeled dimensions are rewritten in the compact graph.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from fxprune.labels import DimLabel, SizeTaint, TensorLabels

from .common import ADD, block_dims, carry, elementwise, normalize_dim
from .registry import RULES


def dim_groups(ins, outs):
    """Pair runs of input dims with runs of output dims whose sizes multiply to the same number."""
    if 0 in ins or 0 in outs:
        return None
    groups, i, j = [], 0, 0
    while i < len(ins) or j < len(outs):
        if i < len(ins) and j < len(outs) and ins[i] == outs[j]:
            groups.append(([i], [j]))
            i, j = i + 1, j + 1
            continue
        if i < len(ins) and ins[i] == 1:
            groups.append(([i], []))
            i += 1
            continue
        if j < len(outs) and outs[j] == 1:
            groups.append(([], [j]))
            j += 1
            continue
        if i >= len(ins) or j >= len(outs):
            return None
        gi, gj, pi, pj = [i], [j], ins[i], outs[j]
        i, j = i + 1, j + 1
        while pi != pj:
            if pi < pj:
                if i >= len(ins):
                    return None
                gi.append(i)
                pi *= ins[i]
                i += 1
            else:
                if j >= len(outs):
                    return None
                gj.append(j)
                pj *= outs[j]
                j += 1
        groups.append((gi, gj))
    return groups


def _merge(lab: DimLabel, sizes: list[int], pos: int) -> DimLabel:
    shape = [1] * len(sizes)
    shape[pos] = sizes[pos]
    atoms = np.broadcast_to(lab.atoms.reshape(shape), sizes).ravel()
    nonzero = np.broadcast_to(lab.nonzero.reshape(shape), sizes).ravel()
    return DimLabel(atoms, nonzero)


def _split(ctx, node, lab: DimLabel, sizes: list[int]) -> tuple[int, DimLabel | None]:
    atoms = lab.atoms.reshape(sizes)
    if (atoms < 0).any():
        ctx.atoms.block(lab.atoms, f"{ctx.describe(node)} splits a partly untracked channel dimension")
        return 0, None
    carrier = max(range(len(sizes)), key=lambda k: (sizes[k], k))
    rows = np.moveaxis(atoms, carrier, -1).reshape(-1, sizes[carrier])
    nonzero = np.moveaxis(lab.nonzero.reshape(sizes), carrier, -1).reshape(-1, sizes[carrier])
    if rows.shape[0] > 1:  # the channel at index j of every other factor goes with index j
        ctx.atoms.unify(np.tile(rows[0], rows.shape[0] - 1), rows[1:].ravel(), "split")
    return carrier, DimLabel(rows[0], nonzero.max(axis=0))


def reshape_labels(ctx, node, x: TensorLabels | None, out_shape) -> TensorLabels:
    out_shape = tuple(int(s) for s in out_shape)
    out: list[DimLabel | None] = [None] * len(out_shape)
    if x is None or not x.labeled():
        return TensorLabels(out_shape, tuple(out))
    groups = dim_groups(list(x.shape), list(out_shape))
    if groups is None:
        ctx.block_value(x, f"{ctx.describe(node)} reshapes channels in a way fxprune cannot follow")
        return TensorLabels(out_shape, tuple(out))
    for gi, gj in groups:
        labeled = [d for d in gi if x.dims[d] is not None]
        if not labeled:
            continue
        if not gj:
            ctx.atoms.block(x.dims[labeled[0]].atoms, f"{ctx.describe(node)} drops a channel dimension")
        elif len(gi) == 1 and len(gj) == 1:
            out[gj[0]] = x.dims[gi[0]]
        elif len(gj) == 1:
            if len(labeled) > 1:
                for d in labeled:
                    ctx.atoms.block(x.dims[d].atoms, f"{ctx.describe(node)} merges two channel dimensions")
            else:
                out[gj[0]] = _merge(x.dims[labeled[0]], [x.shape[d] for d in gi], gi.index(labeled[0]))
        elif len(gi) == 1:
            carrier, lab = _split(ctx, node, x.dims[gi[0]], [out_shape[d] for d in gj])
            out[gj[carrier]] = lab
        else:
            for d in labeled:
                ctx.atoms.block(x.dims[d].atoms, f"{ctx.describe(node)} regroups a channel dimension")
    return TensorLabels(out_shape, tuple(out))


def _reshape(ctx, node):
    x = ctx.labels(node.args[0])
    out = reshape_labels(ctx, node, x, ctx.out_shape(node))
    # a channel-derived size that ends up in an untracked output dim would go stale after pruning
    sizes = _size_args(node)
    if sizes is not None:
        for d, a in enumerate(sizes):
            v = ctx.value(a)
            if isinstance(v, SizeTaint) and (d >= len(out.dims) or out.dims[d] is None):
                ctx.atoms.block(v.atoms, f"a channel count sets an untracked size in {ctx.describe(node)}")
    return out


def _size_args(node: fx.Node):
    """The shape arguments of view/reshape (varargs or one sequence), or None."""
    args = node.args[1:] if node.op == "call_method" or node.target is torch.reshape else ()
    if node.target is torch.reshape:
        args = (node.args[1],) if len(node.args) > 1 else (node.kwargs.get("shape"),)
    if node.op == "call_method" and not args and "size" in node.kwargs:
        args = (node.kwargs["size"],)
    if node.op == "call_method" and not args and "shape" in node.kwargs:
        args = (node.kwargs["shape"],)
    if len(args) == 1 and isinstance(args[0], (list, tuple)):
        return list(args[0])
    return list(args)


def _mixes_runtime_sizes(arg: fx.Node) -> bool:
    value = arg.meta.get("fxprune.channels")
    return isinstance(value, SizeTaint) and not value.pure


def _channel_derived(arg: fx.Node) -> bool:
    return isinstance(arg.meta.get("fxprune.channels"), SizeTaint)


def _rewrite_reshape(rw, node):
    labels: TensorLabels = node.meta["fxprune.channels"]
    sizes = _size_args(node)
    if not sizes:
        return
    changed = False
    for d, lab in enumerate(labels.dims):
        if lab is None or d >= len(sizes):
            continue
        if isinstance(sizes[d], int) and sizes[d] == -1:
            continue
        # A size computed at run time from channel counts *and* other sizes (n * c, c * h * w)
        # stays symbolic: it follows the compact tensor.  Any other computed size (C // groups,
        # d // heads from an untouched input) may refer to dense counts: the literal is the truth.
        if isinstance(sizes[d], fx.Node) and _mixes_runtime_sizes(sizes[d]):
            continue
        new = rw.kept_count(lab)
        if new == lab.size and isinstance(sizes[d], fx.Node) and not _channel_derived(sizes[d]):
            continue  # nothing removed here, and no channel count feeds the size (e.g. the batch): keep it live
        if new != lab.size or isinstance(sizes[d], fx.Node):
            sizes[d] = new
            changed = True
    if changed:
        node.args = (node.args[0], tuple(sizes))
        node.kwargs = {k: v for k, v in node.kwargs.items() if k not in ("size", "shape")}


_reshape.handles_sizes = True  # channel-count sizes are rewritten (see _rewrite_reshape)
RULES.method("view", "reshape", rewrite=_rewrite_reshape)(_reshape)
RULES.function(torch.reshape, rewrite=_rewrite_reshape)(_reshape)


def _reshape_no_sizes(ctx, node):
    return reshape_labels(ctx, node, ctx.labels(node.args[0]), ctx.out_shape(node))


RULES.function(torch.flatten, torch.squeeze, torch.unsqueeze, torch.ravel)(_reshape_no_sizes)
RULES.method("flatten", "squeeze", "unsqueeze", "ravel")(_reshape_no_sizes)
RULES.module(nn.Flatten)(_reshape_no_sizes)


@RULES.method("view_as", "reshape_as")
def _reshape_as(ctx, node):
    """``x.view_as(other)``: the output takes ``other``'s run-time shape, so each output dim keeps
    exactly as many channels as ``other``'s: both sides' channels there are pruned together, and a
    channel facing an untracked dim on the other side stays."""
    out = reshape_labels(ctx, node, ctx.labels(node.args[0]), ctx.out_shape(node))
    other = ctx.labels(node.args[1])
    reason = f"{ctx.describe(node)} gives its input the shape of a tensor whose channels fxprune cannot follow"
    for d, lab in enumerate(out.dims):
        other_lab = other.dims[d] if other is not None and d < other.ndim else None
        if lab is not None and other_lab is not None:
            ctx.atoms.unify(lab.atoms, other_lab.atoms, reason)
        elif lab is not None or other_lab is not None:
            ctx.atoms.block((lab or other_lab).atoms, reason)
    return out


def _rewrite_unflatten(rw, node):
    labels: TensorLabels = node.meta["fxprune.channels"]
    dim = normalize_dim(rw.arg(node, 1, "dim"), len(rw.input_shape(node)))
    sizes = list(rw.arg(node, 2, "sizes"))
    for k in range(len(sizes)):
        lab = labels.dims[dim + k]
        if lab is not None and sizes[k] != -1:
            sizes[k] = rw.kept_count(lab)
    args = list(node.args)
    if len(args) > 2:
        args[2] = tuple(sizes)
    else:
        node.kwargs = {**node.kwargs, "sizes": tuple(sizes)}
    node.args = tuple(args)


RULES.function(torch.unflatten, rewrite=_rewrite_unflatten)(_reshape_no_sizes)
RULES.method("unflatten", rewrite=_rewrite_unflatten)(_reshape_no_sizes)


def _rewrite_unflatten_module(rw, node):
    labels: TensorLabels = node.meta["fxprune.channels"]
    m = rw.module(node)
    dim = normalize_dim(m.dim, len(rw.input_shape(node)))
    m.unflattened_size = tuple(
        rw.kept_count(labels.dims[dim + k]) if labels.dims[dim + k] is not None else s
        for k, s in enumerate(m.unflattened_size)
    )


RULES.module(nn.Unflatten, rewrite=_rewrite_unflatten_module)(_reshape_no_sizes)


def _permute_labels(x: TensorLabels | None, out_shape, order) -> TensorLabels:
    mapping = {o: i for o, i in enumerate(order)}
    return carry(x, out_shape, mapping)


@RULES.method("permute")
@RULES.function(torch.permute)
def _permute(ctx, node):
    x = ctx.labels(node.args[0])
    dims = node.args[1:] if node.op == "call_method" else (node.args[1] if len(node.args) > 1 else node.kwargs["dims"],)
    if len(dims) == 1 and isinstance(dims[0], (list, tuple)):
        dims = dims[0]
    if not dims and "dims" in node.kwargs:
        dims = node.kwargs["dims"]
    ndim = len(ctx.out_shape(node))
    return _permute_labels(x, ctx.out_shape(node), [normalize_dim(d, ndim) for d in dims])


@RULES.method("transpose", "swapaxes", "swapdims")
@RULES.function(torch.transpose, torch.swapaxes, torch.swapdims)
def _transpose(ctx, node):
    x = ctx.labels(node.args[0])
    ndim = len(ctx.out_shape(node))
    a = normalize_dim(ctx.arg(node, 1, "dim0"), ndim)
    b = normalize_dim(ctx.arg(node, 2, "dim1"), ndim)
    order = list(range(ndim))
    order[a], order[b] = order[b], order[a]
    return _permute_labels(x, ctx.out_shape(node), order)


@RULES.method("t")
@RULES.function(torch.t)
def _t(ctx, node):
    ndim = len(ctx.out_shape(node))
    return _permute_labels(ctx.labels(node.args[0]), ctx.out_shape(node), list(range(ndim))[::-1])


def _expand(ctx, node):
    x = ctx.labels(node.args[0])
    out_shape = ctx.out_shape(node)
    offset = len(out_shape) - (x.ndim if x is not None else 0)
    mapping = {i + offset: i for i in range(x.ndim)} if x is not None else {}
    out = carry(x, out_shape, mapping)
    for a in _size_args(node) or []:
        v = ctx.value(a)
        if isinstance(v, SizeTaint):
            ctx.atoms.block(v.atoms, f"a channel count sets a size in {ctx.describe(node)}")
    return out


def _rewrite_expand(rw, node):
    labels: TensorLabels = node.meta["fxprune.channels"]
    sizes = _size_args(node)
    changed = False
    for d, lab in enumerate(labels.dims):
        if lab is not None and d < len(sizes) and isinstance(sizes[d], int) and sizes[d] != -1:
            sizes[d] = rw.kept_count(lab)
            changed = True
    if changed:
        node.args = (node.args[0], tuple(sizes))


_expand.handles_sizes = True
RULES.method("expand", rewrite=_rewrite_expand)(_expand)


@RULES.method("expand_as")
def _expand_as(ctx, node):
    return elementwise(ctx, node, [ctx.value(node.args[0]), ctx.value(node.args[1])], ADD)


def _shuffle_factor(ctx, node, name: str) -> int:
    if node.op == "call_module":
        return int(getattr(ctx.module(node), name))
    return ctx.arg(node, 1, name)


def _pixel_rearrange(ctx, node, shuffle: bool) -> TensorLabels:
    """``pixel_shuffle(x, r)``: channel c of the output holds input channels c·r² … c·r²+r²−1, so
    each such run is one ZIG; ``pixel_unshuffle`` is the inverse (one input channel becomes a
    run of r² output channels).  Channels laid along the spatial dims cannot be followed."""
    x = ctx.labels(node.args[0])
    out_shape = ctx.out_shape(node)
    r = _shuffle_factor(ctx, node, "upscale_factor" if shuffle else "downscale_factor")
    if x is None:
        return TensorLabels.blank(out_shape)
    c = x.ndim - 3
    block_dims(ctx, x, range(c + 1, x.ndim), f"{ctx.describe(node)} moves values between channels and pixels")
    out = carry(x, out_shape, {d: d for d in range(c)})
    lab = x.dims[c]
    if lab is None:
        return out
    dims = list(out.dims)
    if shuffle:
        atoms = lab.atoms.reshape(-1, r * r)
        if (atoms < 0).any():
            ctx.atoms.block(lab.atoms, f"{ctx.describe(node)} regroups a partly untracked channel dimension")
            return out
        if r > 1:
            ctx.atoms.unify(np.repeat(atoms[:, 0], r * r - 1), atoms[:, 1:].ravel(), "pixel shuffle")
        dims[c] = DimLabel(atoms[:, 0], lab.nonzero.reshape(-1, r * r).max(axis=1))
    else:
        dims[c] = _merge(lab, [lab.size, r * r], 0)
    return TensorLabels(out.shape, tuple(dims))


RULES.function(F.pixel_shuffle)(lambda ctx, node: _pixel_rearrange(ctx, node, True))
RULES.module(nn.PixelShuffle)(lambda ctx, node: _pixel_rearrange(ctx, node, True))
RULES.function(F.pixel_unshuffle)(lambda ctx, node: _pixel_rearrange(ctx, node, False))
RULES.module(nn.PixelUnshuffle)(lambda ctx, node: _pixel_rearrange(ctx, node, False))
