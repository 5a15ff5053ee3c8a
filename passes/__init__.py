"""fxprune's compiler passes over torch.fx graphs, one concern per module.

- ``aliasing``: which nodes may share storage; augmented assignments put back in place where that matters.
- ``shape_prop``: fake-tensor shape propagation (no real compute), with ``fast_shapes`` formulas and
  ``shape_memo`` for repeated calls.
- ``module_walk``: one stack walk over the module tree.
- ``channel_analysis``: applies the per-op rules to find coupled channels (atoms, unions, barriers).
- ``zig_build``: turns the analysis into zero-invariant groups, groups and the ZIG layout.
- ``slice_rewrite``: builds the compact GraphModule for a set of removed ZIGs.
- ``verify``: checks a compact model against the group-sparse dense one.
"""
