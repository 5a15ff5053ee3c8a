"""Output comparison for verification: the largest difference across (nested) outputs."""
from __future__ import annotations

from typing import Any

import torch
from torch.utils._pytree import tree_flatten


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
                diff = max(diff, (x.double() - y.double()).abs().max().item())
                scale = max(scale, x.double().abs().max().item())
        elif x != y:
            return float("inf"), 0.0
    return diff, scale
