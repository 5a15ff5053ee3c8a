"""Keep tracing from changing the user's model, and say when a forward writes module state.

FX runs the forward's Python once.  Code that writes module state (``self.count += 1`` on
a buffer, ``self.prev = h.mean()``) then writes into the user's model (a buffer bumped,
an attribute holding a Proxy), and the traced graph does not contain the write, so it
would compute something else on later calls.  ``StateSnapshot`` records every module's
attributes, parameters and buffers (and the buffers' values) before tracing; afterwards
it puts everything back and reports what the forward changed.
"""
from __future__ import annotations

import torch
from torch import nn

# Written by BatchNorm-style code in train mode; it only counts batches (for momentum=None).
_COUNTERS = frozenset({"num_batches_tracked"})


class StateSnapshot:
    def __init__(self, model: nn.Module):
        self._modules = list(model.named_modules(remove_duplicate=True))
        self._attributes = [dict(m.__dict__) for _, m in self._modules]
        self._stores = [(dict(m._parameters), dict(m._buffers)) for _, m in self._modules]
        self._values = [{k: b.detach().clone() for k, b in m._buffers.items() if b is not None}
                        for _, m in self._modules]

    def restore(self) -> list[str]:
        """Put the model back as it was; return what the forward changed (qualified names)."""
        changed = []
        for (prefix, module), attributes, (params, buffers), values in zip(
                self._modules, self._attributes, self._stores, self._values):
            dot = prefix + "." if prefix else ""
            for key in set(module.__dict__) - set(attributes) - {"_parameters", "_buffers", "_modules"}:
                changed.append(dot + key)
                del module.__dict__[key]
            for key, value in attributes.items():
                if key not in ("_parameters", "_buffers", "_modules") and module.__dict__.get(key) is not value:
                    changed.append(dot + key)
                    module.__dict__[key] = value
            for store, saved in ((module._parameters, params), (module._buffers, buffers)):
                if any(store.get(k) is not v for k, v in saved.items()) or set(store) != set(saved):
                    changed.extend(dot + k for k in set(store) | set(saved) if store.get(k) is not saved.get(k))
                    store.clear()
                    store.update(saved)
            for key, before in values.items():
                buffer = module._buffers.get(key)
                if buffer is not None and not torch.equal(buffer, before):
                    with torch.no_grad():
                        buffer.copy_(before)
                    if key not in _COUNTERS:
                        changed.append(dot + key)
        return sorted(set(changed))
