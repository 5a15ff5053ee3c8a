"""Shared building blocks of the op rules: broadcasting alignment and zero bookkeeping."""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch

from fxprune.labels import DimLabel, TensorLabels, filled, zeros

# How an elementwise op maps "zero channel" inputs to its output channel.
KEEP = "keep"  # unary f with f(0) = 0 (ReLU, GELU, dropout, casts...)
CONST = "const"  # unary f with f(0) != 0 (sigmoid, exp...): the channel becomes a constant
ADD = "add"  # zero iff every operand is zero (add, sub, maximum...)
MUL = "mul"  # zero if any operand is zero
DIV = "div"  # zero iff the numerator is zero and the denominator is not


# PyTorch's argument parser also takes NumPy's names for these parameters of its builtins
# (``torch.cat(xs, axis=1)``, ``h.sum(axis=1, keepdims=True)``, ``torch.add(x1=a, x2=b)``).
NUMPY_ARG_ALIASES = {"dim": ("axis",), "keepdim": ("keepdims",), "input": ("x", "a", "x1"), "other": ("x2",)}


def call_arg(node, index: int, name: str, default: Any = None) -> Any:
    """Argument ``name`` of a call node: positional ``index``, keyword ``name`` or a NumPy alias of it."""
    if len(node.args) > index:
        return node.args[index]
    kwargs = node.kwargs
    if name in kwargs:
        return kwargs[name]
    for alias in NUMPY_ARG_ALIASES.get(name, ()):
        if alias in kwargs:
            return kwargs[alias]
    return default


def _is_zero_scalar(x: Any) -> bool:
    return isinstance(x, (int, float, bool)) and not isinstance(x, torch.Tensor) and x == 0


def _is_non_finite_scalar(x: Any) -> bool:
    return isinstance(x, float) and not math.isfinite(x)


def combine_nonzero(mode: str, code: int, present: Sequence[DimLabel], n_other: int, other_zero: bool) -> np.ndarray:
    """The output nonzero codes of one aligned dimension.

    ``present``: the labels of operands that carry this dimension; ``n_other``: how many
    operands do not (broadcast, untracked or scalar); ``other_zero``: whether all of those
    are literally zero.
    """
    size = present[0].size
    if mode == KEEP:
        return present[0].nonzero
    if mode == CONST:
        return filled(size, code)
    if mode == MUL:
        for lab in present:  # (loops, not any()/all() over a generator: this runs for every binary op)
            if lab.all_zero():
                return zeros(size)  # a product with an operand whose channels are all zero when zeroed (gating)
    if mode == ADD and (not n_other or other_zero):
        for lab in present:
            if not lab.all_zero():
                break
        else:
            return zeros(size)  # the common case: every operand's channels are zero when zeroed
    if mode == MUL:
        zero = np.zeros(size, dtype=bool)
        for lab in present:
            zero |= lab.nonzero == 0
        return np.where(zero, 0, code)
    if mode == ADD:
        nonzero = np.zeros(size, dtype=np.int64)
        for lab in present:
            nonzero = np.where(nonzero != 0, nonzero, lab.nonzero)
        if n_other and not other_zero:
            nonzero = np.where(nonzero != 0, nonzero, code)
        return nonzero
    if mode == DIV:
        num = present[0].nonzero
        if len(present) > 1:  # 0/0 is NaN: only zero where the denominator is not
            return np.where((num == 0) & (present[1].nonzero != 0), 0, np.where(num != 0, num, code))
        return num
    raise ValueError(mode)


def elementwise(ctx, node, operands: Sequence[Any], mode: str, out_shape: Sequence[int] | None = None) -> TensorLabels:
    """Broadcasting n-ary op: aligned channel dims are unified, zeros follow ``mode``."""
    out_shape = ctx.out_shape(node) if out_shape is None else tuple(out_shape)
    if len(operands) == 1 and isinstance(operands[0], TensorLabels) and operands[0].shape == out_shape:
        if mode == KEEP:
            return operands[0]  # a unary op that keeps zeros (activations, dropout): the labels pass unchanged
        if mode == CONST:  # f(0) != 0 (sigmoid...): every channel becomes a constant this node makes
            code = ctx.code(node)
            return TensorLabels(out_shape, tuple([None if lab is None else DimLabel(lab.atoms, filled(lab.size, code))
                                                  for lab in operands[0].dims]))
    nd = len(out_shape)
    code = ctx.code(node)
    # The tensor operands, each with its offset from the right, and the output dims that can carry
    # channels: only one where some operand carries a label at full size (the others are untracked
    # whatever the rest of the operands hold; most dims: batch, spatial).  One loop, no comprehensions.
    tensors: list[TensorLabels] = []
    aligned: list[tuple[TensorLabels, int]] = []
    carried_dims: set[int] = set()
    for o in operands:
        if isinstance(o, TensorLabels):
            offset = nd - len(o.shape)
            tensors.append(o)
            aligned.append((o, offset))
            for k, lab in enumerate(o.dims):
                if lab is not None and 0 <= k + offset < nd and o.shape[k] == out_shape[k + offset]:
                    carried_dims.add(k + offset)
    if len(tensors) == len(operands):  # (the common case: no Python numbers among the operands)
        scalars_zero, n_scalars = True, 0
    else:
        scalars = [o for o in operands if not isinstance(o, TensorLabels)]
        scalars_zero = all(_is_zero_scalar(o) for o in scalars)
        n_scalars = len(scalars)
        if mode == MUL and any(_is_non_finite_scalar(o) for o in scalars):
            mode = CONST  # 0·inf and 0·nan are nan
    if mode == DIV and (not isinstance(operands[0], TensorLabels)
                        or (len(operands) > 1 and (_is_zero_scalar(operands[1]) or _is_non_finite_scalar(operands[1])))):
        mode = CONST  # c / 0 is ±inf or nan; 0 / 0 and 0 / nan are nan
    dims: list[DimLabel | None] = [None] * nd
    for d in sorted(carried_dims):
        size = out_shape[d]
        present: list[DimLabel] = []
        untracked_present = False
        n_broadcast = n_scalars
        numerator_present = False
        for t, offset in aligned:
            k = d - offset
            if k < 0 or (t.shape[k] != size):
                n_broadcast += 1
                continue
            lab = t.dims[k]
            if lab is None:
                untracked_present = True
                n_broadcast += 1
            else:
                present.append(lab)
                numerator_present = numerator_present or t is operands[0]
        if untracked_present:
            for lab in present:
                ctx.atoms.block(
                    lab.atoms,
                    f"{ctx.describe(node)} combines these channels elementwise with an untracked dimension",
                )
        base_atoms = present[0].atoms
        for lab in present[1:]:
            ctx.atoms.unify(base_atoms, lab.atoms, lambda: f"{ctx.describe(node)} aligns these channels with untracked ones")
            if not ctx.all_tracked(base_atoms):  # fill untracked positions from the other operand
                base_atoms = np.where(base_atoms >= 0, base_atoms, lab.atoms)
        # operands that broadcast along this dim contribute the same value to every channel:
        # zero only if they are literal zeros
        if mode == DIV and not numerator_present:  # a zeroed denominator channel under a broadcast numerator
            nonzero = filled(size, code)
        else:
            nonzero = combine_nonzero(mode, code, present, n_broadcast, scalars_zero and len(present) == len(tensors))
        dims[d] = DimLabel(base_atoms, nonzero)
    return TensorLabels(out_shape, tuple(dims))


def keep_zeros(ctx, node, x: Any) -> TensorLabels:
    """Labels of a unary op with f(0) = 0 applied to ``x`` (an activation, a per-channel norm's
    normalisation): ``x``'s own labels when the shape is kept, the most common op of all."""
    if type(x) is TensorLabels and x.shape == ctx.out_shape(node):
        return x
    return elementwise(ctx, node, [x], KEEP)


def carry(in_labels: TensorLabels | None, out_shape: Sequence[int], mapping: dict[int, int]) -> TensorLabels:
    """Output labels that copy ``in_labels`` dims by ``{out_dim: in_dim}`` (others untracked)."""
    out_shape = tuple(map(int, out_shape))
    dims: list[DimLabel | None] = [None] * len(out_shape)
    if in_labels is not None:
        for o, i in mapping.items():
            if in_labels.dims[i] is not None and in_labels.shape[i] == out_shape[o]:
                dims[o] = in_labels.dims[i]
    return TensorLabels(out_shape, tuple(dims))


def set_nonzero(labels: TensorLabels, dims: Sequence[int], code: int) -> TensorLabels:
    out = list(labels.dims)
    for d in dims:
        if out[d] is not None:
            out[d] = out[d].with_nonzero(code)
    if all(a is b for a, b in zip(out, labels.dims)):
        return labels  # (already so: labels are immutable, share them)
    return TensorLabels(labels.shape, tuple(out))


def normalize_dim(dim: int, ndim: int) -> int:
    return dim + ndim if dim < 0 else dim


def block_dims(ctx, labels: TensorLabels | None, dims: Sequence[int], reason: str) -> None:
    if labels is None:
        return
    for d in dims:
        lab = labels.dims[d]
        if lab is not None:
            ctx.atoms.block(lab.atoms, reason)


def stored_or_absent(*args: Any) -> bool:
    """Every argument is None or a ``get_attr`` node (a parameter or buffer, not a computed tensor)."""
    return all(a is None or getattr(a, "op", None) == "get_attr" for a in args)


def require_product_zero(ctx, node, labels: Sequence[DimLabel], what: str) -> None:
    """Contracted channels (summed over products of these aligned labels): a removed one must make
    every term zero, i.e. be zero when zeroed in at least one factor."""
    zero = np.zeros(labels[0].size, dtype=bool)
    for lab in labels:
        zero |= lab.nonzero == 0
    if not zero.all():
        ctx.atoms.block(labels[0].atoms[~zero],
                        f"the {what} {ctx.describe(node)} reads channels that are not zero when zeroed")


def require_zero(ctx, lab: DimLabel | None, node, what: str) -> None:
    """Channels consumed here (summed away) must be exactly zero when their ZIG is zeroed."""
    if lab is None or lab.all_zero():
        return
    bad = lab.nonzero != 0
    for code in np.unique(lab.nonzero[bad]):
        sel = bad & (lab.nonzero == code)
        ctx.atoms.block(
            lab.atoms[sel],
            f"{what} {ctx.describe(node)} reads these channels, which are not zero when zeroed "
            f"(made non-zero by {ctx.nonzero_reason(code)})",
        )
