"""The slice rewrite: a new, smaller GraphModule without the removed ZIGs.

Never touches the analysed module: the graph is copied node by node, every module
is deep-copied, sliced parameters are new tensors.  Op constants (module
attributes, view sizes, split sizes, slice bounds) are updated by each op's rule,
then the graph is linted, dead code is removed and the module recompiled.
"""
from __future__ import annotations

import copy
import operator
from typing import Any

import numpy as np
import torch
import torch.fx as fx
from torch import nn

from fxprune.errors import InputError, first_line
from fxprune.labels import DimLabel, TensorLabels
from fxprune.rules import RULES
from fxprune.rules.common import call_arg

from .atom_table import AtomTable
from .channel_analysis import META_KEY, fetch_attr


class RewriteContext:
    """What a rule's ``rewrite`` sees: which channels survive, and the new modules."""

    def __init__(self, root: nn.Module, removed_atom: np.ndarray):
        self.root = root
        self.removed_atom = removed_atom

    def kept(self, lab: DimLabel) -> np.ndarray:
        atoms = lab.atoms
        keep = np.ones(atoms.shape, dtype=bool)
        tracked = atoms >= 0
        keep[tracked] = ~self.removed_atom[atoms[tracked]]
        return keep

    def kept_count(self, lab: DimLabel | None) -> int:
        return 0 if lab is None else int(self.kept(lab).sum())

    def module(self, node: fx.Node) -> nn.Module:
        return self.root.get_submodule(node.target)

    @staticmethod
    def input_labels(node: fx.Node) -> Any:
        return node.args[0].meta.get(META_KEY)

    @staticmethod
    def input_shape(node: fx.Node) -> tuple[int, ...]:
        return tuple(node.args[0].meta["val"].shape)

    @staticmethod
    def replace(old: fx.Node, new: fx.Node) -> None:
        """``new`` (a node a rule wrote in) takes over ``old``'s users, and its meta: later rewrites
        read the dense shape and labels of their inputs from meta.  ``old`` is erased."""
        new.meta = dict(old.meta)
        old.replace_all_uses_with(new)
        old.graph.erase_node(old)

    @staticmethod
    def arg(node: fx.Node, index: int, name: str, default: Any = None) -> Any:
        return call_arg(node, index, name, default)


def _labels_in(value: Any):
    if isinstance(value, TensorLabels):
        for lab in value.dims:
            if lab is not None:
                yield lab
    elif isinstance(value, (tuple, list)):
        for v in value:
            yield from _labels_in(v)


def rescue_empty_dims(gm: fx.GraphModule, table: AtomTable, atom_zig: np.ndarray, removed_zig: np.ndarray) -> np.ndarray:
    """Keep (zero, but present) one ZIG wherever removal would leave a dimension empty.

    Keeping a zero channel never changes outputs; an empty conv or split would not run.
    """
    removed_zig = removed_zig.copy()
    labels = [lab.atoms for n in gm.graph.nodes for lab in _labels_in(n.meta.get(META_KEY))]
    labels += table.dim_atoms
    changed = True
    while changed:
        changed = False
        for atoms in labels:
            if atoms.size and (atoms >= 0).all():
                zigs = atom_zig[atoms]
                if removed_zig[zigs].all():
                    removed_zig[zigs[0]] = False
                    changed = True
    return removed_zig


def _copy_root(gm: fx.GraphModule, replacements: dict[int, torch.Tensor]) -> nn.Module:
    """Deep-copy every module of ``gm``; tensors in ``replacements`` (by id) are swapped, not copied."""
    memo: dict[int, Any] = {}
    for name, t in list(gm.named_parameters(remove_duplicate=False)) + list(gm.named_buffers(remove_duplicate=False)):
        if id(t) in replacements:
            new = replacements[id(t)]
            memo[id(t)] = nn.Parameter(new, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else new
    root = nn.Module()
    for name, child in gm.named_children():
        root.add_module(name, copy_module(child, name, memo))
    for name, p in gm.named_parameters(recurse=False):
        root.register_parameter(name, copy.deepcopy(p, memo))
    for name, b in gm.named_buffers(recurse=False):
        root.register_buffer(name, copy.deepcopy(b, memo))
    for node in gm.graph.nodes:  # tensor constants FX stores as plain attributes
        if node.op == "get_attr" and "." not in node.target and not hasattr(root, node.target):
            value = getattr(gm, node.target)
            setattr(root, node.target, value.clone() if isinstance(value, torch.Tensor) else copy.deepcopy(value))
    return root


def copy_module(module: nn.Module, name: str, memo: dict | None = None) -> nn.Module:
    """``copy.deepcopy(module)``, with an error that says what to do when a module cannot be copied."""
    try:
        return copy.deepcopy(module, memo)
    except RuntimeError as exc:
        raise InputError(
            f"fxprune copies the model's modules to build the compact one, and '{name}' ({type(module).__name__}) "
            f"cannot be copied: {first_line(exc) or type(exc).__name__}. A module that keeps a tensor computed in its forward (the old "
            "torch.nn.utils.weight_norm does) cannot be deep-copied: use torch.nn.utils.parametrizations.weight_norm, "
            "or torch.nn.utils.remove_weight_norm(module) before pruning."
        ) from exc


def sliced_tensors(gm: fx.GraphModule, table: AtomTable, removed_atom: np.ndarray) -> dict[int, torch.Tensor]:
    """New tensors (keyed by the id of the old one) for every parameter/buffer that loses channels."""
    keeps: dict[str, dict[int, np.ndarray]] = {}
    for name, dim, atoms in zip(table.dim_names, table.dim_dims, table.dim_atoms):
        removed = removed_atom[atoms]
        if removed.any():
            keeps.setdefault(name, {})[dim] = np.flatnonzero(~removed)
    out = {}
    with torch.no_grad():
        for name, dims in keeps.items():
            old = fetch_attr(gm, name)
            t = old.detach()
            for dim, keep in dims.items():
                t = t.index_select(dim, torch.as_tensor(keep, device=t.device))
            out[id(old)] = t.clone()
    return out


_PURE_TARGETS = {operator.getitem, getattr, operator.add, operator.sub, operator.mul, operator.floordiv,
                 operator.truediv, operator.mod}


def _drop_dead_size_arithmetic(graph: fx.Graph) -> None:
    """Remove the size computations a rewritten shape argument no longer uses (and nothing else)."""
    for node in reversed(list(graph.nodes)):
        if node.users:
            continue
        if (node.op == "call_method" and node.target in ("size", "dim")) or (
            node.op == "call_function" and node.target in _PURE_TARGETS
        ):
            graph.erase_node(node)


def build_compact(
    gm: fx.GraphModule, table: AtomTable, atom_zig: np.ndarray, removed_zig: np.ndarray, class_name: str
) -> fx.GraphModule:
    """A new GraphModule computing ``gm`` without the ZIGs in ``removed_zig`` (bool per ZIG)."""
    removed_atom = removed_zig[atom_zig] if atom_zig.size else np.zeros(0, dtype=bool)
    root = _copy_root(gm, sliced_tensors(gm, table, removed_atom) if removed_atom.any() else {})
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for node in gm.graph.nodes:
        env[node] = graph.node_copy(node, lambda n: env[n])
    if removed_atom.any():
        rw = RewriteContext(root, removed_atom)
        for old, new in env.items():
            if new._erased:  # a rule that wrote its op out in other ops removed this user of it
                continue
            if old.op in ("call_module", "call_function", "call_method"):
                rule = RULES.lookup(old, gm)
                if rule is not None and rule.rewrite is not None:
                    rule.rewrite(rw, new)
    graph.lint()
    _drop_dead_size_arithmetic(graph)
    compact = fx.GraphModule(root, graph, class_name)
    for node in compact.graph.nodes:  # analysis facts belong to the dense graph
        node.meta.pop(META_KEY, None)
        node.meta.pop("val", None)
    return compact
