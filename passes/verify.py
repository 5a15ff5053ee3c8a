"""Output comparison for verification: the largest difference across (nested) outputs."""
from __future__ import annotations

from typing import Any

import torch
from torch.utils._pytree import tree_flatten


def _max_difference(x: torch.Tensor, y: torch.Tensor) -> float:
    """max |x - y|, where NaN matches only NaN and ±inf only the same inf (anything else: inf).

    ``max(diff, nan)`` would keep ``diff``: a NaN must never read as agreement.
    """
    same_special = (torch.isnan(x) & torch.isnan(y)) | (torch.isinf(x) & (x == y))
    special = ~torch.isfinite(x) | ~torch.isfinite(y)
    if bool((special & ~same_special).any()):
        return float("inf")
    regular = ~special
    return (x[regular] - y[regular]).abs().max().item() if bool(regular.any()) else 0.0


def compare_outputs(dense: Any, compact: Any) -> tuple[float, float]:
    """(max |dense - compact|, max |dense|) over every tensor leaf; inf if structures differ."""
    a, spec_a = tree_flatten(dense)
    b, spec_b = tree_flatten(compact)
    if len(a) != len(b):
        return float("inf"), 0.0
    diff, scale = 0.0, 0.0
    for x, y in zip(a, b):
        if isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor):
            if x.shape != y.shape:
                return float("inf"), 0.0
            if x.numel():
                diff = max(diff, _max_difference(x.double(), y.double()))
                finite = x.double()[torch.isfinite(x)]
                scale = max(scale, finite.abs().max().item() if finite.numel() else 0.0)
        elif x != y:
            return float("inf"), 0.0
    return diff, scale
