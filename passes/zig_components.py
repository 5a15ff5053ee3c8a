"""Connected components of channel atoms: which atoms the analysis' unions join into one ZIG.

A vectorised union-find (min-label hooking with pointer jumping) over the edges, after
the edges between whole runs of fresh atoms, the common case, are unioned run by run.
"""
from __future__ import annotations

import numpy as np


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
