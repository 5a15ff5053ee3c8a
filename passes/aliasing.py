"""Which graph nodes may name the same storage, and in-place writes FX records as out-of-place.

Two consumers:

* the channel analysis: after an in-place write (``x.add_(1)``, ``ReLU(inplace=True)``),
  every other name for the written storage still carries the labels from before the
  write, so a name that is read afterwards makes the channels unfollowable;
* ``restore_in_place_updates``: FX's Proxy has no ``__iadd__``, so ``y += 1`` is traced
  as ``y = y + 1``.  That is the same computation unless another name for ``y``'s storage
  is read afterwards (``y = h.float(); y += 1; use(h)``): there eager PyTorch sees the
  write and the traced graph would not.  Such updates are put back in place
  (``operator.iadd``), so the graph computes what the model computes.

"May alias" is decided statically and conservatively: views, in-place ops, ops that may
return their input unchanged (a cast to the dtype a tensor already has, eval-mode
dropout, ``detach``, ``nn.Identity``), and any op without a channel rule.
"""
from __future__ import annotations

import builtins
import operator
from typing import Callable

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from .module_walk import walk_modules

IN_PLACE_FUNCTIONS = {operator.iadd, operator.isub, operator.imul, operator.itruediv, operator.ifloordiv,
                      operator.imod, operator.ipow, operator.iand, operator.ior, operator.ixor, operator.ilshift,
                      operator.irshift, torch.relu_}
_NOT_MUTATING_METHODS = {"requires_grad_", "retain_grad"}

VIEW_METHODS = {"view", "reshape", "transpose", "permute", "flatten", "squeeze", "unsqueeze", "expand", "narrow",
                "t", "unflatten", "view_as", "as_strided", "split", "chunk", "unbind", "swapaxes", "swapdims",
                "movedim", "expand_as", "diagonal", "select", "contiguous", "tensor_split", "moveaxis",
                "reshape_as", "ravel", "broadcast_to", "hsplit", "vsplit", "dsplit", "unfold"}

# Ops that may hand back their input itself rather than a new tensor.
_ALIASING_METHODS = {"float", "double", "half", "bfloat16", "int", "long", "short", "bool", "byte", "char", "to",
                     "type", "type_as", "detach", "cpu", "cuda", "requires_grad_", "conj", "resolve_conj",
                     "resolve_neg", "positive", "align_as", "refine_names", "rename", "as_subclass"}
_ALIASING_FUNCTIONS = {torch.detach, torch.dropout, torch.alpha_dropout, torch.feature_dropout,
                       torch.feature_alpha_dropout, F.dropout, F.dropout1d, F.dropout2d, F.dropout3d,
                       F.alpha_dropout, F.feature_alpha_dropout, torch.conj, torch.resolve_conj, torch.resolve_neg,
                       torch.positive, builtins.getattr, torch.atleast_1d, torch.atleast_2d, torch.atleast_3d,
                       torch.broadcast_tensors}
ALIASING_MODULES = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
                     nn.FeatureAlphaDropout, nn.Flatten, nn.Unflatten)

# Python's augmented assignments and the in-place operator each one stands for on a tensor.
AUGMENTED = {"iadd": (operator.add, operator.iadd), "isub": (operator.sub, operator.isub),
             "imul": (operator.mul, operator.imul), "itruediv": (operator.truediv, operator.itruediv),
             "ifloordiv": (operator.floordiv, operator.ifloordiv), "imod": (operator.mod, operator.imod),
             "ipow": (operator.pow, operator.ipow), "iand": (operator.and_, operator.iand),
             "ior": (operator.or_, operator.ior), "ixor": (operator.xor, operator.ixor),
             "ilshift": (operator.lshift, operator.ilshift), "irshift": (operator.rshift, operator.irshift)}
AUGMENTED_KEY = "fxprune.augmented"  # node.meta: the in-place operator an out-of-place node was written as

ModuleOf = Callable[[fx.Node], nn.Module]


def mutated_input(node: fx.Node, module_of: ModuleOf) -> fx.Node | None:
    """The argument an in-place op writes to (``x.add_(y)``, ``operator.iadd``, ``ReLU(inplace=True)``)."""
    if not node.args or not isinstance(node.args[0], fx.Node):
        return None
    if node.op == "call_method" and node.target.endswith("_") and node.target not in _NOT_MUTATING_METHODS:
        return node.args[0]
    if node.op == "call_function" and (node.target in IN_PLACE_FUNCTIONS or node.kwargs.get("inplace") is True):
        return node.args[0]
    # Read the instance dict: nn.Module.__getattr__ would build an AttributeError for every module
    # without the attribute, which costs more than the rest of this check.
    if node.op == "call_module" and vars(module_of(node)).get("inplace", False) is True:
        return node.args[0]
    return None


def is_view(node: fx.Node) -> bool:
    if node.op == "call_method":
        return node.target in VIEW_METHODS
    if node.op == "call_function":
        name = getattr(node.target, "__name__", "")
        return node.target is operator.getitem or name in VIEW_METHODS
    return False


def aliased_inputs(node: fx.Node, module_of: ModuleOf, unknown: bool, mutated: fx.Node | None) -> list[fx.Node]:
    """The inputs whose storage ``node``'s output may share (an op without a rule: all of them;
    an in-place op returns the tensor it wrote, ``mutated``)."""
    if mutated is not None:
        return [mutated]
    op = node.op
    if unknown or is_view(node) or (op == "call_function" and node.target in _ALIASING_FUNCTIONS) \
            or (op == "call_module" and isinstance(module_of(node), ALIASING_MODULES)):
        return node.all_input_nodes
    if op == "call_method" and node.target in _ALIASING_METHODS:
        return node.all_input_nodes[:1]
    return []


class AliasClasses:
    """Union-find over "may return (a view of) its input": the nodes that may share a storage."""

    def __init__(self):
        self._parent: dict[fx.Node, fx.Node] = {}
        self._members: dict[fx.Node, list[fx.Node]] = {}

    def _root(self, node: fx.Node) -> fx.Node:
        parent = self._parent.get(node, node)
        while parent is not node:
            grand = self._parent.get(parent, parent)
            self._parent[node] = grand
            node, parent = parent, grand
        return node

    def add(self, node: fx.Node, inputs: list[fx.Node]) -> None:
        for other in inputs:
            a, b = self._root(node), self._root(other)
            if a is b:
                continue
            members_a, members_b = self._members.pop(a, [a]), self._members.pop(b, [b])
            if len(members_a) < len(members_b):
                a, b, members_a, members_b = b, a, members_b, members_a
            self._parent[b] = a
            members_a.extend(members_b)
            self._members[a] = members_a

    def members(self, node: fx.Node) -> list[fx.Node]:
        return self._members.get(self._root(node), [node])


def read_after(nodes: list[fx.Node], node: fx.Node, order: dict[fx.Node, int]) -> list[fx.Node]:
    """The ``nodes`` that some node after ``node`` (in graph order) reads."""
    at = order[node]
    return [a for a in nodes if any(order[u] > at for u in a.users)]


def restore_in_place_updates(gm: fx.GraphModule, has_rule: Callable[[fx.Node], bool]) -> int:
    """Turn augmented assignments FX traced out of place back into in-place ops where that matters.

    Returns how many nodes were changed (the graph is recompiled if any).
    """
    if not any(AUGMENTED_KEY in n.meta for n in gm.graph.nodes):
        return 0
    modules = dict(walk_modules(gm))
    module_of = lambda n: modules[n.target]  # noqa: E731
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    aliases = AliasClasses()
    changed = 0
    for node in gm.graph.nodes:
        if node.op not in ("call_module", "call_function", "call_method"):
            continue
        in_place = node.meta.get(AUGMENTED_KEY)
        target = node.args[0] if node.args else None
        if in_place is not None and isinstance(target, fx.Node):
            others = [a for a in aliases.members(target) if a is not node]
            if read_after(others, node, order):
                node.target = in_place
                changed += 1
        aliases.add(node, aliased_inputs(node, module_of, not has_rule(node), mutated_input(node, module_of)))
    if changed:
        gm.recompile()
    return changed
