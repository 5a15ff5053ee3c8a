"""Channel labels: which channel atom each index of a tensor dimension carries.

An *atom* is one channel of one producer (a conv's output filter, a free parameter's
entry along one dimension, ...).  Analysis unifies atoms that must be pruned together;
each resulting component is a zero-invariant group (ZIG).

A tensor dimension that carries channels has a :class:`DimLabel`: per index, the atom id
(-1 for "no channel here", e.g. the spatial part of a flattened feature) and a nonzero
code (0 when the value at that index is exactly zero once its ZIG is zeroed; otherwise
the id of the node that made it non-zero, for error messages).  Dimensions that carry no
channels (batch, spatial, tokens) are ``None``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def _frozen(a) -> np.ndarray:
    """``a`` as a read-only contiguous int64 array (no copy when it already is one)."""
    if type(a) is np.ndarray and a.dtype is _INT64:
        flags = a.flags
        if not flags.writeable and flags.c_contiguous:
            return a  # the common case: an array another label or the atom table already froze
        if flags.c_contiguous:
            flags.writeable = False
            return a
    a = np.ascontiguousarray(a, dtype=np.int64)
    a.flags.writeable = False
    return a


_INT64 = np.dtype(np.int64)


def zeros(size: int) -> np.ndarray:
    """A read-only int64 zero vector of ``size``, shared: most channels stay zero when zeroed,
    and rules test for that by identity before doing any array work."""
    z = _ZEROS.get(size)
    if z is None:
        z = _ZEROS[size] = np.zeros(size, dtype=np.int64)
        z.flags.writeable = False
    return z


_ZEROS: dict[int, np.ndarray] = {}


def filled(size: int, code: int) -> np.ndarray:
    """A read-only int64 vector of ``size`` holding ``code`` (a node's nonzero code on every channel).
    (``np.full`` is a Python wrapper around the same two steps.)"""
    a = np.empty(size, dtype=np.int64)
    a.fill(code)
    a.flags.writeable = False
    return a


class _Immutable:
    """Slots set once in ``__init__``, then read-only.  (Labels are built for every node of every
    traced graph: a frozen dataclass's ``__init__`` costs several times more.)"""

    __slots__ = ()

    def __setattr__(self, name, value):
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __delattr__(self, name):
        raise AttributeError(f"{type(self).__name__} is immutable")


_set = object.__setattr__


class DimLabel(_Immutable):
    """``atoms``: int64 [size], the atom id per index, -1 where no channel.  ``nonzero``: int64
    [size], 0 if zero when its ZIG is zeroed, else the code of the culprit node + 1.  Both are
    read-only arrays, shared freely between labels."""

    __slots__ = ("atoms", "nonzero", "_all_zero")

    def __init__(self, atoms: np.ndarray, nonzero: np.ndarray):
        _set(self, "atoms", _frozen(atoms))
        _set(self, "nonzero", _frozen(nonzero))
        _set(self, "_all_zero", None)  # computed on first ask (rules ask about the same label repeatedly)

    def __repr__(self) -> str:
        return f"DimLabel(atoms={self.atoms!r}, nonzero={self.nonzero!r})"

    @property
    def size(self) -> int:
        return int(self.atoms.shape[0])

    @staticmethod
    def fresh(atoms: np.ndarray) -> "DimLabel":
        """``atoms`` with every channel zero when zeroed (a layer's own output channels)."""
        return DimLabel(atoms, zeros(len(atoms)))

    def all_zero(self) -> bool:
        """Every channel here is exactly zero once its ZIG is zeroed."""
        answer = self._all_zero
        if answer is None:
            answer = self.nonzero is _ZEROS.get(self.nonzero.shape[0]) or not self.nonzero.any()
            _set(self, "_all_zero", answer)
        return answer

    def with_nonzero(self, nonzero: np.ndarray | int) -> "DimLabel":
        if isinstance(nonzero, (int, np.integer)):
            if nonzero == 0:
                return self if self.all_zero() else DimLabel(self.atoms, zeros(self.size))
            return DimLabel(self.atoms, filled(self.size, nonzero))
        return DimLabel(self.atoms, np.broadcast_to(np.asarray(nonzero, dtype=np.int64), self.atoms.shape))

    def take(self, index: np.ndarray) -> "DimLabel":
        return DimLabel(self.atoms[index], self.nonzero[index])


class TensorLabels(_Immutable):
    """Per-dimension channel labels of one tensor value: ``shape`` (ints) and ``dims`` (a
    DimLabel or None per dimension)."""

    __slots__ = ("shape", "dims")

    def __init__(self, shape: tuple[int, ...], dims: tuple[DimLabel | None, ...]):
        _set(self, "shape", shape)
        _set(self, "dims", dims)

    def __repr__(self) -> str:
        return f"TensorLabels(shape={self.shape!r}, dims={self.dims!r})"

    @staticmethod
    def blank(shape) -> "TensorLabels":
        shape = tuple(int(s) for s in shape)
        return TensorLabels(shape, (None,) * len(shape))

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def labeled(self) -> list[int]:
        return [d for d, lab in enumerate(self.dims) if lab is not None]

    def replace(self, dim: int, label: DimLabel | None) -> "TensorLabels":
        dims = list(self.dims)
        dims[dim] = label
        return TensorLabels(self.shape, tuple(dims))

    def all_atoms(self) -> np.ndarray:
        parts = [lab.atoms for lab in self.dims if lab is not None]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


@dataclass(frozen=True)
class SizeTaint:
    """A Python number computed from the sizes of channel dimensions (e.g. ``x.size(1) // 2``).

    After pruning such a number changes; it may only feed shape arguments fxprune
    rewrites (view/reshape sizes), anything else makes its atoms unprunable.
    """

    atoms: np.ndarray
    pure: bool = True  # computed from channel counts and constants only (no batch or spatial size)

    def __post_init__(self):
        object.__setattr__(self, "atoms", _frozen(self.atoms))
