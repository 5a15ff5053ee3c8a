"""What ZIG building produces: the ZIG index, its groups and parameter slices, the ZIG layout.

``ZigIndex`` holds, as arrays, each atom's ZIG, which ZIGs are prunable and why not, and
the groups (ZIGs coupling the same parameter dimensions for the same reason).  A group's
ZIG list, parameter slices and name, and the layout, are built on first use from the
parameter dimensions' arrays (``DimArrays``): analysis never needs them as Python objects.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import NamedTuple

import numpy as np
import torch

from fxprune.layout import PRODUCER, SliceMap, ZigLayout

from .atom_table import AtomTable


_make_tuple = tuple.__new__


class ParamSlice(NamedTuple):
    """The indices ``indices`` along ``dim`` of parameter/buffer ``name`` that one group couples."""

    name: str
    dim: int
    indices: np.ndarray  # int64, ascending, read-only
    role: str


class Group:
    """Channels (ZIGs) that couple the same parameter dimensions: a layer's width, a residual stream.

    ``zigs`` (component ids) and ``slices`` (per parameter dimension the group touches, the
    indices it couples) are built for every group together on first access: analysis itself
    never needs them as Python objects, and a wide network has a hundred thousand channels
    and a concat-heavy one thousands of slices.
    """

    __slots__ = ("id", "prunable", "reason", "_members")

    def __init__(self, id: int, prunable: bool, reason: str | None, members: "GroupMembers"):
        self.id, self.prunable, self.reason = id, prunable, reason
        self._members = members

    @property
    def name(self) -> str:
        """``'weight[dim 0]'`` of the group's first producer dimension (or first dimension)."""
        return self._members.name_of(self.id)

    @property
    def zigs(self) -> tuple[int, ...]:
        return self._members.zigs_of(self.id)

    @property
    def slices(self) -> tuple[ParamSlice, ...]:
        return self._members.slices_of(self.id)

    @property
    def channels(self) -> int:
        return self._members.count(self.id)

    def __repr__(self) -> str:
        state = "prunable" if self.prunable else f"not prunable: {self.reason}"
        return f"Group(id={self.id}, name={self.name!r}, channels={self.channels}, {state})"


@dataclass(frozen=True)
class ZigIndex:
    """Everything construction and the optimizers need about ZIGs, as arrays."""

    atom_zig: np.ndarray  # [n_atoms] component id of each atom
    num_components: int
    prunable: np.ndarray  # bool [num_components]
    reason_id: np.ndarray  # int64 [num_components]: index into reason_texts, -1 if prunable
    reason_texts: tuple[str, ...]
    prunable_id: np.ndarray  # int64 [num_components]: index among prunable ZIGs, -1 if not prunable
    groups: tuple[Group, ...]
    num_prunable: int
    _dims: "DimArrays" = field(repr=False, compare=False)
    _group_of: np.ndarray = field(repr=False, compare=False)  # int64 [num_components]: group id, -1 for none

    def reason(self, component: int) -> str | None:
        """Why ZIG ``component`` is not prunable (None when it is)."""
        r = int(self.reason_id[component])
        return self.reason_texts[r] if r >= 0 else None

    @cached_property
    def layout(self) -> ZigLayout:
        """The prunable ZIGs numbered 0..num_prunable-1, with a map of ZIG ids per parameter dimension.

        Built on first use: construction and the optimizers read it, the groups and the
        summary do not (like ``Group.slices``)."""
        return _layout(self._dims, self.prunable, self.prunable_id, self.num_prunable, self._group_of)


def _layout(dims: "DimArrays", prunable: np.ndarray, prunable_id: np.ndarray, n_prunable: int,
            group_of: np.ndarray) -> ZigLayout:
    zig_group = np.zeros(n_prunable, dtype=np.int64)
    zig_group[prunable_id[prunable]] = group_of[prunable]
    # parameter dims that share atoms share one (read-only) map: views of one tensor for all of them
    zig_all = prunable_id[dims.comp_all]
    any_prunable = (dims.segment_max(zig_all) >= 0).tolist()
    zig_of = torch.from_numpy(zig_all).split(dims.sizes.tolist())  # one view per distinct array
    # (tuple.__new__ with the fields as one tuple, as NamedTuple._make does: the class's own __new__
    # is a Python function, and a model has a SliceMap per parameter dimension)
    maps = [_make_tuple(SliceMap, (name, dim, zig_of[j], role))
            for name, dim, role, j in zip(dims.names, dims.dim_indices, dims.roles, dims.array_of) if any_prunable[j]]
    return ZigLayout(n_prunable, tuple(maps), torch.from_numpy(zig_group))


def _fresh_runs_in_order(arrays: list[np.ndarray], table: AtomTable) -> bool:
    """``arrays`` are runs the table made (``AtomTable.ranges``), each starting where the one before
    ended, together covering all of the table's atoms: their concatenation is ``arange(count)``."""
    expected = 0
    ranges = table.ranges
    for a in arrays:
        if ranges.get(id(a)) != expected:
            return False
        expected += a.size
    return expected == table.count


class DimArrays:
    """The parameter dims' atom arrays, each distinct array once, laid end to end.

    Dims that adopted the same atoms (a norm's scale, shift and statistics) share one
    array; every per-dim quantity below is computed once per distinct array, with a
    handful of whole-array numpy calls instead of several calls per dim.
    """

    def __init__(self, table: AtomTable):
        # per dim (the table's columns, which analysis no longer changes)
        self.names, self.dim_indices, self.roles = table.dim_names, table.dim_dims, table.dim_roles
        self.num_dims = len(self.names)
        by_id = {id(atoms): atoms for atoms in table.dim_atoms}  # (in order of first use: a repeat keeps its place)
        arrays = list(by_id.values())
        self.index = {key: j for j, key in enumerate(by_id)}  # array id -> its position among the distinct arrays
        self.array_of: list[int] = [self.index[id(atoms)] for atoms in table.dim_atoms]  # per dim: its distinct array
        self.num_arrays = len(arrays)
        self.size_list = [a.size for a in arrays]
        sizes = np.array(self.size_list, dtype=np.int64)
        self.ends = np.cumsum(sizes).tolist()
        self.starts = [e - n for e, n in zip(self.ends, self.size_list)]
        self.sizes = sizes
        # Usually the distinct arrays are the table's fresh runs themselves, in the order they were
        # made, and so hold every atom once, in order: then the component of every atom of every
        # array is ``comp`` itself (no gather), and no component lies outside every parameter dimension.
        self.covers_all_atoms = _fresh_runs_in_order(arrays, table)
        self._arrays = arrays
        self.comp_all: np.ndarray | None = None

    def set_components(self, comp: np.ndarray) -> None:
        """Record the ZIG of every atom (``comp``, indexed by atom id) as ``comp_all``: the ZIG of every
        atom of the distinct arrays laid end to end (None before)."""
        if self.covers_all_atoms:
            self.comp_all = comp
        else:
            atoms = np.concatenate(self._arrays) if self._arrays else np.zeros(0, dtype=np.int64)
            self.comp_all = comp[atoms]  # component of every atom of every distinct array

    @cached_property
    def array_all(self) -> np.ndarray:
        """The distinct array of every atom of every distinct array."""
        return np.repeat(np.arange(self.num_arrays, dtype=np.int64), self.sizes)

    def segment_max(self, values: np.ndarray) -> np.ndarray:
        """Per distinct array: the largest of ``values`` over its atoms (-1 for an empty array)."""
        return self._segment(np.maximum, values, -1)

    def segment_min(self, values: np.ndarray) -> np.ndarray:
        return self._segment(np.minimum, values, -1)

    def _segment(self, ufunc, values: np.ndarray, empty: int) -> np.ndarray:
        out = np.full(self.num_arrays, empty, dtype=values.dtype)
        nonempty = self.sizes > 0
        if nonempty.any():
            starts = np.asarray(self.starts, dtype=np.int64)[nonempty]
            out[nonempty] = ufunc.reduceat(values, starts)  # starts of non-empty segments only
        return out


class GroupMembers:
    """Every group's components, ``ParamSlice`` tuple and name, each built for all groups at once when
    first asked for (a listing or an optimizer needs them; the analysis itself does not)."""

    def __init__(self, dims: DimArrays, group_of: np.ndarray, n_groups: int, by_group: np.ndarray,
                 starts: list[int], ends: list[int]):
        self._dims, self._group_of, self._n_groups = dims, group_of, n_groups
        self._by_group, self._starts, self._ends = by_group, starts, ends
        self._arrays: tuple | None = None  # (group_all, low, high, pieces): see ``_array_groups``
        self._zigs: list[tuple[int, ...]] | None = None
        self._slices: list[tuple[ParamSlice, ...]] | None = None
        self._names: list[str] | None = None

    def _array_groups(self) -> tuple:
        """The group of every atom of every distinct array, each array's smallest and largest group,
        and per array its pieces: ``(group, ascending positions)`` per group it holds, or None for an
        array whole in one group (most of them)."""
        if self._arrays is None:
            dims = self._dims
            group_all = self._group_of[dims.comp_all]
            low, high = dims.segment_min(group_all), dims.segment_max(group_all)
            pieces = [None if lo == hi and end > start else _split_by_group(group_all[start:end], lo, hi)
                      for start, end, lo, hi in zip(dims.starts, dims.ends, low.tolist(), high.tolist())]
            self._arrays = (group_all, low, high, pieces)
        return self._arrays

    def name_of(self, group: int) -> str:
        if self._names is None:
            group_all, low, high, _ = self._array_groups()
            self._names = _group_names(self._dims, group_all, self._n_groups, low, high)
        return self._names[group]

    def count(self, group: int) -> int:
        return self._ends[group] - self._starts[group]

    def zigs_of(self, group: int) -> tuple[int, ...]:
        if self._zigs is None:
            components = self._by_group.tolist()
            self._zigs = [tuple(components[a:b]) for a, b in zip(self._starts, self._ends)]
        return self._zigs[group]

    def slices_of(self, group: int) -> tuple[ParamSlice, ...]:
        if self._slices is None:
            slices: list[list[ParamSlice]] = [[] for _ in self._starts]
            _, low_groups, _, array_pieces = self._array_groups()
            low = low_groups.tolist()  # (an array's only group where its piece is None)
            sizes = self._dims.sizes.tolist()
            dims = self._dims
            for name, dim, role, j in zip(dims.names, dims.dim_indices, dims.roles, dims.array_of):
                pieces = array_pieces[j]
                for g, indices in pieces if pieces is not None else [(low[j], _positions(sizes[j]))]:
                    slices[g].append(ParamSlice(name, dim, indices, role))
            self._slices = [tuple(s) for s in slices]
        return self._slices[group]


def _group_names(dims: DimArrays, group_all: np.ndarray, n_groups: int, low: np.ndarray,
                 high: np.ndarray) -> list[str]:
    """``'weight[dim 0]'`` of each group's first producer dimension (or first dimension) in dim order."""
    if not dims.num_dims:
        return [f"group {g}" for g in range(n_groups)]
    num_dims = dims.num_dims
    array_of = np.asarray(dims.array_of, dtype=np.int64)
    is_producer = np.array([role == PRODUCER for role in dims.roles])
    order = np.arange(num_dims, dtype=np.int64)
    first_dim = np.full(dims.num_arrays, num_dims, dtype=np.int64)  # per array: its first dim
    np.minimum.at(first_dim, array_of, order)
    first_producer = np.full(dims.num_arrays, num_dims, dtype=np.int64)  # per array: its first producer dim
    np.minimum.at(first_producer, array_of[is_producer], order[is_producer])
    # each (array, group) once; most arrays lie in one group: their pair is (array, low)
    uniform = (low == high) & (dims.sizes > 0)
    mixed = ~uniform[dims.array_all]
    mixed_arrays, mixed_groups = dims.array_all[mixed], group_all[mixed]
    distinct = distinct_by_array(mixed_arrays * n_groups + mixed_groups, mixed_arrays)
    if distinct is not None:
        mixed_arrays, mixed_groups = mixed_arrays[distinct], mixed_groups[distinct]
    arrays = np.concatenate([np.flatnonzero(uniform), mixed_arrays])
    groups = np.concatenate([low[uniform], mixed_groups])
    best_dim = np.full(n_groups, num_dims, dtype=np.int64)
    np.minimum.at(best_dim, groups, first_dim[arrays])
    best_producer = np.full(n_groups, num_dims, dtype=np.int64)
    np.minimum.at(best_producer, groups, first_producer[arrays])
    chosen = np.where(best_producer < num_dims, best_producer, best_dim).tolist()
    return [f"{dims.names[k]}[dim {dims.dim_indices[k]}]" if k < num_dims else f"group {g}"
            for g, k in enumerate(chosen)]


def distinct_by_array(keys: np.ndarray, array: np.ndarray) -> np.ndarray | None:
    """Positions of the distinct values of ``keys``, one position per value (any order), or None
    when every position holds a distinct value.  ``keys`` is array-major: the keys of one
    array (``array[i]``) are contiguous and below the next array's.

    Most arrays are a layer's own channels, already strictly increasing, and a grouped conv's
    repeat its components in runs: equal neighbours are dropped first, then only arrays with a
    descent are sorted (np.unique would sort, or hash, everything).  Positions, not keys, are
    returned: the caller reads the (array, component) pair at each without dividing the key.
    """
    if keys.size < 2:
        return None
    step = keys[1:] != keys[:-1]
    positions = None
    if not step.all():  # runs of one component (the channels of one conv group)
        keep = np.concatenate(([True], step))
        positions = np.flatnonzero(keep)
        keys, array = keys[positions], array[positions]
    stalls = np.flatnonzero(keys[1:] < keys[:-1])
    if not stalls.size:
        return positions
    if positions is None:
        positions = np.arange(keys.size)
    unsorted = np.zeros(int(array[-1]) + 1, dtype=bool)
    unsorted[array[stalls]] = True
    in_unsorted = unsorted[array]
    rest = np.flatnonzero(in_unsorted)
    rest = rest[np.argsort(keys[rest], kind="stable")]
    rest_keys = keys[rest]
    first = np.concatenate(([True], rest_keys[1:] != rest_keys[:-1]))
    return np.concatenate([positions[~in_unsorted], positions[rest[first]]])


def sorted_runs(sorted_keys: np.ndarray) -> tuple[list[int], list[int]]:
    """Start and end offsets of the runs of equal values in a sorted array."""
    if not sorted_keys.size:
        return [], []
    cuts = np.flatnonzero(sorted_keys[1:] != sorted_keys[:-1]) + 1
    return np.concatenate(([0], cuts)).tolist(), np.concatenate((cuts, [sorted_keys.size])).tolist()


def _split_by_group(grp: np.ndarray, low: int, high: int) -> list[tuple[int, np.ndarray]]:
    """``(group, ascending positions)`` for each group present in ``grp`` (positions read-only).

    ``low`` and ``high`` are the smallest and largest value in ``grp``.
    """
    if not grp.size:
        return []
    if low == high:  # the common case: the whole dim is one group
        return [(low, _positions(grp.size))]
    by_group = np.argsort(grp, kind="stable")  # stable: positions stay ascending within a group
    by_group.flags.writeable = False
    sorted_grp = grp[by_group]
    starts, ends = sorted_runs(sorted_grp)
    return [(g, by_group[a:b]) for g, a, b in zip(sorted_grp[starts].tolist(), starts, ends)]


def _positions(n: int) -> np.ndarray:
    """A read-only ``arange(n)``, shared by every slice of that length."""
    cached = _POSITIONS.get(n)
    if cached is None:
        cached = np.arange(n, dtype=np.int64)
        cached.flags.writeable = False
        _POSITIONS[n] = cached
    return cached

_POSITIONS: dict[int, np.ndarray] = {}
