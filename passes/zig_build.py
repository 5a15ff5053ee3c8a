"""From atoms and unions to zero-invariant groups (ZIGs) and groups of ZIGs.

A ZIG is a connected component of atoms: one channel across every parameter slice it
couples.  It is prunable when no barrier touched it and some producer slice (a weight
row, a norm scale...) can make it zero.  ZIGs that couple the same parameter
dimensions for the same reason form a *group* (a layer's channels, a stage's residual
stream).

Two ways to the same result: where every union ties whole runs of a layer's atoms
(plain and residual CNNs) components and groups follow run by run
(``_zigs_of_tied_runs``); otherwise components come from the vectorised union-find
(``zig_components``) and groups from hashed signatures (``_group_zigs``).  The result
types are in ``zig_index``.
"""
from __future__ import annotations

import numpy as np

from fxprune.layout import PRODUCER

from .atom_table import AtomTable, shared_arange
from .zig_components import connected_components
from .zig_index import DimArrays, Group, GroupMembers, ParamSlice, ZigIndex, distinct_by_array, sorted_runs


def build_zigs(table: AtomTable) -> ZigIndex:
    dims = DimArrays(table)
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
               dims: "DimArrays", group_of: np.ndarray) -> ZigIndex:
    n_comp = reason_id.size
    prunable = reason_id < 0
    n_prunable = int(prunable.sum())
    prunable_id = np.full(n_comp, -1, dtype=np.int64)
    prunable_id[prunable] = np.arange(n_prunable)
    return ZigIndex(comp, n_comp, prunable, reason_id, tuple(reason_texts), prunable_id, tuple(groups), n_prunable,
                    dims, group_of)


def _zigs_of_tied_runs(table: AtomTable, dims: "DimArrays") -> ZigIndex | None:
    """``build_zigs`` where every edge ties two whole parameter-dim arrays of one size (the table's
    fresh runs, ``dims.covers_all_atoms``) or joins a run's consecutive blocks (a grouped conv's
    output, ``AtomTable.unify_in_blocks``), and every barrier covers whole components of one class:
    the common case (plain, residual and grouped CNNs).  None where that does not hold.

    Then the runs fall into classes tied position by position, each cut in blocks of one size
    (1 where no block edge reaches it); a class's components are the blocks of its first run,
    numbered in order of that run's first atom, so the component of every atom follows from
    one offset per run.  All of a class's components touch the same parameter dims and have
    one reason: each class with atoms is one group, and the grouping needs a handful of Python
    steps per run instead of array work per atom.
    """
    index, sizes = dims.index, dims.size_list
    parent = list(range(dims.num_arrays))  # per run: a run of its class with a smaller index
    blocked = []  # (run, block size) per block edge
    for a, b in table.edges:
        i, j = index.get(id(a)), index.get(id(b))  # (ids of live arrays: each names one array)
        if j is None and i is not None:
            heads = table.block_heads.get(id(b))
            if heads is not None and heads[0] is b and sizes[i] % heads[1] == 0:
                blocked.append((i, heads[1]))
                continue
        if i is None or j is None or sizes[i] != sizes[j]:
            return None  # a slice, a shuffle or a partial block of a run: the general path
        i, j = _first_run(parent, i), _first_run(parent, j)
        if i != j:
            parent[max(i, j)] = min(i, j)
    block_of = {}  # class's first run -> its block size
    for i, k in blocked:
        if block_of.setdefault(_first_run(parent, i), k) != k:
            return None  # (two block sizes on one class)
    offsets, shift = [], []  # per run: its class's first component; its first atom minus that
    first, counts, class_runs = [], [], []  # per class with atoms, in order: first component, size, first run
    n_comp = 0
    for j, (start, size) in enumerate(zip(dims.starts, sizes)):
        top = parent[j]
        if top == j:
            offset = n_comp
            n_comp += size // block_of.get(j, 1)
            if size:
                first.append(offset)
                counts.append(n_comp - offset)
                class_runs.append(j)
        else:
            top = parent[j] = parent[top]  # (its class's first run: each parent is already final)
            offset = offsets[top]
        offsets.append(offset)
        shift.append(start - offset)
    comp = shared_arange(table.count)[:table.count] - np.repeat(np.asarray(shift, dtype=np.int64), dims.sizes)
    if block_of:  # a blocked class: position p of a run is in component offset + p // k
        k = np.repeat(np.asarray([block_of.get(top, 1) for top in parent], dtype=np.int64), dims.sizes)
        offset_all = np.repeat(np.asarray(offsets, dtype=np.int64), dims.sizes)
        comp = offset_all + (comp - offset_all) // k
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
    members = GroupMembers(dims, group_of, len(first), np.arange(n_comp, dtype=np.int64), first, ends)
    groups = [Group(g, r < 0, reason_texts[r] if r >= 0 else None, members) for g, r in enumerate(class_reason)]
    return _zig_index(comp, reason_id, reason_texts, groups, dims, group_of)


def _first_run(parent: list[int], i: int) -> int:
    """The first run of run ``i``'s class (``parent`` points each run at a smaller one of its class)."""
    while parent[i] != i:
        i = parent[i]
    return i


def _group_zigs(dims: DimArrays, n_comp: int, reason_id: np.ndarray,
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
    distinct = distinct_by_array(dims.array_all * max(n_comp, 1) + dims.comp_all, dims.array_all)
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
    starts, ends = sorted_runs(group_of[by_group])

    members = GroupMembers(dims, group_of, n_groups, by_group, starts, ends)
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


__all__ = ["build_zigs", "connected_components", "Group", "ParamSlice", "ZigIndex"]
