"""A fixed analysis workload, for counting instructions where timings are too noisy to compare.

    PYTHONHASHSEED=0 valgrind --tool=callgrind --callgrind-out-file=cg.5 \\
        python benchmarks/analysis_workload.py --model mobilenet_v3_small --analyses 5
    PYTHONHASHSEED=0 valgrind --tool=callgrind --callgrind-out-file=cg.0 \\
        python benchmarks/analysis_workload.py --model mobilenet_v3_small --analyses 0

Both runs import, build the model, FX-trace it ``--traces`` times and analyse one trace to
warm up; the first then analyses five of the other, fresh traces too.  The difference of
the two ``totals`` lines, divided by that number, is the instruction count of one analysis
of a fresh trace (shape propagation, channel analysis and ZIG grouping, garbage collection
included).  A fixed hash seed keeps dict and set layouts, and so the counts, the same from
run to run.

Between two versions of the code the counts also move with where the collector's
collections happen to fall: a code change that allocates a little differently can move a
generation-1 collection into or out of the analyses, a shift of a few million
instructions.  ``--no-gc`` pauses the collector from the warm-up on, in both runs, so the
difference is the analyses' own work; compare versions with it, and count collections
separately.
"""
from __future__ import annotations

import argparse
import gc
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fxprune import zoo  # noqa: E402
from fxprune.tracing import symbolic_trace  # noqa: E402
from passes.channel_analysis import analyze_channels  # noqa: E402
from passes.module_walk import walk_modules  # noqa: E402
from passes.shape_prop import propagate_shapes  # noqa: E402
from passes.zig_build import build_zigs  # noqa: E402


def analyse(graph_module, example_input) -> int:
    """What ``fxprune.trace`` does after FX tracing; returns the number of groups."""
    modules = walk_modules(graph_module)
    propagate_shapes(graph_module, (example_input,), modules)
    return len(build_zigs(analyze_channels(graph_module, modules)).groups)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mobilenet_v3_small", help="a torchvision classifier name")
    parser.add_argument("--analyses", type=int, default=5, help="fresh traces to analyse after the warm-up")
    parser.add_argument("--traces", type=int, default=6, help="traces made in every run (more than --analyses)")
    parser.add_argument("--no-gc", action="store_true",
                        help="pause the garbage collector from the warm-up on, in both runs (see above)")
    args = parser.parse_args(argv)
    if not 0 <= args.analyses < args.traces:
        parser.error(f"--analyses must lie in [0, --traces), got {args.analyses} with --traces {args.traces}")
    model, x = zoo.build(args.model), zoo.example_input(args.model, False)
    traces = [symbolic_trace(model, None, None) for _ in range(args.traces)]  # as many in every run
    if args.no_gc:
        gc.collect()
        gc.disable()
    groups = analyse(traces[0], x)  # warm-up: first-call costs (caches, lazy imports) in both runs
    for graph_module in traces[1:1 + args.analyses]:
        assert analyse(graph_module, x) == groups
    print(f"{args.model}: {args.analyses} analyses of fresh traces, {groups} groups each")


if __name__ == "__main__":
    main()
