"""DHSPG (OTOv2): dual half-space projected gradient with an exact sparsity target.

Schedule (steps counted from 0):

* before ``start_pruning_step``: the base optimizer, untouched;
* the pruning window ``[start_pruning_step, start_pruning_step + pruning_steps)`` is
  cut into ``pruning_periods`` periods.  At the first step of period p the groups
  not yet marked are scored (OTOv2 saliency) and the most redundant ones are marked
  until ``⌊K·(p+1)/periods⌋`` are marked in total, K = ⌊target·num_zigs⌋ (fewer
  only when ``width_multiple`` makes K unreachable; see partition.py);
* marked groups of the current period take the base step plus the group-adaptive
  penalty λ_g·x_g/‖x_g‖ and are projected to zero by the half-space test with ε;
  at the last step of the period every marked group still nonzero is projected;
* unmarked groups only ever take the base step, so they never become zero through
  the optimizer; zeroed groups are held at exactly zero from then on.

Hence exactly the marked count is zero from step ``start + pruning_steps`` on —
the reference's penalty and projection alone can over- or undershoot.
"""
from __future__ import annotations

import torch

from .group_sparse_optimizer import GroupStats, GroupUpdate
from .half_space import adaptive_lambda, direction_stats, leaves_half_space, penalty_factor
from .partition import dhspg_redundancy
from .targeted import TargetedGroupSparseOptimizer
from .validation import check_epsilon, check_real

# Reference defaults per base rule: (lmbda, lmbda_amplify, hat_lmbda_coeff).
PENALTY_DEFAULTS = {"sgd": (1e-3, 2.0, 10.0), "adam": (1e-2, 20.0, 1e3), "adamw": (1e-2, 20.0, 1e3)}


class DHSPG(TargetedGroupSparseOptimizer):
    """OTOv2's DHSPG over a PruneSpace; lands on exactly ⌊target·num_zigs⌋ zero ZIGs.

    ``lmbda``, ``lmbda_amplify`` and ``hat_lmbda_coeff`` default to the reference values
    for the chosen ``variant`` (SGD: 1e-3, 2, 10; Adam/AdamW: 1e-2, 20, 1e3).
    On the CPU the group steps run fused numba kernels by default (fused_sweeps.py).
    ``compiled=True`` (SGD only, opt-in) runs the pruning steps as two torch.compile'd
    kernels instead, over every prunable tensor on any device; equal to the default up to
    float rounding, and no faster on the CPU; see compiled_sweeps.py.
    """

    def __init__(self, space, lr: float = 1e-3, *, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False, variant: str = "sgd",
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 target_group_sparsity: float = 0.5, start_pruning_step: int = 0, pruning_steps: int,
                 pruning_periods: int = 1, lmbda: float | None = None, lmbda_amplify: float | None = None,
                 hat_lmbda_coeff: float | None = None, epsilon: float = 0.9, width_multiple: int | None = None,
                 compiled: bool = False):
        super().__init__(space, variant=variant, lr=lr, momentum=momentum, dampening=dampening,
                         weight_decay=weight_decay, nesterov=nesterov, betas=betas, eps=eps, compiled=compiled)
        check_epsilon(epsilon)
        default_lmbda, default_amplify, default_hat = PENALTY_DEFAULTS[variant]
        self.lmbda = default_lmbda if lmbda is None else lmbda
        self.lmbda_amplify = default_amplify if lmbda_amplify is None else lmbda_amplify
        self.hat_lmbda_coeff = default_hat if hat_lmbda_coeff is None else hat_lmbda_coeff
        check_real("lmbda", self.lmbda, low=0, hint="The base group penalty; the reference uses 1e-3 (SGD) or 1e-2 (Adam).")
        check_real("lmbda_amplify", self.lmbda_amplify, low=0, hint="The reference uses 2 (SGD) or 20 (Adam).")
        check_real("hat_lmbda_coeff", self.hat_lmbda_coeff, low=1, hint="It caps λ_g at hat·λ; the reference uses 10 or 1e3.")
        self.epsilon = epsilon
        self._init_target(target_group_sparsity, start_pruning_step, pruning_steps, pruning_periods, width_multiple)

    # ----- schedule ---------------------------------------------------------------------

    def _plan(self, step: int) -> str:
        if self.schedule.period_at(step) is not None:
            return "stats"
        return "update" if bool(self.held_zero.any()) else "plain"

    def _needed_zigs(self, step: int) -> torch.Tensor | None:
        # The period's first step scores every unmarked group; later steps read the sums of the
        # period's active groups only (the others take the plain step or are held at zero).
        period = self.schedule.period_at(step)
        if period is None or self.schedule.is_period_start(step):
            return None
        return (self.marked_period == period) & ~self.held_zero

    def _decide(self, step: int, stats: GroupStats | None, lr: float, decay: float) -> GroupUpdate:
        period = self.schedule.period_at(step)
        if period is None:
            self._last_step = {"plan": "hold"}
            return self._hold_zero_update()
        assert stats is not None
        device = stats.xx.device
        xx, xu, uu = stats.xx, stats.xu, stats.uu
        xd, dd = direction_stats(xx, xu, uu, lr, decay)
        if self.schedule.is_period_start(step):
            self._mark(period, xx, xd, dd)

        held = self.held_zero.to(device)
        active = (self.marked_period.to(device) == period) & ~held
        lam = adaptive_lambda(xx, xd, dd, self.lmbda, self.lmbda_amplify, self.hat_lmbda_coeff)
        factor = penalty_factor(xx, lam, lr, decay)
        by_half_space = leaves_half_space(xx, xu, factor, lr, decay, self.epsilon) & active
        forced = active & ~by_half_space if self.schedule.is_period_last(step) else torch.zeros_like(active)
        held = held | by_half_space | forced
        self.held_zero = held.cpu()

        factor = torch.where(active, factor, torch.ones_like(factor)).masked_fill(held, 0.0)
        self._last_step = {
            "plan": "prune", "period": period,
            "num_active": int(active.sum()),
            "num_projected_by_half_space": int(by_half_space.sum()),
            "num_projected_at_deadline": int(forced.sum()),
            "mean_active_lambda": float(lam[active].mean()) if bool(active.any()) else 0.0,
        }
        return GroupUpdate(keep=(~held).to(torch.float64), factor=factor)

    def _mark(self, period: int, xx, xd, dd) -> None:
        self._mark_most_redundant(period, dhspg_redundancy(xx, xd, dd, self.zigs.group_sizes.to(xx.device)))

