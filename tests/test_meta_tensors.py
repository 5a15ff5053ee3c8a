"""Meta tensors made from kept templates: each a tensor of its own."""
import torch

import fxprune  # noqa: F401  (the package first)
from passes import meta_tensors
from passes.meta_tensors import empty_meta


def test_empty_meta_gives_separate_tensors_of_the_asked_shape_and_dtype():
    a = empty_meta([2, 3, 4], torch.float32)
    b = empty_meta((2, 3, 4), torch.float32)
    assert a is not b and a.is_meta and b.is_meta
    assert tuple(a.shape) == (2, 3, 4) and a.dtype == torch.float32 and a.is_contiguous()
    a.unsqueeze_(0)  # an in-place view op on one leaves every other, and the next, alone
    assert tuple(b.shape) == (2, 3, 4) and tuple(empty_meta([2, 3, 4], torch.float32).shape) == (2, 3, 4)
    assert empty_meta([2, 3, 4], torch.float16).dtype == torch.float16
    assert tuple(empty_meta((), torch.float32).shape) == ()


def test_templates_are_bounded(monkeypatch):
    monkeypatch.setattr(meta_tensors, "_TEMPLATES", {})
    monkeypatch.setattr(meta_tensors, "_MAX_TEMPLATES", 3)
    for n in range(1, 10):
        assert tuple(empty_meta([n], torch.float32).shape) == (n,)
        assert len(meta_tensors._TEMPLATES) <= 3
