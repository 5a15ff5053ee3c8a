"""The torch.optim.Optimizer skeleton shared by HSPG, DHSPG and HESSO.

One step is:

1. parameters in no prunable ZIG: the base rule's ``plain_step`` (torch-identical);
2. prunable parameters, walked once: the base rule's direction u and, when the
   algorithm needs them this step, the per-row reductions ‖x‖², ⟨x,u⟩, ‖u‖²
   (computed right after u, while the tensors are still in cache);
3. the algorithm turns the per-ZIG sums into two per-ZIG vectors F and M and every
   prunable parameter is updated as ``x <- decay·F·x − lr·M·u`` (F = M = 1 is the
   plain step; F = M = 0 zeroes a group).

Steps where an algorithm has nothing to do run the plain rule on every parameter,
so they cost exactly what the base optimizer costs.  The passes over the prunable
tensors live in row_sweeps.py (eager) and compiled_sweeps.py (opt-in, SGD only).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Callable

import torch

from .base_rules import make_rule, rule_defaults
from .group_ops import ZigIndex
from .compiled_sweeps import CompiledSweeps
from .fused_sweeps import FusedSweeps, load_kernels
from .row_sweeps import ALL_ROWS, FUSED, RowSweeps
from .validation import check_base, check_space

STATE_KEY = "fxprune"


@dataclass
class GroupStats:
    """Per-ZIG sums for the current step, float64 on the parameters' device, [num_zigs]."""

    xx: torch.Tensor  # ‖x_g‖²
    xu: torch.Tensor  # ⟨x_g, u_g⟩
    uu: torch.Tensor  # ‖u_g‖²


@dataclass
class GroupUpdate:
    """What a pruning rule asks of the prunable parameters this step ([num_zigs] vectors).

    ``factor`` None means "1 everywhere except where ``keep`` is 0, and those groups are
    already exactly zero" (holding zeros), which saves one multiply per element.
    """

    keep: torch.Tensor
    factor: torch.Tensor | None = None


class GroupSparseOptimizer(torch.optim.Optimizer):
    """Base class: base-rule plumbing, group update, state and introspection."""

    def __init__(self, space, *, variant: str, lr: float, momentum: float, dampening: float,
                 weight_decay: float, nesterov: bool, betas: tuple[float, float], eps: float,
                 compiled: bool = False):
        model, layout = check_space(space)
        check_base(variant, lr, momentum, dampening, weight_decay, nesterov, betas, eps)
        self.space = space
        self.variant = variant
        self.zigs = ZigIndex(layout, model)
        self.num_zigs = self.zigs.num_zigs
        self._rule = make_rule(variant)
        self._prunable_ids = set(self.zigs.slices_of)
        defaults = rule_defaults(variant, lr, momentum, dampening, weight_decay, nesterov, betas, eps)
        super().__init__(list(model.parameters()), defaults)
        self.steps_taken = 0
        self.held_zero = torch.zeros(self.num_zigs, dtype=torch.bool)  # groups kept at exactly zero
        self._last_step: dict[str, Any] = {}
        self._sweeps = RowSweeps(self.zigs)
        self._stats_cache: tuple[torch.Tensor, list] | None = None  # (needed ZIGs, per-slice modes)
        self._compiled = CompiledSweeps(self.zigs) if compiled else None
        kernels = load_kernels()
        self._fused = FusedSweeps(self.zigs, self._sweeps, kernels, variant) if kernels is not None else None
        self._warned_frozen = False

    def add_param_group(self, param_group: dict) -> None:
        if self.param_groups:
            raise ValueError(
                f"{type(self).__name__} trains the PruneSpace's model as a single parameter group "
                "(a ZIG spans several parameters and needs one learning rate); adjust hyper-parameters "
                "through optimizer.param_groups[0] or an LR scheduler instead."
            )
        super().add_param_group(param_group)

    # ----- hooks for the algorithms ---------------------------------------------------

    def _plan(self, step: int) -> str:
        """'plain' (base rule only), 'update' (group update, no sums) or 'stats' (sums needed)."""
        raise NotImplementedError

    def _decide(self, step: int, stats: GroupStats | None, lr: float, decay: float) -> GroupUpdate:
        raise NotImplementedError

    def _extra_state(self) -> dict[str, Any]:
        return {}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        pass

    def _check_step(self, step: int) -> None:
        """Raise if ``step`` cannot be taken as asked (checked before anything is updated)."""

    def _check_compatible(self, state: dict[str, Any]) -> None:
        """Raise before anything is loaded if the saved state does not fit this optimizer."""

    def redundant_zigs(self) -> torch.Tensor:
        """Bool [num_zigs]: the groups this optimizer has marked to be driven to zero."""
        return self.held_zero.clone()

    def frozen_zigs(self) -> torch.Tensor:
        """Bool [num_zigs]: ZIGs with a producer slice in a parameter that does not require grad.

        A frozen parameter is never changed (as with torch's optimizers), so its ZIGs are
        never penalised, projected or marked.
        """
        if all(p.requires_grad for p in self.zigs.params):
            return torch.zeros(self.num_zigs, dtype=torch.bool)
        rows = [torch.full((1, s.length), float(not s.param.requires_grad)) for s in self.zigs.slices]
        return self.zigs.sum_rows(rows, torch.device("cpu"))[0, : self.num_zigs] > 0

    # ----- the step -------------------------------------------------------------------

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        group = self.param_groups[0]
        for p in group["params"]:
            if p.grad is not None and p.grad.is_sparse:
                raise ValueError(
                    f"{type(self).__name__} got a sparse gradient for a parameter of shape {tuple(p.shape)} "
                    "(nn.Embedding or nn.EmbeddingBag with sparse=True); its group step needs dense gradients: "
                    "build the layer with sparse=False."
                )
        self._check_step(self.steps_taken)  # raises before any parameter or state is touched
        # With no prunable parameters there is nothing to decide: the base rule is the whole step.
        plan = self._plan(self.steps_taken) if self.zigs.params else "plain"
        if plan == "plain":
            with_grad = [p for p in group["params"] if p.grad is not None]
            self._rule.plain_step(with_grad, [p.grad for p in with_grad], [self.state[p] for p in with_grad], group)
            self._last_step = {"plan": plan}
        else:
            plain = [p for p in group["params"] if p.grad is not None and id(p) not in self._prunable_ids]
            self._rule.plain_step(plain, [p.grad for p in plain], [self.state[p] for p in plain], group)
            self._group_step(group, need_stats=plan == "stats")
        self.steps_taken += 1
        return loss

    def _group_step(self, group: dict, need_stats: bool) -> None:
        lr, decay = group["lr"], self._rule.decay(group)
        if not self._warned_frozen and any(not p.requires_grad for p in self.zigs.params):
            if bool((self.frozen_zigs() & self.redundant_zigs() & ~self.zero_zigs()).any()):
                self._warned_frozen = True
                warnings.warn(f"{type(self).__name__}: a parameter frozen after its ZIGs were marked is never "
                              "changed, so those ZIGs cannot reach zero; unfreeze it to meet the target", stacklevel=3)
        device = self.zigs.params[0].device
        need = self._needed_zigs(self.steps_taken) if need_stats else None
        compiled = need_stats and self._compiled is not None and self._compiled.covers(self.variant, group, self.state)
        stats = None
        if compiled:
            stats = self._group_stats(self.zigs.sum_rows([self._compiled.row_sums(group, self.state)], device), need)
        else:
            modes = self._stats_modes(need) if need_stats else None
            fused = self._fused if self._fused is not None and self._fused.pays(need_stats) else None
            directions, fused_items = [], []
            for p in self.zigs.params:
                if fused is not None and fused.covers(p, group, self.state[p]):
                    fused_items.append((p, modes[self.zigs.slices_of[id(p)][0].index] if modes is not None else None))
                    directions.append(FUSED)
                    continue
                if p.grad is None:
                    u = None  # no gradient: the group math sees a zero direction, the base rule skips it
                else:
                    u = self._rule.direction(p, p.grad, self.state[p], group)
                directions.append(u)
                if modes is not None:  # right after u is computed, while p and u are still in cache
                    self._sweeps.reduce(p, torch.zeros_like(p) if u is None else u, modes)
            if fused_items:
                fused.direction_and_sums(fused_items, self.state, group)
            if modes is not None:
                stats = self._group_stats(self._sweeps.sums(device), need)
        update = self._decide(self.steps_taken, stats, lr, decay)
        keep = self._with_sentinel(update.keep, device)
        factor = None if update.factor is None else self._with_sentinel(update.factor, device)
        if compiled:
            scale = torch.ones_like(keep) if factor is None else decay * factor
            self._compiled.update(group, self.state, self.zigs.rows_of(keep), self.zigs.rows_of(scale))
            self._last_step["compiled"] = True
        else:
            fused_step = None
            if fused_items:
                self._last_step["fused"] = len(fused_items)
                fused_step = lambda items: self._fused.apply(items, self.state, group, lr, decay)  # noqa: E731
            self._sweeps.apply(directions, keep, factor, lr, decay, fused_step)

    def _group_stats(self, sums: torch.Tensor, need: torch.Tensor | None) -> GroupStats:
        """GroupStats from ``[3, num_zigs + 1]`` sums; groups outside ``need`` read exactly 0."""
        sums = sums[:, : self.num_zigs]
        if need is not None:  # not partial or stale sums of rows nobody reduced
            sums = torch.where(need.to(sums.device), sums, torch.zeros((), dtype=sums.dtype, device=sums.device))
        return GroupStats(sums[0], sums[1], sums[2])

    def _needed_zigs(self, step: int) -> torch.Tensor | None:
        """Bool [num_zigs]: the ZIGs whose sums ``_decide`` reads at ``step`` (None: all of them).

        The sums of the other ZIGs are reported as 0; rows of parameters holding none of the
        needed ZIGs are not reduced at all.
        """
        return None

    def _stats_modes(self, need: torch.Tensor | None) -> list:
        """Per slice: None (skip), ``ALL_ROWS`` or a LongTensor of the rows to reduce.  Cached per ``need``."""
        if need is None:
            return [ALL_ROWS] * len(self.zigs.slices)
        need = need.cpu()
        cached = self._stats_cache
        if cached is not None and torch.equal(cached[0], need):
            return cached[1]
        with_sentinel = torch.cat([need, torch.zeros(1, dtype=torch.bool)])
        row_need = self.zigs.rows_of(with_sentinel)
        counts = self.zigs.slices_with(row_need)
        modes: list = []
        for s, n in zip(self.zigs.slices, counts):
            if n == 0:
                modes.append(None)
            elif n == s.length or n > GATHER_MAX_FRACTION * s.length or not _gatherable(s.param, s.dim):
                modes.append(ALL_ROWS)
            else:
                local = row_need[s.offset : s.offset + s.length].nonzero().squeeze(1)
                modes.append(local.to(s.param.device))
        self._stats_cache = (need.clone(), modes)
        return modes

    def _with_sentinel(self, per_zig: torch.Tensor, device: torch.device) -> torch.Tensor:
        with_sentinel = torch.ones(self.num_zigs + 1, dtype=torch.float64, device=device)
        with_sentinel[: self.num_zigs] = per_zig.to(device=device, dtype=torch.float64)
        return with_sentinel

    def _hold_zero_update(self) -> GroupUpdate:
        return GroupUpdate(keep=(~self.held_zero).to(torch.float64))

    # ----- introspection --------------------------------------------------------------

    def zero_zigs(self) -> torch.Tensor:
        """Bool [num_zigs]: ZIGs whose producer values are all exactly zero right now."""
        return self.zigs.group_abs_max() == 0

    def group_sparsity(self) -> float:
        """Fraction of prunable ZIGs that are exactly zero."""
        return float(self.zero_zigs().double().mean()) if self.num_zigs else 0.0

    def stats(self) -> dict[str, Any]:
        """A small summary of the optimizer's progress and of the last step."""
        return {
            "step": self.steps_taken,
            "num_zigs": self.num_zigs,
            "num_held_zero": int(self.held_zero.sum()),
            "num_redundant": int(self.redundant_zigs().sum()),
            "last_step": dict(self._last_step),
        }

    # ----- state ----------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        extra = {"num_zigs": self.num_zigs, "steps_taken": self.steps_taken, "held_zero": self.held_zero.clone(),
                 "optimizer": type(self).__name__, "variant": self.variant}
        extra.update({k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in self._extra_state().items()})
        state[STATE_KEY] = extra
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        extra = state_dict.pop(STATE_KEY, None)
        if extra is None:
            raise ValueError(
                f"This state dict has no {STATE_KEY!r} entry, so it was not saved by {type(self).__name__}; "
                "load a state dict from optimizer.state_dict() of the same optimizer class."
            )
        for key, mine in (("optimizer", type(self).__name__), ("variant", self.variant)):
            if key in extra and extra[key] != mine:
                raise ValueError(
                    f"The state dict was saved by {extra.get('optimizer', '?')} with variant={extra.get('variant', '?')!r}; "
                    f"this is {type(self).__name__} with variant={self.variant!r}. Resume with the optimizer and "
                    "base rule the state was saved with."
                )
        self._check_compatible(extra)
        params = self.param_groups[0]["params"]
        for index, saved in state_dict.get("state", {}).items():
            if not isinstance(index, int) or index >= len(params):
                continue  # torch's own loader reports a parameter-count mismatch
            for name, value in saved.items():
                if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape != params[index].shape:
                    raise ValueError(
                        f"The state dict holds {name} of shape {tuple(value.shape)} for parameter {index}, which "
                        f"has shape {tuple(params[index].shape)}; resume into the model the state was saved from."
                    )
        if extra["num_zigs"] != self.num_zigs:
            raise ValueError(
                f"The state dict is for a layout with {extra['num_zigs']} ZIGs, this optimizer has {self.num_zigs}; "
                "resume with the PruneSpace the optimizer was saved with."
            )
        super().load_state_dict(state_dict)
        self.steps_taken = int(extra["steps_taken"])
        self.held_zero = extra["held_zero"].clone().cpu()
        self._load_extra_state({k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in extra.items()})


# Reduce only the needed rows of a slice (gathering them first) when at most this fraction is needed;
# above it, gathering costs about as much as reducing every row.
GATHER_MAX_FRACTION = 0.5


def _gatherable(param: torch.Tensor, dim: int) -> bool:
    return param.dim() == 1 or (dim == 0 and param.is_contiguous())
