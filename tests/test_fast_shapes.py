"""The closed-form shapes in passes.fast_shapes agree with the real kernels, and step aside when the kernel would fail."""
from __future__ import annotations

import operator

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from passes import fast_shapes


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
    _agrees(fast_shapes.module_output(conv, (x,), {}), lambda: conv(x))


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
    _agrees(fast_shapes.module_output(module, (x,), {}), lambda: module(x))


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
    out = fast_shapes.module_output(nn.ReLU(), (x,), {})
    assert out.stride() == x.stride()


def test_the_common_ops_take_the_shortcut():
    x = _meta(2, 4, 8, 8)
    assert tuple(fast_shapes.module_output(nn.Conv2d(4, 6, 3, 2, 1, device="meta"), (x,), {}).shape) == (2, 6, 4, 4)
    assert tuple(fast_shapes.module_output(nn.BatchNorm2d(4, device="meta"), (x,), {}).shape) == (2, 4, 8, 8)
    assert tuple(fast_shapes.module_output(nn.Linear(8, 3, device="meta"), (x,), {}).shape) == (2, 4, 8, 3)
    assert tuple(fast_shapes.function_output(operator.add, (x, _meta(4, 1, 1)), {}).shape) == (2, 4, 8, 8)
    assert tuple(fast_shapes.function_output(torch.cat, ([x, x], 1), {}).shape) == (2, 8, 8, 8)
    assert tuple(fast_shapes.method_output("flatten", (x, 1), {}).shape) == (2, 256)
