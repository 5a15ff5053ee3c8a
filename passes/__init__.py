"""fxprune's compiler passes over torch.fx graphs, one concern per module.

- ``aliasing``: which nodes may share storage; augmented assignments put back in place where that matters.
- ``shape_prop``: fake-tensor shape propagation (no real compute), with ``fast_shapes`` formulas,
  ``window_shapes`` for pooling and reductions, ``shape_memo`` for repeated calls, and ``meta_tensors``.
- ``module_walk``: one stack walk over the module tree.
- ``channel_analysis``: applies the per-op rules to find coupled channels (atoms, unions, barriers),
  recorded in an ``atom_table``.
- ``zig_build``: turns the table into zero-invariant groups and groups of them, with connected
  components from ``zig_components``; ``zig_index`` holds the result (groups, slices, ZIG layout).
- ``slice_rewrite``: builds the compact GraphModule for a set of removed ZIGs.
- ``verify``: checks a compact model against the group-sparse dense one.
"""
