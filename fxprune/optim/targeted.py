"""What DHSPG and HESSO share: an exact zero-count target reached over scheduled periods.

Both mark groups period by period (``marked_period``), up to ``⌊K·(p+1)/periods⌋``
in total with K = ⌊target·num_zigs⌋, and differ only in how they score groups and
how marked groups travel to zero.
"""
from __future__ import annotations

import warnings
from typing import Any

import torch

from .group_sparse_optimizer import GroupSparseOptimizer
from .partition import broadcast_from_rank0, max_prunable, select_redundant, target_count
from .schedule import PruningSchedule
from .validation import check_capacity, check_schedule, check_sparsity, check_width_multiple


class TargetedGroupSparseOptimizer(GroupSparseOptimizer):
    """Base of the optimizers that land on exactly ⌊target·num_zigs⌋ zero ZIGs."""

    def _init_target(self, target_group_sparsity: float, start_pruning_step: int, pruning_steps: int,
                     pruning_periods: int, width_multiple: int | None) -> None:
        check_sparsity("target_group_sparsity", target_group_sparsity)
        check_schedule(start_pruning_step, pruning_steps, pruning_periods)
        check_width_multiple(width_multiple)
        self.target_group_sparsity = target_group_sparsity
        self.width_multiple = width_multiple
        self.schedule = PruningSchedule(start_pruning_step, pruning_steps, pruning_periods)
        self.target_zero_count = target_count(target_group_sparsity, self.num_zigs)
        limit = max_prunable(self.zigs.zig_group, width_multiple)
        check_capacity(target_group_sparsity, self.target_zero_count, limit, self.num_zigs, width_multiple)
        frozen = self.frozen_zigs()
        if bool(frozen.any()):  # can the target still be met without touching frozen parameters?
            reachable = self._reachable_without(frozen, torch.zeros_like(frozen), self.target_zero_count)
            if reachable < self.target_zero_count:
                raise ValueError(
                    f"target_group_sparsity={target_group_sparsity} asks for {self.target_zero_count} zero ZIGs, but "
                    f"{int(frozen.sum())} of {self.num_zigs} hold a parameter with requires_grad=False, which is never "
                    f"changed, and the others allow {reachable}; unfreeze those parameters or lower the target."
                )
        # Period in which each ZIG was marked redundant (-1: never): the G_p partition.
        self.marked_period = torch.full((self.num_zigs,), -1, dtype=torch.int64)

    def _check_step(self, step: int) -> None:
        """At a period start, whether frozen parameters leave enough ZIGs to mark (before any update)."""
        period = self.schedule.period_at(step)
        if period is None or not self.schedule.is_period_start(step):
            return
        frozen = self.frozen_zigs()
        if not bool(frozen.any()):
            return
        marked = self.marked_period >= 0
        wanted = self.schedule.cumulative_count(period, self.target_zero_count) - int(marked.sum())
        reachable = self._reachable_without(frozen, marked, wanted)
        if reachable < wanted:
            self._refuse_frozen(period, wanted, reachable, frozen)

    def _reachable_without(self, excluded: torch.Tensor, marked: torch.Tensor, wanted: int) -> int:
        """How many of ``wanted`` more ZIGs the width rule lets us mark, none of them ``excluded``."""
        return int(select_redundant(torch.zeros(self.num_zigs, dtype=torch.float64), self.zigs.zig_group, marked,
                                    wanted, self.width_multiple, excluded=excluded).sum())

    def _refuse_frozen(self, period: int, wanted: int, reachable: int, frozen: torch.Tensor) -> None:
        raise ValueError(
            f"{type(self).__name__} needs {wanted} more zero ZIGs in pruning period {period}, but only "
            f"{reachable} can be chosen: {int(frozen.sum())} of {self.num_zigs} ZIGs hold a parameter "
            "with requires_grad=False, which is never changed. Unfreeze those parameters or lower "
            "target_group_sparsity."
        )

    def _mark_most_redundant(self, period: int, redundancy: torch.Tensor) -> None:
        """Mark the highest-``redundancy`` unmarked ZIGs until this period's cumulative count."""
        marked = self.marked_period >= 0
        total = self.schedule.cumulative_count(period, self.target_zero_count)
        wanted = total - int(marked.sum())
        # Groups that are exactly zero already (a model pruned before, zero_groups_by_id) count first:
        # left unmarked they could stay zero on their own and push the count past the target.
        zero = self.zero_zigs() & ~marked
        redundancy = torch.where(zero.to(redundancy.device), torch.full_like(redundancy, float("inf")), redundancy)
        if int((zero | marked).sum()) > total:
            warnings.warn(
                f"{int(zero.sum())} unmarked ZIGs are already exactly zero, more than the {wanted} this pruning period "
                f"marks; the zero count may end above the target ({self.target_zero_count})", stacklevel=4)
        frozen = self.frozen_zigs()
        picked = select_redundant(redundancy, self.zigs.zig_group, marked, wanted, self.width_multiple,
                                  excluded=frozen if bool(frozen.any()) else None)
        if bool(frozen.any()) and int(picked.sum()) < wanted and not self.width_multiple:
            self._refuse_frozen(period, wanted, int(picked.sum()), frozen)  # (_check_step normally catches it first)
        if self.width_multiple and int(picked.sum()) < wanted:
            warnings.warn(
                f"width_multiple={self.width_multiple}: pruning period {period} could mark only {int(picked.sum())} "
                f"of the {wanted} ZIGs it asks for, so the zero count will end below the target "
                f"({self.target_zero_count}); a target that fits whole chunks (multiples of width_multiple per layer) "
                "avoids this", stacklevel=4)
        picked = broadcast_from_rank0(picked, redundancy.device)  # every DDP rank marks the same ZIGs
        self.marked_period[picked] = period

    def redundant_zigs(self) -> torch.Tensor:
        """Bool [num_zigs]: the marked set G_p so far."""
        return self.marked_period >= 0

    def stats(self) -> dict[str, Any]:
        out = super().stats()
        out.update(target_zero_count=self.target_zero_count, pruning_end_step=self.schedule.end,
                   group_sparsity=self.group_sparsity())
        return out

    def _extra_state(self) -> dict[str, Any]:
        return {"marked_period": self.marked_period, "target_zero_count": self.target_zero_count,
                "pruning_end_step": self.schedule.end}

    def _check_compatible(self, state: dict[str, Any]) -> None:
        for key, mine in (("target_zero_count", self.target_zero_count), ("pruning_end_step", self.schedule.end)):
            if key in state and state[key] != mine:
                raise ValueError(
                    f"The state dict was saved with {key}={state[key]}, this {type(self).__name__} has {mine}; "
                    "resume with the target_group_sparsity and schedule the state was saved with."
                )

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        self.marked_period = state["marked_period"].cpu()
