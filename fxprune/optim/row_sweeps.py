"""The two passes of a group step over the prunable tensors, with everything they need laid out once.

A group step reads each prunable tensor twice:

1. ``reduce``: right after the base rule produced u, the per-row reductions
   ‖x‖², ⟨x,u⟩, ‖u‖² are written straight into one persistent ``[3, num_rows]``
   buffer (``sums`` then scatters it into ZIGs);
2. ``apply``: once the algorithm has decided, ``x <- scale·x − lr·keep·u`` with
   per-row ``scale`` and ``keep``.

Each pass is a handful of kernels per tensor.  At ResNet scale (about 160 tensors)
the Python-side slicing, stacking and allocation around them used to cost as much
as the arithmetic, so output columns, scratch space and per-row broadcast views are
built on first use (per device and dtype) and reused.  Large tensors are reduced in
blocks of rows so that x, u and the product scratch stay in cache between the three
reductions.

Every value is computed with the same kernels as the plain formulas in group_ops
(row_sq_norms, row_dots), so results do not depend on this layout.
"""
from __future__ import annotations

import torch

from .group_ops import ProducerSlice, ZigIndex, row_dots, row_sq_norms

# Stands, in the list of directions, for a parameter whose step runs in the fused kernels.
FUSED = type("Fused", (), {"__repr__": lambda self: "FUSED"})()

# Rows are reduced in blocks of about this many elements: x, u and the product scratch of a block
# (3 × 2 MiB in float32) stay in cache across the three reductions.  Measured on ResNet-50, 1 thread.
BLOCK_ELEMENTS = 1 << 19

ALL_ROWS = "all"  # reduce mode: every row (the other modes: None = skip, a LongTensor = those rows)


class RowSweeps:
    """Buffers and kernels of the two passes over the prunable parameters of a ZigIndex."""

    def __init__(self, zigs: ZigIndex):
        self.zigs = zigs
        self._rows: dict[tuple, _RowBuffer] = {}  # (device, accumulation dtype) -> reduction outputs
        self._owner: list[tuple | None] = [None] * len(zigs.slices)  # which buffer holds a slice's last rows
        self._updates: dict[tuple, _UpdateBuffer] = {}  # (device, param dtype) -> keep/scale rows
        self._scratch: dict[tuple, torch.Tensor] = {}

    # ----- pass 1: per-row reductions ----------------------------------------------------

    def reduce(self, p: torch.Tensor, u: torch.Tensor, modes: list) -> None:
        """Write ‖x‖², ⟨x,u⟩, ‖u‖² of the rows ``modes`` asks for, for every slice of ``p``.

        Rows a mode skips keep stale values: they belong only to ZIGs nobody reads this
        step, whose sums the caller replaces by 0.
        """
        x = p.detach()
        for s in self.zigs.slices_of[id(p)]:
            mode = modes[s.index]
            if mode is None:
                continue
            cols = self.columns(x, s)
            if mode is ALL_ROWS and _plain_rows(x, u, s):
                self._reduce_rows(x, u, s, cols)
            elif mode is ALL_ROWS or not (u.is_contiguous() or u.dim() == 1):
                cols.copy_(torch.stack([row_sq_norms(x, s.dim), row_dots(x, u, s.dim), row_sq_norms(u, s.dim)]))
            else:
                cols.index_copy_(1, mode, self._picked_rows(x, u, mode))

    def sums(self, device: torch.device) -> torch.Tensor:
        """``[3, num_zigs + 1]`` float64 per-ZIG sums of the rows written by ``reduce``."""
        buffers = [b.rows for key, b in self._rows.items() if key[0] == device]
        if not buffers:
            return torch.zeros(3, self.zigs.num_zigs + 1, dtype=torch.float64, device=device)
        stacked = buffers[0].to(torch.float64)
        for other in buffers[1:]:  # mixed dtypes: each buffer is zero outside its own slices
            stacked = stacked + other
        out = torch.zeros(3, self.zigs.num_zigs + 1, dtype=torch.float64, device=device)
        return out.index_add_(1, self.zigs.row_zig(device), stacked)

    def _reduce_rows(self, x: torch.Tensor, u: torch.Tensor, s: ProducerSlice, cols: torch.Tensor) -> None:
        """All rows of a slice whose rows are free views (see ``_plain_rows``), written into ``cols``."""
        if x.dim() == 1:
            torch.mul(x, x, out=cols[0])
            torch.mul(x, u, out=cols[1])
            torch.mul(u, u, out=cols[2])
            return
        xv, uv = x.view(s.length, -1), u.view(s.length, -1)
        width = xv.shape[1]
        step = max(1, BLOCK_ELEMENTS // max(width, 1))
        scratch = self._scratch_for(x, min(step, s.length) * width)
        for start in range(0, s.length, step):
            end = min(start + step, s.length)
            xb, ub = xv[start:end], uv[start:end]
            # The product first: it reads x and u, which the two norms then find in cache.
            product = torch.mul(xb, ub, out=scratch[: (end - start) * width].view(end - start, width))
            torch.sum(product, dim=1, out=cols[1, start:end])
            torch.linalg.vector_norm(xb, dim=1, out=cols[0, start:end])
            torch.linalg.vector_norm(ub, dim=1, out=cols[2, start:end])
        cols[0::2].square_()  # row_sq_norms squares the norm in the same dtype

    @staticmethod
    def _picked_rows(x: torch.Tensor, u: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """[3, len(rows)] for the rows ``rows`` of a dim-0 slice, gathered first."""
        length = x.shape[0]
        xs = x.reshape(length, -1).index_select(0, rows)
        us = u.reshape(length, -1).index_select(0, rows)
        if x.dim() == 1:
            xs, us = xs.squeeze(1), us.squeeze(1)
        # Row-wise reductions do not depend on the other rows, so these equal the full rows' values.
        return torch.stack([row_sq_norms(xs, 0), row_dots(xs, us, 0), row_sq_norms(us, 0)])

    def columns(self, x: torch.Tensor, s: ProducerSlice) -> torch.Tensor:
        """The ``[3, length]`` row sums of slice ``s`` of ``x``, in x's accumulation dtype."""
        key = (x.device, _accumulation_dtype(x.dtype))
        buffer = self._rows.get(key)
        if buffer is None:
            buffer = self._rows[key] = _RowBuffer(self.zigs, *key)
        owner = self._owner[s.index]
        if owner != key:  # a parameter changed dtype or device: its old rows must not be summed again
            if owner is not None:
                self._rows[owner].columns[s.index].zero_()
            self._owner[s.index] = key
        return buffer.columns[s.index]

    def _scratch_for(self, x: torch.Tensor, numel: int) -> torch.Tensor:
        """A reused flat buffer of at least ``numel`` elements: a fresh product tensor per block
        would be allocated and page-faulted every step."""
        key = (x.device, x.dtype)
        scratch = self._scratch.get(key)
        if scratch is None or scratch.numel() < numel:
            scratch = self._scratch[key] = torch.empty(numel, dtype=x.dtype, device=x.device)
        return scratch

    # ----- pass 2: the update ------------------------------------------------------------

    def apply(self, directions: list, keep: torch.Tensor, factor: torch.Tensor | None,
              lr: float, decay: float, fused_step=None) -> None:
        """``x <- decay·F·x − lr·keep·u`` for every prunable parameter (``x <- F·x`` where u is None:
        a parameter without a gradient).

        ``keep`` and ``factor`` (F) are float64 ``[num_zigs + 1]`` (sentinel included) on the
        parameters' device; ``factor`` None means F = 1.  A direction that is ``FUSED`` (see
        fused_sweeps.py) lives in the fused kernels: ``fused_step`` gets one list of
        ``(p, keep_rows, scale_rows)`` for all of them, with per-row views in p's dtype
        (scale None: 1), and updates those parameters.
        """
        zigs = self.zigs
        if not zigs.params:
            return
        keep_rows = zigs.rows_of(keep)
        factor_rows = scale_rows = scaling = None
        if factor is not None:
            factor_rows = zigs.rows_of(factor)
            scale_rows = decay * factor_rows
            # Slices whose multiplier is exactly 1 everywhere skip the multiply (x·1 = x).
            scaling = zigs.slices_with(scale_rows != 1.0)
        filled: set = set()
        fused: list[tuple] = []
        for p, u in zip(zigs.params, directions):
            if not p.requires_grad:
                continue  # frozen (even after its groups were marked): never changed
            slices = zigs.slices_of[id(p)]
            if u is FUSED:  # one dim-0 slice: see fused_sweeps.FusedSweeps.covers
                keep_view, scale_view = self._update_views(p, slices[0], keep_rows, scale_rows, filled)
                fused.append((p, keep_view, scale_view if scaling is not None else None))
                continue
            if u is None:  # no gradient: like torch, no base step (no decay); only the group factors act
                if factor is not None and any(scaling[s.index] for s in slices):
                    p.mul_(_product([_row_view(factor_rows, s) for s in slices]).to(p.dtype))
                continue
            if len(slices) == 1:
                s = slices[0]
                keep_view, scale_view = self._update_views(p, s, keep_rows, scale_rows, filled)
                if scaling is not None:
                    if scaling[s.index]:
                        p.mul_(scale_view)
                elif decay != 1.0:
                    p.mul_(decay)
            else:
                keep_view = _product([_row_view(keep_rows, s) for s in slices]).to(p.dtype)
                if scaling is not None:
                    if any(scaling[s.index] for s in slices):
                        p.mul_((decay * _product([_row_view(factor_rows, s) for s in slices])).to(p.dtype))
                elif decay != 1.0:
                    p.mul_(decay)
            p.addcmul_(u, keep_view, value=-lr)
        if fused:
            fused_step(fused)

    def _update_views(self, p: torch.Tensor, s: ProducerSlice, keep_rows: torch.Tensor,
                      scale_rows: torch.Tensor | None, filled: set) -> tuple[torch.Tensor, torch.Tensor]:
        """Slice ``s``'s keep and scale rows in p's dtype, broadcastable to p (scale stale if None)."""
        key = (p.device, p.dtype)
        buffer = self._updates.get(key)
        if buffer is None:
            buffer = self._updates[key] = _UpdateBuffer(self.zigs, *key)
        if key not in filled:  # one conversion per dtype and step, viewed per parameter
            buffer.fill(keep_rows, scale_rows)
            filled.add(key)
        return buffer.views[s.index]


class _RowBuffer:
    """``[3, num_rows]`` reduction outputs in one dtype, with a ``[3, length]`` column view per slice."""

    def __init__(self, zigs: ZigIndex, device: torch.device, dtype: torch.dtype):
        self.rows = torch.zeros(3, zigs.num_rows, dtype=dtype, device=device)
        self.columns = [self.rows[:, s.offset : s.offset + s.length] for s in zigs.slices]


class _UpdateBuffer:
    """Per-row keep and scale in one parameter dtype, with broadcastable views per slice."""

    def __init__(self, zigs: ZigIndex, device: torch.device, dtype: torch.dtype):
        self.rows = torch.zeros(2, zigs.num_rows, dtype=dtype, device=device)
        self.views = [(self.rows[0, s.offset : s.offset + s.length].view(s.broadcast_shape()),
                       self.rows[1, s.offset : s.offset + s.length].view(s.broadcast_shape())) for s in zigs.slices]

    def fill(self, keep_rows: torch.Tensor, scale_rows: torch.Tensor | None) -> None:
        self.rows[0].copy_(keep_rows)
        if scale_rows is not None:
            self.rows[1].copy_(scale_rows)


def _plain_rows(x: torch.Tensor, u: torch.Tensor, s: ProducerSlice) -> bool:
    """Rows are free views: a 1-D tensor, or dim 0 of contiguous x and u in a float accumulation dtype."""
    if x.dtype != _accumulation_dtype(x.dtype) or u.dtype != x.dtype:
        return False
    return x.dim() == 1 or (s.dim == 0 and x.is_contiguous() and u.is_contiguous())


def _accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    # Must match group_ops: half-precision rows are reduced in float32.
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _row_view(rows: torch.Tensor, s: ProducerSlice) -> torch.Tensor:
    return rows[s.offset : s.offset + s.length].view(s.broadcast_shape())


def _product(tensors: list[torch.Tensor]) -> torch.Tensor:
    out = tensors[0]
    for t in tensors[1:]:
        out = out * t  # an element in ZIGs along two dims: zero if either group is zeroed
    return out
