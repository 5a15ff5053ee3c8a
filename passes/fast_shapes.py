"""Closed-form output shapes for the most common ops, so shape propagation skips the meta kernels.

Running an op on meta tensors costs 50-700 us (many meta kernels are Python
decompositions); the formulas here cost a few microseconds.  Each function returns
a meta tensor, or ``None`` when its preconditions do not hold (odd dtypes, mismatched
channel counts, unusual arguments): the caller then runs the real meta kernel, which
also produces the proper error for bad inputs.  So a shortcut never accepts what the
op itself would reject.
"""
from __future__ import annotations

import math
import operator
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from .meta_tensors import META, empty_meta as _empty, meta_like as _like
from .window_shapes import POOL_FUNCTIONS, REDUCTION_FUNCTIONS, REDUCTION_NAMES, pool_module_output, reduction_output
from .window_shapes import bind_arguments as _bind

try:  # torchvision's stochastic depth (EfficientNet, ConvNeXt, Swin...): FX keeps it as one call
    from torchvision.ops import stochastic_depth
except ImportError:  # pragma: no cover - torchvision is a dependency, but the shortcut is optional
    stochastic_depth = None


def _broadcast(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...] | None:
    """``torch.broadcast_shapes`` for two shapes (that one is written in Python and slow); None if they do not broadcast."""
    if len(a) < len(b):
        a, b = b, a
    out = list(a)
    offset = len(a) - len(b)
    for i, s in enumerate(b):
        t = out[offset + i]
        if s == t or s == 1:
            continue
        if t == 1:
            out[offset + i] = s
        else:
            return None
    return tuple(out)


# Elementwise ops whose result has the promoted dtype of float operands (no int->float
# changes, no bool outputs): only float tensors of one dtype take the shortcut.
_ELEMENTWISE_FUNCTIONS = {
    operator.add, operator.sub, operator.mul, operator.truediv, operator.iadd, operator.isub, operator.imul,
    operator.itruediv, operator.neg, torch.add, torch.sub, torch.mul, torch.div, torch.relu, torch.sigmoid,
    torch.tanh, torch.neg, F.relu, F.relu6, F.gelu, F.silu, F.hardswish, F.hardsigmoid, F.sigmoid, F.tanh,
    F.dropout, F.leaky_relu, F.elu, F.mish,
}
_ELEMENTWISE_METHODS = {"add", "sub", "mul", "div", "add_", "sub_", "mul_", "div_", "relu", "relu_", "sigmoid",
                        "sigmoid_", "tanh", "neg"}
_IN_PLACE = {operator.iadd, operator.isub, operator.imul, operator.itruediv, "add_", "sub_", "mul_", "div_", "relu_",
             "sigmoid_"}
# Exact classes only: a subclass may accept other inputs or change the shape (it goes to the
# meta kernel, and repeated ones to the memo).
_SHAPE_PRESERVING_MODULES = frozenset({  # (GroupNorm and LayerNorm check their sizes: see _MODULE_OUTPUTS)
    nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid,
    nn.Tanh, nn.Dropout, nn.Identity, nn.LeakyReLU, nn.ELU, nn.Mish,
})
# Per-channel norms check their input's rank: BatchNorm2d rejects a 3-d input, and so must we.
# Per class: the ranks it takes with a batch dim (channels at dim 1), and its unbatched rank
# (channels at dim 0), if it has one.
_NORM_RANKS: dict[type, tuple[tuple[int, ...], int | None]] = {
    nn.BatchNorm1d: ((2, 3), None), nn.BatchNorm2d: ((4,), None), nn.BatchNorm3d: ((5,), None),
    nn.InstanceNorm1d: ((3,), 2), nn.InstanceNorm2d: ((4,), 3), nn.InstanceNorm3d: ((5,), 4),
}


def _elementwise(args, kwargs, in_place: bool = False) -> torch.Tensor | None:
    """Float tensors of one dtype combined with Python numbers: broadcast shape, same dtype."""
    shape, dtype = None, None
    operands = list(args)
    if kwargs:
        operands += [v for k, v in kwargs.items() if k in ("other", "input", "alpha")]
    for a in operands:
        if isinstance(a, torch.Tensor):
            if not a.is_floating_point() or (dtype is not None and a.dtype != dtype):
                return None
            dtype = a.dtype
            shape = tuple(a.shape) if shape is None else _broadcast(shape, tuple(a.shape))
            if shape is None:
                return None
        elif type(a) not in (int, float):
            return None
    if shape is None:
        return None
    first = args[0] if args and isinstance(args[0], torch.Tensor) else None
    if first is not None and tuple(first.shape) == shape:
        return _like(first)  # keeps a channels-last layout, as the real kernel would
    if in_place:
        return None  # an in-place op cannot grow its target: the kernel raises the error
    return _empty(shape, dtype)


def _conv_output(m: nn.modules.conv._ConvNd, x: torch.Tensor) -> torch.Tensor | None:
    kernel_size = m.kernel_size
    spatial = len(kernel_size)
    weight = m._parameters.get("weight")  # (not m.weight: nn.Module.__getattr__ is slow)
    shape = x.shape  # (each ``.shape`` read builds a new torch.Size)
    if weight is None or len(shape) != spatial + 2 or x.dtype != weight.dtype or not x.is_floating_point():
        return None  # unbatched input, mixed dtypes or a parametrized weight: let the kernel decide
    if shape[1] != weight.shape[1] * m.groups or m.padding_mode != "zeros":
        return None  # (reflect/circular padding have size limits of their own)
    padding = m.padding
    if isinstance(padding, str):
        if padding == "same":
            return _empty((shape[0], m.out_channels, *shape[2:]), x.dtype)
        padding = (0,) * spatial
    out = [shape[0], m.out_channels]
    for size, k, s, p, d in zip(shape[2:], kernel_size, m.stride, padding, m.dilation):
        o = (size + 2 * p - d * (k - 1) - 1) // s + 1
        if o <= 0:
            return None
        out.append(o)
    return _empty(out, x.dtype)


def _linear_output(m: nn.Linear, x: torch.Tensor) -> torch.Tensor | None:
    weight = m._parameters.get("weight")
    if weight is None or x.ndim < 1 or x.shape[-1] != m.in_features or x.dtype != weight.dtype:
        return None
    return _empty((*x.shape[:-1], m.out_features), x.dtype)


def _adaptive_avg_output(output_size, x: torch.Tensor, spatial: int) -> torch.Tensor | None:
    if x.ndim != spatial + 2 or not x.is_floating_point():
        return None
    sizes = (output_size,) * spatial if isinstance(output_size, int) else tuple(output_size)
    if len(sizes) != spatial:
        return None
    shape = list(x.shape)
    for i, s in enumerate(sizes):  # (a loop: comprehensions are calls of their own, per pooling layer)
        if s is None:
            s = shape[2 + i]  # (None keeps the input's size)
        if not isinstance(s, int) or s <= 0:
            return None
        shape[2 + i] = s
    return _empty(shape, x.dtype)


def _group_norm_output(module: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor | None:
    """Shape kept where the layer's channel count matches the input (else the layer raises, and so must we)."""
    return _like(x) if x.ndim >= 2 and x.shape[1] == module.num_channels else None


def _layer_norm_output(module: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor | None:
    n = len(module.normalized_shape)
    return _like(x) if x.ndim >= 2 and tuple(x.shape[-n:]) == tuple(module.normalized_shape) else None


def _norm_output(module: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
    batched, unbatched = _NORM_RANKS[type(module)]
    if x.ndim not in batched and x.ndim != unbatched:
        return None
    channel_dim = 0 if x.ndim == unbatched else 1
    return _like(x) if x.shape[channel_dim] == module.num_features and x.is_floating_point() else None


def _shape_preserving_output(module: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
    return _like(x) if x.ndim >= 2 else None


# Exact class -> closed form of ``module(x)``: one dict lookup per call instead of a chain of tests.
_MODULE_OUTPUTS: dict[type, Callable[[Any, torch.Tensor], torch.Tensor | None]] = {
    **{cls: _norm_output for cls in _NORM_RANKS},
    **{cls: _shape_preserving_output for cls in _SHAPE_PRESERVING_MODULES},
    nn.GroupNorm: _group_norm_output, nn.LayerNorm: _layer_norm_output,
    nn.Conv1d: _conv_output, nn.Conv2d: _conv_output, nn.Conv3d: _conv_output,
    nn.Linear: _linear_output,
    nn.AdaptiveAvgPool2d: lambda m, x: _adaptive_avg_output(m.output_size, x, 2),
    nn.AdaptiveAvgPool1d: lambda m, x: _adaptive_avg_output(m.output_size, x, 1),
    nn.Flatten: lambda m, x: _flatten_output((x, m.start_dim, m.end_dim), {}),
}


def module_output(module: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
    """The meta output of ``module(x)`` (one tensor, no keywords: most module calls) when a formula
    covers it, else None."""
    output = _MODULE_OUTPUTS.get(type(module))
    return output(module, x) if output is not None else pool_module_output(module, x)


def _cat_output(args, kwargs) -> torch.Tensor | None:
    tensors = args[0] if args else kwargs.get("tensors")
    dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
    if not isinstance(tensors, (list, tuple)) or not tensors or not isinstance(dim, int):
        return None
    first = tensors[0]
    if not all(isinstance(t, torch.Tensor) and t.ndim == first.ndim and t.dtype == first.dtype for t in tensors):
        return None
    if first.ndim == 0 or not -first.ndim <= dim < first.ndim:
        return None
    dim %= first.ndim
    shape = list(first.shape)
    for t in tensors[1:]:
        if any(t.shape[d] != shape[d] for d in range(first.ndim) if d != dim):
            return None
        shape[dim] += t.shape[dim]
    return _empty(shape, first.dtype)


def _flatten_output(args, kwargs) -> torch.Tensor | None:
    x = args[0] if args else None
    start = args[1] if len(args) > 1 else kwargs.get("start_dim", 0)
    end = args[2] if len(args) > 2 else kwargs.get("end_dim", -1)
    if not isinstance(x, torch.Tensor) or x.ndim == 0 or not isinstance(start, int) or not isinstance(end, int):
        return None
    if not (-x.ndim <= start < x.ndim and -x.ndim <= end < x.ndim):
        return None
    start, end = start % x.ndim, end % x.ndim
    if start > end:
        return None
    shape = (*x.shape[:start], math.prod(x.shape[start:end + 1]), *x.shape[end + 1:])
    return _empty(shape, x.dtype)


def _is_number(v: Any) -> bool:
    return type(v) in (int, float)


def _float_tensor(v: Any) -> bool:
    return isinstance(v, torch.Tensor) and v.is_floating_point()


def _in_range(dim: Any, ndim: int) -> bool:
    return type(dim) is int and -max(ndim, 1) <= dim < max(ndim, 1)


def _normalize_output(args, kwargs) -> torch.Tensor | None:
    b = _bind(args, kwargs, ("input", "p", "dim", "eps", "out"), dict(p=2.0, dim=1, eps=1e-12, out=None))
    if b is None or not _float_tensor(b["input"]) or b["out"] is not None or b["input"].ndim == 0:
        return None
    if not (_is_number(b["p"]) and _is_number(b["eps"]) and _in_range(b["dim"], b["input"].ndim)):
        return None
    return _like(b["input"])


def _functional_linear_output(args, kwargs) -> torch.Tensor | None:
    b = _bind(args, kwargs, ("input", "weight", "bias"), dict(bias=None))
    if b is None:
        return None
    x, w, bias = b["input"], b["weight"], b["bias"]
    if not (_float_tensor(x) and _float_tensor(w) and x.ndim >= 1 and w.ndim == 2 and x.dtype == w.dtype):
        return None
    if x.shape[-1] != w.shape[1]:
        return None
    if bias is not None and not (_float_tensor(bias) and bias.dtype == x.dtype and tuple(bias.shape) == (w.shape[0],)):
        return None
    return _empty((*x.shape[:-1], w.shape[0]), x.dtype)


def _clamp_output(args, kwargs) -> torch.Tensor | None:
    b = _bind(args, kwargs, ("input", "min", "max"), dict(min=None, max=None))
    if b is None or not _float_tensor(b["input"]) or (b["min"] is None and b["max"] is None):
        return None
    if not all(v is None or _is_number(v) for v in (b["min"], b["max"])):
        return None
    return _like(b["input"])


def _one_bound(name: str):
    def output(args, kwargs):
        b = _bind(args, kwargs, ("input", name), {})
        return _like(b["input"]) if b is not None and _float_tensor(b["input"]) and _is_number(b[name]) else None
    return output


def _roll_output(args, kwargs) -> torch.Tensor | None:
    b = _bind(args, kwargs, ("input", "shifts", "dims"), dict(dims=None))
    if b is None or not isinstance(b["input"], torch.Tensor):
        return None
    x, shifts, dims = b["input"], b["shifts"], b["dims"]
    shifts = (shifts,) if type(shifts) is int else shifts
    dims = () if dims is None else ((dims,) if type(dims) is int else dims)
    if not isinstance(shifts, (tuple, list)) or not isinstance(dims, (tuple, list)) or not shifts:
        return None
    if not all(type(s) is int for s in shifts) or not all(_in_range(d, x.ndim) for d in dims):
        return None
    if len(dims) != len(shifts) and not (not dims and len(shifts) == 1):
        return None
    return _empty(x.shape, x.dtype)


def _exp_output(args, kwargs) -> torch.Tensor | None:
    b = _bind(args, kwargs, ("input",), {})
    return _like(b["input"]) if b is not None and _float_tensor(b["input"]) else None


def _masked_fill_output(args, kwargs) -> torch.Tensor | None:
    b = _bind(args, kwargs, ("input", "mask", "value"), {})
    if b is None or not _float_tensor(b["input"]) or not _is_number(b["value"]):
        return None
    x, mask = b["input"], b["mask"]
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or mask.device != x.device:
        return None
    if _broadcast(tuple(x.shape), tuple(mask.shape)) != tuple(x.shape):
        return None  # a mask larger than the tensor: the kernel raises
    return _like(x)


def _softmax_output(args, kwargs) -> torch.Tensor | None:
    b = _bind(args, kwargs, ("input", "dim", "_stacklevel", "dtype"), dict(dim=None, _stacklevel=3, dtype=None))
    if b is None or not _float_tensor(b["input"]) or b["dtype"] is not None or not _in_range(b["dim"], b["input"].ndim):
        return None
    return _like(b["input"])


def _stochastic_depth_output(args, kwargs) -> torch.Tensor | None:
    """torchvision's ``stochastic_depth(input, p, mode, training)``: the input times a random 0/1 mask."""
    b = _bind(args, kwargs, ("input", "p", "mode", "training"), dict(training=True))
    if b is None or not _float_tensor(b["input"]) or not _is_number(b["p"]) or not 0.0 <= b["p"] <= 1.0:
        return None
    if b["mode"] not in ("batch", "row") or type(b["training"]) is not bool:
        return None
    return _like(b["input"])


def _view_strides(old_shape, old_strides, new_shape) -> list[int] | None:
    """The strides of ``new_shape`` viewing a tensor of ``old_shape``/``old_strides`` (non-empty,
    no zero size), or None where no view exists: ATen's ``computeStride``, chunk by chunk of
    dims that are contiguous with each other."""
    new_strides = [0] * len(new_shape)
    view_d = len(new_shape) - 1
    chunk_base_stride = old_strides[-1]
    tensor_numel = view_numel = 1
    for tensor_d in range(len(old_shape) - 1, -1, -1):
        tensor_numel *= old_shape[tensor_d]
        if tensor_d == 0 or (old_shape[tensor_d - 1] != 1
                             and old_strides[tensor_d - 1] != tensor_numel * chunk_base_stride):
            while view_d >= 0 and (view_numel < tensor_numel or new_shape[view_d] == 1):
                new_strides[view_d] = view_numel * chunk_base_stride
                view_numel *= new_shape[view_d]
                view_d -= 1
            if view_numel != tensor_numel:
                return None
            if tensor_d > 0:
                chunk_base_stride = old_strides[tensor_d - 1]
                tensor_numel = view_numel = 1
    return new_strides if view_d == -1 else None


def _reshape_output(args, kwargs, view: bool = False) -> torch.Tensor | None:
    """``x.reshape(*sizes)``, ``x.view(*sizes)`` or ``torch.reshape(x, sizes)``: a view where the
    strides allow one (``view`` raises otherwise, ``reshape`` copies to a contiguous tensor)."""
    if kwargs or len(args) < 2 or not isinstance(args[0], torch.Tensor):
        return None
    x, sizes = args[0], args[1:]
    if len(sizes) == 1 and isinstance(sizes[0], (tuple, list)):
        sizes = tuple(sizes[0])
    if not all(type(s) is int and s >= -1 for s in sizes) or sizes.count(-1) > 1:
        return None
    numel = x.numel()
    if numel == 0 or x.ndim == 0:
        return None  # (strides of empty and 0-d tensors follow rules of their own: left to the kernel)
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if known == 0 or numel % known:
            return None
        sizes = tuple(numel // known if s == -1 else s for s in sizes)
    elif known != numel:
        return None
    strides = _view_strides(x.shape, x.stride(), sizes)
    if strides is None:
        return None if view else _empty(sizes, x.dtype)  # (view: the kernel raises its own error)
    return torch.empty_strided(sizes, strides, dtype=x.dtype, device=META)


def _contiguous_output(args, kwargs) -> torch.Tensor | None:
    """``x.contiguous()``: ``x`` itself when it already is, else a contiguous copy."""
    if len(args) != 1 or kwargs or not isinstance(args[0], torch.Tensor):
        return None
    x = args[0]
    return x if x.is_contiguous() else _empty(x.shape, x.dtype)


def _gather_rows_output(args, kwargs) -> torch.Tensor | None:
    """``table[index]`` with one integer index tensor (a relative-position bias lookup): rows of
    ``table`` picked along dim 0.  Advanced indexing runs a Python meta kernel; any other index
    (slices, tuples, masks) is left to it."""
    if len(args) != 2 or kwargs:
        return None
    x, index = args
    if not isinstance(x, torch.Tensor) or not isinstance(index, torch.Tensor) or x.ndim == 0:
        return None
    if index.dtype not in (torch.int64, torch.int32) or index.ndim == 0 or index.device != x.device:
        return None
    return _empty((*index.shape, *x.shape[1:]), x.dtype)


_FUNCTIONS: dict[Any, Callable[[tuple, dict], torch.Tensor | None]] = {
    operator.getitem: _gather_rows_output,
    torch.cat: _cat_output, torch.concat: _cat_output, torch.flatten: _flatten_output,
    F.adaptive_avg_pool2d: lambda a, k: _adaptive_avg_output(a[1] if len(a) > 1 else k.get("output_size"), a[0], 2)
    if a and isinstance(a[0], torch.Tensor) else None,
    F.normalize: _normalize_output, F.linear: _functional_linear_output, torch.clamp: _clamp_output,
    torch.clamp_min: _one_bound("min"), torch.clamp_max: _one_bound("max"), torch.roll: _roll_output,
    torch.exp: _exp_output, torch.masked_fill: _masked_fill_output, F.softmax: _softmax_output,
    torch.reshape: _reshape_output, **POOL_FUNCTIONS, **REDUCTION_FUNCTIONS,
}
if stochastic_depth is not None:
    _FUNCTIONS[stochastic_depth] = _stochastic_depth_output
# Tensor methods with the same signature as the function (self as the first argument).
_METHOD_FUNCTIONS = {"clamp": _clamp_output, "clamp_min": _one_bound("min"), "clamp_max": _one_bound("max"),
                     "roll": _roll_output, "exp": _exp_output, "masked_fill": _masked_fill_output,
                     "softmax": lambda a, k: _softmax_output(*_method_softmax_args(a, k)),
                     "reshape": _reshape_output, "view": lambda a, k: _reshape_output(a, k, view=True), "contiguous": _contiguous_output,
                     **{name: reduction_output for name in REDUCTION_NAMES}}


def _method_softmax_args(args, kwargs):
    """``t.softmax(dim, dtype)`` as ``F.softmax``'s arguments (its third positional is ``_stacklevel``)."""
    if len(args) > 3 or "_stacklevel" in kwargs:
        return (None,), {}  # not a call the method accepts: no shortcut
    if len(args) == 3:
        return args[:2], {**kwargs, "dtype": args[2]}
    return args, kwargs


def function_output(target: Any, args: tuple, kwargs: dict) -> torch.Tensor | None:
    """The meta output of ``target(*args, **kwargs)`` when a formula covers it, else None."""
    if target in _ELEMENTWISE_FUNCTIONS:
        if kwargs and any(k not in ("inplace", "approximate", "training", "p", "negative_slope", "alpha", "other")
                          for k in kwargs):
            return None
        if target in (F.dropout, F.leaky_relu, F.elu, F.gelu, F.relu, F.relu6, F.silu, F.hardswish,
                      F.hardsigmoid, F.mish):
            return _elementwise(args[:1], {}) if args and isinstance(args[0], torch.Tensor) else None
        return _elementwise(args, kwargs, in_place=target in _IN_PLACE)
    rule = _FUNCTIONS.get(target)
    return rule(args, kwargs) if rule is not None else None


def method_output(name: str, args: tuple, kwargs: dict) -> torch.Tensor | None:
    """The meta output of ``args[0].name(*args[1:], **kwargs)`` when a formula covers it, else None."""
    if name in _ELEMENTWISE_METHODS and not kwargs:
        return _elementwise(args, {}, in_place=name in _IN_PLACE)
    if name == "flatten":
        return _flatten_output(args, kwargs)
    rule = _METHOD_FUNCTIONS.get(name)
    return rule(args, kwargs) if rule is not None else None


# Tensor methods as a TorchFunctionMode sees them (``x + 1`` arrives as ``Tensor.add``), by name.
_TENSOR_METHOD_NAMES: dict[Any, str] = {
    getattr(torch.Tensor, name): name
    for name in sorted(_ELEMENTWISE_METHODS | set(_METHOD_FUNCTIONS) | {"flatten"}) if hasattr(torch.Tensor, name)
}
_TENSOR_METHOD_NAMES.update({torch.Tensor.__rsub__: "sub", torch.Tensor.__rdiv__: "div",
                             torch.Tensor.__rtruediv__: "div"})


def op_output(func: Any, args: tuple, kwargs: dict) -> torch.Tensor | None:
    """The meta output of a torch function or Tensor method call seen by a TorchFunctionMode, else None.

    In-place methods return a new meta tensor of the target's shape: the caller returns the
    target itself.
    """
    name = _TENSOR_METHOD_NAMES.get(func)
    if name is not None:
        return method_output(name, args, kwargs)
    try:
        return function_output(func, args, kwargs)
    except TypeError:  # an unhashable callable
        return None


def is_in_place_method(func: Any) -> bool:
    name = _TENSOR_METHOD_NAMES.get(func)
    return name is not None and name.endswith("_")
