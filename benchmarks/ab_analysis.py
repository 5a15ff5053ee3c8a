"""Analysis time of two versions of fxprune in one process, fresh traces taken in turn.

    git worktree add /tmp/fxprune-base <commit>
    python benchmarks/ab_analysis.py /tmp/fxprune-base --models mobilenet_v3_small,regnet_x_400mf

Loads the package from the base tree and from this tree side by side, then for each model
calls ``fxprune.trace`` on the two in turn (alternating which goes first) ``--repeats`` times, so that machine load falls
on both alike, and prints the best and median analysis time (everything after FX tracing)
of each.  Worth using for changes of a few percent, which separate runs of
``bench_zoo.py`` cannot resolve on a shared machine.
"""
from __future__ import annotations

import argparse
import importlib
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]


def load(tree: Path):
    """The ``fxprune`` package (and its ``passes``) of ``tree``, imported afresh."""
    for name in [n for n in sys.modules if n.split(".")[0] in ("fxprune", "passes")]:
        del sys.modules[name]
    sys.path.insert(0, str(tree))
    try:
        return importlib.import_module("fxprune"), importlib.import_module("fxprune.zoo")
    finally:
        sys.path.remove(str(tree))


def analysis_seconds(space) -> float:
    timings = space.timings
    return timings["shapes"] + timings["channels"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base", type=Path, help="a checkout of the version to compare against")
    parser.add_argument("--models", default="mobilenet_v3_small,mnasnet0_5,regnet_x_400mf,resnet50")
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args(argv)
    base, base_zoo = load(args.base)
    head, _ = load(HERE)
    for name in args.models.split(","):
        model, x = base_zoo.build(name), base_zoo.example_input(name, False)
        old, new = [], []
        for i in range(args.repeats):
            runs = ((base, old), (head, new)) if i % 2 == 0 else ((head, new), (base, old))  # neither always goes first
            for package, times in runs:
                times.append(analysis_seconds(package.trace(model, x)))
        a, b = min(old) * 1e3, min(new) * 1e3
        ma, mb = statistics.median(old) * 1e3, statistics.median(new) * 1e3
        print(f"{name:22s} best {a:6.2f} -> {b:6.2f} ms ({100 * (b / a - 1):+.1f}%)   "
              f"median {ma:6.2f} -> {mb:6.2f} ms ({100 * (mb / ma - 1):+.1f}%)", flush=True)


if __name__ == "__main__":
    main()
