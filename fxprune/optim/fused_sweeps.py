"""The CPU fast path of a group step: numba kernels (cpu_kernels.py), two passes per tensor.

On by default for every group step that needs per-group sums (the pruning steps),
and with Adam/AdamW for the group steps that hold zero groups afterwards too (see
``FusedSweeps.pays``).  A parameter the kernels do not cover takes the eager
path of row_sweeps.py in the same step.  They cover a prunable parameter when:

* numba can be imported (any base rule: SGD, Adam, AdamW);
* the parameter, its gradient and its optimizer state (momentum buffer, Adam's
  moments) are float32 or float64 CPU tensors of one dtype, contiguous and dense;
* the parameter is in ZIGs along one dim, dim 0 (its rows are contiguous).

SGD's first momentum step, which creates the buffer, runs eagerly (Adam's moments
start at zero and are created here).  Kernels compile on first use (about a second
per kernel and dtype, then cached on disk by numba).

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

from .base_rules import AdamRule
from .group_ops import ProducerSlice, ZigIndex
from .row_sweeps import ALL_ROWS, RowSweeps

_FLOAT_DTYPES = (torch.float32, torch.float64)
_PLAIN = (torch.nn.Parameter, torch.Tensor)
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
    """Per-parameter fused passes (CPU) of one base rule, writing into a RowSweeps' row sums."""

    def __init__(self, zigs: ZigIndex, sweeps: RowSweeps, kernels, variant: str):
        self.zigs = zigs
        self.sweeps = sweeps
        self.kernels = kernels
        self.adam = variant in ("adam", "adamw")
        self.coupled_decay = variant == "adam"  # Adam's L2 term enters the gradient; AdamW's decay is a scale
        self._want: dict[int, tuple[object, object]] = {}  # slice index -> (mode, uint8 row mask)
        self._views: dict[int, tuple] = {}  # id(param) -> (storage key, x, state arrays)
        self._scalars: dict[tuple, tuple] = {}
        self._numpy_views: dict[int, tuple] = {}

    def pays(self, need_sums: bool) -> bool:
        """Whether this group step should take the kernels at all.

        Not above MAX_THREADS; and not for an SGD step that needs no sums, where the eager
        step makes the same passes over memory without reading x for sums (measured 0.85×
        torch's SGD eagerly, 1.15× fused, when holding zeros on ResNet-50).  Adam's eager
        direction takes several passes, so its steps without sums pay too (1.11× → 0.41×).
        """
        if torch.get_num_threads() > MAX_THREADS:
            return False
        return need_sums or self.adam

    def covers(self, p: torch.Tensor, group: dict, state: dict) -> bool:
        """Whether this step can take ``p`` through the kernels (checked every step: gradients come and go)."""
        slices = self.zigs.slices_of[id(p)]
        g = p.grad
        # Plain tensors only: a tensor subclass or a lazily negated view has no NumPy view of its memory.
        if (len(slices) != 1 or slices[0].dim != 0 or not p.requires_grad or type(p) not in _PLAIN
                or p.device.type != "cpu" or p.dtype not in _FLOAT_DTYPES or not p.is_contiguous() or p.is_neg()
                or g is None or type(g) is not torch.Tensor or g.dtype != p.dtype or g.is_sparse
                or not g.is_contiguous() or g.device != p.device or g.is_neg()):
            return False
        if self.adam:
            names = ("exp_avg", "exp_avg_sq") if "step" in state else ()  # no state yet: created in pass 1
        else:
            names = ("momentum_buffer",) if group["momentum"] != 0 else ()
        for name in names:
            t = state.get(name)
            if t is None or t.dtype != p.dtype or t.device != p.device or not t.is_contiguous():
                return False
        return True

    def direction_and_sums(self, items: list[tuple], states, group: dict) -> None:
        """For each ``(p, mode)``: store p's base-rule state (``states[p]``: momentum buffer or moments)
        and write its row sums where ``mode`` (None, ALL_ROWS or a LongTensor of rows) asks for them."""
        kernels = self.kernels
        for p, mode in items:
            state = states[p]
            s = self.zigs.slices_of[id(p)][0]
            if self.adam:
                AdamRule.init_state(p, state)
                state["step"].add_(1.0)
            x, g, moments = self._arrays(p, s, state, group)
            # Asked every step: columns() also moves the slice's rows when p changed dtype since.
            cols = self._numpy(self.sweeps.columns(p, s))
            want = self._wanted_rows(s, mode)
            if self.adam:
                beta1, beta2 = group["betas"]
                wd = group["weight_decay"] if self.coupled_decay else 0.0
                kernels.adam_direction_row_sums(x, g, *moments, want, cols, *self._scalars_of(
                    x.dtype, wd, 1 - beta1, beta2, 1 - beta2, *self._adam_corrections(state, group)))
            else:
                kernels.sgd_direction_row_sums(x, g, *moments, want, cols, *self._scalars_of(
                    x.dtype, group["weight_decay"], group["momentum"], 1.0 - group["dampening"]),
                    group["momentum"] != 0, group["nesterov"])
            # The kernel wrote through NumPy views, which autograd does not see: count the writes as
            # torch's in-place ops do, so that a graph saved before the step refuses to backpropagate.
            _bump_versions(self._state_tensors(state, group))

    def apply(self, items: list[tuple], states, group: dict, lr: float, decay: float) -> None:
        """For each ``(p, keep, scale)``: ``x <- scale·x − lr·keep·u``, with ``keep`` and ``scale``
        per-row views in p's dtype (scale None: ``decay`` everywhere), u re-formed from what pass 1
        stored in ``states[p]``."""
        kernels = self.kernels
        for p, keep, scale in items:
            state = states[p]
            s = self.zigs.slices_of[id(p)][0]
            x, g, moments = self._arrays(p, s, state, group)
            scale = np.full(s.length, decay, dtype=x.dtype) if scale is None else self._numpy(scale).reshape(-1)
            keep = self._numpy(keep).reshape(-1)
            if self.adam:
                kernels.adam_apply_rows(x, *moments, scale, keep, *self._scalars_of(
                    x.dtype, -lr, *self._adam_corrections(state, group)))
            else:
                kernels.sgd_apply_rows(x, g, *moments, scale, keep, *self._scalars_of(
                    x.dtype, -lr, group["weight_decay"], group["momentum"]), group["momentum"] != 0,
                    group["nesterov"])
            _bump_versions((p,))

    @staticmethod
    def _adam_corrections(state: dict, group: dict) -> tuple[float, float, float]:
        """√bc2, eps and bc1 of this step, as the eager rule computes them."""
        beta1, beta2 = group["betas"]
        step = state["step"].item()
        return (1 - beta2**step) ** 0.5, group["eps"], 1 - beta1**step

    def _arrays(self, p: torch.Tensor, s: ProducerSlice, state: dict, group: dict):
        """NumPy views ``[rows, rest]`` of x, its gradient and its rule state (momentum buffer, or
        Adam's two moments; SGD without momentum: the gradient stands in).

        The views of x and the state are kept while their storage stays the same (a step
        makes hundreds of these calls); the gradient's view is made afresh, so that no
        gradient is kept alive after ``zero_grad``.
        """
        tensors = self._state_tensors(state, group)
        key = (p.data_ptr(), *(t.data_ptr() for t in tensors))
        cached = self._views.get(id(p))
        if cached is None or cached[0] != key:
            rows = p.shape[0]
            x = p.detach().view(rows, -1).numpy()
            cached = self._views[id(p)] = (key, x, tuple(t.view(rows, -1).numpy() for t in tensors))
        _, x, moments = cached
        g = p.grad.detach().view(x.shape).numpy()  # (a gradient from backward(create_graph=True) requires grad)
        return x, g, moments or (g,)

    def _state_tensors(self, state: dict, group: dict) -> tuple[torch.Tensor, ...]:
        if self.adam:
            return state["exp_avg"], state["exp_avg_sq"]
        return (state["momentum_buffer"],) if group["momentum"] != 0 else ()

    def _scalars_of(self, dtype, *values: float) -> tuple:
        """``values`` as scalars of ``dtype``, so that the kernels' arithmetic stays in it."""
        key = (dtype, values)
        scalars = self._scalars.get(key)
        if scalars is None:
            if len(self._scalars) > 64:  # an LR schedule makes a new key every step
                self._scalars.clear()
            scalars = self._scalars[key] = self.kernels.as_dtype(values, dtype)
        return scalars

    def _numpy(self, view: torch.Tensor):
        """A NumPy view of one of RowSweeps' persistent views (kept: they live as long as it does)."""
        cached = self._numpy_views.get(id(view))
        if cached is None or cached[0] is not view:
            cached = self._numpy_views[id(view)] = (view, view.numpy())
        return cached[1]

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


def _bump_versions(tensors) -> None:
    for t in tensors:
        torch.autograd.graph.increment_version(t)
