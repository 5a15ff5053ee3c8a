"""The array helpers of passes/zig_build.py against plain definitions of what they compute."""
import unittest.mock

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fxprune  # noqa: F401  (the package first: passes.zig_build is imported through it)
from fxprune.layout import BUFFER, CONSUMER, PRODUCER
from netgen import build, net_specs
from passes.atom_table import AtomTable
from passes.zig_build import _first_and_inverse, _number_by_first_occurrence, connected_components
from passes.zig_index import distinct_by_array


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.integers(0, 9), max_size=12), min_size=1, max_size=8))
def test_distinct_by_array_is_the_set_of_keys(arrays):
    n = 10
    array = np.concatenate([np.full(len(a), j, dtype=np.int64) for j, a in enumerate(arrays)])
    values = np.concatenate([np.asarray(a, dtype=np.int64) for a in arrays])
    keys = array * n + values
    positions = distinct_by_array(keys, array)
    got = keys if positions is None else keys[positions]
    assert got.size == np.unique(keys).size  # each distinct key exactly once
    assert np.array_equal(np.sort(got), np.unique(keys))


def test_strictly_increasing_keys_need_no_positions():
    keys = np.array([0, 3, 4, 12, 15], dtype=np.int64)
    assert distinct_by_array(keys, keys // 10) is None


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 2**64 - 1) | st.sampled_from([0, 1, 2**63]), max_size=30))
def test_first_and_inverse_match_np_unique(values):
    """Group signatures (uint64, with repeats) are numbered as np.unique numbers them."""
    values = np.asarray(values, dtype=np.uint64)
    first, inverse = _first_and_inverse(values)
    _, expected_first, expected_inverse = np.unique(values, return_index=True, return_inverse=True)
    assert np.array_equal(first, expected_first)
    assert np.array_equal(inverse, expected_inverse.ravel())


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5) | st.sampled_from([2**63, 2**64 - 1]), st.integers(1, 4)), max_size=12))
def test_number_by_first_occurrence(runs):
    """Values (in runs, and repeating after other values) numbered in order of first occurrence."""
    values = np.asarray([v for v, n in runs for _ in range(n)], dtype=np.uint64)
    numbers, count = _number_by_first_occurrence(values)
    seen: dict[int, int] = {}
    expected = [seen.setdefault(v, len(seen)) for v in values.tolist()]
    assert numbers.tolist() == expected and count == len(seen)


def _reference_components(n, edges):
    """Plain union-find, one pair at a time: components numbered in order of their smallest atom."""
    parent = list(range(n))

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in edges:
        for x, y in zip(a.tolist(), b.tolist()):
            rx, ry = find(x), find(y)
            parent[max(rx, ry)] = min(rx, ry)
    roots = [find(x) for x in range(n)]
    number = {r: i for i, r in enumerate(sorted(set(roots)))}
    return np.array([number[r] for r in roots], dtype=np.int64)


@settings(max_examples=200, deadline=None)
@given(sizes=st.lists(st.integers(1, 5), min_size=1, max_size=8), data=st.data())
def test_components_with_whole_runs_equal_plain_union_find(sizes, data):
    """Edges between whole fresh runs are unioned run by run, and runs united in blocks
    (``unify_in_blocks``: a grouped conv's output) block by block; mixed with arbitrary edges (a
    permuted or partial view of a run, runs of other sizes), the components are those of a plain
    union-find."""
    table = AtomTable()
    runs = [table.new(k) for k in sizes]
    for _ in range(data.draw(st.integers(0, 8))):
        i, j = data.draw(st.integers(0, len(runs) - 1)), data.draw(st.integers(0, len(runs) - 1))
        a, b = runs[i], runs[j]
        kind = data.draw(st.sampled_from(["runs", "blocks", "other"]))
        if kind == "runs" and a.size == b.size:
            table.unify(a, b, "")  # whole run to whole run
        elif kind == "blocks":
            table.unify_in_blocks(a, data.draw(st.integers(1, a.size)), "")  # (sizes it does not divide too)
        else:
            k = min(a.size, b.size)
            perm = np.asarray(data.draw(st.permutations(list(range(k)))), dtype=np.int64)
            table.unify(a[:k], b[perm], "")  # a slice or a shuffle: not a whole run
    edges = table.edges
    expected = _reference_components(table.count, edges)
    assert np.array_equal(connected_components(table.count, edges, table.ranges, table.block_heads), expected)
    assert np.array_equal(connected_components(table.count, edges, table.ranges), expected)
    assert np.array_equal(connected_components(table.count, edges), expected)


def _zig_summary(zigs):
    """Everything a ZigIndex tells, as plain values."""
    groups = [(g.name, g.prunable, g.reason, g.channels, g.zigs,
               [(s.name, s.dim, s.indices.tolist(), s.role) for s in g.slices]) for g in zigs.groups]
    layout = [(m.name, m.dim, m.zig.tolist(), m.role) for m in zigs.layout.maps]
    return (zigs.atom_zig.tolist(), zigs.prunable.tolist(), zigs.reason_id.tolist(), zigs.reason_texts, groups,
            layout, zigs.layout.zig_group.tolist())


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small", "regnet_x_400mf"])
def test_grouping_of_in_order_runs_equals_the_general_path(name, monkeypatch):
    """Where every parameter dimension's atoms are the table's fresh runs in order, grouping takes a
    short cut (no gather of components); the general path must give the same ZIGs, groups and layout."""
    from fxprune import zoo
    from passes import zig_build, zig_index

    model, x = zoo.build(name), zoo.example_input(name, True)
    table = fxprune.trace(model, x)._table
    fast = zig_build.build_zigs(table)
    arrays = {id(atoms): atoms for atoms in table.dim_atoms}
    assert zig_index._fresh_runs_in_order(list(arrays.values()), table)  # (the short cut is taken)
    monkeypatch.setattr(zig_index, "_fresh_runs_in_order", lambda arrays, table: False)
    assert _zig_summary(zig_build.build_zigs(table)) == _zig_summary(fast)


def _tied_runs_taken(monkeypatch) -> list[bool]:
    """Record, per ``build_zigs`` call, whether the tied-runs short cut gave the answer."""
    from passes import zig_build

    taken: list[bool] = []
    short_cut = zig_build._zigs_of_tied_runs

    def spy(table, dims):
        zigs = short_cut(table, dims)
        taken.append(zigs is not None)
        return zigs

    monkeypatch.setattr(zig_build, "_zigs_of_tied_runs", spy)
    return taken


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small", "efficientnet_b0", "convnext_tiny",
                                  "regnet_x_400mf", "resnext50_32x4d"])
def test_grouping_of_tied_runs_equals_the_general_path(name, monkeypatch):
    """Where every edge ties whole runs, ZIGs and groups are found run by run (``_zigs_of_tied_runs``);
    the general path (components by hooking, groups by signature) must give the same ZIGs, groups,
    reasons and layout."""
    from fxprune import zoo
    from passes import zig_build

    model, x = zoo.build(name), zoo.example_input(name, True)
    table = fxprune.trace(model, x)._table
    taken = _tied_runs_taken(monkeypatch)
    fast = zig_build.build_zigs(table)
    assert taken == [True]
    monkeypatch.setattr(zig_build, "_zigs_of_tied_runs", lambda table, dims: None)
    assert _zig_summary(zig_build.build_zigs(table)) == _zig_summary(fast)


def _short_cut_and_general(table):
    """The tied-runs short cut's answer for ``table`` (None where it declines), and the general path's."""
    from passes import zig_build, zig_index

    dims = zig_index.DimArrays(table)
    fast = zig_build._zigs_of_tied_runs(table, dims) if dims.covers_all_atoms else None
    with unittest.mock.patch.object(zig_build, "_zigs_of_tied_runs", lambda table, dims: None):
        return fast, zig_build.build_zigs(table)


@settings(max_examples=200, deadline=None)
@given(sizes=st.lists(st.integers(0, 4), min_size=1, max_size=7), data=st.data())
def test_tied_runs_short_cut_equals_the_general_path(sizes, data):
    """Random tables: runs (empty ones too), each the atoms of one or more parameter dims with random
    roles (some runs without a producer), whole-run ties, runs united in blocks (grouped convs; block
    sizes that differ on one class, or do not divide the run, too), barriers on whole runs or on parts of them,
    and now and then an edge the short cut does not take (a slice of a run).  Where the short cut answers,
    it equals the general path; where it declines, ``build_zigs`` still does."""
    from passes import zig_build, zig_index

    table = AtomTable()
    runs = [table.new(k) for k in sizes]
    for r, atoms in enumerate(runs):
        for d in range(data.draw(st.integers(1, 3))):  # (a norm's scale, shift and statistics share one array)
            role = data.draw(st.sampled_from([PRODUCER, CONSUMER, BUFFER]))
            table.add_dim(f"p{r}.{d}", f"p{r}.{d}", 0, atoms, role, role == BUFFER)
    for _ in range(data.draw(st.integers(0, 8))):
        a = runs[data.draw(st.integers(0, len(runs) - 1))]
        b = runs[data.draw(st.integers(0, len(runs) - 1))]
        if data.draw(st.integers(0, 3)) == 0 and a.size:
            table.unify_in_blocks(a, data.draw(st.integers(1, a.size)), "")  # (sizes it does not divide too)
        elif a.size == b.size and a.size:
            table.unify(a, b, "")
    for _ in range(data.draw(st.integers(0, 3))):
        atoms = runs[data.draw(st.integers(0, len(runs) - 1))]
        if data.draw(st.booleans()):
            atoms = atoms[: data.draw(st.integers(0, atoms.size))]  # part of a run
        table.block(atoms, f"reason {len(table.blocks)}")
    if data.draw(st.integers(0, 9)) == 0:
        a = runs[data.draw(st.integers(0, len(runs) - 1))]
        table.unify(a[:1], a[-1:], "")  # not a whole run: the general path
    assert zig_index.DimArrays(table).covers_all_atoms
    fast, general = _short_cut_and_general(table)
    assert _zig_summary(zig_build.build_zigs(table)) == _zig_summary(general)
    if fast is not None:
        assert _zig_summary(fast) == _zig_summary(general)


@settings(max_examples=100, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(spec=net_specs())
def test_tied_runs_short_cut_equals_the_general_path_on_random_nets(spec):
    """The random-net grammar's tables (residuals, concats, grouped convs, shuffles, norms...): where
    the short cut answers, it equals the general path."""
    fast, general = _short_cut_and_general(fxprune.trace(build(spec), spec.input())._table)
    if fast is not None:
        assert _zig_summary(fast) == _zig_summary(general)
