"""Opt-in: the group step of the SGD rule as two torch.compile'd (inductor) kernels.

Eager, a step that needs the per-ZIG sums runs about eight kernels per prunable tensor
(two for momentum, four for ‖x‖², ⟨x,u⟩, ‖u‖², two for scale and update), each a pass
over memory, where torch's SGD runs three.  Compiled:

* pass 1 reads x, the gradient and the momentum buffer once and writes only the
  ``[3, rows]`` row sums (u is formed in registers);
* pass 2 forms u again, stores the new momentum buffer and writes
  ``x <- scale·x − lr·keep·u``;

eight passes over memory in all, as many as ``torch.optim.SGD``.

On the CPU the fused numba kernels (fused_sweeps.py), on by default, do the same
work in the same number of passes without a compile step; this path is for other
devices (not measured on a GPU here).

It is opt-in (``compiled=True``) because the first step compiles (about 100 s for
ResNet-50 on two CPU cores; later runs hit inductor's on-disk cache; CPU needs a C++
compiler), and because results equal the eager path only up to float rounding: the
row sums are added in another order, and with dampening or weight decay eager torch
uses a fused multiply-add that inductor's CPU code does not (likewise Nesterov).  Without these, the
momentum buffers and parameters written here equal the eager ones bit for bit.

Steps the kernels do not cover (another base rule, a missing gradient or momentum
buffer, a slice that is not dim 0 of a contiguous float tensor) run eagerly.
"""
from __future__ import annotations

import torch

from .group_ops import ZigIndex

_FLOAT_DTYPES = (torch.float32, torch.float64)


class CompiledSweeps:
    """The two compiled passes over the prunable parameters of a ZigIndex (SGD rule only)."""

    def __init__(self, zigs: ZigIndex):
        self.zigs = zigs
        self._row_sums = torch.compile(_row_sums)
        self._update = torch.compile(_update)

    def covers(self, variant: str, group: dict, state) -> bool:
        """Whether this step's tensors fit the kernels (checked every step: gradients come and go)."""
        if variant != "sgd" or not self.zigs.params:
            return False
        device, dtype = self.zigs.params[0].device, self.zigs.params[0].dtype
        for p in self.zigs.params:
            slices = self.zigs.slices_of[id(p)]
            g = p.grad
            if (len(slices) != 1 or slices[0].dim != 0 or p.dtype not in _FLOAT_DTYPES or p.dtype != dtype
                    or p.device != device or not p.is_contiguous() or g is None or g.dtype != dtype
                    or not g.is_contiguous()):
                return False
            if group["momentum"] != 0:
                buf = state[p].get("momentum_buffer")
                if buf is None or not buf.is_contiguous() or buf.dtype != dtype:
                    return False  # the first momentum step initialises the buffer eagerly
        return True

    def row_sums(self, group: dict, state) -> torch.Tensor:
        """``[3, num_rows]`` ‖x‖², ⟨x,u⟩, ‖u‖² per row, in the parameters' dtype."""
        xs, grads, bufs = self._tensors(group, state)
        return self._row_sums(xs, grads, bufs, *_hyper(group))

    def update(self, group: dict, state, keep_rows: torch.Tensor, scale_rows: torch.Tensor) -> None:
        """The base step (momentum buffer included) and ``x <- scale·x − lr·keep·u``; rows are float64."""
        xs, grads, bufs = self._tensors(group, state)
        dtype = xs[0].dtype
        # A 0-d tensor, not a float, so that an LR schedule does not trigger recompiles.
        neg_lr = torch.tensor(-group["lr"], dtype=torch.float64, device=xs[0].device)
        self._update(xs, grads, bufs, keep_rows.to(dtype), scale_rows.to(dtype), neg_lr, *_hyper(group))

    def _tensors(self, group: dict, state):
        params = self.zigs.params
        xs = [p.detach() for p in params]
        grads = [p.grad for p in params]
        bufs = [state[p]["momentum_buffer"] for p in params] if group["momentum"] != 0 else None
        return xs, grads, bufs


def _hyper(group: dict) -> tuple:
    return group["momentum"], group["dampening"], group["weight_decay"], group["nesterov"]


def _rows(t: torch.Tensor) -> torch.Tensor:
    return t.view(t.shape[0], -1)


def _direction(x, g, buf, momentum: float, dampening: float, weight_decay: float, nesterov: bool):
    """SGD's u and new momentum buffer, in the operation order of base_rules.SGDRule.direction."""
    d = g + x * weight_decay if weight_decay != 0 else g
    if momentum == 0:
        return d, None
    new_buf = buf * momentum + (d * (1 - dampening) if dampening != 0 else d)
    return (d + new_buf * momentum if nesterov else new_buf), new_buf


def _row_sums(xs, grads, bufs, momentum, dampening, weight_decay, nesterov):
    out = []
    for i, (x, g) in enumerate(zip(xs, grads)):
        x2 = _rows(x)
        u, _ = _direction(x2, _rows(g), None if bufs is None else _rows(bufs[i]),
                          momentum, dampening, weight_decay, nesterov)
        out.append(torch.stack([(x2 * x2).sum(1), (x2 * u).sum(1), (u * u).sum(1)]))
    return torch.cat(out, dim=1)


def _update(xs, grads, bufs, keep_rows, scale_rows, neg_lr, momentum, dampening, weight_decay, nesterov):
    offset = 0
    for i, (x, g) in enumerate(zip(xs, grads)):
        rows = x.shape[0]
        shape = (rows,) + (1,) * (x.dim() - 1)
        keep = keep_rows[offset : offset + rows].view(shape)
        scale = scale_rows[offset : offset + rows].view(shape)
        offset += rows
        u, new_buf = _direction(x, g, None if bufs is None else bufs[i], momentum, dampening, weight_decay, nesterov)
        if new_buf is not None:
            bufs[i].copy_(new_buf)
        # The eager order: x·scale first (p.mul_), then + (−lr·u)·keep (p.addcmul_).
        x.copy_(x * scale + neg_lr * u * keep)
