"""Channel-dependency analysis: run the op rules over the graph, collect atoms and unions.

Read-only over the graph: per-node labels go to ``node.meta["fxprune.channels"]``; the
cross-node result is an :class:`AtomTable` (atoms, the equalities between them, the
barriers with their reasons, and the parameter slices each atom owns).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.fx as fx
from torch import nn

from fxprune.errors import InputError, TraceError
from fxprune.labels import DimLabel, SizeTaint, TensorLabels
from fxprune.layout import CONSUMER, PRODUCER
from fxprune.rules import RULES
from fxprune.rules.common import call_arg
from fxprune.rules.registry import hidden_behaviour

from .atom_table import AtomTable
from .aliasing import ALIASING_MODULES, AliasClasses, aliased_inputs, mutated_input, read_after
from .module_walk import walk_modules

META_KEY = "fxprune.channels"
_MAY_ALIAS: dict[type, bool] = {}  # module class -> whether a call may return its input itself (static)
_UNSEEN = object()  # (a module name not looked up yet; None is a module without a rule)


class AnalysisContext:
    """What a rule sees: the node's inputs as labels, shapes, and the atom table."""

    def __init__(self, gm: fx.GraphModule, modules: dict[str, nn.Module] | None = None):
        self.gm = gm
        self.atoms = AtomTable()
        self.env: dict[fx.Node, Any] = {}
        self.codes: dict[fx.Node, int] = {n: i + 1 for i, n in enumerate(gm.graph.nodes)}
        self._nodes_by_code: dict[int, fx.Node] | None = None  # (error messages only: built on first need)
        self._uses: dict[str, int] | None = None
        self._descriptions: dict[fx.Node, str] = {}
        self._modules: dict[str, nn.Module] = {}
        self._module_rules: dict[str, Any] = {}
        self._index_tensors(modules)  # every rule reads modules or tensors: index them once, up front

    # -- reading the node --------------------------------------------------
    def value(self, arg: Any) -> Any:
        """Labels for a node argument (recursively through lists/tuples); constants unchanged."""
        if isinstance(arg, fx.Node):
            return self.env.get(arg)
        if isinstance(arg, (list, tuple)):
            return tuple(self.value(a) for a in arg) if isinstance(arg, tuple) else [self.value(a) for a in arg]
        if isinstance(arg, dict):
            return {k: self.value(v) for k, v in arg.items()}
        if isinstance(arg, slice):
            return tuple(self.value(a) for a in (arg.start, arg.stop, arg.step))
        return arg

    def labels(self, arg: Any) -> TensorLabels | None:
        v = self.env.get(arg) if type(arg) is fx.Node else self.value(arg)  # (most arguments: a node)
        return v if isinstance(v, TensorLabels) else None

    @staticmethod
    def meta_value(node: fx.Node) -> Any:
        return node.meta.get("val")

    @staticmethod
    def out_shape(node: fx.Node) -> tuple[int, ...]:
        return tuple(node.meta["val"].shape)  # torch.Size holds plain ints (static shapes)

    def is_tensor(self, node: fx.Node) -> bool:
        return isinstance(self.meta_value(node), torch.Tensor)

    def code(self, node: fx.Node) -> int:
        return self.codes[node]

    def describe(self, node: fx.Node) -> str:
        text = self._descriptions.get(node)
        if text is None:  # reasons name the node often: get_submodule walks the path each time
            text = self._descriptions[node] = describe_node(self.gm, node, self.module(node) if node.op == "call_module" else None)
        return text

    def module_rule(self, target: str, module: nn.Module) -> Any:
        """The channel rule for a call of ``module`` (at ``target``), looked up once per module name: a
        module called from many nodes (a shared activation) is looked at once.  (Only the rule is kept,
        an object that exists anyway: a record per module would outlive the analysis, and what outlives
        it is what the garbage collector has to walk.)"""
        rule = self._module_rules.get(target, _UNSEEN)
        if rule is _UNSEEN:
            rule = self._module_rules[target] = RULES.lookup_module(module)
        return rule

    def module(self, node: fx.Node) -> nn.Module:
        m = self._modules.get(node.target)  # (``module_at``'s first step inline: rules ask per node)
        return m if m is not None else self.module_at(node.target)

    def module_at(self, target: str) -> nn.Module:
        m = self._modules.get(target)
        if m is None:
            m = self._modules[target] = self.gm.get_submodule(target)
        return m

    @staticmethod
    def arg(node: fx.Node, index: int, name: str, default: Any = None) -> Any:
        return call_arg(node, index, name, default)

    # -- parameters --------------------------------------------------------
    def _index_tensors(self, modules: dict[str, nn.Module] | None) -> None:
        """Modules by name, name -> tensor, tensor -> first name, and which are parameters or tied:
        one walk of the module tree (or the one the caller already made)."""
        modules = modules if modules is not None else walk_modules(self.gm)
        self._modules = dict(modules)  # (qualified names are unique; a shared module is under each of its names)
        # straight into dicts: no (name, tensor) pairs, which would be as many objects for the GC to track
        params: dict[str, torch.Tensor] = {}
        buffers: dict[str, torch.Tensor] = {}
        for prefix, mod in modules.items():  # named_parameters' order
            own_params, own_buffers = mod._parameters, mod._buffers
            if not (own_params or own_buffers):
                continue  # (containers: most modules of a deep model)
            dot = prefix + "." if prefix else ""
            for k, t in own_params.items():
                if t is not None:
                    params[dot + k] = t
            for k, t in own_buffers.items():
                if t is not None:
                    buffers[dot + k] = t
        self._named_tensors = {**params, **buffers}  # (parameters first: ``named_parameters`` order, then buffers)
        self._params = params
        self._param_id_set: set[int] | None = None  # (``_param_ids``: built on first need)
        self._tied: set[int] = set()
        # with ties, every name resolved up front: param_atoms asks once per parameter dimension
        self._canonical_by_name: dict[str, str] = {}
        self._canonical: dict[int, str] | None = None  # built on first need: most models tie nothing
        if len(set(map(id, self._named_tensors.values()))) == len(self._named_tensors):
            self._buffer_names = buffers.keys()  # the common case: no tensor under two names, none both kinds
            return
        self._buffer_names = {n for n, t in buffers.items() if id(t) not in self._param_ids()}
        tensor_ids = list(map(id, self._named_tensors.values()))
        canonical = self._first_names()
        self._canonical_by_name = {n: canonical[id(t)] for n, t in self._named_tensors.items()}
        names_per_tensor: dict[int, int] = {}
        for t_id in tensor_ids:
            names_per_tensor[t_id] = names_per_tensor.get(t_id, 0) + 1
        self._tied = {t_id for t_id, count in names_per_tensor.items() if count > 1}

    def _param_ids(self) -> set[int]:
        if self._param_id_set is None:
            self._param_id_set = set(map(id, self._params.values()))
        return self._param_id_set

    def _first_names(self) -> dict[int, str]:
        """Tensor id -> its first registered name (``named_parameters`` order, then buffers)."""
        if self._canonical is None:
            self._canonical = {}
            for n, t in self._named_tensors.items():
                self._canonical.setdefault(id(t), n)
        return self._canonical

    def tensor_by_name(self, name: str) -> torch.Tensor:
        tensor = self._named_tensors.get(name)
        return tensor if tensor is not None else fetch_attr(self.gm, name)

    def canonical_name(self, name: str) -> str:
        """The first name (in ``named_parameters`` order) of the tensor ``name`` refers to."""
        canonical = self._canonical_by_name.get(name)
        if canonical is None:
            if not self._tied and name in self._named_tensors:
                return name  # no tied tensors: every registered name is its tensor's only one
            canonical = self._canonical_by_name[name] = self._first_names().get(id(self.tensor_by_name(name)), name)
        return canonical

    def block_if_shared(self, name: str, dim: int, node: fx.Node) -> None:
        """``node`` uses ``name`` on an untracked input: if another use may remove slices of ``dim``, it must not."""
        if self._uses is None:
            self._uses = {}
            for n in self.gm.graph.nodes:
                if n.op in ("call_module", "get_attr"):
                    self._uses[n.target] = self._uses.get(n.target, 0) + 1
        owner = name.rpartition(".")[0]
        shared = self._uses.get(owner, 0) + self._uses.get(name, 0) > 1 or id(self.tensor_by_name(name)) in self._tied
        if shared:
            self.atoms.block(self.param_atoms(name, dim, None),
                             f"'{name}' is shared, and {self.describe(node)} reads it on untracked channels")

    def is_buffer(self, name: str) -> bool:
        # by identity: isinstance(t, nn.Parameter) is slow
        if name in self._buffer_names:
            return True
        return name not in self._named_tensors and id(self.tensor_by_name(name)) not in self._param_ids()

    def param_atoms(self, name: str, dim: int, role: str | None, like: np.ndarray | None = None) -> np.ndarray:
        """Atoms of ``name``'s dimension ``dim`` (created on first use, shared by every use).

        ``like``: atoms the caller is about to unify this dimension with.  On first use,
        when they are all tracked and the sizes match, the dimension adopts them instead
        of creating fresh atoms: the same components with fewer atoms and edges.
        """
        tensor = self._named_tensors.get(name)
        if tensor is None or self._tied:
            name = self.canonical_name(name)  # a tied tensor has one set of atoms, whatever name reaches it
            tensor = self.tensor_by_name(name)
            is_buffer = self.is_buffer(name)
        else:  # the common case: a registered name, its tensor's only one
            is_buffer = name in self._buffer_names
        table = self.atoms
        key = name if dim == 0 else (name, dim)  # (``AtomTable.dim_key`` inline: once per tensor dimension read)
        j = table._dim_position.get(key)
        if j is None:
            size = tensor.shape[dim]
            # (a fresh run, the usual ``like``, is known tracked by its id: no call needed)
            adopt = like is not None and like.ndim == 1 and like.shape[0] == size and (
                id(like) in table.ranges or table.all_tracked(like))
            atoms = like if adopt else table.new(size)
            table.add_dim(key, name, dim, atoms, role, is_buffer)
            return atoms
        if not table.dim_is_buffer[j] and (role == PRODUCER or (role == CONSUMER and table.dim_roles[j] is None)):
            table.dim_roles[j] = role  # a producer use anywhere makes the slice part of x_g
        return table.dim_atoms[j]

    def all_tracked(self, atoms: np.ndarray) -> bool:
        """No untracked (-1) atom in ``atoms`` (see ``AtomTable.all_tracked``)."""
        return self.atoms.all_tracked(atoms)

    # -- blocking ----------------------------------------------------------
    def block_value(self, value: Any, reason: str) -> None:
        for atoms in _iter_atoms(value):
            self.atoms.block(atoms, reason)

    def nonzero_reason(self, code: int) -> str:
        if self._nodes_by_code is None:
            self._nodes_by_code = {c: n for n, c in self.codes.items()}
        node = self._nodes_by_code.get(int(code))
        return self.describe(node) if node is not None else "an op"


def _labels_in(value: Any):
    """Every TensorLabels and SizeTaint inside a (nested) argument value."""
    if isinstance(value, (TensorLabels, SizeTaint)):
        yield value
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _labels_in(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _labels_in(v)


def size_taints_in(value: Any):
    """Every SizeTaint (a number derived from channel counts) inside a (nested) argument value."""
    return (leaf for leaf in _labels_in(value) if isinstance(leaf, SizeTaint))


def _iter_atoms(value: Any):
    for leaf in _labels_in(value):
        if isinstance(leaf, SizeTaint):
            yield leaf.atoms
        else:
            yield from (lab.atoms for lab in leaf.dims if lab is not None)


def fetch_attr(root: nn.Module, target: str) -> Any:
    """``root.a.b.c`` for the dotted name ``'a.b.c'``."""
    obj = root
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def describe_node(gm: fx.GraphModule, node: fx.Node, module: nn.Module | None = None) -> str:
    """A short human name for a node's op: ``'layer1.0.conv1' (Conv2d)``, ``torch.cat``, ``.view``."""
    if node.op == "call_module":
        return f"'{node.target}' ({type(module if module is not None else gm.get_submodule(node.target)).__name__})"
    if node.op == "call_method":
        return f"'.{node.target}()' at node '{node.name}'"
    if node.op == "call_function":
        t = node.target
        mod = getattr(t, "__module__", None) or ""
        name = getattr(t, "__qualname__", getattr(t, "__name__", str(t)))
        return f"'{mod + '.' if mod else ''}{name}' at node '{node.name}'"
    return f"{node.op} '{node.target}'"


def unknown_op(ctx: AnalysisContext, node: fx.Node) -> Any:
    """Barrier: every channel that touches an op without a rule becomes unprunable."""
    hidden = hidden_behaviour(ctx.module(node)) if node.op == "call_module" else None
    reason = f"{ctx.describe(node)} {hidden}" if hidden else f"no channel rule for {ctx.describe(node)}"
    # The module keeps its tensors whole; one it shares with a traced op must not be sliced there.
    return _barrier(ctx, node, reason, lambda name, dim: ctx.block_if_shared(name, dim, node))


def _failed_rule(ctx: AnalysisContext, node: fx.Node, exc: Exception) -> Any:
    """A barrier where a rule raised: the op's inputs and (for a module) all of its tensors stay whole."""
    reason = f"the channel rule for {ctx.describe(node)} does not cover this call ({type(exc).__name__}: {exc})"
    return _barrier(ctx, node, reason, lambda name, dim: ctx.atoms.block(ctx.param_atoms(name, dim, None), reason))


def _barrier(ctx: AnalysisContext, node: fx.Node, reason: str, keep_tensor_dim) -> Any:
    """Block the op's inputs; for a module call, ``keep_tensor_dim(name, dim)`` on each of its tensors."""
    ctx.block_value(ctx.value(node.args), reason)
    ctx.block_value(ctx.value(node.kwargs), reason)
    if node.op == "call_module":
        prefix = node.target + "."
        for name, tensor in ctx.module(node).state_dict(keep_vars=True).items():
            for dim in range(tensor.dim()):
                keep_tensor_dim(prefix + name, dim)
    return blank_like(node.meta.get("val"))


def _block_sizes_used(ctx: AnalysisContext, node: fx.Node) -> None:
    """A channel count passed to an op whose rule does not rewrite sizes (a pooling kernel, an
    interpolation size, a pad, a spatial slice bound) would change with the pruned width: the
    channels it counts stay."""
    for taint in size_taints_in((ctx.value(node.args), ctx.value(node.kwargs))):
        ctx.atoms.block(taint.atoms, f"a channel count is used as a size by {ctx.describe(node)}")


def blank_like(val: Any) -> Any:
    if isinstance(val, torch.Tensor):
        return TensorLabels.blank(val.shape)
    if isinstance(val, (list, tuple)):
        return tuple(blank_like(v) for v in val)
    return None


def _get_attr(ctx: AnalysisContext, node: fx.Node) -> Any:
    val = ctx.meta_value(node)
    if not isinstance(val, torch.Tensor) or val.ndim == 0:
        return blank_like(val)
    dims = []
    for d, size in enumerate(val.shape):
        if size <= 1:
            dims.append(None)
            continue
        atoms = ctx.param_atoms(node.target, d, None)
        nz = np.full(size, ctx.code(node), dtype=np.int64) if ctx.is_buffer(node.target) else np.zeros(size, np.int64)
        dims.append(DimLabel(atoms, nz))
    return TensorLabels(tuple(int(s) for s in val.shape), tuple(dims))


def _output(ctx: AnalysisContext, node: fx.Node) -> Any:
    ctx.block_value(ctx.value(node.args), "reaches the network output (the output interface is never pruned)")
    return None


def _changes_zeros(before: Any, after: TensorLabels) -> bool:
    if not isinstance(before, TensorLabels):
        return True
    for a, b in zip(before.dims, after.dims):
        if (a is None) != (b is None) or (a is not None and not np.array_equal(a.nonzero != 0, b.nonzero != 0)):
            return True
    return False


def analyze_channels(gm: fx.GraphModule, modules: dict[str, nn.Module] | None = None) -> AtomTable:
    """Run every node's rule in topological order; return the atom table.

    ``modules``: ``walk_modules(gm)``, when the caller has it already.
    """
    ctx = AnalysisContext(gm, modules)
    aliases = AliasClasses()
    counting_nodes: set[fx.Node] = set()  # nodes whose value holds a channel count (a SizeTaint)
    for node in gm.graph.nodes:
        mutated = None
        op = node.op
        if op == "placeholder":
            result = blank_like(node.meta.get("val"))  # the input interface is never pruned
        elif op == "get_attr":
            result = _get_attr(ctx, node)
        elif op == "output":
            result = _output(ctx, node)
        else:
            if op == "call_module":
                module = ctx.module(node)
                rule = ctx.module_rule(node.target, module)
                # whether it writes its input in place, and may return its input itself (passes/aliasing.py);
                # vars(): nn.Module.__getattr__ would build an AttributeError for a module without ``inplace``
                if vars(module).get("inplace", False) is True and node.args and isinstance(node.args[0], fx.Node):
                    mutated = node.args[0]
                cls = type(module)
                may_alias = _MAY_ALIAS.get(cls)
                if may_alias is None:
                    may_alias = _MAY_ALIAS[cls] = issubclass(cls, ALIASING_MODULES)
            else:
                rule = RULES.lookup(node, gm)
                mutated = mutated_input(node, ctx.module)
            if rule is None:
                result = unknown_op(ctx, node)
            else:
                try:
                    result = rule.analyze(ctx, node)
                except (InputError, TraceError):
                    raise
                except Exception as exc:  # a call the rule does not cover (keyword inputs, a computed shape...)
                    result = _failed_rule(ctx, node, exc)
                else:
                    if counting_nodes and not getattr(rule.analyze, "handles_sizes", False) \
                            and not counting_nodes.isdisjoint(node.all_input_nodes):
                        _block_sizes_used(ctx, node)
            if op == "call_module":
                aliased = [mutated] if mutated is not None else node.all_input_nodes if rule is None or may_alias else ()
            else:
                aliased = aliased_inputs(node, ctx.module, rule is None, mutated)
            if aliased:
                aliases.add(node, aliased)
        ctx.env[node] = result
        node.meta[META_KEY] = result
        if result is not None and not isinstance(result, TensorLabels) and any(True for _ in size_taints_in(result)):
            counting_nodes.add(node)
        if mutated is not None and isinstance(result, TensorLabels) and result is not ctx.env.get(mutated):
            # The write lands in one storage: every other name for it still carries the labels
            # from before the write.  A name that is read afterwards cannot be followed.  (A write
            # that leaves the labels as they were, an in-place ReLU, changes nothing of this.)
            others = [a for a in aliases.members(mutated) if a is not mutated and a is not node]
            if others and _changes_zeros(ctx.env.get(mutated), result):
                stale = read_after(others, node, ctx.codes)
                if stale:
                    reason = (f"{ctx.describe(node)} writes in place into a tensor that "
                              f"{ctx.describe(stale[0])} also refers to, and that is read afterwards")
                    ctx.block_value(result, reason)
                    ctx.block_value(ctx.env.get(mutated), reason)
                    for a in stale:
                        ctx.block_value(ctx.env.get(a), reason)
            ctx.env[mutated] = result  # later readers of the mutated tensor see the op's output
    table = ctx.atoms
    roleless = [j for j, role in enumerate(table.dim_roles) if role is None]
    if roleless:  # (rare: most dimensions get a role from the rule that reads them)
        for j in roleless:
            table.dim_roles[j] = PRODUCER
        _drop_unclaimed(table, roleless)
    return table


def _drop_unclaimed(table: AtomTable, candidates: list[int]) -> None:
    """A parameter dimension only ``get_attr`` touched, that no op coupled to anything, has no channel
    meaning (a conv kernel's spatial dims when FX traces into a conv subclass): its slices are never
    removed, and it is left out of the table rather than listed as a group of its own.  One that an op
    blocked keeps its group, so the reason stays visible.  ``candidates``: the positions of the
    dimensions without a role."""
    linked = np.zeros(table.count, dtype=bool)
    for a, b in table.edges:
        linked[a] = True
        linked[b] = True
    for atoms, _ in table.blocks:
        linked[atoms] = True
    # a dimension that adopted these atoms (``param_atoms(like=...)``) couples to them without an edge
    if table.dim_atoms:
        uses = np.bincount(np.concatenate(table.dim_atoms), minlength=table.count)
        linked |= uses > 1
    unclaimed = {j for j in candidates if not linked[table.dim_atoms[j]].any()}
    if unclaimed:
        table.drop_dims(unclaimed)


__all__ = ["size_taints_in", "analyze_channels", "AnalysisContext", "META_KEY", "unknown_op", "blank_like", "fetch_attr"]
