"""Memoised shape propagation for repeated blocks (transformer layers, fx.wrap-ed helpers).

On meta tensors an op's output shape can depend only on its inputs' shapes and
dtypes, its constant arguments and, for a module, its configuration (hyper-parameter
attributes and parameter shapes): there are no values to depend on.  So when a leaf
module or a wrapped function is called again with an equal key, the earlier result's
shapes are reused instead of re-running a slow Python meta computation (one
``nn.MultiheadAttention`` costs milliseconds).  Anything that cannot be keyed exactly
(an attribute that is not a plain constant, an argument of an unknown type) is simply
not memoised.
"""
from __future__ import annotations

from typing import Any, Hashable

import torch
from torch import nn
from torch.utils._pytree import tree_map

from .meta_tensors import meta_like

_PLAIN = (int, float, bool, str, type(None), torch.dtype, torch.device, torch.memory_format, torch.layout)
_UNKEYABLE = object()
_MODULE_BOOKKEEPING = frozenset(nn.Module().__dict__)  # nn.Module's own attributes (hooks, flags, stores)


def _key(value: Any) -> Hashable:
    """A hashable stand-in for an argument, or ``_UNKEYABLE``."""
    if isinstance(value, torch.Tensor):
        return ("tensor", tuple(value.shape), value.dtype, value.device.type, value.requires_grad)
    if isinstance(value, _PLAIN):
        return (type(value), value)
    if isinstance(value, (tuple, list)):
        parts = tuple(_key(v) for v in value)
        return _UNKEYABLE if _UNKEYABLE in parts else (type(value), parts)
    if isinstance(value, slice):
        return _key(("slice", value.start, value.stop, value.step))
    return _UNKEYABLE


def module_key(module: nn.Module) -> Hashable:
    """The configuration that decides ``module``'s output shapes, or ``_UNKEYABLE``."""
    parts: list[Any] = [type(module), module.training]
    if module._forward_hooks or module._forward_pre_hooks:  # hooks can do anything
        return _UNKEYABLE
    for name, value in module.__dict__.items():
        if name in _MODULE_BOOKKEEPING:
            continue
        k = _key(value)
        if k is _UNKEYABLE:
            return _UNKEYABLE
        parts.append((name, k))
    for store in (module._parameters, module._buffers):
        parts.extend((name, _key(t)) for name, t in store.items())
    for name, child in module._modules.items():
        k = module_key(child) if child is not None else None
        if k is _UNKEYABLE:
            return _UNKEYABLE
        parts.append((name, k))
    return tuple(parts)


def call_key(callee_key: Hashable, args: tuple, kwargs: dict) -> Hashable:
    arg_key = _key(args)
    kw_key = _key(tuple(sorted(kwargs.items())))
    if _UNKEYABLE in (callee_key, arg_key, kw_key):
        return _UNKEYABLE
    return (callee_key, arg_key, kw_key)


def fresh_copy(value: Any) -> Any:
    """New meta tensors with the same shapes (a later in-place op must not reshape a cached value)."""
    return tree_map(lambda t: meta_like(t) if isinstance(t, torch.Tensor) else t, value)


class ShapeMemo:
    """Results of earlier calls, by exact key; only meta-tensor results are kept."""

    def __init__(self):
        self._results: dict[Hashable, Any] = {}
        self._module_keys: dict[int, Hashable] = {}

    def key_for_module(self, module: nn.Module, args: tuple, kwargs: dict) -> Hashable:
        mk = self._module_keys.get(id(module))
        if mk is None:
            mk = self._module_keys[id(module)] = module_key(module)
        return call_key(mk, args, kwargs)

    def lookup(self, key: Hashable) -> Any | None:
        if key is _UNKEYABLE:
            return None
        hit = self._results.get(key)
        return fresh_copy(hit) if hit is not None else None

    def store(self, key: Hashable, result: Any) -> None:
        if key is _UNKEYABLE:
            return
        leaves = []
        tree_map(lambda v: leaves.append(v), result)
        if all(not isinstance(v, torch.Tensor) or v.device.type == "meta" for v in leaves) and \
                all(isinstance(v, torch.Tensor) or _key(v) is not _UNKEYABLE for v in leaves):
            self._results[key] = fresh_copy(result)
