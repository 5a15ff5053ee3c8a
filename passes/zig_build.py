"""From atoms and unions to zero-invariant groups (ZIGs), groups of ZIGs, and the ZIG layout.

A ZIG is a connected component of atoms: one channel across every parameter slice it
couples.  It is prunable when no barrier touched it and some producer slice (a weight
row, a norm scale...) can make it zero.  ZIGs that couple the same parameter
dimensions for the same reason form a *group* (a layer's channels, a stage's residual
stream).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from fxprune.layout import PRODUCER, SliceMap, ZigLayout

from .channel_analysis import AtomTable


def connected_components(n: int, edges: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Component id (0..k-1, in order of each component's smallest atom) of each of ``n`` atoms.

    Vectorised min-label hooking with pointer jumping.
    """
    parent = np.arange(n, dtype=np.int64)
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
    is_root = parent == np.arange(n, dtype=np.int64)  # each root is its component's smallest atom
    return (np.cumsum(is_root) - 1)[parent]


class ParamSlice(NamedTuple):
    """The indices ``indices`` along ``dim`` of parameter/buffer ``name`` that one group couples."""

    name: str
    dim: int
    indices: np.ndarray  # int64, ascending, read-only
    role: str


@dataclass(frozen=True)
class Group:
    """Channels (ZIGs) that couple the same parameter dimensions: a layer's width, a residual stream."""

    id: int
    name: str
    zigs: tuple[int, ...]  # component ids of its ZIGs (see ``ZigIndex``)
    slices: tuple[ParamSlice, ...]
    prunable: bool
    reason: str | None

    @property
    def channels(self) -> int:
        return len(self.zigs)


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
    layout: ZigLayout

    def reason(self, component: int) -> str | None:
        """Why ZIG ``component`` is not prunable (None when it is)."""
        r = int(self.reason_id[component])
        return self.reason_texts[r] if r >= 0 else None


def build_zigs(table: AtomTable) -> ZigIndex:
    comp = connected_components(table.count, table.edges)
    n_comp = int(comp.max()) + 1 if comp.size else 0
    # the first barrier that touched a component names the reason (later blocks written first)
    reason_id = np.full(n_comp, -1, dtype=np.int64)
    reason_texts = [reason for _, reason in table.blocks]
    for i in range(len(table.blocks) - 1, -1, -1):
        reason_id[comp[table.blocks[i][0]]] = i
    has_producer = np.zeros(n_comp, dtype=bool)
    producer_atoms = [pd.atoms for pd in table.param_dims.values() if pd.role == PRODUCER]
    if producer_atoms:
        has_producer[comp[np.concatenate(producer_atoms)]] = True
    no_producer = (~has_producer) & (reason_id < 0)
    reason_texts.append("no parameter produces these channels (only consumers read them)")
    reason_id[no_producer] = len(reason_texts) - 1
    prunable = reason_id < 0
    n_prunable = int(prunable.sum())
    prunable_id = np.full(n_comp, -1, dtype=np.int64)
    prunable_id[prunable] = np.arange(n_prunable)

    groups, group_of = _group_zigs(table, comp, n_comp, reason_id, reason_texts)
    zig_group = np.zeros(n_prunable, dtype=np.int64)
    zig_group[prunable_id[prunable]] = group_of[prunable]
    maps = []
    zig_of: dict[int, torch.Tensor | None] = {}  # parameter dims that share atoms share the (read-only) map
    for (name, dim), pd in table.param_dims.items():
        if id(pd.atoms) not in zig_of:
            zig = prunable_id[comp[pd.atoms]]
            zig_of[id(pd.atoms)] = torch.from_numpy(zig) if (zig >= 0).any() else None
        if zig_of[id(pd.atoms)] is not None:
            maps.append(SliceMap(name, dim, zig_of[id(pd.atoms)], pd.role))
    layout = ZigLayout(n_prunable, tuple(maps), torch.from_numpy(zig_group))
    return ZigIndex(comp, n_comp, prunable, reason_id, tuple(reason_texts), prunable_id, tuple(groups), layout)


def _distinct(a: np.ndarray) -> np.ndarray:
    """Sorted distinct values (np.unique's hashing path is slow on large arrays)."""
    if a.size < 2 or (a[1:] > a[:-1]).all():  # already strictly increasing: a layer's own channels
        return a
    s = np.sort(a)
    return s[np.concatenate(([True], s[1:] != s[:-1]))] if s.size else s


def _runs(sorted_keys: np.ndarray) -> tuple[list[int], list[int]]:
    """Start and end offsets of the runs of equal values in a sorted array."""
    if not sorted_keys.size:
        return [], []
    cuts = np.flatnonzero(sorted_keys[1:] != sorted_keys[:-1]) + 1
    return np.concatenate(([0], cuts)).tolist(), np.concatenate((cuts, [sorted_keys.size])).tolist()


def _group_zigs(table: AtomTable, comp: np.ndarray, n_comp: int, reason_id: np.ndarray,
                reason_texts: list[str]) -> tuple[list[Group], np.ndarray]:
    """Cluster components by (the set of parameter dims they touch, their reason).

    A component's signature is a sum of random 64-bit keys, one per distinct parameter
    dimension it touches, plus a random key for its reason: equal sets give equal
    signatures, different sets collide with probability ~2^-64.  Returns the groups and
    each component's group id.  One pass of array ops per parameter dimension, none per
    channel.
    """
    rng = np.random.default_rng(0)
    dims = list(table.param_dims.values())
    key_hash = rng.integers(0, 2**63 - 1, size=max(len(dims), 1), dtype=np.int64).astype(np.uint64)
    reason_hash = rng.integers(0, 2**63 - 1, size=len(reason_texts) + 1, dtype=np.int64).astype(np.uint64)
    # parameter dims that adopted the same atoms (a norm's scale, shift and statistics) share one array
    shared: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for pd in dims:
        if id(pd.atoms) not in shared:
            c = comp[pd.atoms]
            shared[id(pd.atoms)] = (c, _distinct(c))
    signature = reason_hash[reason_id + 1]
    for k, pd in enumerate(dims):
        signature[shared[id(pd.atoms)][1]] += key_hash[k]  # distinct indices: fancy += is exact (uint64 wraps)
    _, first, group_of = np.unique(signature, return_index=True, return_inverse=True)
    group_of = group_of.ravel()
    order = np.argsort(first, kind="stable")  # number groups in order of their first component
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    group_of = rank[group_of]
    n_groups = order.size

    by_group = np.argsort(group_of, kind="stable")
    starts, ends = _runs(group_of[by_group])
    by_group_list = by_group.tolist()
    members = [tuple(by_group_list[a:b]) for a, b in zip(starts, ends)]

    # one slice per (group, parameter dim), in parameter-dim creation (graph) order
    slices: list[list[ParamSlice]] = [[] for _ in range(n_groups)]
    pieces: dict[int, list[tuple[int, np.ndarray]]] = {}
    for pd in dims:
        if id(pd.atoms) not in pieces:
            pieces[id(pd.atoms)] = _split_by_group(group_of[shared[id(pd.atoms)][0]])
        for g, indices in pieces[id(pd.atoms)]:
            slices[g].append(ParamSlice(pd.name, pd.dim, indices, pd.role))
    groups = []
    for g in range(n_groups):
        producers = [s for s in slices[g] if s.role == PRODUCER] or slices[g]
        name = f"{producers[0].name}[dim {producers[0].dim}]" if producers else f"group {g}"
        r = int(reason_id[members[g][0]])
        reason = reason_texts[r] if r >= 0 else None
        groups.append(Group(g, name, members[g], tuple(slices[g]), reason is None, reason))
    return groups, group_of


def _split_by_group(grp: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """``(group, ascending positions)`` for each group present in ``grp`` (positions read-only)."""
    if not grp.size:
        return []
    if grp[0] == grp[-1] and (grp == grp[0]).all():  # the common case: the whole dim is one group
        positions = np.arange(grp.size, dtype=np.int64)
        positions.flags.writeable = False
        return [(int(grp[0]), positions)]
    by_group = np.argsort(grp, kind="stable")  # stable: positions stay ascending within a group
    by_group.flags.writeable = False
    sorted_grp = grp[by_group]
    starts, ends = _runs(sorted_grp)
    return [(g, by_group[a:b]) for g, a, b in zip(sorted_grp[starts].tolist(), starts, ends)]
