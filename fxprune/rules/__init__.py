"""Per-op channel rules, all registered in one registry (``RULES``)."""
from .registry import RULES, Rule, register_function_rule, register_module_rule
from . import attention, elementwise, layer_norm, layers, norms, reductions, shape_ops, structure  # noqa: F401  (registration)

__all__ = ["RULES", "Rule", "register_module_rule", "register_function_rule"]
