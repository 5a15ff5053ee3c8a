"""When pruning happens: the pruning window and its periods, in optimizer steps.

Steps are counted from 0 (the number of completed ``step()`` calls).  The window is
``[start, start + steps)``; it is cut into ``periods`` consecutive periods whose
lengths differ by at most one.  Period p must have zeroed the first
``⌊K·(p+1)/periods⌋`` of the K target groups by its last step, so the full target
is in place once ``start + steps`` steps have been taken.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PruningSchedule:
    start: int
    steps: int
    periods: int = 1

    @property
    def end(self) -> int:
        return self.start + self.steps

    def period_start(self, period: int) -> int:
        return self.start + self.steps * period // self.periods

    def period_at(self, step: int) -> int | None:
        """The period that ``step`` belongs to, or None outside the window."""
        if not self.start <= step < self.end:
            return None
        # Largest p with period_start(p) <= step; periods is small, and this is exact integer math.
        p = (step - self.start) * self.periods // self.steps
        while p + 1 < self.periods and self.period_start(p + 1) <= step:
            p += 1
        while self.period_start(p) > step:
            p -= 1
        return p

    def is_period_start(self, step: int) -> bool:
        p = self.period_at(step)
        return p is not None and self.period_start(p) == step

    def is_period_last(self, step: int) -> bool:
        p = self.period_at(step)
        return p is not None and self.period_start(p + 1) == step + 1

    def position_in_period(self, step: int) -> tuple[int, int]:
        """(j, L): ``step`` is the j-th (0-based) of the L steps of its period."""
        p = self.period_at(step)
        assert p is not None
        begin, end = self.period_start(p), self.period_start(p + 1)
        return step - begin, end - begin

    def cumulative_count(self, period: int, total: int) -> int:
        """Groups that must be zero once ``period`` ends."""
        return total * (period + 1) // self.periods
