"""Symbolic tracing with user-declared leaf modules and errors that say what to try."""
from __future__ import annotations

import functools
import inspect
import linecache
import re
import traceback
from typing import Any, Iterable

import torch.fx as fx
from torch import nn

from passes.aliasing import AUGMENTED, AUGMENTED_KEY, restore_in_place_updates

from .errors import InputError, TraceError
from .module_state import StateSnapshot
from .rules import RULES
from .transformer_tracing import TRACEABLE_FORWARDS


class _AugmentedAssignProxy(fx.Proxy):
    """A Proxy that remembers ``y += x`` was written in place.

    FX's Proxy has no ``__iadd__``, so Python falls back to ``y = y + x``; the node is the
    same, marked with the in-place operator it stands for (see passes/aliasing.py).
    """


def _augmented(out_of_place, in_place):
    def method(self, other):
        result = self.tracer.create_proxy("call_function", out_of_place, (self, other), {})
        result.node.meta[AUGMENTED_KEY] = in_place
        return result

    return method


for _name, (_out_of_place, _in_place) in AUGMENTED.items():
    setattr(_AugmentedAssignProxy, f"__{_name}__", _augmented(_out_of_place, _in_place))
# Errors FX raises about proxies in user code ("'Proxy' object does not support item assignment")
# should read as they do without fxprune.
_AugmentedAssignProxy.__name__ = _AugmentedAssignProxy.__qualname__ = "Proxy"


class _LeafTracer(fx.Tracer):
    """The default FX tracer, plus user-declared leaf module types and instance names.

    torch.nn's transformer modules are traced through (with forwards FX can follow) unless
    declared leaves.
    """

    def __init__(self, leaf_types: tuple[type, ...], leaf_names: frozenset[str]):
        super().__init__()
        self._leaf_types = leaf_types
        self._leaf_names = leaf_names

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return _AugmentedAssignProxy(node, self)

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


def forward_parameters(model: nn.Module):
    """The parameters of ``model.forward``'s signature, or None where Python cannot tell."""
    try:
        return inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return None


def _check_concrete_args(model: nn.Module, concrete_args: dict[str, Any] | None) -> None:
    """Every key names a parameter of ``model.forward`` (FX would ignore a misspelt one)."""
    if concrete_args is None:
        return
    if not isinstance(concrete_args, dict):
        raise TypeError(f"concrete_args must be a dict of forward() argument names to values, "
                         f"got {type(concrete_args).__name__}")
    params = forward_parameters(model)
    if params is None:
        return
    if any(p.kind == p.VAR_KEYWORD for p in params.values()):
        return
    unknown = [k for k in concrete_args if k not in params]
    if unknown:
        raise InputError(f"concrete_args names {unknown}, which {type(model).__name__}.forward does not take; "
                         f"its arguments are {list(params)}")


def _user_frame(exc: BaseException):
    """The innermost traceback frame outside torch and fxprune (the user's code that failed):
    ``(description, code object)``, or a note and None when every frame is torch's own."""
    found = None
    for frame, lineno in traceback.walk_tb(exc.__traceback__):
        path = frame.f_code.co_filename.replace("\\", "/")
        if "/torch/" not in path and "/fxprune/" not in path:
            found = (frame, lineno)
    if found is None:
        return "(no frame outside torch: torch.fx itself failed, e.g. on a decorated forward it cannot patch)", None
    frame, lineno = found
    line = (linecache.getline(frame.f_code.co_filename, lineno) or "").strip()
    return f'{frame.f_code.co_filename}:{lineno} in {frame.f_code.co_name}: "{line}"', frame.f_code


def _advice(model: nn.Module, code) -> str:
    """What to try, depending on whose code failed: a submodule's forward, the root's, or a function."""
    flow = "or fix data-dependent control flow with concrete_args={'flag': value}"
    if code is None:
        return f"call the model from a small wrapper nn.Module and trace the wrapper, {flow}."
    for name, module in model.named_modules():
        forward = getattr(type(module), "forward", None)
        if forward is None:
            continue
        decorated = getattr(forward, "__code__", None) is code and inspect.unwrap(forward) is not forward
        if not decorated and getattr(inspect.unwrap(forward), "__code__", None) is not code:
            continue
        where = f"a decorator on {type(module).__name__}.forward" if decorated else f"{type(module).__name__}.forward"
        if name == "" and decorated:
            return (f"the failing code is in {where}, the model you trace: trace a small wrapper nn.Module whose "
                    f"forward calls the model with keyword arguments, {flow}.")
        if name == "":
            return (f"the failing code is in {where}, the model you trace, so no leaf can hide it: fix the value it "
                    f"depends on with concrete_args={{'flag': value}}, or move the data-dependent part into a "
                    f"submodule declared a leaf (leaf_modules=[...]) or a function registered with torch.fx.wrap.")
        return (f"the failing code is in {where} ('{name}'): declare it a leaf "
                f"(fxprune.trace(..., leaf_modules=[{type(module).__name__}] or ['{name}'])) so FX calls it without "
                f"looking inside (its channels then become unprunable), {flow}.")
    return (f"the failing code is in {code.co_name}(), a function the forward calls: register it with "
            f"torch.fx.wrap('{code.co_name}') in its module so FX records one call (its channels then become "
            f"unprunable), or declare the submodule that calls it a leaf (leaf_modules=[TheModuleClass or "
            f"'qualified.name']), {flow}.")


def symbolic_trace(
    model: nn.Module,
    leaf_modules: Iterable[Any] | None = None,
    concrete_args: dict[str, Any] | None = None,
) -> fx.GraphModule:
    """Trace ``model`` into a GraphModule that shares (never copies or mutates) its modules."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"fxprune.trace expects an nn.Module, got {type(model).__name__}")
    _check_concrete_args(model, concrete_args)
    types, names = _split_leaves(leaf_modules)
    tracer = _LeafTracer(types, names)
    snapshot = StateSnapshot(model)
    try:
        graph = tracer.trace(model, concrete_args=concrete_args)
    except Exception as exc:  # FX raises many types (TraceError, TypeError, RuntimeError...)
        snapshot.restore()
        where, code = _user_frame(exc)
        raise TraceError(
            f"torch.fx could not trace {type(model).__name__}: {type(exc).__name__}: {exc}\n"
            f"  failing code: {where}\n"
            f"  what to try: {_advice(model, code)}"
        ) from exc
    gm = fx.GraphModule(tracer.root, graph, type(model).__name__)  # takes what it needs before the restore
    written = [name for name in snapshot.restore() if not _FX_CONSTANT.fullmatch(name)]
    if written:
        raise TraceError(
            f"{type(model).__name__}'s forward writes module state ({', '.join(written[:5])}"
            f"{', ...' if len(written) > 5 else ''}): torch.fx does not record such writes, so the traced graph "
            "would not update it and later calls would differ. The model is left as it was. "
            "What to try: trace in eval mode if the write happens only in training, or declare the submodule "
            "that keeps the state a leaf (leaf_modules=[...]) so it runs as a whole."
        )
    _default_to_concrete_args(gm, model, concrete_args)
    restore_in_place_updates(gm, lambda node: RULES.lookup(node, gm) is not None)
    return gm


# Attributes FX itself puts on the root for tensor constants (the GraphModule keeps its own reference).
_FX_CONSTANT = re.compile(r"_(tensor|param)_constant\d+")


def _default_to_concrete_args(gm: fx.GraphModule, model: nn.Module, concrete_args: dict[str, Any] | None) -> None:
    """Make each specialised argument default to the value it was traced with.

    FX keeps such an argument as an input (with the forward's own default) and asserts that
    the value passed equals the traced one, so calling the graph with the example inputs alone
    would fail the assertion; the compact model is then callable like the dense one.
    """
    if not concrete_args:
        return
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    params = forward_parameters(model)
    if params is None:
        return
    names = [p.name for p in params.values() if p.kind in kinds]
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(names) != len(placeholders):
        return  # (*args / **kwargs in the signature: leave the graph as FX made it)
    changed = False
    for name, node in zip(names, placeholders):
        if name in concrete_args and _plain_constant(concrete_args[name]):
            node.args = (concrete_args[name],)
            changed = True
    if changed:
        gm.recompile()


def specialized_keywords(concrete_args: dict[str, Any] | None) -> dict[str, Any]:
    """The concrete arguments that are plain constants (``verify`` passes those the inputs do not)."""
    return {k: v for k, v in (concrete_args or {}).items() if _plain_constant(v)}


def _plain_constant(value: Any) -> bool:
    if isinstance(value, (tuple, list)):
        return all(_plain_constant(v) for v in value)
    return value is None or isinstance(value, (bool, int, float, str))
