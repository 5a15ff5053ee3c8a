"""Per-op channel rules, all registered in one registry (``RULES``)."""
from .registry import RULES, Rule, register_function_rule, register_module_rule
from . import (  # noqa: F401  (importing registers the rules)
    attention, einsum, elementwise, layer_norm, layers, multihead_attention, norms, reductions, shape_ops, structure,
)

__all__ = ["RULES", "Rule", "register_module_rule", "register_function_rule"]
