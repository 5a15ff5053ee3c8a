"""The closed-form shapes in passes.fast_shapes agree with the real kernels, and step aside when the kernel would fail."""
from __future__ import annotations

import math
import operator

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import fxprune  # noqa: F401  (imports the passes in dependency order)
from passes import fast_shapes
from passes.shape_prop import propagate_shapes


def _meta(*shape, dtype=torch.float32):
    return torch.empty(shape, dtype=dtype, device="meta")


def _agrees(shortcut, run):
    """``shortcut`` equals what ``run()`` gives on meta tensors; None when ``run`` raises."""
    try:
        expected = run()
    except Exception:
        assert shortcut is None, "the shortcut accepted an input the kernel rejects"
        return
    if shortcut is not None:
        assert shortcut.device.type == "meta"
        assert tuple(shortcut.shape) == tuple(expected.shape)
        assert shortcut.dtype == expected.dtype


@settings(max_examples=150, deadline=None)
@given(
    spatial=st.sampled_from([1, 2, 3]), groups=st.sampled_from([1, 2, 4]), in_per_group=st.integers(1, 3),
    out_per_group=st.integers(1, 3), kernel=st.integers(1, 4), stride=st.integers(1, 3), dilation=st.integers(1, 2),
    padding=st.one_of(st.integers(0, 2), st.sampled_from(["same", "valid"])), size=st.integers(1, 9),
    wrong_channels=st.booleans(), mode=st.sampled_from(["zeros", "reflect", "circular"]),
)
def test_conv_shape_matches_the_kernel(spatial, groups, in_per_group, out_per_group, kernel, stride, dilation,
                                       padding, size, wrong_channels, mode):
    if padding == "same":
        stride = 1  # PyTorch allows 'same' only with stride 1
    conv_type = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[spatial]
    conv = conv_type(in_per_group * groups, out_per_group * groups, kernel, stride=stride, padding=padding,
                     dilation=dilation, groups=groups, padding_mode=mode, device="meta")
    channels = in_per_group * groups + (1 if wrong_channels else 0)
    x = _meta(2, channels, *([size] * spatial))
    _agrees(fast_shapes.module_output(conv, x), lambda: conv(x))


@settings(max_examples=150, deadline=None)
@given(a=st.lists(st.sampled_from([1, 2, 3]), min_size=0, max_size=4),
       b=st.lists(st.sampled_from([1, 2, 3]), min_size=0, max_size=4),
       op=st.sampled_from([operator.add, operator.mul, operator.truediv, torch.sub, operator.iadd]),
       scalar=st.booleans())
def test_elementwise_shape_matches_the_kernel(a, b, op, scalar):
    x = _meta(*a)
    y = 2.0 if scalar else _meta(*b)
    _agrees(fast_shapes.function_output(op, (x, y), {}), lambda: op(x, y))


@pytest.mark.parametrize("x, y", [
    (_meta(2, 3), _meta(2, 3, dtype=torch.float16)),  # mixed dtypes promote
    (_meta(2, 3, dtype=torch.int64), _meta(2, 3, dtype=torch.int64)),  # int / int gives float
    (_meta(2, 3), True),  # bool scalars
])
def test_elementwise_steps_aside_for_dtype_changes(x, y):
    assert fast_shapes.function_output(operator.truediv, (x, y), {}) is None


def test_in_place_op_cannot_grow_its_target():
    x, y = _meta(1, 3), _meta(4, 3)
    assert fast_shapes.method_output("add_", (x, y), {}) is None
    assert fast_shapes.function_output(operator.iadd, (x, y), {}) is None
    assert tuple(fast_shapes.method_output("add_", (y, x), {}).shape) == (4, 3)


@pytest.mark.parametrize("module, x", [
    (nn.Linear(5, 7, device="meta"), _meta(2, 3, 5)),
    (nn.Linear(5, 7, device="meta"), _meta(2, 4)),
    (nn.Linear(5, 7, device="meta"), _meta(5)),
    (nn.AdaptiveAvgPool2d((1, None)), _meta(2, 3, 5, 6)),
    (nn.AdaptiveAvgPool2d(2), _meta(3, 5, 6)),  # unbatched: left to the kernel
    (nn.AdaptiveAvgPool1d(3), _meta(2, 4, 9)),
    (nn.BatchNorm2d(4, device="meta"), _meta(2, 4, 3, 3)),
    (nn.BatchNorm2d(4, device="meta"), _meta(2, 5, 3, 3)),
    (nn.BatchNorm2d(4, device="meta"), _meta(4, 3, 3)),  # wrong rank: the module raises
    (nn.BatchNorm1d(4, device="meta"), _meta(2, 4, 3, 3)),
    (nn.BatchNorm1d(4, device="meta"), _meta(2, 4)),
    (nn.BatchNorm1d(4, device="meta"), _meta(2, 4, 7)),
    (nn.InstanceNorm1d(4, affine=True, device="meta"), _meta(4, 7)),  # unbatched
    (nn.InstanceNorm2d(4, affine=True, device="meta"), _meta(2, 4, 3, 3)),
    (nn.InstanceNorm2d(4, affine=True, device="meta"), _meta(4, 3, 3)),
    (nn.InstanceNorm2d(4, affine=True, device="meta"), _meta(3, 4, 3)),
    (nn.GroupNorm(2, 4, device="meta"), _meta(2, 6, 3)),
    (nn.LayerNorm(8, device="meta"), _meta(2, 3, 8)),
    (nn.LayerNorm(8, device="meta"), _meta(2, 8, 3)),
    (nn.ReLU(), _meta(2, 3, 4)),
])
def test_module_shapes_match_the_kernel(module, x):
    _agrees(fast_shapes.module_output(module, x), lambda: module(x))


@pytest.mark.parametrize("call", [
    (torch.cat, ([_meta(2, 3, 4), _meta(2, 5, 4)], 1)),
    (torch.cat, ([_meta(2, 3, 4), _meta(2, 5, 4)], -2)),
    (torch.cat, ([_meta(2, 3, 4), _meta(2, 5, 5)], 1)),  # mismatched: the kernel raises
    (torch.flatten, (_meta(2, 3, 4, 5), 1)),
    (torch.flatten, (_meta(2, 3, 4, 5), 1, 2)),
    (torch.flatten, (_meta(2, 3, 4, 5), -3, -1)),
    (F.adaptive_avg_pool2d, (_meta(2, 3, 8, 8), (2, 4))),
    (F.relu, (_meta(2, 3),)),
])
def test_function_shapes_match_the_kernel(call):
    fn, args = call
    _agrees(fast_shapes.function_output(fn, args, {}), lambda: fn(*args))


def test_channels_last_layout_is_kept():
    x = torch.empty(2, 3, 4, 4, device="meta").to(memory_format=torch.channels_last)
    out = fast_shapes.module_output(nn.ReLU(), x)
    assert out.stride() == x.stride()


def test_shape_preserving_output_is_a_separate_tensor():
    """A shape-preserving op's meta output is its own tensor object: an in-place view op on it
    (``unsqueeze_``) must not change the shape recorded for the op's input."""

    class InPlaceView(nn.Module):
        def __init__(self):
            super().__init__()
            self.bn, self.act = nn.BatchNorm2d(4), nn.ReLU()

        def forward(self, x):
            y = self.act(self.bn(x))
            y.unsqueeze_(0)
            return y

    gm = torch.fx.symbolic_trace(InPlaceView())
    propagate_shapes(gm, (torch.randn(2, 4, 5, 5),))
    shapes = {n.name: tuple(n.meta["val"].shape) for n in gm.graph.nodes if n.op != "output"}
    assert shapes["x"] == shapes["bn"] == (2, 4, 5, 5)
    for node in gm.graph.nodes:
        if node.op == "call_module":
            inp = node.args[0].meta["val"]
            assert node.meta["val"] is not inp and node.meta["val"].is_meta


def test_the_common_ops_take_the_shortcut():
    x = _meta(2, 4, 8, 8)
    assert tuple(fast_shapes.module_output(nn.Conv2d(4, 6, 3, 2, 1, device="meta"), x).shape) == (2, 6, 4, 4)
    assert tuple(fast_shapes.module_output(nn.BatchNorm2d(4, device="meta"), x).shape) == (2, 4, 8, 8)
    assert tuple(fast_shapes.module_output(nn.Linear(8, 3, device="meta"), x).shape) == (2, 4, 8, 3)
    assert tuple(fast_shapes.function_output(operator.add, (x, _meta(4, 1, 1)), {}).shape) == (2, 4, 8, 8)
    assert tuple(fast_shapes.function_output(torch.cat, ([x, x], 1), {}).shape) == (2, 8, 8, 8)
    assert tuple(fast_shapes.method_output("flatten", (x, 1), {}).shape) == (2, 256)


_BOOL_MASK = torch.empty(1, 3, 1, dtype=torch.bool, device="meta")


@pytest.mark.parametrize("fn, args, kwargs", [
    (F.normalize, (_meta(2, 3, 4),), {"dim": -1}),
    (F.normalize, (_meta(2, 3, 4),), {"dim": 3}),  # out of range: the kernel raises
    (F.normalize, (_meta(2, 3, 4), 1.0, 0), {}),
    (F.linear, (_meta(2, 3, 4), _meta(5, 4)), {}),
    (F.linear, (_meta(4), _meta(5, 4), _meta(5)), {}),
    (F.linear, (_meta(2, 3, 4), _meta(5, 3)), {}),  # mismatched features
    (F.linear, (_meta(2, 4), _meta(5, 4), _meta(4)), {}),  # mismatched bias
    (torch.clamp, (_meta(2, 3),), {"max": 4.6}),
    (torch.clamp, (_meta(2, 3), 0, 1),  {}),
    (torch.clamp, (_meta(2, 3),), {}),  # no bound: the kernel raises
    (torch.clamp_min, (_meta(2, 3), 1e-6), {}),
    (torch.roll, (_meta(2, 5, 5, 3),), {"shifts": (-2, -2), "dims": (1, 2)}),
    (torch.roll, (_meta(2, 5),), {"shifts": 1}),
    (torch.roll, (_meta(2, 5),), {"shifts": (1, 2), "dims": (0,)}),  # mismatched lengths: the kernel raises
    (torch.roll, (_meta(2, 5),), {"shifts": 1, "dims": 2}),  # out of range
    (torch.exp, (_meta(2, 3),), {}),
    (torch.masked_fill, (_meta(2, 3, 4), _BOOL_MASK, -100.0), {}),
    (torch.masked_fill, (_meta(1, 3, 1), torch.empty(2, 3, 4, dtype=torch.bool, device="meta"), 0.0), {}),
    (F.softmax, (_meta(2, 3),), {"dim": -1}),
    (F.softmax, (_meta(2, 3),), {"dim": 1, "dtype": torch.float64}),  # dtype changes: left to the kernel
])
def test_function_shapes_of_attention_helpers_match_the_kernel(fn, args, kwargs):
    _agrees(fast_shapes.function_output(fn, args, kwargs), lambda: fn(*args, **kwargs))


@pytest.mark.parametrize("name, args", [
    ("clamp", (_meta(2, 3), None, 1.0)),
    ("clamp_max", (_meta(2, 3), 1.0)),
    ("roll", (_meta(2, 3), 1, 1)),
    ("exp", (_meta(2, 3),)),
    ("masked_fill", (_meta(2, 3, 4), _BOOL_MASK, 0.0)),
    ("softmax", (_meta(2, 3), 0)),
    ("softmax", (_meta(2, 3), 0, torch.float64)),  # a positional dtype is honoured
])
def test_method_shapes_of_attention_helpers_match_the_kernel(name, args):
    _agrees(fast_shapes.method_output(name, args, {}), lambda: getattr(args[0], name)(*args[1:]))


@settings(max_examples=100, deadline=None)
@given(shape=st.lists(st.integers(1, 4), min_size=1, max_size=4), dims=st.lists(st.integers(-5, 4), max_size=3),
       shifts=st.lists(st.integers(-3, 3), min_size=1, max_size=3), mask_shape=st.lists(st.integers(1, 4), max_size=4))
def test_roll_and_masked_fill_shapes_match_the_kernel(shape, dims, shifts, mask_shape):
    x = _meta(*shape)
    _agrees(fast_shapes.function_output(torch.roll, (x, tuple(shifts), tuple(dims)), {}),
            lambda: torch.roll(x, tuple(shifts), tuple(dims)))
    mask = torch.empty(mask_shape, dtype=torch.bool, device="meta")
    _agrees(fast_shapes.method_output("masked_fill", (x, mask, 1.0), {}), lambda: x.masked_fill(mask, 1.0))


def _window_attention(x, weight, logit_scale, table):
    """Python code of the kind fx.wrap-ped attention helpers hold; the index is built on the CPU."""
    shifted = torch.roll(x, shifts=(-1, -1), dims=(1, 2)).flatten(1, 2)
    q = F.normalize(F.linear(shifted, weight), dim=-1)
    attn = (q @ q.transpose(-2, -1)) * torch.clamp(logit_scale, max=4.6).exp()
    index = torch.arange(table.shape[0]).flip(0)  # a real tensor, computed for real inside the mode
    attn = attn + table[index].sum() - 1
    attn = attn.masked_fill(attn.new_zeros(attn.shape[-1]) != 0, -100.0).softmax(dim=-1)
    return attn @ shifted


torch.fx.wrap("_window_attention")


class _WindowBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(6, 6))
        self.logit_scale = nn.Parameter(torch.zeros(1))
        self.table = nn.Parameter(torch.randn(5))

    def forward(self, x):
        return _window_attention(x, self.weight, self.logit_scale, self.table)


def test_wrapped_functions_get_their_real_shapes_through_the_fast_mode():
    model = _WindowBlock()
    x = torch.randn(2, 3, 4, 6)
    gm = torch.fx.symbolic_trace(model)
    propagate_shapes(gm, (x,))
    (call,) = [n for n in gm.graph.nodes if n.op == "call_function"]
    assert call.meta["val"].device.type == "meta"
    assert tuple(call.meta["val"].shape) == tuple(model(x).shape) == (2, 12, 6)


@pytest.mark.parametrize("table, index", [
    (_meta(5, 3), torch.empty(7, dtype=torch.int64, device="meta")),
    (_meta(5), torch.empty(2, 3, dtype=torch.int32, device="meta")),
    (_meta(5, 3, 2), torch.empty(4, dtype=torch.int64, device="meta")),
    (_meta(5, 3), torch.empty(4, dtype=torch.bool, device="meta")),  # a mask: data-dependent, no shortcut
    (_meta(5, 3), torch.empty((), dtype=torch.int64, device="meta")),  # an index that acts as an int
])
def test_row_lookup_by_index_tensor_matches_the_kernel(table, index):
    shortcut = fast_shapes.function_output(operator.getitem, (table, index), {})
    if index.dtype == torch.bool or index.ndim == 0:
        assert shortcut is None
    else:
        _agrees(shortcut, lambda: table[index])


def _agrees_with_cpu(shortcut, run, x):
    """Like ``_agrees``, against the real CPU kernel on zeros shaped like the meta input ``x``."""
    real = torch.zeros(x.shape, dtype=x.dtype)
    _agrees(shortcut, lambda: run(real))


@settings(max_examples=300, deadline=None)
@given(spatial=st.sampled_from([1, 2, 3]), kind=st.sampled_from(["max", "avg"]), batched=st.booleans(),
       size=st.integers(1, 8), kernel=st.integers(0, 4), stride=st.one_of(st.none(), st.integers(0, 3)),
       padding=st.integers(0, 2), dilation=st.integers(1, 2), ceil_mode=st.booleans(), functional=st.booleans())
def test_pooling_shapes_match_the_kernel(spatial, kind, batched, size, kernel, stride, padding, dilation, ceil_mode,
                                         functional):
    """Max and average pooling, module and functional, against the CPU kernel (ceil mode's last window included)."""
    x = _meta(*((2,) if batched else ()), 3, *([size] * spatial))
    if kind == "max":
        args = dict(kernel_size=kernel, stride=stride, padding=padding, dilation=dilation, ceil_mode=ceil_mode)
        fn = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[spatial]
        module_type = {1: nn.MaxPool1d, 2: nn.MaxPool2d, 3: nn.MaxPool3d}[spatial]
    else:
        args = dict(kernel_size=kernel, stride=stride, padding=padding, ceil_mode=ceil_mode)
        fn = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[spatial]
        module_type = {1: nn.AvgPool1d, 2: nn.AvgPool2d, 3: nn.AvgPool3d}[spatial]
    if functional:
        _agrees_with_cpu(fast_shapes.function_output(fn, (x,), args), lambda real: fn(real, **args), x)
    else:
        try:
            module = module_type(**args)
        except Exception:  # the constructor itself refuses (e.g. kernel 0 for a 1-d avg pool)
            return
        _agrees_with_cpu(fast_shapes.module_output(module, x), module, x)


@settings(max_examples=200, deadline=None)
@given(shape=st.lists(st.integers(0, 4), min_size=0, max_size=4),
       dim=st.one_of(st.none(), st.integers(-5, 4), st.lists(st.integers(-5, 4), max_size=3)),
       keepdim=st.booleans(), name=st.sampled_from(["mean", "sum", "amax", "amin"]), method=st.booleans())
def test_reduction_shapes_match_the_kernel(shape, dim, keepdim, name, method):
    x = _meta(*shape)
    if method:
        shortcut = fast_shapes.method_output(name, (x, dim, keepdim), {})
        run = lambda real: getattr(real, name)(dim, keepdim)  # noqa: E731
    else:
        fn = getattr(torch, name)
        shortcut = fast_shapes.function_output(fn, (x,), {"dim": dim, "keepdim": keepdim})
        run = lambda real: fn(real, dim=dim, keepdim=keepdim)  # noqa: E731
    _agrees_with_cpu(shortcut, run, x)


def test_reductions_with_a_dtype_or_integers_are_left_to_the_kernel():
    assert fast_shapes.function_output(torch.sum, (_meta(2, 3),), {"dim": 1, "dtype": torch.float64}) is None
    assert fast_shapes.method_output("sum", (_meta(2, 3, dtype=torch.int64), 1), {}) is None


@pytest.mark.parametrize("module, x", [
    (nn.Flatten(), _meta(2, 3, 4, 5)),
    (nn.Flatten(0, 2), _meta(2, 3, 4, 5)),
    (nn.Flatten(2, 1), _meta(2, 3, 4, 5)),  # start after end: the kernel raises
    (nn.MaxPool2d(2, return_indices=True), _meta(1, 3, 4, 4)),  # a tuple out: left to the kernel
])
def test_flatten_and_pool_modules_match_the_kernel(module, x):
    _agrees(fast_shapes.module_output(module, x), lambda: module(x))


@pytest.mark.parametrize("args, kwargs", [
    ((_meta(2, 3, 4, 4), 0.2, "row"), {}),
    ((_meta(2, 3, 4, 4), 0.2, "batch"), {"training": False}),
    ((_meta(2, 3, 4, 4), 1.5, "row"), {}),  # p out of range: the function raises
    ((_meta(2, 3, 4, 4), 0.2, "rows"), {}),  # unknown mode: the function raises
])
def test_stochastic_depth_shape_matches_the_function(args, kwargs):
    from torchvision.ops import stochastic_depth

    x = args[0]
    _agrees_with_cpu(fast_shapes.function_output(stochastic_depth, args, kwargs),
                     lambda real: stochastic_depth(real, *args[1:], **kwargs), x)


@settings(max_examples=300, deadline=None)
@given(shape=st.lists(st.integers(0, 4), min_size=0, max_size=4),
       sizes=st.lists(st.integers(-2, 6), min_size=0, max_size=4), permuted=st.booleans(),
       name=st.sampled_from(["reshape", "view", "torch.reshape"]), packed=st.booleans(), data=st.data())
def test_reshape_and_view_shapes_match_the_kernel(shape, sizes, permuted, name, packed, data):
    """Shape and strides as the kernel makes them: a view where one exists (also of a permuted input),
    a contiguous copy for ``reshape`` where none does, and no shortcut where ``view`` refuses."""
    order = data.draw(st.permutations(list(range(len(shape))))) if permuted else list(range(len(shape)))
    x = _meta(*shape).permute(order)
    if not permuted and data.draw(st.booleans()):  # a size that is a product of others
        sizes = [math.prod(shape)] + sizes[:1] if sizes else [math.prod(shape)]
    args = (x, tuple(sizes)) if packed or name == "torch.reshape" else (x, *sizes)
    if name == "torch.reshape":
        shortcut = fast_shapes.function_output(torch.reshape, args, {})
        run = lambda real: torch.reshape(real, tuple(sizes))  # noqa: E731
    else:
        shortcut = fast_shapes.method_output(name, args, {})
        run = lambda real: getattr(real, name)(*args[1:])  # noqa: E731
    real = torch.zeros(shape, dtype=x.dtype).permute(order)  # the same strides as ``x``
    assert real.shape == x.shape and real.stride() == x.stride()
    _agrees(shortcut, lambda: run(real))
    if shortcut is not None:
        assert shortcut.stride() == run(real).stride()


def test_contiguous_is_the_tensor_itself_or_a_contiguous_copy():
    x = _meta(2, 3)
    assert fast_shapes.method_output("contiguous", (x,), {}) is x
    copy = fast_shapes.method_output("contiguous", (x.t(),), {})
    assert copy is not x and copy.shape == (3, 2) and copy.is_contiguous()
    assert fast_shapes.method_output("view", (x, torch.float16), {}) is None  # a dtype view
