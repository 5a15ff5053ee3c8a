"""The one registry of per-op channel rules.

A rule knows one op's channel semantics: ``analyze(ctx, node)`` returns the labels
of the node's output (unifying or blocking atoms through ``ctx``), and the optional
``rewrite(rw, node)`` updates the op's constants (module attributes, size arguments)
in the compact graph.  Ops are keyed by function object, method name or module class;
adding an op is adding a rule here, never editing a pass.  An op with no rule is a
barrier (see ``passes.channel_analysis``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from torch import nn
from torch.nn.modules import module as _global_hooks


@dataclass(frozen=True)
class Rule:
    analyze: Callable[[Any, Any], Any]
    rewrite: Callable[[Any, Any], None] | None = None


class RuleRegistry:
    def __init__(self):
        self.functions: dict[Any, Rule] = {}
        self.methods: dict[str, Rule] = {}
        self.modules: dict[type, Rule] = {}
        self._by_class: dict[type, Rule | None] = {}  # MRO lookups, cleared on every registration

    def function(self, *targets, rewrite=None):
        def deco(fn):
            for t in targets:
                if t is not None:
                    self.functions[t] = Rule(fn, rewrite)
            return fn

        return deco

    def method(self, *names, rewrite=None):
        def deco(fn):
            for n in names:
                self.methods[n] = Rule(fn, rewrite)
            return fn

        return deco

    def module(self, *classes, rewrite=None):
        def deco(fn):
            for c in classes:
                self.add_module_rule(c, Rule(fn, rewrite))
            return fn

        return deco

    def add_module_rule(self, cls: type, rule: Rule) -> None:
        self.modules[cls] = rule
        self._by_class.clear()

    def lookup(self, node, root: nn.Module, module: nn.Module | None = None) -> Rule | None:
        """The rule for ``node``; ``module``, when given, is ``root``'s submodule ``node`` calls."""
        if node.op == "call_function":
            return self.functions.get(node.target)
        if node.op == "call_method":
            return self.methods.get(node.target)
        if node.op == "call_module":
            return self.lookup_module(module if module is not None else root.get_submodule(node.target))
        return None

    def lookup_module(self, module: nn.Module) -> Rule | None:
        """The rule for a call of ``module``: its class's (or an ancestor's with the same forward)."""
        if hidden_behaviour(module) is not None:
            return None
        cls = type(module)
        rule = self._by_class.get(cls, _UNSEEN)
        if rule is _UNSEEN:
            rule = self._by_class[cls] = self._inherited_rule(cls)
        return rule

    def _inherited_rule(self, cls: type) -> Rule | None:
        """The rule of the nearest registered class in ``cls``'s MRO, if ``cls`` runs that class's forward.

        A subclass with its own ``forward`` (a user leaf such as a LayerNorm over channels-first
        input) computes something else: it gets no rule, so it is a barrier until registered itself.
        """
        for c in cls.__mro__:
            if c in self.modules:
                return self.modules[c] if getattr(cls, "forward", None) is getattr(c, "forward", None) else None
        return None


_UNSEEN = object()  # (a class not looked up yet; None is a looked-up class without a rule)
RULES = RuleRegistry()


def hidden_behaviour(module: nn.Module) -> str | None:
    """Why a call of ``module`` may compute more than its class's forward, or None.

    Forward hooks and pre-hooks (the module's own or global ones) run around the forward
    and can change inputs and outputs; a parametrized tensor (``parametrizations.weight_norm``,
    ``spectral_norm``) is computed from other parameters on every access.  FX does not see
    either, so such a module gets no rule: it is a barrier.
    """
    if has_forward_hooks(module):
        return "has forward hooks, which fxprune cannot see into"
    # parametrize.is_parametrized(module) reads the attribute through nn.Module.__getattr__, which
    # builds an AttributeError for every module without it: look in the registered children instead.
    if isinstance(module._modules.get("parametrizations"), nn.ModuleDict):
        return "has parametrized tensors (computed from other parameters on every access)"
    return None


def has_forward_hooks(module: nn.Module) -> bool:
    """Forward hooks or pre-hooks would run around a call of ``module`` (its own or global ones)."""
    return bool(module._forward_hooks or module._forward_pre_hooks or _global_hooks._global_forward_hooks
                or _global_hooks._global_forward_pre_hooks)


def register_module_rule(module_class: type, analyze, rewrite=None) -> None:
    """Teach fxprune a custom leaf module's channel semantics (see the README)."""
    RULES.add_module_rule(module_class, Rule(analyze, rewrite))


def register_function_rule(function, analyze, rewrite=None) -> None:
    """Teach fxprune a custom function's (e.g. an ``fx.wrap``-ed one) channel semantics."""
    RULES.functions[function] = Rule(analyze, rewrite)
