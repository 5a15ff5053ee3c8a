"""Group-sparse optimizers of the Only-Train-Once family over a PruneSpace.

``HSPG`` (OTOv1), ``DHSPG`` (OTOv2, exact target) and ``HESSO`` (progressive,
exact target) are ``torch.optim.Optimizer`` subclasses that wrap an SGD, Adam or
AdamW base rule; parameters outside every prunable ZIG train exactly as with
the base rule alone.
"""
from .dhspg import DHSPG
from .group_sparse_optimizer import GroupSparseOptimizer
from .hesso import HESSO
from .hspg import HSPG

__all__ = ["DHSPG", "HESSO", "HSPG", "GroupSparseOptimizer"]
