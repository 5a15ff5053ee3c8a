"""Creating shape-only (meta) tensors as cheaply as PyTorch allows.

Shape propagation makes one meta tensor per node.  How the call is spelled matters:
``torch.empty(*sizes, device=<torch.device>)`` parses its arguments in about 60% of
the time ``torch.empty((sizes), device="meta")`` takes (no tuple-to-IntArrayRef path,
no device string to parse), which is a sixth of the whole closed-form shape step.
"""
from __future__ import annotations

import torch

META = torch.device("meta")


def empty_meta(shape, dtype: torch.dtype) -> torch.Tensor:
    """A contiguous meta tensor of ``shape`` (any sequence of ints) and ``dtype``."""
    if shape:
        return torch.empty(*shape, dtype=dtype, device=META)
    return torch.empty((), dtype=dtype, device=META)  # (a 0-d tensor: ``empty()`` needs a size)


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
