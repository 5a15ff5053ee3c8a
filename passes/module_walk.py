"""The submodules of a module tree, in ``named_modules(remove_duplicate=False)`` order, walked fast.

``nn.Module.named_modules`` nests one generator per level, so every module it yields
passes through a frame per ancestor; the analysis passes walk the tree of every traced
model, and an explicit stack makes that walk linear in the number of modules.  The
result is a dict (qualified names are unique): no (name, module) pair per module for
the garbage collector to track.
"""
from __future__ import annotations

from torch import nn


def walk_modules(root: nn.Module) -> dict[str, nn.Module]:
    """Qualified name -> module for ``root`` and every submodule, pre-order; a module shared
    between parents is listed under each of its names."""
    out: dict[str, nn.Module] = {}
    stack = [("", root)]
    pop, push = stack.pop, stack.append
    while stack:
        prefix, module = pop()
        out[prefix] = module
        children = module._modules
        if children:  # (most modules are leaves: nothing to build for them)
            dot = prefix + "." if prefix else ""
            for name, child in reversed(children.items()):  # (a loop: a comprehension is a call per module)
                if child is not None:
                    push((dot + name, child))
    return out
