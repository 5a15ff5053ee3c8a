"""The atom table: channel atoms, the equalities between them, barriers, and parameter dimensions.

Channel analysis fills one table per traced graph; ZIG building reads it.  An *atom* is
one channel of one producer; atoms are numbered from 0 in runs (``AtomTable.new``), and
a rule couples atoms by ``unify`` (edges) or makes them unprunable by ``block``.

Each parameter or buffer dimension a rule reads owns an array of atoms.  The table keeps
these dimensions as columns (names, dims, atoms, roles), not as a record per dimension:
a network has hundreds, and records made during analysis outlive it, which is work for
the garbage collector on every trace.  ``param_dim`` gives a reader a record.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from fxprune.layout import BUFFER


@dataclass(slots=True)
class ParamDim:
    """The atoms of one dimension of one parameter or buffer (a reader's copy: see ``AtomTable.param_dim``)."""

    name: str
    dim: int
    atoms: np.ndarray
    role: str | None  # PRODUCER / CONSUMER / BUFFER; None until a rule says (then PRODUCER)
    is_buffer: bool


@dataclass
class AtomTable:
    count: int = 0
    edges: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)
    blocks: list[tuple[np.ndarray, str]] = field(default_factory=list)

    # Parameter dimensions, one entry per (tensor, dim) in order of first use: the columns of
    # ``ParamDim``.  A role may change while rules run (a producer use anywhere makes a producer).
    dim_names: list[str] = field(default_factory=list)
    dim_dims: list[int] = field(default_factory=list)
    dim_atoms: list[np.ndarray] = field(default_factory=list)
    dim_roles: list[str | None] = field(default_factory=list)
    dim_is_buffer: list[bool] = field(default_factory=list)
    # (name, dim) -> position in the columns; the key of dim 0 is the name alone (most dimensions
    # read are dim 0: a string, which the collector does not track, instead of a tuple)
    _dim_position: dict[str | tuple[str, int], int] = field(default_factory=dict)

    # the arrays ``new`` made, by id: their first atom; each is a whole run of fresh atoms.  ``_fresh``
    # holds the arrays, so no other object can take one of these ids while the table lives.
    ranges: dict[int, int] = field(default_factory=dict)
    # arrays ``unify_in_blocks`` made, by id: (the array, its block size k)
    block_heads: dict[int, tuple[np.ndarray, int]] = field(default_factory=dict)
    _fresh: list[np.ndarray] = field(default_factory=list)
    _tracked: dict[int, tuple[np.ndarray, bool]] = field(default_factory=dict)

    # -- parameter dimensions ------------------------------------------------
    @staticmethod
    def dim_key(name: str, dim: int) -> str | tuple[str, int]:
        return name if dim == 0 else (name, dim)

    def dim_position(self, name: str, dim: int) -> int | None:
        """Where ``name``'s dimension ``dim`` is in the columns, or None if no rule read it."""
        return self._dim_position.get(name if dim == 0 else (name, dim))

    def add_dim(self, key: str | tuple[str, int], name: str, dim: int, atoms: np.ndarray, role: str | None,
                is_buffer: bool) -> None:
        """A new parameter dimension (``key``: ``dim_key(name, dim)``, which the caller has made already)."""
        self._dim_position[key] = len(self.dim_names)
        self.dim_names.append(name)
        self.dim_dims.append(dim)
        self.dim_atoms.append(atoms)
        self.dim_roles.append(BUFFER if is_buffer else role)
        self.dim_is_buffer.append(is_buffer)

    @property
    def num_dims(self) -> int:
        return len(self.dim_names)

    def param_dim(self, name: str, dim: int) -> ParamDim | None:
        """A record of ``name``'s dimension ``dim``, or None if no rule read it."""
        j = self.dim_position(name, dim)
        if j is None:
            return None
        return ParamDim(self.dim_names[j], self.dim_dims[j], self.dim_atoms[j], self.dim_roles[j], self.dim_is_buffer[j])

    def drop_dims(self, positions: set[int]) -> None:
        """Remove the dimensions at ``positions`` (the others keep their order)."""
        keep = [j for j in range(self.num_dims) if j not in positions]
        columns = (self.dim_names, self.dim_dims, self.dim_atoms, self.dim_roles, self.dim_is_buffer)
        for column in columns:
            column[:] = [column[j] for j in keep]
        self._dim_position = {self.dim_key(name, dim): j for j, (name, dim) in enumerate(zip(self.dim_names, self.dim_dims))}

    # -- atoms -----------------------------------------------------------------
    def new(self, k: int) -> np.ndarray:
        # a view of one shared read-only arange: atom arrays are shared and their properties cached,
        # never edited in place (and a view costs a fraction of a new arange)
        atoms = shared_arange(self.count + k)[self.count:self.count + k]
        self._fresh.append(atoms)
        self.ranges[id(atoms)] = self.count
        self.count += k
        return atoms

    def all_tracked(self, atoms: np.ndarray) -> bool:
        """No untracked (-1) atom in ``atoms``; known for fresh runs, cached per read-only array,
        as a norm's four tensors and every unify ask about the same few arrays."""
        key = id(atoms)
        if key in self.ranges:
            return True
        cached = self._tracked.get(key)
        if cached is not None and cached[0] is atoms:
            return cached[1]
        tracked = atoms.size == 0 or bool(atoms.min() >= 0)
        if not atoms.flags.writeable:  # (only arrays nobody can edit; the entry holds the array, so its id stays unique)
            self._tracked[key] = (atoms, tracked)
        return tracked

    def unify_in_blocks(self, atoms: np.ndarray, k: int, reason: str) -> None:
        """Atoms in consecutive blocks of ``k`` must be pruned together (a conv group's output channels).

        The edge pairs each atom with its block's first; ZIG building unions such an edge on
        a whole run of fresh atoms in closed form (``zig_components.connected_components``)."""
        heads = np.repeat(atoms[::k], k)[:atoms.size]  # (a last block may be short)
        heads.flags.writeable = False
        self.block_heads[id(heads)] = (heads, k)
        self.unify(atoms, heads, reason)

    def block(self, atoms: np.ndarray, reason: str) -> None:
        atoms = np.asarray(atoms, dtype=np.int64).ravel()
        atoms = atoms[atoms >= 0]
        if atoms.size:
            self.blocks.append((atoms, reason))

    def unify(self, a: np.ndarray, b: np.ndarray, reason_if_untracked: str | Callable[[], str]) -> None:
        """Atoms at equal positions of ``a`` and ``b`` must be pruned together.

        ``reason_if_untracked`` may be a function that makes the text: it is only needed
        where one side is untracked, and most unions have none."""
        if a is b:  # a parameter dim that adopted these atoms (see ``AnalysisContext.param_atoms``)
            return
        if type(a) is not np.ndarray or a.ndim != 1 or a.dtype != np.int64:
            a = np.asarray(a, dtype=np.int64).ravel()
        if type(b) is not np.ndarray or b.ndim != 1 or b.dtype != np.int64:
            b = np.asarray(b, dtype=np.int64).ravel()
        if a.size and self.all_tracked(a) and self.all_tracked(b):  # the common case: every position tracked on both sides
            self.edges.append((a, b))
            return
        both = (a >= 0) & (b >= 0)
        if both.any():
            self.edges.append((a[both], b[both]))
        # a channel aligned with an untracked element cannot be removed alone
        alone = np.concatenate([a[(a >= 0) & (b < 0)], b[(b >= 0) & (a < 0)]])
        if alone.size:
            self.block(alone, reason_if_untracked() if callable(reason_if_untracked) else reason_if_untracked)


def shared_arange(n: int) -> np.ndarray:
    """A read-only ``arange`` of at least ``n`` int64s, shared by every atom table (grown by doubling)."""
    global _SHARED_ARANGE
    if _SHARED_ARANGE.size < n:
        _SHARED_ARANGE = np.arange(max(n, 2 * _SHARED_ARANGE.size), dtype=np.int64)
        _SHARED_ARANGE.flags.writeable = False
    return _SHARED_ARANGE


_SHARED_ARANGE = np.zeros(0, dtype=np.int64)
