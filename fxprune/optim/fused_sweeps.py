"""The CPU fast path of a group step for the SGD rule: numba kernels (cpu_kernels.py) per tensor.

On by default wherever it applies; a parameter it does not cover takes the eager
path of row_sweeps.py in the same step.  It covers a prunable parameter when:

* the base rule is SGD and numba can be imported;
* the parameter, its gradient and (with momentum) its momentum buffer are float32 or
  float64 CPU tensors of one dtype, contiguous and dense;
* the parameter is in ZIGs along one dim, dim 0 (its rows are contiguous).

The first momentum step, which creates the buffer, runs eagerly.  Kernels compile on
first use (about a second per dtype, then cached on disk by numba).

The kernels run on one core.  They are used while torch has at most ``MAX_THREADS``
intra-op threads: on the 2-core machine this was measured on, DHSPG's pruning step on
ResNet-50 took 31 ms with them and 38 ms eagerly at two threads (47 ms at one).  With
more threads the eager path's torch kernels spread over all of them and memory
bandwidth grows with cores, so the eager path runs; where the crossover lies on a
larger machine has not been measured.  (Spreading the kernels over Python threads did
not help: torch's OpenMP workers keep spinning on the other cores for milliseconds
after each parallel op.)
"""
from __future__ import annotations

import warnings

import numpy as np
import torch

from .group_ops import ProducerSlice, ZigIndex
from .row_sweeps import ALL_ROWS, RowSweeps

_FLOAT_DTYPES = (torch.float32, torch.float64)
MAX_THREADS = 2


def load_kernels():
    """The cpu_kernels module, or None where numba cannot be used (then every step runs eagerly)."""
    try:
        from . import cpu_kernels
    except ImportError:  # numba is not installed, or does not fit the installed NumPy
        return None
    except RuntimeError as error:  # numba found no writable place for its on-disk cache
        warnings.warn(f"fxprune: the fused CPU kernels are off ({error}); set NUMBA_CACHE_DIR to a writable "
                      "directory to turn them on. Steps run eagerly: same results, slower.", stacklevel=2)
        return None
    return cpu_kernels


class FusedSweeps:
    """Per-parameter fused passes (SGD rule, CPU) writing into a RowSweeps' row sums."""

    def __init__(self, zigs: ZigIndex, sweeps: RowSweeps, kernels):
        self.zigs = zigs
        self.sweeps = sweeps
        self.kernels = kernels
        self._want: dict[int, tuple[object, object]] = {}  # slice index -> (mode, uint8 row mask)
        self._views: dict[int, tuple] = {}  # id(param) -> (storage key, x, buffer, row-sum columns)
        self._scalars: dict[tuple, tuple] = {}
        self._flat_views: dict[int, tuple] = {}
        self._ones_cache: dict[tuple, object] = {}

    @staticmethod
    def in_use() -> bool:
        """Whether this step should take the kernels at all (see MAX_THREADS)."""
        return torch.get_num_threads() <= MAX_THREADS

    def covers(self, p: torch.Tensor, group: dict, state: dict) -> bool:
        """Whether this step can take ``p`` through the kernels (checked every step: gradients come and go)."""
        slices = self.zigs.slices_of[id(p)]
        g = p.grad
        if (len(slices) != 1 or slices[0].dim != 0 or not p.requires_grad or p.device.type != "cpu"
                or p.dtype not in _FLOAT_DTYPES or not p.is_contiguous() or g is None or g.dtype != p.dtype
                or g.is_sparse or not g.is_contiguous() or g.device != p.device):
            return False
        if group["momentum"] != 0:
            buf = state.get("momentum_buffer")
            if buf is None or buf.dtype != p.dtype or buf.device != p.device or not buf.is_contiguous():
                return False
        return True

    def direction_and_sums(self, items: list[tuple], group: dict) -> None:
        """For each ``(p, state, mode)``: store p's SGD momentum buffer and write its row sums where
        ``mode`` (None, ALL_ROWS or a LongTensor of rows) asks for them."""
        calls = []
        for p, state, mode in items:
            s = self.zigs.slices_of[id(p)][0]
            x, g, buf, cols = self._arrays(p, s, state, group)
            weight_decay, momentum, undamped, _ = self._hyper(x.dtype, group, 0.0)
            calls.append((x, g, buf, self._wanted_rows(s, mode), cols, weight_decay, momentum, undamped,
                          group["nesterov"]))
        self._run(self.kernels.sgd_direction_row_sums, calls)

    def apply(self, items: list[tuple], group: dict, lr: float) -> None:
        """For each ``(p, state, keep, scale)``: ``x <- scale·x − lr·keep·u``, with ``keep`` and ``scale``
        per-row views in p's dtype (scale None: 1), u re-formed from what pass 1 stored."""
        calls = []
        for p, state, keep, scale in items:
            s = self.zigs.slices_of[id(p)][0]
            x, g, buf, _ = self._arrays(p, s, state, group)
            weight_decay, momentum, _, neg_lr = self._hyper(x.dtype, group, -lr)
            scale = self._ones(s.length, x.dtype) if scale is None else self._flat(scale)
            calls.append((x, g, buf, scale, self._flat(keep), neg_lr, weight_decay, momentum, group["nesterov"]))
        self._run(self.kernels.sgd_apply_rows, calls)

    @staticmethod
    def _run(kernel, calls: list[tuple]) -> None:
        for args in calls:
            kernel(*args)

    def _arrays(self, p: torch.Tensor, s: ProducerSlice, state: dict, group: dict):
        """NumPy views ``[rows, rest]`` of x, its gradient and momentum buffer, and its row-sum columns.

        The views of x, the buffer and the columns are kept while their storage stays the
        same (a step makes thousands of these calls); the gradient's view is made afresh,
        so that no gradient is kept alive after ``zero_grad``.
        """
        buf = state.get("momentum_buffer") if group["momentum"] != 0 else None
        key = (p.data_ptr(), None if buf is None else buf.data_ptr())
        cached = self._views.get(id(p))
        if cached is None or cached[0] != key:
            rows = p.shape[0]
            x = p.detach().view(rows, -1).numpy()
            cols = self.sweeps.columns(p, s).numpy()
            cached = self._views[id(p)] = (key, x, None if buf is None else buf.view(rows, -1).numpy(), cols)
        _, x, buf_rows, cols = cached
        g = p.grad.view(x.shape).numpy()
        return x, g, g if buf_rows is None else buf_rows, cols

    def _hyper(self, dtype, group: dict, neg_lr: float) -> tuple:
        """weight decay, momentum, 1 − dampening and −lr as scalars of ``dtype`` (kernel arithmetic stays in it)."""
        key = (dtype, group["weight_decay"], group["momentum"], group["dampening"], neg_lr)
        values = self._scalars.get(key)
        if values is None:
            if len(self._scalars) > 64:  # an LR schedule makes a new key every step
                self._scalars.clear()
            values = self._scalars[key] = self.kernels.as_dtype(
                (group["weight_decay"], group["momentum"], 1.0 - group["dampening"], neg_lr), dtype)
        return values

    def _flat(self, view: torch.Tensor):
        """A NumPy view of one of RowSweeps' persistent per-row views (kept: they live as long as it does)."""
        cached = self._flat_views.get(id(view))
        if cached is None or cached[0] is not view:
            cached = self._flat_views[id(view)] = (view, view.reshape(-1).numpy())
        return cached[1]

    def _ones(self, length: int, dtype):
        key = (length, dtype)
        if key not in self._ones_cache:
            self._ones_cache[key] = np.ones(length, dtype=dtype)
        return self._ones_cache[key]

    def _wanted_rows(self, s: ProducerSlice, mode):
        """uint8 [length]: 1 where ``mode`` (None, ALL_ROWS or a LongTensor of rows) asks for sums."""
        cached = self._want.get(s.index)
        if cached is not None and cached[0] is mode:
            return cached[1]
        want = torch.zeros(s.length, dtype=torch.uint8)
        if mode is ALL_ROWS:
            want.fill_(1)
        elif mode is not None:
            want[mode.cpu()] = 1
        self._want[s.index] = (mode, want.numpy())
        return self._want[s.index][1]

