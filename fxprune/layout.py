"""The ZIG layout: which slice of which parameter belongs to which zero-invariant group.

This is the contract between the analysis (``PruneSpace``) and everything that
reads or writes parameters group-wise (the optimizers, ``zero_random_groups``,
the solution read-back in ``construct_subnet``).  It is deliberately tensor-shaped:
per (parameter, dimension) one LongTensor maps every index along that dimension to
a ZIG id (or -1), so group norms are a handful of batched reductions per parameter
instead of a Python loop over channels.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

PRODUCER = "producer"  # the slice's values make the channel: part of x_g, trained towards zero
CONSUMER = "consumer"  # an input slice reading the channel: removed with it, not part of x_g
BUFFER = "buffer"  # a non-trained slice (BN running stats): removed with it, not part of x_g


class SliceMap(NamedTuple):
    """ZIG membership of every index along ``dim`` of the tensor ``name``.

    (A named tuple: analysis makes one per parameter dimension of the model.)"""

    name: str  # qualified parameter / buffer name in the user's model
    dim: int
    zig: torch.Tensor  # int64, shape [tensor.shape[dim]]: ZIG id, or -1 when in no prunable ZIG
    role: str  # PRODUCER, CONSUMER or BUFFER


@dataclass(frozen=True)
class ZigLayout:
    """All prunable ZIGs of a model, numbered 0..num_zigs-1."""

    num_zigs: int
    maps: tuple[SliceMap, ...]
    zig_group: torch.Tensor  # int64 [num_zigs]: the group (channel space) each ZIG belongs to

    def of_role(self, role: str) -> tuple[SliceMap, ...]:
        return tuple(m for m in self.maps if m.role == role)

    @property
    def producers(self) -> tuple[SliceMap, ...]:
        """The slices that form x_g for each ZIG (what the optimizers drive to zero)."""
        return self.of_role(PRODUCER)
