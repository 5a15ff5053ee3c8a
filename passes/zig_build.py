"""From atoms and unions to zero-invariant groups (ZIGs), groups of ZIGs, and the ZIG layout.

A ZIG is a connected component of atoms: one channel across every parameter slice it
couples.  It is prunable when no barrier touched it and some producer slice (a weight
row, a norm scale...) can make it zero.  ZIGs that couple the same parameter
dimensions for the same reason form a *group* (a layer's channels, a stage's residual
stream).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fxprune.layout import PRODUCER, SliceMap, ZigLayout

from .channel_analysis import AtomTable


def connected_components(n: int, edges: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Component id (0..k-1) of each of ``n`` atoms; vectorised min-label hooking with pointer jumping."""
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
    _, comp = np.unique(parent, return_inverse=True)
    return comp.astype(np.int64)


@dataclass(frozen=True)
class ParamSlice:
    """The indices ``indices`` along ``dim`` of parameter/buffer ``name`` that one group couples."""

    name: str
    dim: int
    indices: tuple[int, ...]
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
    reasons: tuple[str | None, ...]  # per component: why it is not prunable
    prunable_id: np.ndarray  # int64 [num_components]: index among prunable ZIGs, -1 if not prunable
    groups: tuple[Group, ...]
    layout: ZigLayout


def build_zigs(table: AtomTable) -> ZigIndex:
    comp = connected_components(table.count, table.edges)
    n_comp = int(comp.max()) + 1 if comp.size else 0
    # the first barrier that touched a component names the reason (later blocks written first)
    reason_id = np.full(n_comp, -1, dtype=np.int64)
    reason_texts = [reason for _, reason in table.blocks]
    for i in range(len(table.blocks) - 1, -1, -1):
        reason_id[comp[table.blocks[i][0]]] = i
    has_producer = np.zeros(n_comp, dtype=bool)
    for pd in table.param_dims.values():
        if pd.role == PRODUCER:
            has_producer[comp[pd.atoms]] = True
    no_producer = (~has_producer) & (reason_id < 0)
    reason_texts.append("no parameter produces these channels (only consumers read them)")
    reason_id[no_producer] = len(reason_texts) - 1
    reasons = tuple(reason_texts[r] if r >= 0 else None for r in reason_id)
    prunable = reason_id < 0
    prunable_id = np.full(n_comp, -1, dtype=np.int64)
    prunable_id[prunable] = np.arange(int(prunable.sum()))

    groups = _group_zigs(table, comp, n_comp, reason_id, reasons)
    zig_group = np.zeros(int(prunable.sum()), dtype=np.int64)
    for g in groups:
        ids = prunable_id[list(g.zigs)]
        zig_group[ids[ids >= 0]] = g.id
    maps = []
    for (name, dim), pd in table.param_dims.items():
        zig = prunable_id[comp[pd.atoms]]
        if (zig >= 0).any():
            maps.append(SliceMap(name, dim, torch.from_numpy(zig.copy()), pd.role))
    layout = ZigLayout(int(prunable.sum()), tuple(maps), torch.from_numpy(zig_group))
    return ZigIndex(comp, n_comp, prunable, reasons, prunable_id, tuple(groups), layout)


def _distinct(a: np.ndarray) -> np.ndarray:
    """Sorted distinct values (np.unique's hashing path is slow for many small arrays)."""
    s = np.sort(a)
    return s[np.concatenate(([True], s[1:] != s[:-1]))] if s.size else s


def _group_zigs(table: AtomTable, comp: np.ndarray, n_comp: int, reason_id: np.ndarray, reasons) -> list[Group]:
    """Cluster components by (the set of parameter dims they touch, their reason), vectorised.

    A component's signature is a sum of random 64-bit keys, one per distinct parameter
    dimension it touches: equal sets give equal sums, different sets collide with
    probability ~2^-64.
    """
    rng = np.random.default_rng(0)
    keys = list(table.param_dims)
    key_hash = rng.integers(0, 2**63 - 1, size=len(keys), dtype=np.int64).astype(np.uint64)
    pair_comp = np.concatenate([comp[table.param_dims[k].atoms] for k in keys]) if keys else np.zeros(0, np.int64)
    pair_key = np.concatenate([np.full(table.param_dims[k].atoms.size, i) for i, k in enumerate(keys)]) \
        if keys else np.zeros(0, np.int64)
    pairs = _distinct(pair_comp * max(len(keys), 1) + pair_key)
    signature = np.zeros(n_comp, dtype=np.uint64)
    np.add.at(signature, pairs // max(len(keys), 1), key_hash[pairs % max(len(keys), 1)])
    table_sig = np.stack([signature.view(np.int64), reason_id])
    _, first, group_of = np.unique(table_sig, axis=1, return_index=True, return_inverse=True)
    group_of = group_of.ravel()
    order = np.argsort(first, kind="stable")  # number groups in order of their first component
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    group_of = rank[group_of]
    n_groups = order.size
    members = [[] for _ in range(n_groups)]
    for c, g in enumerate(group_of.tolist()):
        members[g].append(c)
    slices: list[list[ParamSlice]] = [[] for _ in range(n_groups)]
    for key in keys:  # creation order = graph order
        pd = table.param_dims[key]
        grp = group_of[comp[pd.atoms]]
        distinct = [int(grp[0])] if (grp == grp[0]).all() else _distinct(grp).tolist()
        for g in distinct:
            idx = np.flatnonzero(grp == g)
            slices[g].append(ParamSlice(pd.name, pd.dim, tuple(idx.tolist()), pd.role))
    groups = []
    for g in range(n_groups):
        producers = [s for s in slices[g] if s.role == PRODUCER] or slices[g]
        name = f"{producers[0].name}[dim {producers[0].dim}]" if producers else f"group {g}"
        reason = reasons[members[g][0]]
        groups.append(Group(g, name, tuple(members[g]), tuple(slices[g]), reason is None, reason))
    return groups
