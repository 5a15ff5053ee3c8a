"""Per-ZIG reductions and broadcasts over the producer slices of a ZigLayout.

Every producer ``SliceMap`` contributes, for each index along its ``dim``, one
"row" of its tensor to a ZIG.  A per-ZIG quantity (a squared norm, an inner
product) is therefore: reduce each producer tensor over its non-mapped dims, then
``index_add_`` the resulting rows into a ``[num_zigs + 1]`` vector.  The extra last
slot is a sentinel that collects rows in no prunable ZIG (id -1), so no masking is
needed anywhere; broadcasting a per-ZIG vector back to the tensors is one
``index_select`` on the concatenated row index followed by cheap views.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..layout import ZigLayout


@dataclass(frozen=True)
class ProducerSlice:
    """One producer SliceMap resolved against the model."""

    index: int  # position in ZigIndex.slices
    name: str
    param: nn.Parameter
    dim: int
    offset: int  # where this slice's rows start in the concatenated row index
    length: int  # param.shape[dim]

    def broadcast_shape(self) -> tuple[int, ...]:
        shape = [1] * self.param.dim()
        shape[self.dim] = self.length
        return tuple(shape)


class ZigIndex:
    """Precomputed index tensors that map producer rows to ZIGs (device-lazy)."""

    def __init__(self, layout: ZigLayout, model: nn.Module):
        self.num_zigs = int(layout.num_zigs)
        named_params = dict(model.named_parameters())
        # Slices are ordered parameter by parameter so a step can walk the parameters once
        # and emit rows in exactly the order of the concatenated row index.
        resolved = [(m, named_params[m.name]) for m in layout.producers]  # names checked by check_layout
        first_seen: dict[int, int] = {}
        for i, (_, p) in enumerate(resolved):
            first_seen.setdefault(id(p), i)
        resolved.sort(key=lambda mp: first_seen[id(mp[1])])  # stable: keeps layout order per parameter

        self.slices: list[ProducerSlice] = []
        rows: list[torch.Tensor] = []
        offset = 0
        for m, param in resolved:
            zig = m.zig.to(device="cpu", dtype=torch.int64)
            self.slices.append(ProducerSlice(len(self.slices), m.name, param, m.dim, offset, zig.numel()))
            # -1 (no prunable ZIG) goes to the sentinel slot num_zigs.
            rows.append(torch.where(zig < 0, torch.full_like(zig, self.num_zigs), zig))
            offset += zig.numel()
        self.num_rows = offset
        self._row_zig_cpu = torch.cat(rows) if rows else torch.zeros(0, dtype=torch.int64)
        self._row_zig_by_device: dict[torch.device, torch.Tensor] = {}
        # Slice of every row, for per-slice "any" reductions over per-row flags.
        self._row_slice_cpu = torch.cat(
            [torch.full((s.length,), s.index, dtype=torch.int64) for s in self.slices]
        ) if self.slices else torch.zeros(0, dtype=torch.int64)
        self._row_slice_by_device: dict[torch.device, torch.Tensor] = {}

        self.params: list[nn.Parameter] = []
        self.slices_of: dict[int, list[ProducerSlice]] = {}
        for s in self.slices:
            if id(s.param) not in self.slices_of:
                self.params.append(s.param)
                self.slices_of[id(s.param)] = []
            self.slices_of[id(s.param)].append(s)

        # Elements per ZIG (|g|): each row of a slice holds numel / length elements.
        row_sizes = torch.cat(
            [torch.full((s.length,), s.param.numel() // max(s.length, 1), dtype=torch.float64) for s in self.slices]
        ) if self.slices else torch.zeros(0, dtype=torch.float64)
        self.group_sizes = torch.zeros(self.num_zigs + 1, dtype=torch.float64).index_add_(
            0, self._row_zig_cpu, row_sizes
        )[: self.num_zigs]
        self.zig_group = layout.zig_group.to(device="cpu", dtype=torch.int64)

    def is_prunable(self, param: torch.Tensor) -> bool:
        return id(param) in self.slices_of

    def row_zig(self, device: torch.device) -> torch.Tensor:
        return _on_device(self._row_zig_by_device, self._row_zig_cpu, device)

    def row_slice(self, device: torch.device) -> torch.Tensor:
        return _on_device(self._row_slice_by_device, self._row_slice_cpu, device)

    def slices_with(self, row_flags: torch.Tensor) -> list[int]:
        """Per slice, how many of its rows have ``row_flags`` set (bool [num_rows]; one host sync)."""
        counts = torch.zeros(len(self.slices), dtype=torch.int64, device=row_flags.device)
        counts.index_add_(0, self.row_slice(row_flags.device), row_flags.to(torch.int64))
        return counts.tolist()

    def rows_of(self, per_zig: torch.Tensor) -> torch.Tensor:
        """A ``[num_zigs + 1]`` vector (sentinel included) read out per row: ``[num_rows]``."""
        return per_zig.index_select(0, self.row_zig(per_zig.device))

    # ----- reductions -------------------------------------------------------------

    def sum_rows(self, rows: list[torch.Tensor], device: torch.device) -> torch.Tensor:
        """Scatter per-slice rows into ZIGs.

        ``rows`` holds one ``[k, slice.length]`` tensor per slice, in slice order;
        returns ``[k, num_zigs + 1]`` float64 sums (the last column is the sentinel).
        """
        stacked = torch.cat(rows, dim=1).to(torch.float64)
        out = torch.zeros(stacked.shape[0], self.num_zigs + 1, dtype=torch.float64, device=device)
        return out.index_add_(1, self.row_zig(device), stacked)

    def group_abs_max(self) -> torch.Tensor:
        """max |x| over every ZIG's producer values, straight from the parameters ([num_zigs], float64).

        Zero exactly when every value is zero; a squared norm in float32 would also read 0
        for values around 1e-23, which are not.
        """
        if not self.slices:
            return torch.zeros(self.num_zigs, dtype=torch.float64)
        device = self.slices[0].param.device
        rows = [row_abs_max(s.param.detach(), s.dim).double() for s in self.slices]
        out = torch.zeros(self.num_zigs + 1, dtype=torch.float64, device=device)
        out.scatter_reduce_(0, self.row_zig(device), torch.cat(rows).to(device), reduce="amax")
        return out[: self.num_zigs].cpu()

    # ----- broadcasts -------------------------------------------------------------

    def expand(self, per_zig: torch.Tensor) -> list[torch.Tensor]:
        """Per-slice broadcastable views of a ``[num_zigs + 1]`` vector (sentinel included)."""
        values = per_zig.index_select(0, self.row_zig(per_zig.device))
        return [values[s.offset : s.offset + s.length].view(s.broadcast_shape()) for s in self.slices]


def _rows_view(t: torch.Tensor, dim: int) -> torch.Tensor | None:
    """``t`` as a [length, rest] view when that is free (dim 0 of a contiguous tensor)."""
    if dim == 0 and t.is_contiguous():
        return t.view(t.shape[0], -1)
    return None


def _accumulation_dtype(t: torch.Tensor) -> torch.Tensor:
    # Half-precision sums over thousands of elements lose too much; reduce in fp32.
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def row_abs_max(t: torch.Tensor, dim: int) -> torch.Tensor:
    """max over all dims but ``dim`` of |t|, one value per index along ``dim`` (0 for an empty row)."""
    if t.dim() == 1:
        return t.abs()
    if t.numel() == 0:  # (reshape cannot infer -1 from zero elements)
        return t.new_zeros(t.shape[dim])
    return t.abs().movedim(dim, 0).reshape(t.shape[dim], -1).amax(dim=1)


def row_sq_norms(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Σ over all dims but ``dim`` of t², one value per index along ``dim``."""
    t = _accumulation_dtype(t)
    if t.dim() == 1:
        return t * t
    view = _rows_view(t, dim)
    if view is not None:
        return torch.linalg.vector_norm(view, dim=1).square_()
    return t.square().sum(dim=[i for i in range(t.dim()) if i != dim])


def row_dots(a: torch.Tensor, b: torch.Tensor, dim: int) -> torch.Tensor:
    """Σ over all dims but ``dim`` of a·b, one value per index along ``dim``."""
    a, b = _accumulation_dtype(a), _accumulation_dtype(b)
    if a.dim() == 1:
        return a * b
    va, vb = _rows_view(a, dim), _rows_view(b, dim)
    if va is not None and vb is not None:
        return (va * vb).sum(dim=1)
    return (a * b).sum(dim=[i for i in range(a.dim()) if i != dim])


def _on_device(cache: dict, cpu_tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``cpu_tensor`` moved to ``device`` once, then served from ``cache``."""
    moved = cache.get(device)
    if moved is None:
        moved = cache[device] = cpu_tensor.to(device)
    return moved
