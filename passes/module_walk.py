"""The submodules of a module tree, in ``named_modules(remove_duplicate=False)`` order, walked fast.

``nn.Module.named_modules`` nests one generator per level, so every module it yields
passes through a frame per ancestor; the analysis passes walk the tree of every traced
model, and an explicit stack makes that walk linear in the number of modules.
"""
from __future__ import annotations

from torch import nn


def walk_modules(root: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(qualified name, module)`` for ``root`` and every submodule, pre-order, duplicates kept."""
    out: list[tuple[str, nn.Module]] = []
    stack = [("", root)]
    pop, append = stack.pop, out.append
    while stack:
        prefix, module = pop()
        append((prefix, module))
        children = module._modules
        if children:  # (most modules are leaves: nothing to build for them)
            dot = prefix + "." if prefix else ""
            stack += [(dot + name, child) for name, child in reversed(children.items()) if child is not None]
    return out
