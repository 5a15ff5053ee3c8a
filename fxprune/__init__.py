"""fxprune: structured pruning as a torch.fx compiler pass (the Only-Train-Once family).

    space = fxprune.trace(model, example_inputs)   # analyse: groups of channels that prune together
    ...train with fxprune.DHSPG(space, ...)...      # drive chosen groups exactly to zero
    small = space.construct_subnet(verify=True)    # a smaller GraphModule computing the same
"""
from .errors import FxpruneError, InputError, TraceError, VerificationError
from .layout import SliceMap, ZigLayout
from .rules import register_function_rule, register_module_rule
from .space import PruneSpace, trace

__all__ = [
    "trace", "PruneSpace", "TraceError", "InputError", "VerificationError", "FxpruneError", "ZigLayout", "SliceMap",
    "register_module_rule", "register_function_rule",
]

# The group-sparse optimizers that train a PruneSpace's model (fxprune.optim).
from .optim import DHSPG, HESSO, HSPG  # noqa: E402

__all__ += ["DHSPG", "HESSO", "HSPG"]
