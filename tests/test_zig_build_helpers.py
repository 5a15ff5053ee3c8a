"""The array helpers of passes/zig_build.py against their plain numpy definitions."""
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import fxprune  # noqa: F401  (the package first: passes.zig_build is imported through it)
from passes.zig_build import _distinct_by_array


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.integers(0, 9), max_size=12), min_size=1, max_size=8))
def test_distinct_by_array_is_the_set_of_keys(arrays):
    n = 10
    array = np.concatenate([np.full(len(a), j, dtype=np.int64) for j, a in enumerate(arrays)])
    values = np.concatenate([np.asarray(a, dtype=np.int64) for a in arrays])
    keys = array * n + values
    got = _distinct_by_array(keys, array)
    assert got.size == np.unique(keys).size  # each distinct key exactly once
    assert np.array_equal(np.sort(got), np.unique(keys))


def test_strictly_increasing_keys_are_returned_as_they_are():
    keys = np.array([0, 3, 4, 12, 15], dtype=np.int64)
    assert _distinct_by_array(keys, keys // 10) is keys
