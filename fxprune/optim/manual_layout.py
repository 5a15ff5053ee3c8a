"""Hand-built ZIG layouts for plain conv/linear stacks, a stand-in for ``fxprune.trace``.

``channel_layout`` gives one ZIG per output channel of every selected Conv2d /
Linear: the weight's dim 0 and the bias are producers, and so are the weight and
bias of a BatchNorm registered directly after the layer with a matching width (its
running statistics become "buffer" slices).  It does not follow the graph, so it
records no consumer slices and does not merge channels tied by residual adds: it
is meant for tests and benchmarks of the optimizers, where only producers matter.
"""
from __future__ import annotations

from types import SimpleNamespace
from typing import Callable

import torch
from torch import nn

from ..layout import BUFFER, PRODUCER, SliceMap, ZigLayout

_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def channel_layout(model: nn.Module, include: Callable[[str, nn.Module], bool] | None = None) -> ZigLayout:
    """One ZIG per output channel of each Conv2d/Linear for which ``include(name, module)`` holds
    (default: every ungrouped Conv2d and every Linear except the last one, the classifier)."""
    modules = list(model.named_modules())
    layers = [(i, n, m) for i, (n, m) in enumerate(modules) if isinstance(m, (nn.Conv2d, nn.Linear))]
    if include is None:
        last_linear = max((i for i, _, m in layers if isinstance(m, nn.Linear)), default=None)
        chosen = [(i, n, m) for i, n, m in layers
                  if not (isinstance(m, nn.Conv2d) and m.groups != 1) and i != last_linear]
    else:
        chosen = [(i, n, m) for i, n, m in layers if include(n, m)]

    maps: list[SliceMap] = []
    zig_group: list[torch.Tensor] = []
    next_id = 0
    for layer_id, (i, name, module) in enumerate(chosen):
        width = module.weight.shape[0]
        ids = torch.arange(next_id, next_id + width, dtype=torch.int64)
        next_id += width
        zig_group.append(torch.full((width,), layer_id, dtype=torch.int64))
        prefix = f"{name}." if name else ""
        maps.append(SliceMap(prefix + "weight", 0, ids, PRODUCER))
        if module.bias is not None:
            maps.append(SliceMap(prefix + "bias", 0, ids, PRODUCER))
        if i + 1 < len(modules):
            bn_name, bn = modules[i + 1]
            if isinstance(bn, _BATCH_NORMS) and bn.num_features == width:
                if bn.affine:
                    maps.append(SliceMap(f"{bn_name}.weight", 0, ids, PRODUCER))
                    maps.append(SliceMap(f"{bn_name}.bias", 0, ids, PRODUCER))
                if bn.track_running_stats:
                    maps.append(SliceMap(f"{bn_name}.running_mean", 0, ids, BUFFER))
                    maps.append(SliceMap(f"{bn_name}.running_var", 0, ids, BUFFER))
    groups = torch.cat(zig_group) if zig_group else torch.zeros(0, dtype=torch.int64)
    return ZigLayout(num_zigs=next_id, maps=tuple(maps), zig_group=groups)


def stand_in_space(model: nn.Module, layout: ZigLayout | None = None) -> SimpleNamespace:
    """An object with ``.model`` and ``.layout``, all the optimizers need from a PruneSpace."""
    return SimpleNamespace(model=model, layout=channel_layout(model) if layout is None else layout)
