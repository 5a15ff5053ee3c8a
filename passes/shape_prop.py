"""Shape propagation on fake tensors: every node gets ``node.meta["val"]`` without real compute.

Parameters and buffers are swapped for fake copies while a module runs, so nothing
of the user's model is read for values or written (BN running statistics included).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.fx as fx
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._pytree import tree_map

from fxprune.errors import InputError


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
            raise InputError(
                f"running the model on the example inputs failed at graph node '{n.name}' "
                f"({n.op} {getattr(n.target, '__name__', n.target)}): {type(exc).__name__}: {exc}\n"
                "  check the example inputs' shapes, dtypes and count against what the model expects."
            ) from exc
        n.meta["val"] = result
        return result


def propagate_shapes(gm: fx.GraphModule, example_inputs: tuple[Any, ...]) -> None:
    """Annotate every node of ``gm`` with a fake value (``node.meta['val']``)."""
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    fake_inputs = tree_map(
        lambda v: mode.from_tensor(v, static_shapes=True) if isinstance(v, torch.Tensor) else v, example_inputs
    )
    with mode, torch.no_grad():
        _FakeInterpreter(gm, mode).run(*fake_inputs)
