"""From atoms and unions to zero-invariant groups (ZIGs), groups of ZIGs, and the ZIG layout.

A ZIG is a connected component of atoms: one channel across every parameter slice it
couples.  It is prunable when no barrier touched it and some producer slice (a weight
row, a norm scale...) can make it zero.  ZIGs that couple the same parameter
dimensions for the same reason form a *group* (a layer's channels, a stage's residual
stream).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import NamedTuple

import numpy as np
import torch

from fxprune.layout import PRODUCER, SliceMap, ZigLayout

from .atom_table import AtomTable, _counting


def connected_components(n: int, edges: list[tuple[np.ndarray, np.ndarray]],
                         ranges: dict[int, int] | None = None,
                         block_heads: dict[int, tuple[np.ndarray, int]] | None = None) -> np.ndarray:
    """Component id (0..k-1, in order of each component's smallest atom) of each of ``n`` atoms.

    ``ranges``: ids of arrays known to be runs of consecutive atoms, with their first atom
    (``AtomTable.ranges``; the arrays must stay alive, so an id names one array).  An edge
    between two of them (a residual add of two layers' outputs) joins them index by index,
    and an edge from a run to its ``block_heads`` array (``AtomTable.unify_in_blocks``) joins
    its blocks: those are unioned in closed form first, the rest by vectorised min-label
    hooking with pointer jumping.
    """
    identity = np.arange(n, dtype=np.int64)
    parent = identity.copy()
    if ranges and edges:
        edges = _union_runs(parent, identity, edges, ranges, block_heads or {})
    if edges and n:
        u = np.concatenate([e[0] for e in edges])
        v = np.concatenate([e[1] for e in edges])
        while True:
            pu, pv = parent[u], parent[v]
            if np.array_equal(pu, pv):
                break
            low = np.minimum(pu, pv)
            np.minimum.at(parent, pu, low)
            np.minimum.at(parent, pv, low)
            while True:  # compress every chain to its root
                jumped = parent[parent]
                if np.array_equal(jumped, parent):
                    break
                parent = jumped
    is_root = parent == identity  # each root is its component's smallest atom
    return (np.cumsum(is_root) - 1)[parent]


def _union_runs(parent: np.ndarray, identity: np.ndarray, edges: list[tuple[np.ndarray, np.ndarray]],
                ranges: dict[int, int],
                block_heads: dict[int, tuple[np.ndarray, int]]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Union the edges between two whole runs of atoms (``ranges``) run by run, and those that join a
    run's consecutive blocks (``block_heads``) block by block; returns the other edges.

    Each run joins the class of runs it is tied to, represented by the run with the smallest
    first atom: afterwards ``parent`` maps every atom of a run to the same position of that
    representative, or to the first position of its block there (one level deep, every parent
    smaller or equal, as the hooking loop expects).
    """
    rep: dict[int, int] = {}  # first atom of a run -> first atom of a run it is tied to (smaller)
    length: dict[int, int] = {}
    blocked: list[tuple[int, int, tuple[np.ndarray, np.ndarray]]] = []  # (first atom, block size, edge)

    def root(start: int) -> int:
        while rep.get(start, start) != start:
            start = rep[start]
        return start

    rest = []
    for a, b in edges:
        start_a = ranges.get(id(a))
        if start_a is None:
            rest.append((a, b))
            continue
        heads = block_heads.get(id(b))
        if heads is not None and heads[0] is b:
            blocked.append((start_a, heads[1], (a, b)))
            continue
        start_b = ranges.get(id(b))
        if start_b is None or a.size != b.size:
            rest.append((a, b))
            continue
        x, y = root(start_a), root(start_b)
        length[start_a] = length[start_b] = a.size
        if x != y:
            rep[max(x, y)] = min(x, y)
    for start, size in length.items():
        top = root(start)
        if top != start:
            parent[start:start + size] = identity[top:top + size]
    if blocked:
        block_of: dict[int, int] = {}  # representative run -> the block size it was split in
        for start, k, edge in blocked:
            top, size = root(start), edge[0].size
            if block_of.setdefault(top, k) != k or size % k:
                rest.append(edge)  # (a second block size on one class, or blocks that do not tile the run)
                continue
            parent[top:top + size] = identity[top:top + size:k].repeat(k)
        parent[:] = parent[parent]  # runs tied to a representative: one level deep again
    return rest


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

    def __init__(self, id: int, prunable: bool, reason: str | None, members: "_GroupMembers"):
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
    _dims: "_DimArrays" = field(repr=False, compare=False)
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


def build_zigs(table: AtomTable) -> ZigIndex:
    dims = _DimArrays(table)
    if dims.covers_all_atoms:
        zigs = _zigs_of_tied_runs(table, dims)
        if zigs is not None:
            return zigs
    comp = connected_components(table.count, table.edges, table.ranges, table.block_heads)
    dims.set_components(comp)
    n_comp = int(comp.max()) + 1 if comp.size else 0
    # the first barrier that touched a component names the reason (later blocks written first)
    reason_id, reason_texts = _reasons(table, comp, n_comp)
    has_producer = np.zeros(n_comp, dtype=bool)
    producer_array = np.zeros(dims.num_arrays, dtype=bool)  # per distinct array: some producer dim holds it
    producer_array[[j for role, j in zip(dims.roles, dims.array_of) if role == PRODUCER]] = True
    has_producer[dims.comp_all[np.repeat(producer_array, dims.sizes)]] = True  # (repeat: array_all's gather, cheaper)
    reason_texts.append(_NO_PRODUCER)
    reason_id[(~has_producer) & (reason_id < 0)] = len(reason_texts) - 1
    groups, group_of = _group_zigs(dims, n_comp, reason_id, reason_texts)
    return _zig_index(comp, reason_id, reason_texts, groups, dims, group_of)


_NO_PRODUCER = "no parameter produces these channels (only consumers read them)"


def _reasons(table: AtomTable, comp: np.ndarray, n_comp: int) -> tuple[np.ndarray, list[str]]:
    """Per component, the index of the first barrier that touched it (-1 for none), and the texts."""
    reason_id = np.full(n_comp, -1, dtype=np.int64)
    reason_texts = [reason for _, reason in table.blocks]
    for i in range(len(table.blocks) - 1, -1, -1):  # (later blocks written first: the first one wins)
        reason_id[comp[table.blocks[i][0]]] = i
    return reason_id, reason_texts


def _zig_index(comp: np.ndarray, reason_id: np.ndarray, reason_texts: list[str], groups: list[Group],
               dims: "_DimArrays", group_of: np.ndarray) -> ZigIndex:
    n_comp = reason_id.size
    prunable = reason_id < 0
    n_prunable = int(prunable.sum())
    prunable_id = np.full(n_comp, -1, dtype=np.int64)
    prunable_id[prunable] = np.arange(n_prunable)
    return ZigIndex(comp, n_comp, prunable, reason_id, tuple(reason_texts), prunable_id, tuple(groups), n_prunable,
                    dims, group_of)


def _zigs_of_tied_runs(table: AtomTable, dims: "_DimArrays") -> ZigIndex | None:
    """``build_zigs`` where every edge ties two whole parameter-dim arrays of one size (the table's
    fresh runs, ``dims.covers_all_atoms``), and every barrier covers whole components of one class: the
    common case (plain and residual CNNs).  None where that does not hold.

    Then the runs fall into classes tied position by position; a class's components are the
    positions of its first run, numbered in order of that run's first atom, so the component of
    every atom follows from one offset per run.  All of a class's components touch the same
    parameter dims and have one reason: each class with atoms is one group, and the grouping
    needs a handful of Python steps per run instead of array work per atom.
    """
    index, sizes = dims.index, dims.size_list
    parent = list(range(dims.num_arrays))  # per run: a run of its class with a smaller index
    for a, b in table.edges:
        i, j = index.get(id(a)), index.get(id(b))  # (ids of live arrays: each names one array)
        if i is None or j is None or sizes[i] != sizes[j]:
            return None  # a slice, a shuffle or a block pattern of a run: the general path
        while parent[i] != i:
            i = parent[i]
        while parent[j] != j:
            j = parent[j]
        if i != j:
            parent[max(i, j)] = min(i, j)
    offsets, shift = [], []  # per run: its class's first component; its first atom minus that
    first, counts, class_runs = [], [], []  # per class with atoms, in order: first component, size, first run
    n_comp = 0
    for j, (start, size) in enumerate(zip(dims.starts, sizes)):
        top = parent[j]
        if top == j:
            offset = n_comp
            n_comp += size
            if size:
                first.append(offset)
                counts.append(size)
                class_runs.append(j)
        else:
            top = parent[j] = parent[top]  # (its class's first run: each parent is already final)
            offset = offsets[top]
        offsets.append(offset)
        shift.append(start - offset)
    comp = _counting(table.count)[:table.count] - np.repeat(np.asarray(shift, dtype=np.int64), dims.sizes)
    dims.set_components(comp)
    reason_id, reason_texts = _reasons(table, comp, n_comp)
    if table.blocks:  # every change of reason must fall where a class begins
        changes = (np.flatnonzero(reason_id[1:] != reason_id[:-1]) + 1).tolist()
        if not set(changes).issubset(first):
            return None
    has_producer = [False] * dims.num_arrays  # per class's first run
    for role, j in zip(dims.roles, dims.array_of):
        if role == PRODUCER:
            has_producer[parent[j]] = True
    reason_texts.append(_NO_PRODUCER)
    class_reason = reason_id[first].tolist() if first else []
    for g, j in enumerate(class_runs):
        if not has_producer[j] and class_reason[g] < 0:
            class_reason[g] = len(reason_texts) - 1
            reason_id[first[g]:first[g] + counts[g]] = class_reason[g]
    ends = [c + n for c, n in zip(first, counts)]
    group_of = np.repeat(np.arange(len(first), dtype=np.int64), counts)
    members = _GroupMembers(dims, group_of, len(first), np.arange(n_comp, dtype=np.int64), first, ends)
    groups = [Group(g, r < 0, reason_texts[r] if r >= 0 else None, members) for g, r in enumerate(class_reason)]
    return _zig_index(comp, reason_id, reason_texts, groups, dims, group_of)


def _layout(dims: "_DimArrays", prunable: np.ndarray, prunable_id: np.ndarray, n_prunable: int,
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


class _DimArrays:
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


def _group_zigs(dims: _DimArrays, n_comp: int, reason_id: np.ndarray,
                reason_texts: list[str]) -> tuple[list[Group], np.ndarray]:
    """Cluster components by (the set of parameter dims they touch, their reason).

    A component's signature is a sum of random 64-bit keys, one per distinct parameter
    dimension it touches, plus a random key for its reason: equal sets give equal
    signatures, different sets collide with probability ~2^-64.  Returns the groups and
    each component's group id.  Whole-array ops only, none per channel.
    """
    key_hash = _random_keys(max(dims.num_dims, 1), stream=0)
    reason_hash = _random_keys(len(reason_texts) + 1, stream=1)
    # Dims sharing an array touch the same components: add their keys up per array first.
    array_key = np.zeros(dims.num_arrays, dtype=np.uint64)
    np.add.at(array_key, np.asarray(dims.array_of, dtype=np.int64), key_hash[: dims.num_dims])
    # Each (array, component) pair once: an array may hold several atoms of one component.
    distinct = _distinct_by_array(dims.array_all * max(n_comp, 1) + dims.comp_all, dims.array_all)
    if distinct is None:  # (every (array, component) pair once already: keys per atom by repeating per array)
        comps, keys = dims.comp_all, np.repeat(array_key, dims.sizes)
    else:
        comps, keys = dims.comp_all[distinct], array_key[dims.array_all[distinct]]
    signature = reason_hash[reason_id + 1]
    np.add.at(signature, comps, keys)  # uint64 wraps
    # Atoms of no parameter dim (a dimension nothing gave a channel meaning, see channel_analysis)
    # slice nothing: they form no group.
    orphan = None  # (none where the arrays hold every atom)
    if not dims.covers_all_atoms:
        has_dim = np.zeros(n_comp, dtype=bool)
        has_dim[dims.comp_all] = True
        orphan = ~has_dim if not has_dim.all() else None
    if orphan is not None:
        signature[orphan] = _random_keys(1, stream=2)[0]
    group_of, n_groups = _number_by_first_occurrence(signature)  # groups in order of their first component
    if orphan is not None:
        orphan_group = int(group_of[orphan][0])
        group_of = np.where(orphan, -1, group_of - (group_of > orphan_group))
        n_groups -= 1

    if group_of.size < 2 or (group_of[1:] >= group_of[:-1]).all():
        by_group = np.arange(group_of.size)  # (the common case: each group's components in one run)
    else:
        by_group = np.argsort(group_of, kind="stable")
    by_group = by_group[group_of[by_group] >= 0]
    starts, ends = _runs(group_of[by_group])

    members = _GroupMembers(dims, group_of, n_groups, by_group, starts, ends)
    first_reason = reason_id[by_group[starts]].tolist() if n_groups else []  # a group's components share a reason
    groups = [Group(g, r < 0, reason_texts[r] if r >= 0 else None, members) for g, r in enumerate(first_reason)]
    return groups, group_of


def _number_by_first_occurrence(values: np.ndarray) -> tuple[np.ndarray, int]:
    """Per element, the number of its value, values numbered 0, 1, ... in order of first occurrence;
    and how many distinct values there are.

    Equal values mostly come in runs (a group's components are mostly consecutive): the
    runs are numbered, not the elements."""
    if not values.size:
        return np.zeros(0, dtype=np.int64), 0
    starts = np.empty(values.size, dtype=bool)
    starts[0] = True
    np.not_equal(values[1:], values[:-1], out=starts[1:])
    starts = np.flatnonzero(starts)
    first, inverse = _first_and_inverse(values[starts])  # (per run)
    order = np.argsort(first, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    lengths = np.diff(starts, append=values.size)
    return np.repeat(rank[inverse], lengths), int(order.size)


def _first_and_inverse(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per distinct value (ascending): the index of its first occurrence; per element: its value's
    rank.  ``np.unique(values, return_index=True, return_inverse=True)[1:]``, without its checks."""
    if not values.size:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    order = np.argsort(values, kind="stable")  # (stable: a value's first occurrence leads its run)
    ordered = values[order]
    starts = np.empty(values.size, dtype=bool)
    starts[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=starts[1:])
    inverse = np.empty(values.size, dtype=np.int64)
    inverse[order] = np.cumsum(starts) - 1
    return order[starts], inverse


def _random_keys(n: int, stream: int) -> np.ndarray:
    """The first ``n`` of a fixed sequence of random 64-bit keys (one sequence per ``stream``), read-only.

    Kept between calls: seeding a generator costs more than the rest of a small model's grouping.
    """
    keys = _KEYS.get(stream)
    if keys is None or keys.size < n:
        size = max(n, 2 * (keys.size if keys is not None else 256))
        keys = np.random.default_rng([stream, size]).integers(0, 2**63 - 1, size=size, dtype=np.int64).astype(np.uint64)
        keys.flags.writeable = False
        _KEYS[stream] = keys
    return keys[:n]


_KEYS: dict[int, np.ndarray] = {}


class _GroupMembers:
    """Every group's components, ``ParamSlice`` tuple and name, each built for all groups at once when
    first asked for (a listing or an optimizer needs them; the analysis itself does not)."""

    def __init__(self, dims: _DimArrays, group_of: np.ndarray, n_groups: int, by_group: np.ndarray,
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


def _group_names(dims: _DimArrays, group_all: np.ndarray, n_groups: int, low: np.ndarray,
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
    distinct = _distinct_by_array(mixed_arrays * n_groups + mixed_groups, mixed_arrays)
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


def _distinct_by_array(keys: np.ndarray, array: np.ndarray) -> np.ndarray | None:
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


def _runs(sorted_keys: np.ndarray) -> tuple[list[int], list[int]]:
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
    starts, ends = _runs(sorted_grp)
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
