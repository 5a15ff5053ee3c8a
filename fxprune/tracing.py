"""Symbolic tracing with user-declared leaf modules and errors that say what to try."""
from __future__ import annotations

import functools
import traceback
from typing import Any, Iterable

import torch.fx as fx
from torch import nn

from .errors import TraceError
from .transformer_tracing import TRACEABLE_FORWARDS


class _LeafTracer(fx.Tracer):
    """The default FX tracer, plus user-declared leaf module types and instance names.

    torch.nn's transformer modules are traced through (with forwards FX can follow) unless
    declared leaves.
    """

    def __init__(self, leaf_types: tuple[type, ...], leaf_names: frozenset[str]):
        super().__init__()
        self._leaf_types = leaf_types
        self._leaf_names = leaf_names

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if qualname in self._leaf_names or (self._leaf_types and isinstance(m, self._leaf_types)):
            return True
        if type(m) in TRACEABLE_FORWARDS:
            return False
        return super().is_leaf_module(m, qualname)

    def call_module(self, m: nn.Module, forward, args, kwargs):
        traceable = TRACEABLE_FORWARDS.get(type(m))
        if traceable is not None and not self.is_leaf_module(m, self.path_of_module(m)):
            forward = functools.partial(traceable, m)  # torch.nn's transformer modules: see transformer_tracing
        return super().call_module(m, forward, args, kwargs)


def _split_leaves(leaf_modules: Iterable[Any] | None) -> tuple[tuple[type, ...], frozenset[str]]:
    types, names = [], []
    for leaf in leaf_modules or ():
        if isinstance(leaf, type) and issubclass(leaf, nn.Module):
            types.append(leaf)
        elif isinstance(leaf, str):
            names.append(leaf)
        else:
            raise TypeError(
                f"leaf_modules entries must be nn.Module subclasses or qualified submodule names, got {leaf!r}"
            )
    return tuple(types), frozenset(names)


def _user_frame(exc: BaseException) -> str:
    """The innermost traceback frame outside torch and fxprune: the user's code that failed."""
    frames = traceback.extract_tb(exc.__traceback__)
    for frame in reversed(frames):
        path = frame.filename.replace("\\", "/")
        if "/torch/" not in path and "/fxprune/" not in path:
            return f'{frame.filename}:{frame.lineno} in {frame.name}: "{frame.line}"'
    return "(no frame outside torch)"


def symbolic_trace(
    model: nn.Module,
    leaf_modules: Iterable[Any] | None = None,
    concrete_args: dict[str, Any] | None = None,
) -> fx.GraphModule:
    """Trace ``model`` into a GraphModule that shares (never copies or mutates) its modules."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"fxprune.trace expects an nn.Module, got {type(model).__name__}")
    types, names = _split_leaves(leaf_modules)
    tracer = _LeafTracer(types, names)
    try:
        graph = tracer.trace(model, concrete_args=concrete_args)
    except Exception as exc:  # FX raises many types (TraceError, TypeError, RuntimeError...)
        raise TraceError(
            f"torch.fx could not trace {type(model).__name__}: {type(exc).__name__}: {exc}\n"
            f"  failing code: {_user_frame(exc)}\n"
            "  what to try: declare the submodule that holds this code a leaf "
            "(fxprune.trace(..., leaf_modules=[TheModuleClass or 'qualified.name'])) so FX calls it "
            "without looking inside (its channels then become unprunable), or fix data-dependent "
            "control flow with concrete_args={'flag': value}."
        ) from exc
    name = type(model).__name__
    return fx.GraphModule(tracer.root, graph, name)
