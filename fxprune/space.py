"""PruneSpace: the analysed model — its groups, its ZIG layout — and construction of subnets."""
from __future__ import annotations

import time
from typing import Any, Iterable

import numpy as np
import torch
import torch.fx as fx
from tabulate import tabulate
from torch import nn
from torch.utils._pytree import tree_flatten

from passes.atom_table import AtomTable
from passes.channel_analysis import analyze_channels, fetch_attr
from passes.module_walk import walk_modules
from passes.shape_prop import propagate_shapes
from passes.slice_rewrite import build_compact, copy_module, rescue_empty_dims
from passes.verify import compare_outputs
from passes.zig_build import Group, ZigIndex, build_zigs

from .errors import InputError, VerificationError, first_line
from .layout import ZigLayout
from .optim.group_ops import row_abs_max
from .tracing import forward_parameters, specialized_keywords, symbolic_trace


def _is_integer(value: Any) -> bool:
    """An int, a NumPy integer or a 0-d integer tensor (not a bool, not a float)."""
    if isinstance(value, torch.Tensor):
        return value.dim() == 0 and not value.is_floating_point() and not value.is_complex() \
            and value.dtype != torch.bool
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _as_input_tuple(example_inputs: Any) -> tuple[Any, ...]:
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, (tuple, list)):
        return tuple(example_inputs)
    raise InputError(
        f"example_inputs must be a tensor or a tuple of positional inputs, got {type(example_inputs).__name__}; "
        "pass e.g. torch.randn(1, 3, 224, 224) or (x, mask)"
    )


class PruneSpace:
    """What can be pruned in a model, and how to build the compact model once chosen ZIGs are zero.

    ``groups`` lists channel groups (a layer's width, a residual stream...), each with
    its channel count, the parameter slices it couples, and whether it is prunable (if not,
    why).  The prunable ZIGs are numbered 0..num_zigs-1 in ``layout``.  The space reads the
    user's parameters (it never copies or changes them, except in ``zero_*`` methods that
    exist to do exactly that).
    """

    def __init__(self, model: nn.Module, graph_module: fx.GraphModule, example_inputs: tuple[Any, ...],
                 table: AtomTable, zigs: ZigIndex, timings: dict[str, float]):
        self.model = model
        self.graph_module = graph_module
        self.example_inputs = example_inputs
        self._table = table
        self._zigs = zigs
        self.timings = timings
        # Arguments traced as constants (concrete_args): the dense model needs them to compute what the graph does.
        self.specialized_kwargs: dict[str, Any] = {}

    # -- what was found ----------------------------------------------------
    @property
    def groups(self) -> tuple[Group, ...]:
        return self._zigs.groups

    @property
    def layout(self) -> ZigLayout:
        return self._zigs.layout

    @property
    def num_zigs(self) -> int:
        """Number of prunable zero-invariant groups."""
        return self._zigs.num_prunable  # (without building the layout: the summary asks)

    @property
    def prunable_groups(self) -> list[Group]:
        return [g for g in self.groups if g.prunable]

    def reasons_for(self, name: str, dim: int = 0) -> list[str | None]:
        """Per index along ``dim`` of parameter ``name``: None if in a prunable ZIG, else why not."""
        pd = self._table.param_dim(name, dim)
        if pd is None:
            try:
                size = int(self._tensor(name).shape[dim])
            except AttributeError:
                return []  # not used by the traced forward (e.g. aux heads in eval mode)
            return ["not coupled to any channel (no rule gave this dimension a meaning)"] * size
        return [self._zigs.reason(c) for c in self._zigs.atom_zig[pd.atoms].tolist()]

    def summary(self, max_rows: int | None = None) -> str:
        zero = self.zero_zigs().numpy()
        rows = []
        for g in self.groups:
            ids = self._zigs.prunable_id[list(g.zigs)]
            n_zero = int(zero[ids[ids >= 0]].sum()) if g.prunable else 0
            n_params = sum(len(s.indices) for s in g.slices)
            rows.append([g.id, g.name, g.channels, "yes" if g.prunable else "no", n_zero, n_params,
                         "" if g.prunable else g.reason])
        if max_rows is not None and len(rows) > max_rows:
            rows = rows[:max_rows] + [["...", f"({len(self.groups) - max_rows} more)", "", "", "", "", ""]]
        head = (f"{type(self.model).__name__}: {len(self.graph_module.graph.nodes)} nodes, {len(self.groups)} groups, "
                f"{len(self.prunable_groups)} prunable, {self.num_zigs} prunable ZIGs "
                f"({int(zero.sum())} zero now)\n")
        return head + tabulate(rows, headers=["id", "group", "channels", "prunable", "zero", "slices", "why not"])

    # -- the solution lives in the parameters --------------------------------
    def _params(self) -> dict[str, torch.Tensor]:
        named = dict(self.graph_module.named_parameters(remove_duplicate=False))
        named.update(dict(self.graph_module.named_buffers(remove_duplicate=False)))
        return named

    def _tensor(self, name: str) -> torch.Tensor:
        named = self._params()
        return named[name] if name in named else fetch_attr(self.graph_module, name)

    def zig_abs_max(self) -> torch.Tensor:
        """max |x| over each prunable ZIG's producer slices (float64, [num_zigs])."""
        out = torch.zeros(self.num_zigs, dtype=torch.float64)
        named = self._params()
        for m in self.layout.producers:
            per_index = row_abs_max(named[m.name].detach(), m.dim).double().cpu()
            valid = m.zig >= 0
            out.scatter_reduce_(0, m.zig[valid], per_index[valid], reduce="amax")
        return out

    def zero_zigs(self) -> torch.Tensor:
        """Bool [num_zigs]: ZIGs whose every producer slice is exactly zero now."""
        return self.zig_abs_max() == 0

    def zero_groups_by_id(self, zig_ids: Iterable[int]) -> None:
        """Zero the producer slices of the given prunable ZIGs in the model's own parameters."""
        listed = list(zig_ids)
        bad = next((i for i in listed if not _is_integer(i)), None)
        if bad is not None:
            raise InputError(f"ZIG ids must be integers, got {bad!r}; pass ids in [0, {self.num_zigs})")
        ids = torch.as_tensor([int(i) for i in listed], dtype=torch.int64)
        if ids.numel() and (ids.min() < 0 or ids.max() >= self.num_zigs):
            raise InputError(f"ZIG ids must lie in [0, {self.num_zigs}), got {ids.min().item()}..{ids.max().item()}")
        chosen = torch.zeros(self.num_zigs, dtype=torch.bool)
        chosen[ids] = True
        named = self._params()
        with torch.no_grad():
            for m in self.layout.producers:
                t = named[m.name]
                valid = m.zig >= 0
                index = torch.zeros(t.shape[m.dim], dtype=torch.bool)
                index[valid] = chosen[m.zig[valid]]
                if index.any():
                    t.index_fill_(m.dim, torch.nonzero(index).flatten().to(t.device), 0)

    def zero_random_groups(self, fraction: float, seed: int = 0) -> torch.Tensor:
        """Zero ``floor(fraction * num_zigs)`` prunable ZIGs chosen at random; return their ids."""
        if not 0 <= fraction <= 1:
            raise InputError(f"fraction must lie in [0, 1], got {fraction}")
        gen = torch.Generator().manual_seed(seed)
        count = int(fraction * self.num_zigs)
        ids = torch.randperm(self.num_zigs, generator=gen)[:count].sort().values
        self.zero_groups_by_id(ids.tolist())
        return ids

    # -- construction -------------------------------------------------------
    def removable_zigs(self) -> np.ndarray:
        """Bool per ZIG component: zero now, prunable, and not needed to keep a dimension non-empty."""
        z = self._zigs
        removed = np.zeros(z.num_components, dtype=bool)
        zero = self.zero_zigs().numpy()
        prunable = np.flatnonzero(z.prunable_id >= 0)
        removed[prunable] = zero[z.prunable_id[prunable]]
        return rescue_empty_dims(self.graph_module, self._table, z.atom_zig, removed)

    def construct_subnet(self, verify: bool = False, rtol: float = 1e-4) -> fx.GraphModule:
        """A new, smaller GraphModule without the zero ZIGs; the user's model is left as it is.

        With ``verify=True`` the subnet and the dense model are run (in eval mode, on
        copies) on the example inputs and a :class:`VerificationError` is raised if any
        output differs by more than ``rtol * max(1, max|y|)``.
        """
        removed = self.removable_zigs()
        compact = build_compact(self.graph_module, self._table, self._zigs.atom_zig, removed,
                                type(self.model).__name__ + "Pruned")
        self._check_runs(compact)
        if verify:
            self.verify(compact, rtol=rtol)
        return compact

    def _specialized_not_in(self, inputs: tuple[Any, ...]) -> dict[str, Any]:
        """The specialised arguments ``inputs`` do not already fill by position."""
        params = forward_parameters(self.model)
        given = set(list(params)[: len(inputs)]) if params is not None else set()
        return {k: v for k, v in self.specialized_kwargs.items() if k not in given}

    def _check_runs(self, compact: fx.GraphModule) -> None:
        """Always-on structural check: the compact graph runs on meta tensors of the example shapes."""
        try:
            propagate_shapes(compact, self.example_inputs)
        except Exception as exc:
            cause = exc.__cause__ or exc  # the op's own error, not the advice meant for bad user inputs
            raise VerificationError(
                f"the constructed subnet does not run on inputs shaped like the example inputs: node "
                f"'{getattr(exc, 'node_name', '?')}' raises {type(cause).__name__}: {first_line(cause)}; this is a bug in fxprune's rules for this model, "
                "please report it with the model"
            ) from exc
        finally:
            for node in compact.graph.nodes:
                node.meta.pop("val", None)

    def verify(self, compact: nn.Module, rtol: float = 1e-4, inputs: tuple[Any, ...] | None = None) -> float:
        """Max abs difference between the dense model and ``compact``; raises if above tolerance."""
        dense = copy_module(self.model, "the model").eval()
        small = copy_module(compact, "the compact model").eval()
        inputs = self.example_inputs if inputs is None else _as_input_tuple(inputs)
        with torch.no_grad():
            try:
                y = dense(*inputs, **self._specialized_not_in(inputs))
            except Exception as exc:
                raise InputError(f"verify: the dense model does not run on these inputs: {type(exc).__name__}: "
                                 f"{first_line(exc)}; pass inputs shaped like the example inputs") from exc
            try:
                y_small = small(*inputs)
            except Exception as exc:
                raise VerificationError(f"the constructed subnet does not run on inputs the dense model accepts: "
                                        f"{type(exc).__name__}: {first_line(exc)}; please report this model") from exc
        diff, scale = compare_outputs(y, y_small)
        if not diff <= rtol * max(1.0, scale):
            raise VerificationError(
                f"the constructed subnet differs from the group-sparse dense model by {diff:.3g} "
                f"(tolerance {rtol * max(1.0, scale):.3g}); please report this model"
            )
        return diff


def trace(model: nn.Module, example_inputs: Any, leaf_modules: Iterable[Any] | None = None,
          concrete_args: dict[str, Any] | None = None) -> PruneSpace:
    """Trace ``model`` with torch.fx and analyse which channels can be pruned together.

    ``example_inputs``: a tensor or a tuple of positional inputs (only their shapes and
    dtypes are used: analysis runs on fake tensors).  ``leaf_modules``: module classes or
    qualified names FX should not trace into (their channels become unprunable).
    """
    inputs = _as_input_tuple(example_inputs)
    flat, _ = tree_flatten(inputs)
    if not any(isinstance(t, torch.Tensor) for t in flat):
        raise InputError("example_inputs holds no tensor; pass the tensors the model's forward() takes")
    timings = {}
    t0 = time.perf_counter()
    gm = symbolic_trace(model, leaf_modules, concrete_args)
    n_placeholders = sum(1 for n in gm.graph.nodes if n.op == "placeholder")
    if len(inputs) > n_placeholders:
        raise InputError(f"{type(model).__name__}.forward takes {n_placeholders} inputs, got {len(inputs)}")
    t1 = time.perf_counter()
    modules = walk_modules(gm)  # both passes look modules up by name
    propagate_shapes(gm, inputs, modules)
    t2 = time.perf_counter()
    table = analyze_channels(gm, modules)
    zigs = build_zigs(table)
    t3 = time.perf_counter()
    timings.update(trace=t1 - t0, shapes=t2 - t1, channels=t3 - t2, total=t3 - t0)
    space = PruneSpace(model, gm, inputs, table, zigs, timings)
    space.specialized_kwargs = specialized_keywords(concrete_args)
    return space
