"""``torch.einsum``: every subscript letter is either kept (an output dim) or summed over.

A kept letter aligns the operand dims that carry it, as an elementwise product does:
their channels are one group, and an output slab is zero if any operand's slab is
zero.  A summed letter is a contraction, as in matmul: its channels are one group and
are consumed, exact to remove where at least one operand is zero when zeroed.  An
ellipsis stands for broadcast dims aligned from the right.  Nothing needs rewriting:
einsum reads every size from its operands.  Equations with a letter repeated inside
one operand (diagonals) keep all their channels.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.fx as fx

from fxprune.labels import DimLabel, TensorLabels

from .common import MUL, combine_nonzero, require_product_zero
from .registry import RULES

def _expand(term: str, ndim: int) -> list | None:
    """The symbol of each dim of an operand written ``term`` with ``ndim`` dims; None if unsupported.

    A symbol is a letter, or ``("...", k)`` for the ellipsis dim k places from the ellipsis' right end.
    """
    if "..." in term:
        head, _, tail = term.partition("...")
        if "." in head + tail:
            return None
        width = ndim - len(head) - len(tail)
        if width < 0:
            return None
        symbols = list(head) + [("...", width - 1 - j) for j in range(width)] + list(tail)
    else:
        symbols = list(term)
        if len(symbols) != ndim:
            return None
    letters = [s for s in symbols if isinstance(s, str)]
    if len(set(letters)) != len(letters) or not all(s.isalpha() for s in letters):
        return None
    return symbols


def _implicit_output(terms: list[str]) -> str:
    """einsum without '->': the ellipsis, then the letters used exactly once, in alphabetical order."""
    letters = [c for t in terms for c in t.replace("...", "")]
    once = sorted(c for c in set(letters) if letters.count(c) == 1)
    return ("..." if any("..." in t for t in terms) else "") + "".join(once)


def _parse(ctx, node):
    """(operand nodes, per-operand symbols, output symbols), or None for an unsupported call."""
    equation, *operands = node.args
    if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
        operands = list(operands[0])
    if not isinstance(equation, str) or node.kwargs or not operands:
        return None
    equation = equation.replace(" ", "")
    lhs, arrow, rhs = equation.partition("->")
    terms = lhs.split(",")
    if len(terms) != len(operands) or not all(isinstance(o, fx.Node) and ctx.is_tensor(o) for o in operands):
        return None
    symbols = [_expand(t, len(o.meta["val"].shape)) for t, o in zip(terms, operands)]
    out_shape = ctx.out_shape(node)
    out_symbols = _expand(rhs if arrow else _implicit_output(terms), len(out_shape))
    if out_symbols is None or any(s is None for s in symbols):
        return None
    return operands, symbols, out_symbols


@RULES.function(torch.einsum)
def _einsum(ctx, node):
    parsed = _parse(ctx, node)
    if parsed is None:
        from passes.channel_analysis import blank_like

        ctx.block_value(ctx.value(node.args), f"{ctx.describe(node)} has an equation fxprune does not follow "
                                               "(a letter repeated in one operand, or operands that are not tensors)")
        return blank_like(ctx.meta_value(node))
    operands, symbols, out_symbols = parsed
    out_shape = ctx.out_shape(node)
    labels = [ctx.labels(o) for o in operands]
    shapes = [tuple(o.meta["val"].shape) for o in operands]
    # the full size of each symbol: operands of size 1 along it broadcast and do not align
    full: dict = {}
    for syms, shape in zip(symbols, shapes):
        for s, size in zip(syms, shape):
            full[s] = max(full.get(s, 1), size)
    code = ctx.code(node)
    dims_out: dict = {}
    for s in full:
        present: list[DimLabel] = []
        untracked = False
        for syms, shape, x in zip(symbols, shapes, labels):
            if s not in syms or shape[syms.index(s)] != full[s]:
                continue
            lab = x.dims[syms.index(s)] if x is not None else None
            if lab is None:
                untracked = True
            else:
                present.append(lab)
        if not present:
            continue
        if untracked:
            for lab in present:
                ctx.atoms.block(lab.atoms, f"{ctx.describe(node)} aligns these channels with an untracked dimension")
            continue
        atoms = present[0].atoms
        for lab in present[1:]:
            ctx.atoms.unify(atoms, lab.atoms, ctx.describe(node))
            atoms = np.where(atoms >= 0, atoms, lab.atoms)
        if s in out_symbols:  # a product: zero wherever any factor is zero
            dims_out[s] = DimLabel(atoms, combine_nonzero(MUL, code, present, 0, False))
        else:  # summed over: each removed entry must make its product term zero
            require_product_zero(ctx, node, present, "sum")
    dims = tuple(dims_out.get(s) if dims_out.get(s) is not None and dims_out[s].size == size else None
                 for s, size in zip(out_symbols, out_shape))
    return TensorLabels(tuple(out_shape), dims)
