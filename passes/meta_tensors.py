"""Creating shape-only (meta) tensors as cheaply as PyTorch allows.

Shape propagation makes one meta tensor per node.  How the call is spelled matters:
``torch.empty(*sizes, device=<torch.device>)`` parses its arguments in about 60% of
the time ``torch.empty((sizes), device="meta")`` takes (no tuple-to-IntArrayRef path,
no device string to parse), and ``detach()`` of a tensor kept per shape and dtype costs
about 60% of that again.
"""
from __future__ import annotations

import torch

META = torch.device("meta")


def empty_meta(shape, dtype: torch.dtype) -> torch.Tensor:
    """A contiguous meta tensor of ``shape`` (any sequence of ints) and ``dtype``.

    A ``detach()`` of a kept tensor of that shape and dtype: a new tensor object with sizes of
    its own (see ``meta_like``) at about a third of the cost of ``torch.empty``, whose
    argument parsing and meta kernel run again for every layer of a network with the same
    few shapes."""
    key = (*shape, dtype)
    template = _TEMPLATES.get(key)
    if template is None:
        if len(_TEMPLATES) >= _MAX_TEMPLATES:  # (a bound for a long session over many input sizes)
            _TEMPLATES.clear()
        template = _TEMPLATES[key] = _new_empty(shape, dtype)
    return template.detach()


def _new_empty(shape, dtype: torch.dtype) -> torch.Tensor:
    if shape:
        return torch.empty(*shape, dtype=dtype, device=META)
    return torch.empty((), dtype=dtype, device=META)  # (a 0-d tensor: ``empty()`` needs a size)


_TEMPLATES: dict[tuple, torch.Tensor] = {}  # (*shape, dtype) -> a meta tensor of that shape and dtype
_MAX_TEMPLATES = 4096


def meta_like(x: torch.Tensor) -> torch.Tensor:
    """A meta tensor with ``x``'s shape, strides and dtype (``empty_like`` on meta runs a Python reference).

    For a meta ``x`` (every value of shape propagation), ``x.detach()``: a new tensor object with
    sizes of its own, so an in-place view op on one (``unsqueeze_``) never changes the shape
    recorded for the other, at a quarter of the cost of ``empty_strided``.  (A meta tensor has
    no data: sharing its storage shares nothing.)
    """
    if x.is_meta:
        return x.detach()
    return torch.empty_strided(x.shape, x.stride(), dtype=x.dtype, device=META)
