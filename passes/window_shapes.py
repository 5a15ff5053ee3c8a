"""Closed-form output shapes of ops that shrink dimensions: pooling windows and reductions.

Part of ``fast_shapes`` (same contract: a meta tensor, or None whenever a precondition
does not hold, so the real meta kernel runs and raises its own error).  The pooling
meta kernels are Python decompositions costing ~250 us a call; a stem's max pool or a
DenseNet's transition pools pay that on every trace.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .meta_tensors import empty_meta as _empty


def _per_dim(value: Any, n: int) -> tuple[int, ...] | None:
    """An int or a sequence of ``n`` ints as an ``n``-tuple of ints; None for anything else."""
    if type(value) is int:
        return (value,) * n
    if isinstance(value, (tuple, list)) and len(value) == n and all(type(v) is int for v in value):
        return tuple(value)
    return None


def _pooled_size(size: int, kernel: int, stride: int, pad: int, dilation: int, ceil_mode: bool) -> int:
    """ATen's pooling output size: windows that start inside the input (or its left padding)."""
    span = size + 2 * pad - dilation * (kernel - 1) - 1
    out = (span + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def pool_output(x: Any, spatial: int, kernel_size: Any, stride: Any, padding: Any, dilation: Any,
                ceil_mode: Any) -> torch.Tensor | None:
    """Max or average pooling over the last ``spatial`` dims of a batched or unbatched float input."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.ndim not in (spatial + 1, spatial + 2):
        return None
    if x.numel() == 0 or type(ceil_mode) is not bool:
        return None
    kernel = _per_dim(kernel_size, spatial)
    strides = kernel if stride is None or (isinstance(stride, (tuple, list)) and not stride) else _per_dim(stride, spatial)
    pads, dilations = _per_dim(padding, spatial), _per_dim(dilation, spatial)
    if kernel is None or strides is None or pads is None or dilations is None:
        return None
    sizes = x.shape[-spatial:]
    out = []
    for size, k, s, p, d in zip(sizes, kernel, strides, pads, dilations):
        if k <= 0 or s <= 0 or d <= 0 or p < 0 or p > k // 2:
            return None  # the kernel's own checks: let it raise
        if size < d * (k - 1) + 1:
            return None  # a window wider than the unpadded input: some kernels (3-d avg pool) refuse it
        o = _pooled_size(size, k, s, p, d, ceil_mode)
        if o <= 0:
            return None
        out.append(o)
    return _empty((*x.shape[:-spatial], *out), x.dtype)


_MAX_POOL_MODULES = {nn.MaxPool1d: 1, nn.MaxPool2d: 2, nn.MaxPool3d: 3}
_AVG_POOL_MODULES = {nn.AvgPool1d: 1, nn.AvgPool2d: 2, nn.AvgPool3d: 3}


def pool_module_output(module: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
    """``module(x)`` for the exact max/avg pooling classes (a subclass may change the forward)."""
    cls = type(module)
    spatial = _MAX_POOL_MODULES.get(cls)
    if spatial is not None:
        if module.return_indices:
            return None
        return pool_output(x, spatial, module.kernel_size, module.stride, module.padding, module.dilation,
                           module.ceil_mode)
    spatial = _AVG_POOL_MODULES.get(cls)
    if spatial is not None:
        return pool_output(x, spatial, module.kernel_size, module.stride, module.padding, 1, module.ceil_mode)
    return None


def bind_arguments(args: tuple, kwargs: dict, names: tuple[str, ...], defaults: dict) -> dict | None:
    """``args``/``kwargs`` by parameter name, or None for an extra, unknown or missing argument."""
    if len(args) > len(names) or any(k not in names for k in kwargs):
        return None
    bound = dict(defaults)
    bound.update(zip(names, args))
    bound.update(kwargs)
    return bound if all(n in bound for n in names) else None


def _functional_max_pool(spatial: int):
    names = ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")
    defaults = dict(stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False)

    def output(args, kwargs):
        b = bind_arguments(args, kwargs, names, defaults)
        if b is None or b["return_indices"] is not False:
            return None
        return pool_output(b["input"], spatial, b["kernel_size"], b["stride"], b["padding"], b["dilation"],
                           b["ceil_mode"])

    return output


def _functional_avg_pool(spatial: int):
    names = ("input", "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad")
    defaults = dict(stride=None, padding=0, ceil_mode=False, count_include_pad=True)
    if spatial > 1:
        names += ("divisor_override",)
        defaults["divisor_override"] = None

    def output(args, kwargs):
        b = bind_arguments(args, kwargs, names, defaults)
        if b is None or type(b["count_include_pad"]) is not bool:
            return None
        divisor = b.get("divisor_override")
        if divisor is not None and (type(divisor) is not int or divisor == 0):
            return None
        return pool_output(b["input"], spatial, b["kernel_size"], b["stride"], b["padding"], 1, b["ceil_mode"])

    return output


def reduction_output(args, kwargs) -> torch.Tensor | None:
    """``x.mean/sum/amax/amin(dim, keepdim)`` over named dims of a float tensor (no dtype or out)."""
    b = bind_arguments(args, kwargs, ("input", "dim", "keepdim"), dict(keepdim=False))
    if b is None:
        return None
    x, dim, keepdim = b["input"], b["dim"], b["keepdim"]
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.ndim == 0 or type(keepdim) is not bool:
        return None
    named = [dim] if type(dim) is int else list(dim) if isinstance(dim, (tuple, list)) else None
    if not named or any(type(d) is not int or not -x.ndim <= d < x.ndim for d in named):
        return None  # (no dims, or dim=None, reduce everything: rare in models, left to the kernel)
    dims = {d % x.ndim for d in named}
    if len(dims) != len(named):
        return None  # a dim named twice: the kernel raises
    if keepdim:
        shape = tuple(1 if d in dims else s for d, s in enumerate(x.shape))
    else:
        shape = tuple(s for d, s in enumerate(x.shape) if d not in dims)
    if any(x.shape[d] == 0 for d in dims):
        return None  # amax/amin of an empty dim raise
    return _empty(shape, x.dtype)


POOL_FUNCTIONS = {
    F.max_pool1d: _functional_max_pool(1), F.max_pool2d: _functional_max_pool(2), F.max_pool3d: _functional_max_pool(3),
    F.avg_pool1d: _functional_avg_pool(1), F.avg_pool2d: _functional_avg_pool(2), F.avg_pool3d: _functional_avg_pool(3),
}
REDUCTION_NAMES = ("mean", "sum", "amax", "amin")
REDUCTION_FUNCTIONS = {torch.mean: reduction_output, torch.sum: reduction_output, torch.amax: reduction_output,
                       torch.amin: reduction_output}
