"""From atoms and unions to zero-invariant groups (ZIGs), groups of ZIGs, and the ZIG layout.

A ZIG is a connected component of atoms: one channel across every parameter slice it
couples.  It is prunable when no barrier touched it and some producer slice (a weight
row, a norm scale...) can make it zero.  ZIGs that couple the same parameter
dimensions for the same reason form a *group* (a layer's channels, a stage's residual
stream).
"""
from __future__ import annotations

from collections import defaultdict
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
    reasons: list[str | None] = [None] * n_comp
    for atoms, reason in table.blocks:
        for c in np.unique(comp[atoms]):
            if reasons[c] is None:
                reasons[c] = reason
    has_producer = np.zeros(n_comp, dtype=bool)
    touched: dict[int, list[tuple[str, int]]] = defaultdict(list)
    for key, pd in table.param_dims.items():
        cs = comp[pd.atoms]
        if pd.role == PRODUCER:
            has_producer[cs] = True
        for c in np.unique(cs):
            touched[int(c)].append(key)
    for c in np.flatnonzero(~has_producer):
        if reasons[c] is None:
            reasons[c] = "no parameter produces these channels (only consumers read them)"
    prunable = np.array([r is None for r in reasons], dtype=bool)
    prunable_id = np.full(n_comp, -1, dtype=np.int64)
    prunable_id[prunable] = np.arange(int(prunable.sum()))

    groups = _group_zigs(table, comp, n_comp, touched, reasons)
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
    return ZigIndex(comp, n_comp, prunable, tuple(reasons), prunable_id, tuple(groups), layout)


def _group_zigs(table, comp, n_comp, touched, reasons) -> list[Group]:
    by_signature: dict[tuple, list[int]] = defaultdict(list)
    for c in range(n_comp):
        by_signature[(tuple(sorted(touched.get(c, ()))), reasons[c])].append(c)
    key_order = {key: i for i, key in enumerate(table.param_dims)}  # creation order = graph order
    by_signature = {(tuple(sorted(keys, key=key_order.__getitem__)), r): z for (keys, r), z in by_signature.items()}
    order = sorted(by_signature.items(), key=lambda kv: min(kv[1]))  # stable: graph order of first atom
    groups = []
    for gid, ((keys, reason), zigs) in enumerate(order):
        zig_set = np.zeros(n_comp, dtype=bool)
        zig_set[zigs] = True
        slices = []
        for key in keys:
            pd = table.param_dims[key]
            idx = np.flatnonzero(zig_set[comp[pd.atoms]])
            slices.append(ParamSlice(pd.name, pd.dim, tuple(int(i) for i in idx), pd.role))
        producers = [s for s in slices if s.role == PRODUCER] or slices
        name = f"{producers[0].name}[dim {producers[0].dim}]" if producers else f"group {gid}"
        groups.append(Group(gid, name, tuple(zigs), tuple(slices), reason is None, reason))
    return groups
