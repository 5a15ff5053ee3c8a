"""Elementwise ops: activations, dropout, casts, arithmetic (tensors and size numbers)."""
from __future__ import annotations

import operator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fxprune.labels import DimLabel, SizeTaint, TensorLabels

from .common import ADD, CONST, DIV, KEEP, MUL, elementwise, keep_zeros, normalize_dim, set_nonzero
from .registry import RULES

# f(0) == 0: a zero channel stays zero
KEEP_FUNCTIONS = [
    torch.relu, torch.relu_, F.relu, F.relu_, F.relu6, F.leaky_relu, F.leaky_relu_, F.elu, F.selu, F.celu,
    F.gelu, F.silu, F.mish, F.hardswish, torch.tanh, F.tanh, torch.sin, torch.sinh, torch.asin, torch.atan,
    torch.neg, operator.neg, operator.pos, torch.abs, torch.sign, torch.sqrt, torch.square, F.dropout,
    F.dropout1d, F.dropout2d, F.dropout3d, F.softsign, F.tanhshrink, F.hardshrink, F.softshrink, torch.erf,
    torch.floor, torch.ceil, torch.round, torch.trunc, torch.expm1, torch.log1p, torch.clone, torch.detach,
    torch.nan_to_num, torch.Tensor.contiguous,
]
KEEP_METHODS = [
    "relu", "relu_", "tanh", "neg", "abs", "sqrt", "square", "clone", "detach", "contiguous", "float", "half",
    "double", "bfloat16", "to", "type", "sign", "sin", "erf", "floor", "ceil", "round", "requires_grad_",
    "cpu", "cuda", "type_as", "gelu", "silu",
]
KEEP_MODULES = [
    nn.ReLU, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Hardswish, nn.Tanh,
    nn.Softsign, nn.Tanhshrink, nn.Hardshrink, nn.Softshrink, nn.Identity, nn.Dropout, nn.Dropout1d,
    nn.Dropout2d, nn.Dropout3d,
]
# f(0) != 0: a zero channel becomes a constant
CONST_FUNCTIONS = [
    torch.sigmoid, F.sigmoid, F.hardsigmoid, torch.exp, torch.cos, torch.cosh, torch.log, torch.reciprocal,
    torch.rsqrt, F.softplus, F.logsigmoid, torch.erfc, F.alpha_dropout, F.feature_alpha_dropout,
]
CONST_METHODS = ["sigmoid", "exp", "log", "cos", "reciprocal", "rsqrt"]
CONST_MODULES = [nn.Sigmoid, nn.Hardsigmoid, nn.Softplus, nn.LogSigmoid, nn.AlphaDropout, nn.FeatureAlphaDropout]


def _unary(mode):
    if mode == KEEP:
        return lambda ctx, node: keep_zeros(ctx, node, ctx.value(node.args[0]))

    def analyze(ctx, node):
        return elementwise(ctx, node, [ctx.value(node.args[0])], mode)

    return analyze


RULES.function(*KEEP_FUNCTIONS)(_unary(KEEP))
RULES.method(*KEEP_METHODS)(_unary(KEEP))
RULES.module(*KEEP_MODULES)(_unary(KEEP))
RULES.function(*CONST_FUNCTIONS)(_unary(CONST))
RULES.method(*CONST_METHODS)(_unary(CONST))
RULES.module(*CONST_MODULES)(_unary(CONST))

try:  # torchvision's stochastic depth is an fx.wrap-ed function: it multiplies by a 0/1 mask
    from torchvision.ops import stochastic_depth as _stochastic_depth

    RULES.function(_stochastic_depth)(_unary(KEEP))
except ImportError:  # pragma: no cover - torchvision is optional at import time
    pass


def _range_mode(lo, hi) -> str:
    lo_ok = lo is None or (isinstance(lo, (int, float)) and lo <= 0)
    hi_ok = hi is None or (isinstance(hi, (int, float)) and hi >= 0)
    return KEEP if lo_ok and hi_ok else CONST


@RULES.module(nn.Hardtanh)  # nn.ReLU6 is a Hardtanh
def _hardtanh_module(ctx, node):
    m = ctx.module(node)
    return elementwise(ctx, node, [ctx.value(node.args[0])], _range_mode(m.min_val, m.max_val))


@RULES.function(F.hardtanh, F.hardtanh_)
def _hardtanh(ctx, node):
    mode = _range_mode(ctx.arg(node, 1, "min_val", -1.0), ctx.arg(node, 2, "max_val", 1.0))
    return elementwise(ctx, node, [ctx.value(node.args[0])], mode)


@RULES.function(torch.clamp, torch.clip)
@RULES.method("clamp", "clip", "clamp_", "clip_")
def _clamp(ctx, node):
    lo, hi = ctx.arg(node, 1, "min"), ctx.arg(node, 2, "max")
    # Tensor bounds broadcast against x like a second operand: their channels are x's channels.
    bounds = [ctx.value(b) for b in (lo, hi) if isinstance(b, torch.fx.Node)]
    return elementwise(ctx, node, [ctx.value(node.args[0])] + bounds, _range_mode(lo, hi))


@RULES.module(nn.PReLU)
def _prelu(ctx, node):
    out = keep_zeros(ctx, node, ctx.value(node.args[0]))
    m = ctx.module(node)
    x = ctx.labels(node.args[0])
    if m.num_parameters > 1 and x is not None and x.ndim > 1 and x.dims[1] is not None:
        # the slope is sliced with its channel but does not make it zero: not part of x_g
        weight = ctx.param_atoms(f"{node.target}.weight", 0, "consumer")
        ctx.atoms.unify(x.dims[1].atoms, weight, f"{ctx.describe(node)} slope")
    return out


def _taint(ctx, node) -> SizeTaint | None:
    """Arithmetic on Python numbers: track whether they derive from channel counts."""
    args = list(node.args) + list(node.kwargs.values())
    values = [ctx.value(a) for a in args]
    parts = [v.atoms for v in values if isinstance(v, SizeTaint)]
    if not parts:
        return None
    # any run-time number that is not a channel count (batch, spatial size) makes the result input-dependent
    pure = all(v.pure if isinstance(v, SizeTaint) else not isinstance(a, torch.fx.Node) for a, v in zip(args, values))
    return SizeTaint(np.concatenate(parts), pure)


def _binary(mode):
    def analyze(ctx, node):
        if not ctx.is_tensor(node):
            return _taint(ctx, node)
        args = node.args
        if len(args) == 2 and not node.kwargs:  # ``a * b``: most calls
            operands = [ctx.value(args[0]), ctx.value(args[1])]
        else:  # (``h.add(other=1.0)``, ``torch.add(input=a, other=b)``: the operands by name as well)
            operands = [ctx.value(ctx.arg(node, 0, "input")), ctx.value(ctx.arg(node, 1, "other"))]
        for i, o in enumerate(operands):
            if isinstance(o, SizeTaint):  # a channel count used as a tensor value
                ctx.atoms.block(o.atoms, f"a channel count is used as a value by {ctx.describe(node)}")
                operands[i] = 1
        return elementwise(ctx, node, operands, mode)

    analyze.handles_sizes = True  # size arithmetic: the result carries the taint on
    return analyze


RULES.function(operator.add, operator.iadd, torch.add, operator.sub, operator.isub, torch.sub, torch.subtract,
               torch.maximum, torch.minimum)(_binary(ADD))
RULES.method("add", "add_", "sub", "sub_", "__add__", "__radd__", "__sub__", "__rsub__")(_binary(ADD))
RULES.function(operator.mul, operator.imul, torch.mul, torch.multiply)(_binary(MUL))
RULES.method("mul", "mul_", "__mul__", "__rmul__")(_binary(MUL))
RULES.function(operator.truediv, operator.itruediv, torch.div, torch.divide, torch.true_divide)(_binary(DIV))
RULES.method("div", "div_", "__truediv__")(_binary(DIV))


@RULES.function(operator.floordiv, operator.mod, operator.pow, torch.pow)
@RULES.method("pow", "__pow__")
def _power_or_int(ctx, node):
    if not ctx.is_tensor(node):
        return _taint(ctx, node)
    base, exponent = ctx.value(node.args[0]), ctx.value(node.args[1])
    if node.target in (operator.pow, torch.pow, "pow", "__pow__") and isinstance(base, TensorLabels):
        positive = isinstance(exponent, (int, float)) and exponent > 0
        return elementwise(ctx, node, [base], KEEP if positive else CONST)
    return elementwise(ctx, node, [base, exponent], CONST)


_power_or_int.handles_sizes = True


# Tensor comparisons align channels like any binary op; what a zeroed channel compares to is
# unknown here (0 > 0 is False, 0 < 1 is True), so their result is marked non-zero.  (The
# operator.* spellings also compare Python numbers: structure.py routes their tensor case here.)
compare_tensors = _binary(CONST)
RULES.function(torch.gt, torch.ge, torch.lt, torch.le, torch.eq, torch.ne)(compare_tensors)
RULES.method("gt", "ge", "lt", "le", "eq", "ne", "__gt__", "__ge__", "__lt__", "__le__", "__eq__",
             "__ne__")(compare_tensors)


@RULES.function(torch.where)
@RULES.method("where")
def _where(ctx, node):
    """``where(cond, a, b)`` (or ``a.where(cond, b)``): channels align across all three; an output
    channel is zero when ``a`` and ``b`` both are there, whatever ``cond`` says."""
    from passes.channel_analysis import unknown_op

    args = list(node.args)
    if node.op == "call_method" and len(args) == 3:
        args = [args[1], args[0], args[2]]
    if len(args) != 3 or node.kwargs or not ctx.is_tensor(node):
        return unknown_op(ctx, node)  # where(cond) returns indices
    cond, a, b = (ctx.value(x) for x in args)
    if any(isinstance(v, SizeTaint) for v in (cond, a, b)):
        return unknown_op(ctx, node)
    values = elementwise(ctx, node, [a, b], ADD)
    if not isinstance(cond, TensorLabels):
        return values
    # (over a and b again, not over ``values``: ``values`` has the full output shape, and would make
    # a dim that a and b only broadcast along look untracked)
    aligned = elementwise(ctx, node, [cond, a, b], ADD)  # unifies cond's channels with the values'
    dims = []
    for v, al in zip(values.dims, aligned.dims):
        if al is None:
            dims.append(None)
        elif v is None:  # a channel only cond carries: the output there is a or b broadcast, not tracked zero
            dims.append(al.with_nonzero(ctx.code(node)))
        else:
            dims.append(DimLabel(al.atoms, v.nonzero))
    return TensorLabels(values.shape, tuple(dims))


@RULES.function(torch.zeros_like)
def _zeros_like(ctx, node):
    """Zeros shaped like the input: its channel dims, every entry exactly zero."""
    out = keep_zeros(ctx, node, ctx.value(node.args[0]))
    return set_nonzero(out, range(len(out.shape)), 0)


# shaped like the input, with values that do not depend on it (and are not zero)
RULES.function(torch.ones_like, torch.full_like, torch.empty_like, torch.rand_like, torch.randn_like)(_unary(CONST))


def _glu(ctx, node, dim: int) -> TensorLabels:
    """``glu(x, dim) = a·sigmoid(b)`` for the halves a, b of x along ``dim``: channel i of a and of b
    form one ZIG (zeroing both gives 0·0.5 = 0); along any other dim the channels pass through."""
    x = ctx.labels(node.args[0])
    out_shape = ctx.out_shape(node)
    if x is None:
        return TensorLabels.blank(out_shape)
    d = normalize_dim(dim, x.ndim)
    dims = [lab if k != d else None for k, lab in enumerate(x.dims)]
    lab = x.dims[d]
    if lab is not None:
        halves = lab.atoms.reshape(2, -1)
        if (halves < 0).any():
            ctx.atoms.block(lab.atoms, f"{ctx.describe(node)} pairs partly untracked channels")
        else:
            ctx.atoms.unify(halves[0], halves[1], "glu halves")
            dims[d] = DimLabel(halves[0], lab.nonzero.reshape(2, -1)[0])
    return TensorLabels(tuple(out_shape), tuple(dims))


RULES.module(nn.GLU)(lambda ctx, node: _glu(ctx, node, ctx.module(node).dim))
RULES.function(F.glu)(lambda ctx, node: _glu(ctx, node, ctx.arg(node, 1, "dim", -1)))
