"""Shape propagation without real compute: every node gets ``node.meta["val"]``.

First choice: closed-form shapes for the most common ops (``fast_shapes``); for the
rest, run a twin of the graph module whose parameters and buffers are meta-device
tensors (no data, no compute; the user's tensors are never read or written), reusing
results for repeated calls (``shape_memo``).  If some op has no meta kernel, fall back
to FakeTensorMode, which swaps fake copies in per module call (slower, more general).
"""
from __future__ import annotations

import builtins
import copy
import inspect
import logging

from typing import Any

import torch
import torch.fx as fx
from torch._subclasses.fake_tensor import DataDependentOutputException, DynamicOutputShapeException, FakeTensorMode
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_map

from fxprune.errors import InputError, TraceError, first_line
from fxprune.rules.registry import has_forward_hooks

from . import fast_shapes
from .channel_analysis import fetch_attr
from .module_walk import walk_modules
from .shape_memo import ShapeMemo, call_key


def _defaulted_inputs(gm: fx.GraphModule) -> list[str]:
    """Placeholders that default to None (optional forward arguments the example inputs may leave out)."""
    return [n.target for n in gm.graph.nodes if n.op == "placeholder" and n.args == (None,)]


class _FakeInterpreter(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule, mode: FakeTensorMode):
        super().__init__(gm, garbage_collect_values=True)
        self.extra_traceback = False  # our InputError names the node; no graph dump appended to it
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
            op = f"({n.op} {getattr(n.target, '__name__', n.target)})"
            if isinstance(exc, (DynamicOutputShapeException, DataDependentOutputException)):
                error = TraceError(
                    f"the output shape of graph node '{n.name}' {op} depends on the values in its input "
                    f"({type(exc).__name__}: {first_line(exc)}), and fxprune analyses a model from shapes alone.\n"
                    "  Move that computation (masked_select, nonzero, repeat_interleave with tensor repeats, ...) "
                    "out of the model passed to fxprune.trace, into a step that runs on the model's outputs."
                )
                error.node_name = n.name
                raise error from exc
            optional = _defaulted_inputs(self.module)
            hint = (f"; FX traced the optional inputs {optional} as if they were given (code such as "
                    "`if mask is not None` took that branch): pass them, or fix them with "
                    "concrete_args={'mask': None}") if optional else ""
            error = InputError(
                f"running the model on the example inputs failed at graph node '{n.name}' "
                f"{op}: {type(exc).__name__}: "
                f"{first_line(exc)}\n"
                f"  check the example inputs' shapes, dtypes and count against what the model expects{hint}."
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


class _FastShapeMode(TorchFunctionMode):
    """Inside a leaf module or a wrapped function run on meta tensors: closed-form shapes for the
    ops ``fast_shapes`` covers.  Meta kernels written in Python cost up to milliseconds per call
    (``F.normalize``, ``clamp``, ``roll``); one window-attention function makes dozens of them."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if _all_meta(args) and _all_meta(kwargs.values()):  # a real tensor is computed for real
            out = fast_shapes.op_output(func, args, kwargs)
            if out is not None:
                return args[0] if fast_shapes.is_in_place_method(func) else out
        return func(*args, **kwargs)


def _all_meta(values) -> bool:
    for v in values:
        if isinstance(v, torch.Tensor):
            if v.device.type != "meta":
                return False
        elif isinstance(v, (list, tuple)) and not _all_meta(v):
            return False
    return True


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


_Node = fx.Node  # (one global lookup per node instead of two)


class _RecordingInterpreter:
    """Runs the user's graph with meta twins of its modules and attributes; records node values.

    A lean stand-in for ``fx.Interpreter``: it only ever runs graphs fxprune traced, and the
    general interpreter's per-node bookkeeping (provenance context managers, debug logging,
    progress bar, a ``named_modules`` walk up front) costs as much as the shapes themselves.
    """

    def __init__(self, gm: fx.GraphModule, modules: dict[str, torch.nn.Module] | None = None):
        self.gm = gm
        self._modules: dict[str, torch.nn.Module] = dict(modules) if modules is not None else {}
        self._twins: dict[str, torch.nn.Module] = {}
        self._memo = ShapeMemo()

    def run(self, *inputs: Any) -> None:
        graph = self.gm.graph
        env: dict[fx.Node, Any] = {}
        remaining = iter(graph.process_inputs(*inputs))
        for node in graph.nodes:
            op = node.op
            if op == "placeholder":
                result = self._placeholder(node, remaining)
            elif op == "output":
                node.meta["val"] = fx.node.map_arg(node.args[0], env.__getitem__)  # as fx.Interpreter records it
                return
            else:
                args = node.args
                one_input = len(args) == 1 and type(args[0]) is _Node and not node.kwargs  # most calls
                if one_input and op == "call_module":
                    result = self.call_module_on(node.target, env[args[0]])
                else:
                    if one_input:
                        args, kwargs = (env[args[0]],), {}
                    else:
                        args, kwargs = fx.node.map_arg((args, node.kwargs), env.__getitem__)
                    if op == "call_module":
                        result = self.call_module(node.target, args, kwargs)
                    elif op == "call_function":
                        result = self.call_function(node.target, args, kwargs)
                    elif op == "call_method":
                        result = self.call_method(node.target, args, kwargs)
                    else:  # get_attr
                        result = self.get_attr(node.target)
            env[node] = result
            node.meta["val"] = result

    @staticmethod
    def _placeholder(node: fx.Node, remaining) -> Any:
        if node.target.startswith("*"):
            return list(remaining)
        try:
            return next(remaining)
        except StopIteration:
            if node.args:
                return node.args[0]  # the forward's default value
            raise InputError(f"the model expects an input for '{node.target}', and the example inputs have none") from None

    def _module(self, target: str) -> torch.nn.Module:
        if not self._modules:
            self._modules = walk_modules(self.gm)  # every qualified name, a shared module under each of its names
        module = self._modules.get(target)
        if module is None:
            module = self._modules[target] = self.gm.get_submodule(target)
        return module

    def call_module_on(self, target: str, x: Any) -> Any:
        """``call_module`` of one positional input and no keywords (most module calls): its closed-form
        shape where one covers it and no hook may change the output."""
        module = self._module(target)
        if isinstance(x, torch.Tensor) and not has_forward_hooks(module):
            shortcut = fast_shapes.module_output(module, x)
            if shortcut is not None:
                return shortcut
        return self._run_module(target, module, (x,), {})

    def call_module(self, target, args, kwargs):
        if len(args) == 1 and not kwargs:
            return self.call_module_on(target, args[0])
        return self._run_module(target, self._module(target), args, kwargs)

    def _run_module(self, target, module, args, kwargs):
        """A module call no closed form covers: a memoised result, else its meta twin run (or the module for real)."""
        key = self._memo.key_for_module(module, args, kwargs)
        result = self._memo.lookup(key)
        if result is not None:
            return result
        if target not in self._twins:
            self._twins[target] = _meta_module(module)
        try:
            with _FastShapeMode():
                result = self._twins[target](*args, **kwargs)
        except Exception:  # e.g. a user leaf module that branches on values: run a copy for real
            result = _run_for_real(copy.deepcopy(module), args, kwargs)
        self._memo.store(key, result)
        return result

    def get_attr(self, target):
        value = fetch_attr(self.gm, target)
        return _to_meta(value) if isinstance(value, torch.Tensor) else value

    def call_function(self, target, args, kwargs):
        if target is builtins.getattr:  # ``x.shape``, ``x.dtype``...: reads metadata, no op to shortcut
            return getattr(*args, **kwargs)
        shortcut = fast_shapes.function_output(target, args, kwargs)
        if shortcut is not None:
            return shortcut
        key = call_key(target, args, kwargs) if inspect.isfunction(target) else None  # Python code: slow on meta
        result = self._memo.lookup(key) if key is not None else None
        if result is not None:
            return result
        try:
            with _FastShapeMode():
                result = target(*args, **kwargs)
        except Exception:  # an fx.wrap-ed function that reads values
            result = _run_for_real(target, args, kwargs)
        if key is not None:
            self._memo.store(key, result)
        return result

    def call_method(self, target, args, kwargs):
        shortcut = fast_shapes.method_output(target, args, kwargs)
        if shortcut is not None:
            return shortcut
        self_obj, *rest = args
        return getattr(self_obj, target)(*rest, **kwargs)


def _propagate_meta(gm: fx.GraphModule, example_inputs: tuple[Any, ...], modules) -> None:
    meta_inputs = tree_map(lambda v: v.to("meta") if isinstance(v, torch.Tensor) else v, example_inputs)
    with torch.no_grad():
        _RecordingInterpreter(gm, modules).run(*meta_inputs)


def propagate_shapes(gm: fx.GraphModule, example_inputs: tuple[Any, ...],
                     modules: dict[str, torch.nn.Module] | None = None) -> None:
    """Annotate every node of ``gm`` with a shape-only value (``node.meta['val']``).

    ``modules``: ``walk_modules(gm)``, when the caller has it already.
    """
    try:
        _propagate_meta(gm, example_inputs, modules)
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

