"""Shape propagation without real compute: every node gets ``node.meta["val"]``.

First choice: closed-form shapes for the most common ops (``fast_shapes``); for the
rest, run a twin of the graph module whose parameters and buffers are meta-device
tensors (no data, no compute; the user's tensors are never read or written), reusing
results for repeated calls (``shape_memo``).  If some op has no meta kernel, fall back
to FakeTensorMode, which swaps fake copies in per module call (slower, more general).
"""
from __future__ import annotations

import copy
import inspect
import logging

from typing import Any

import torch
import torch.fx as fx
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._pytree import tree_map

from fxprune.errors import InputError

from . import fast_shapes
from .shape_memo import ShapeMemo, call_key


class _FakeInterpreter(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule, mode: FakeTensorMode):
        super().__init__(gm, garbage_collect_values=True)
        self.mode = mode
        self._fakes: dict[int, torch.Tensor] = {}

    def _fake(self, t: torch.Tensor) -> torch.Tensor:
        key = id(t)
        if key not in self._fakes:
            self._fakes[key] = self.mode.from_tensor(t, static_shapes=True)
        return self._fakes[key]

    def call_module(self, target, args, kwargs):
        module = self.fetch_attr(target)
        state = {k: self._fake(v) for k, v in module.state_dict(keep_vars=True).items()}
        return torch.func.functional_call(module, state, args, kwargs, tie_weights=False, strict=False)

    def get_attr(self, target, args, kwargs):
        value = super().get_attr(target, args, kwargs)
        return self._fake(value) if isinstance(value, torch.Tensor) else value

    def run_node(self, n: fx.Node) -> Any:
        try:
            result = super().run_node(n)
        except Exception as exc:
            error = InputError(
                f"running the model on the example inputs failed at graph node '{n.name}' "
                f"({n.op} {getattr(n.target, '__name__', n.target)}): {type(exc).__name__}: {exc}\n"
                "  check the example inputs' shapes, dtypes and count against what the model expects."
            )
            error.node_name = n.name  # for callers that check their own graphs (construct_subnet)
            raise error from exc
        n.meta["val"] = result
        return result


def _run_for_real(fn, args, kwargs):
    """Run ``fn`` on zero tensors shaped like the meta arguments; return meta results."""
    def to_real(v):
        if isinstance(v, torch.Tensor) and v.device.type == "meta":
            return torch.zeros(v.shape, dtype=v.dtype)
        return v

    def to_meta(v):
        return v.to("meta") if isinstance(v, torch.Tensor) else v

    with torch.no_grad():
        out = fn(*tree_map(to_real, args), **tree_map(to_real, kwargs))
    return tree_map(to_meta, out)


def _to_meta(t: torch.Tensor) -> torch.Tensor:
    meta = torch.empty_like(t, device="meta")
    # type() first: isinstance(t, Parameter) goes through a slow metaclass hook
    is_param = type(t) is torch.nn.Parameter or (type(t) is not torch.Tensor and isinstance(t, torch.nn.Parameter))
    return torch.nn.Parameter(meta, requires_grad=t.requires_grad) if is_param else meta


def _meta_module(module: torch.nn.Module) -> torch.nn.Module:
    """A shallow twin of ``module`` whose parameters and buffers (recursively) live on the meta device."""
    twin = copy.copy(module)
    twin._parameters = {k: None if v is None else _to_meta(v) for k, v in module._parameters.items()}
    twin._buffers = {k: None if v is None else _to_meta(v) for k, v in module._buffers.items()}
    twin._modules = {k: None if c is None else _meta_module(c) for k, c in module._modules.items()}
    return twin


class _RecordingInterpreter(fx.Interpreter):
    """Runs the user's graph with meta twins of its modules and attributes; records node values."""

    def __init__(self, gm: fx.GraphModule):
        super().__init__(gm, garbage_collect_values=False)
        self._twins: dict[str, torch.nn.Module] = {}
        self._memo = ShapeMemo()

    def call_module(self, target, args, kwargs):
        module = self.submodules.get(target)  # named_modules() dict: no walk of the dotted path per call
        if module is None:
            module = self.fetch_attr(target)
        shortcut = fast_shapes.module_output(module, args, kwargs)
        if shortcut is not None:
            return shortcut
        key = self._memo.key_for_module(module, args, kwargs)
        result = self._memo.lookup(key)
        if result is not None:
            return result
        if target not in self._twins:
            self._twins[target] = _meta_module(module)
        try:
            result = self._twins[target](*args, **kwargs)
        except Exception:  # e.g. a user leaf module that branches on values: run a copy for real
            result = _run_for_real(copy.deepcopy(module), args, kwargs)
        self._memo.store(key, result)
        return result

    def get_attr(self, target, args, kwargs):
        value = super().get_attr(target, args, kwargs)
        return _to_meta(value) if isinstance(value, torch.Tensor) else value

    def call_function(self, target, args, kwargs):
        shortcut = fast_shapes.function_output(target, args, kwargs)
        if shortcut is not None:
            return shortcut
        key = call_key(target, args, kwargs) if inspect.isfunction(target) else None  # Python code: slow on meta
        result = self._memo.lookup(key) if key is not None else None
        if result is not None:
            return result
        try:
            result = super().call_function(target, args, kwargs)
        except Exception:  # an fx.wrap-ed function that reads values
            result = _run_for_real(target, args, kwargs)
        if key is not None:
            self._memo.store(key, result)
        return result

    def call_method(self, target, args, kwargs):
        shortcut = fast_shapes.method_output(target, args, kwargs)
        return shortcut if shortcut is not None else super().call_method(target, args, kwargs)

    def run_node(self, n: fx.Node) -> Any:
        result = super().run_node(n)
        n.meta["val"] = result
        return result


def _propagate_meta(gm: fx.GraphModule, example_inputs: tuple[Any, ...]) -> None:
    meta_inputs = tree_map(lambda v: v.to("meta") if isinstance(v, torch.Tensor) else v, example_inputs)
    with torch.no_grad():
        _RecordingInterpreter(gm).run(*meta_inputs)


def propagate_shapes(gm: fx.GraphModule, example_inputs: tuple[Any, ...]) -> None:
    """Annotate every node of ``gm`` with a shape-only value (``node.meta['val']``)."""
    try:
        _propagate_meta(gm, example_inputs)
        return
    except Exception:  # an op without a meta kernel, or a bad input: FakeTensorMode says which
        pass
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    logging.getLogger("torch._subclasses.fake_tensor").setLevel(logging.CRITICAL)  # we report failures ourselves
    fake_inputs = tree_map(
        lambda v: mode.from_tensor(v, static_shapes=True) if isinstance(v, torch.Tensor) else v, example_inputs
    )
    with mode, torch.no_grad():
        _FakeInterpreter(gm, mode).run(*fake_inputs)

