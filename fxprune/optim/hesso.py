"""HESSO (the reference's current default): progressive, scheduled shrinking to zero.

The pruning window is cut into ``pruning_periods`` periods (see schedule.py).  At the
first step of each period the unmarked groups are ranked by a blended importance
(magnitude, size-normalised magnitude, cosine, first/second-order Taylor; see
partition.hesso_importance) and the least important are marked until
``⌊K·(p+1)/periods⌋`` are marked.  During that period of L steps the marked
groups take the base step and are then scaled by (L−j−1)/(L−j) at its j-th step,
a linear ramp whose last factor is exactly 0.  Marked groups are held at zero
afterwards; everything else trains with the base rule only.
"""
from __future__ import annotations

import torch

from .group_sparse_optimizer import GroupStats, GroupUpdate
from .half_space import direction_stats
from .partition import HESSO_CRITERIA, hesso_importance
from .targeted import TargetedGroupSparseOptimizer
from .validation import check_real

DEFAULT_IMPORTANCE = {name: 0.2 for name in HESSO_CRITERIA}


class HESSO(TargetedGroupSparseOptimizer):
    """HESSO over a PruneSpace; lands on exactly ⌊target·num_zigs⌋ zero ZIGs."""

    def __init__(self, space, lr: float = 1e-3, *, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False, variant: str = "sgd",
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 target_group_sparsity: float = 0.5, start_pruning_step: int = 0, pruning_steps: int,
                 pruning_periods: int = 1, importance_weights: dict[str, float] | None = None,
                 width_multiple: int | None = None, compiled: bool = False):
        super().__init__(space, variant=variant, lr=lr, momentum=momentum, dampening=dampening,
                         weight_decay=weight_decay, nesterov=nesterov, betas=betas, eps=eps, compiled=compiled)
        weights = dict(DEFAULT_IMPORTANCE if importance_weights is None else importance_weights)
        unknown = sorted(set(weights) - set(HESSO_CRITERIA))
        if unknown:
            raise ValueError(f"importance_weights has unknown criteria {unknown}; use names from {HESSO_CRITERIA}.")
        for name, w in weights.items():
            check_real(f"importance_weights[{name!r}]", w, low=0, hint="Weights are non-negative blend coefficients.")
        if not any(w > 0 for w in weights.values()):
            raise ValueError("importance_weights must give at least one criterion a positive weight.")
        self.importance_weights = weights
        self._init_target(target_group_sparsity, start_pruning_step, pruning_steps, pruning_periods, width_multiple)

    def _plan(self, step: int) -> str:
        if self.schedule.is_period_start(step):
            return "stats"
        if self.schedule.period_at(step) is not None or bool(self.held_zero.any()):
            return "update"
        return "plain"

    def _decide(self, step: int, stats: GroupStats | None, lr: float, decay: float) -> GroupUpdate:
        period = self.schedule.period_at(step)
        if period is None:
            self._last_step = {"plan": "hold"}
            return self._hold_zero_update()
        if stats is not None:
            self._mark(period, stats, lr, decay)
        j, length = self.schedule.position_in_period(step)
        active = (self.marked_period == period) & ~self.held_zero
        ramp = torch.where(active, torch.tensor((length - j - 1) / (length - j), dtype=torch.float64),
                           torch.ones(self.num_zigs, dtype=torch.float64))
        if j == length - 1:
            self.held_zero = self.held_zero | active
        ramp = ramp.masked_fill(self.held_zero, 0.0)
        self._last_step = {"plan": "prune", "period": period, "num_active": int(active.sum()),
                           "ramp": (length - j - 1) / (length - j)}
        # x <- ramp·(decay·x − lr·u): the same factor on both terms.
        return GroupUpdate(keep=ramp, factor=ramp)

    def _mark(self, period: int, stats: GroupStats, lr: float, decay: float) -> None:
        xd, dd = direction_stats(stats.xx, stats.xu, stats.uu, lr, decay)
        importance = hesso_importance(stats.xx, xd, dd, self.zigs.group_sizes.to(stats.xx.device),
                                      self.importance_weights)
        self._mark_most_redundant(period, -importance)
