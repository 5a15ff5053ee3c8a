"""Layers that create channels: convolutions, linear layers, embeddings.

A layer's output dimension creates atoms (its weight rows and bias are the
producers: zeroing them makes the channel exactly zero).  Its input dimension is
unified with the incoming channels as consumer slices; consuming a channel that
is not zero when zeroed makes it unprunable.  A grouped convolution couples each
of its groups whole (inputs and outputs of conv group k are one ZIG), so the
compact conv keeps a valid group count; depthwise convs become per-channel ZIGs.
"""
from __future__ import annotations

import numpy as np
import torch.nn.functional as F
from torch import nn

from fxprune.labels import DimLabel, TensorLabels
from fxprune.layout import CONSUMER, PRODUCER

from .common import block_dims, require_zero, stored_or_absent
from .registry import RULES

CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _out_labels(ctx, node, x: TensorLabels | None, out_shape, channel_dim: int, out_label: DimLabel,
                has_bias: bool) -> TensorLabels:
    dims = [None] * len(out_shape)
    if x is not None:
        # the kernel mixes spatial positions: channels laid out along them cannot be removed
        in_dims = x.dims
        spatial = []  # (a loop, not a comprehension: one call fewer per layer)
        for d in range(channel_dim + 1, len(in_dims)):
            if in_dims[d] is not None:
                spatial.append(d)
        if spatial:
            block_dims(ctx, x, spatial, f"{ctx.describe(node)} convolves over these channels")
        if channel_dim == 1 and x.dims[0] is not None and x.shape[0] == out_shape[0]:
            dims[0] = _through(ctx, node, x.dims[0], has_bias)  # channels folded into the batch dim
    dims[channel_dim] = out_label
    return TensorLabels(tuple(out_shape), tuple(dims))


def _through(ctx, node, lab: DimLabel | None, has_bias: bool) -> DimLabel | None:
    """A channel dim the layer maps row by row: a zero row stays zero only without a bias."""
    if lab is None or not has_bias:
        return lab
    return lab.with_nonzero(ctx.code(node))


def _conv(ctx, node):
    m = ctx.module(node)
    # (the registered tensors directly: nn.Module.__getattr__ is slow, and a parametrized weight made
    # this module a barrier before its rule was looked up)
    bias = f"{node.target}.bias" if m._parameters.get("bias") is not None else None
    return _conv_channels(ctx, node, ctx.labels(node.args[0]), f"{node.target}.weight", bias, m.groups)


def _conv_channels(ctx, node, x: TensorLabels | None, w: str, b: str | None, groups: int) -> TensorLabels:
    """A convolution with stored weight ``w`` ([out, in / groups, *kernel]) and bias ``b``: the
    module and ``F.conv*d`` alike."""
    out_shape = ctx.out_shape(node)
    weight = ctx.tensor_by_name(w)
    channel_dim = 1 if len(out_shape) == weight.ndim else 0  # batched or unbatched input
    out_atoms = ctx.param_atoms(w, 0, PRODUCER)
    if b is not None:
        ctx.atoms.unify(out_atoms, ctx.param_atoms(b, 0, PRODUCER, like=out_atoms), "bias")
    in_lab = x.dims[channel_dim] if x is not None else None
    if groups == 1:
        if in_lab is not None:
            consumed = ctx.param_atoms(w, 1, CONSUMER, like=in_lab.atoms)
            if consumed is not in_lab.atoms:  # (adopted on first use: nothing to unify; a shared weight is rare
                # enough to name the node up front, and without a lambda ``ctx`` and ``node`` need no cells)
                ctx.atoms.unify(in_lab.atoms, consumed, f"{ctx.describe(node)} input")
            require_zero(ctx, in_lab, node, "the convolution")
        else:
            ctx.block_if_shared(w, 1, node)
    else:
        og, ig = weight.shape[0] // groups, weight.shape[1]
        if og > 1:  # the output channels of one conv group form one ZIG
            ctx.atoms.unify_in_blocks(out_atoms, og, "conv group")
        if in_lab is None or not ctx.all_tracked(in_lab.atoms):
            reason = f"the grouped convolution {ctx.describe(node)} reads channels fxprune cannot track"
            ctx.atoms.block(out_atoms, reason)
            if in_lab is not None:
                ctx.atoms.block(in_lab.atoms, reason)
        else:
            # As many channels in as out per group (depthwise, RegNet's group convs): input channel c
            # joins output channel c, and through it its whole group (the output is united in
            # blocks above), which is an edge between two whole runs.
            group_atoms = out_atoms if ig == og else np.repeat(out_atoms[::og], ig)
            ctx.atoms.unify(in_lab.atoms, group_atoms, "conv group")
    return _out_labels(ctx, node, x, out_shape, channel_dim, DimLabel.fresh(out_atoms), b is not None)


def _rewrite_conv(rw, node):
    m = rw.module(node)
    old_out, old_groups = m.out_channels, m.groups
    out_channels = m.weight.shape[0]
    groups = 1 if old_groups == 1 else out_channels // (old_out // old_groups)
    m.out_channels, m.groups, m.in_channels = out_channels, groups, m.weight.shape[1] * groups


RULES.module(*CONV_TYPES, rewrite=_rewrite_conv)(_conv)


def _functional_conv(ctx, node):
    """``F.conv1d/2d/3d(x, W, b, stride, padding, dilation, groups)`` with W and b from get_attr."""
    from passes.channel_analysis import unknown_op

    w_node, b_node = ctx.arg(node, 1, "weight"), ctx.arg(node, 2, "bias")
    groups = ctx.arg(node, 6, "groups", 1)
    if w_node is None or not stored_or_absent(w_node, b_node) or not isinstance(groups, int):
        return unknown_op(ctx, node)  # a computed weight (weight standardisation...): nothing says how it couples
    return _conv_channels(ctx, node, ctx.labels(ctx.arg(node, 0, "input")), w_node.target,
                          None if b_node is None else b_node.target, groups)


def _rewrite_functional_conv(rw, node):
    """A grouped conv keeps its channels per group: the group count follows the kept output channels."""
    groups = rw.arg(node, 6, "groups", 1)
    weight = rw.arg(node, 1, "weight")
    if groups == 1 or weight is None or not stored_or_absent(weight):
        return  # (a computed weight made the conv a barrier: nothing of it changes)
    from passes.channel_analysis import fetch_attr

    old_out = weight.meta["val"].shape[0]
    kept_out = fetch_attr(rw.root, weight.target).shape[0]  # the compact model's (sliced) weight
    new_groups = kept_out // (old_out // groups)
    if len(node.args) > 6:
        node.args = (*node.args[:6], new_groups, *node.args[7:])
    else:
        node.kwargs = {**node.kwargs, "groups": new_groups}


RULES.function(F.conv1d, F.conv2d, F.conv3d, rewrite=_rewrite_functional_conv)(_functional_conv)


CONV_TRANSPOSE_TYPES = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def _conv_transpose(ctx, node):
    """A transposed conv's weight is ``[in, out / groups, *kernel]``: dim 1 makes its output channels.

    Each input channel adds its own weight slice into the output, so a zero input channel
    contributes nothing and can be removed with ``weight[c]``.  Grouped transposed convs
    are barriers (their channel blocks are not handled yet).
    """
    m = ctx.module(node)
    x = ctx.labels(node.args[0])
    out_shape = ctx.out_shape(node)
    channel_dim = 1 if len(out_shape) == m.weight.ndim else 0  # batched or unbatched input
    w, b = f"{node.target}.weight", f"{node.target}.bias"
    in_lab = x.dims[channel_dim] if x is not None else None
    if m.groups != 1:  # weight dim 1 holds out_channels / groups: no one-to-one map to output channels
        out_atoms = ctx.atoms.new(m.out_channels)
        if m.bias is not None:
            ctx.atoms.unify(out_atoms, ctx.param_atoms(b, 0, PRODUCER, like=out_atoms), "bias")
        reason = f"the grouped transposed convolution {ctx.describe(node)} is not handled yet"
        ctx.atoms.block(out_atoms, reason)
        if in_lab is not None:
            ctx.atoms.block(in_lab.atoms, reason)
        return _out_labels(ctx, node, x, out_shape, channel_dim, DimLabel.fresh(out_atoms), m.bias is not None)
    out_atoms = ctx.param_atoms(w, 1, PRODUCER)
    if m.bias is not None:
        ctx.atoms.unify(out_atoms, ctx.param_atoms(b, 0, PRODUCER, like=out_atoms), "bias")
    if in_lab is not None:
        ctx.atoms.unify(in_lab.atoms, ctx.param_atoms(w, 0, CONSUMER, like=in_lab.atoms), lambda: f"{ctx.describe(node)} input")
        require_zero(ctx, in_lab, node, "the transposed convolution")
    else:
        ctx.block_if_shared(w, 0, node)
    return _out_labels(ctx, node, x, out_shape, channel_dim, DimLabel.fresh(out_atoms), m.bias is not None)


def _rewrite_conv_transpose(rw, node):
    m = rw.module(node)
    m.in_channels, m.out_channels = m.weight.shape[0], m.weight.shape[1] * m.groups


RULES.module(*CONV_TRANSPOSE_TYPES, rewrite=_rewrite_conv_transpose)(_conv_transpose)


def _rewrite_linear(rw, node):
    m = rw.module(node)
    m.out_features, m.in_features = m.weight.shape


@RULES.module(nn.Linear, rewrite=_rewrite_linear)
def _linear(ctx, node):
    m = ctx.module(node)
    x = ctx.labels(node.args[0])
    out_shape = ctx.out_shape(node)
    w, b = f"{node.target}.weight", f"{node.target}.bias"
    out_atoms = ctx.param_atoms(w, 0, PRODUCER)
    if m.bias is not None:
        ctx.atoms.unify(out_atoms, ctx.param_atoms(b, 0, PRODUCER, like=out_atoms), "bias")
    dims = [None] * len(out_shape)
    if x is not None:
        for d in range(x.ndim - 1):  # leading dims (batch, tokens, heads...) pass through
            dims[d] = _through(ctx, node, x.dims[d], m.bias is not None)
        in_lab = x.dims[-1]
        if in_lab is not None:
            ctx.atoms.unify(in_lab.atoms, ctx.param_atoms(w, 1, CONSUMER, like=in_lab.atoms), lambda: f"{ctx.describe(node)} input")
            require_zero(ctx, in_lab, node, "the linear layer")
        else:
            ctx.block_if_shared(w, 1, node)
    dims[-1] = DimLabel.fresh(out_atoms)
    return TensorLabels(tuple(out_shape), tuple(dims))


def _rewrite_embedding(rw, node):
    m = rw.module(node)
    m.embedding_dim = m.weight.shape[1]


@RULES.module(nn.Embedding, rewrite=_rewrite_embedding)
def _embedding(ctx, node):
    out_shape = ctx.out_shape(node)
    atoms = ctx.param_atoms(f"{node.target}.weight", 1, PRODUCER)
    dims = [None] * len(out_shape)
    dims[-1] = DimLabel.fresh(atoms)
    return TensorLabels(tuple(out_shape), tuple(dims))


@RULES.function(F.linear)
def _functional_linear(ctx, node):
    """``F.linear(x, W, b)`` with W from get_attr: W's rows are producers, its columns consumers.

    The bias is a stored tensor (a producer) or computed (BEiT's ``cat(q_bias, zeros, v_bias)``):
    then its channels are the output's, and an output channel is zero where the bias is.
    """
    from passes.channel_analysis import unknown_op

    x = ctx.labels(ctx.arg(node, 0, "input"))
    w_node = ctx.arg(node, 1, "weight")
    b_node = ctx.arg(node, 2, "bias")
    out_shape = ctx.out_shape(node)
    if w_node is None or not stored_or_absent(w_node):
        return unknown_op(ctx, node)
    computed_bias = None
    if not stored_or_absent(b_node):
        computed_bias = ctx.labels(b_node)
        if computed_bias is None or computed_bias.ndim != 1 or computed_bias.dims[0] is None:
            return unknown_op(ctx, node)  # a bias whose channels nothing tracks cannot be sliced
    out_atoms = ctx.param_atoms(w_node.target, 0, PRODUCER)
    out_label = DimLabel.fresh(out_atoms)
    if computed_bias is not None:
        ctx.atoms.unify(out_atoms, computed_bias.dims[0].atoms, f"{ctx.describe(node)} bias")
        out_label = DimLabel(out_atoms, computed_bias.dims[0].nonzero)
    elif b_node is not None:
        ctx.atoms.unify(out_atoms, ctx.param_atoms(b_node.target, 0, PRODUCER, like=out_atoms), "bias")
    dims = [None] * len(out_shape)
    in_lab = x.dims[-1] if x is not None else None
    if x is not None:
        for d in range(x.ndim - 1):
            dims[d] = _through(ctx, node, x.dims[d], b_node is not None)
    if in_lab is not None:
        ctx.atoms.unify(in_lab.atoms, ctx.param_atoms(w_node.target, 1, CONSUMER, like=in_lab.atoms), "F.linear input")
        require_zero(ctx, in_lab, node, "the linear layer")
    else:  # the weight's columns exist as atoms (get_attr): nothing may remove them
        ctx.atoms.block(ctx.param_atoms(w_node.target, 1, CONSUMER),
                        f"{ctx.describe(node)} reads them on untracked input channels")
    dims[-1] = out_label
    return TensorLabels(tuple(out_shape), tuple(dims))
