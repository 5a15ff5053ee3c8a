"""HSPG (OTOv1): subgradient warm-up, then half-space projected gradient.

* Steps ``< warmup_steps`` (n_p): every nonzero group takes the base step plus the
  group-lasso subgradient λ·x_g/‖x_g‖; nothing is projected.
* Afterwards: groups already exactly zero are held there; every other group takes
  the trial step x̂_g = x_g − lr·(d_g + λ·x_g/‖x_g‖) and is set to zero when x̂_g
  leaves the half-space ⟨y, x_g⟩ ≥ ε‖x_g‖².
* ``max_group_sparsity`` optionally caps the zero fraction: when more groups want
  to leave than the cap allows, the ones whose trial point is deepest outside
  (smallest ⟨x̂_g, x_g⟩/‖x_g‖², ties by ZIG id) are projected first.

HSPG has no exact target; DHSPG is the optimizer that lands on one.
"""
from __future__ import annotations

from typing import Any

import torch

from .group_sparse_optimizer import GroupSparseOptimizer, GroupStats, GroupUpdate
from .half_space import leaves_half_space, penalty_factor, trial_inner
from .partition import target_count
from .validation import check_epsilon, check_int, check_real, check_sparsity


class HSPG(GroupSparseOptimizer):
    """OTOv1's HSPG over a PruneSpace (reference: lr 0.1 SGD, λ 1e-3, ε 0.9–0.99, n_p ≈ ¼ of training)."""

    def __init__(self, space, lr: float = 1e-3, *, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False, variant: str = "sgd",
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 lmbda: float = 1e-3, epsilon: float = 0.9, warmup_steps: int = 0,
                 max_group_sparsity: float | None = None, compiled: bool = False):
        super().__init__(space, variant=variant, lr=lr, momentum=momentum, dampening=dampening,
                         weight_decay=weight_decay, nesterov=nesterov, betas=betas, eps=eps, compiled=compiled)
        check_real("lmbda", lmbda, low=0, hint="The group-lasso weight; the reference uses 1e-3.")
        check_epsilon(epsilon)
        check_int("warmup_steps", warmup_steps, low=0, hint="Steps of subgradient warm-up (n_p) before projecting.")
        if max_group_sparsity is not None:
            check_sparsity("max_group_sparsity", max_group_sparsity)
        self.lmbda = lmbda
        self.epsilon = epsilon
        self.warmup_steps = warmup_steps
        self.max_group_sparsity = max_group_sparsity
        self.max_zero_count = None if max_group_sparsity is None else target_count(max_group_sparsity, self.num_zigs)

    def _plan(self, step: int) -> str:
        return "stats"

    def _decide(self, step: int, stats: GroupStats | None, lr: float, decay: float) -> GroupUpdate:
        assert stats is not None
        xx, xu = stats.xx, stats.xu
        frozen = self.frozen_zigs().to(xx.device)  # never changed: no penalty, no projection
        lam = torch.full_like(xx, self.lmbda).masked_fill(frozen, 0.0)
        factor = penalty_factor(xx, lam, lr, decay)  # 1 on zero groups: no subgradient there
        if step < self.warmup_steps:
            self._last_step = {"plan": "warmup"}
            return GroupUpdate(keep=torch.ones_like(xx), factor=factor)

        held = self.held_zero.to(xx.device) | (xx == 0)
        leaving = leaves_half_space(xx, xu, factor, lr, decay, self.epsilon) & ~held & ~frozen
        if self.max_zero_count is not None:
            leaving = self._apply_cap(leaving, held, trial_inner(xx, xu, factor, lr, decay) / xx.clamp_min(1e-300))
        held = held | leaving
        self.held_zero = held.cpu()
        self._last_step = {"plan": "half_space", "num_projected": int(leaving.sum())}
        return GroupUpdate(keep=(~held).to(torch.float64), factor=factor.masked_fill(held, 0.0))

    def _apply_cap(self, leaving: torch.Tensor, held: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
        room = max(self.max_zero_count - int(held.sum()), 0)
        if int(leaving.sum()) <= room:
            return leaving
        candidates = leaving.nonzero().squeeze(1)
        deepest = candidates[torch.sort(depth[candidates], stable=True).indices[:room]]
        capped = torch.zeros_like(leaving)
        capped[deepest] = True
        return capped

    def stats(self) -> dict[str, Any]:
        out = super().stats()
        out.update(group_sparsity=self.group_sparsity(), max_zero_count=self.max_zero_count)
        return out
