"""The ``fxprune`` command line (also ``python -m fxprune``).

    fxprune train   [--epochs N] [--target 0.5] [--optimizer dhspg|hspg|hesso] ...
    fxprune analyze MODEL [--input 1,3,224,224] [--fraction 0.5] [--seed 0] [--rows N]
    fxprune models                                   # the MODEL names analyze accepts

Bad input ends with one ``fxprune: error: ...`` line on stderr and exit code 2.
"""
from __future__ import annotations

import argparse
import difflib
import sys
import time
from pathlib import Path
from typing import Sequence

from tabulate import tabulate

USAGE_ERROR = 2  # argparse's own exit code for bad arguments; ours match it


class UsageError(Exception):
    """Bad input from the command line: reported as one line, exit code 2."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``); returns 0 or raises SystemExit."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        args.run(args)
    except UsageError as exc:
        print(f"fxprune {args.command}: error: {exc}", file=sys.stderr)
        raise SystemExit(USAGE_ERROR) from None
    return 0


# ----- train ---------------------------------------------------------------------------

def _train(args: argparse.Namespace) -> None:
    from . import data
    from .train import train_once  # torch import deferred so `--help` stays fast

    _check_data(args.data, data)
    result = train_once(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, target=args.target,
                        optimizer=args.optimizer, seed=args.seed, data_root=args.data,
                        progress=not args.quiet, out=args.out)
    print(format_train_result(result))


def _check_data(root: str | None, data) -> None:
    """Fail early, before the model is built, when the Fashion-MNIST files are not there."""
    import os

    folder = Path(root or os.environ.get(data.ENV_VAR) or data.DEFAULT_ROOT)
    names = [n for split in (True, False) for n in data.FILES[split]]
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise UsageError(
            f"Fashion-MNIST not found in {folder} (missing {', '.join(missing)}); install it with "
            f"`apt-get install dataset-fashion-mnist` or pass --data DIR (a folder with the IDX .gz files)"
        )


def format_train_result(r: dict) -> str:
    """The dense/compact table, the sparsity reached and the timings, as printed by ``fxprune train``."""
    rows = [
        ["dense", f"{r['dense_accuracy']:.2%}", f"{r['dense_params']:,}", f"{r['dense_flops']:,}"],
        ["compact", f"{r['compact_accuracy']:.2%}",
         f"{r['compact_params']:,} ({r['compact_params'] / r['dense_params']:.1%})",
         f"{r['compact_flops']:,} ({r['compact_flops'] / r['dense_flops']:.1%})"],
    ]
    table = tabulate(rows, headers=["model", "test accuracy", "params", "FLOPs / image"],
                     colalign=("left", "right", "right", "right"))
    t = r["times"]
    lines = [
        table,
        "",
        f"optimizer {r['optimizer']}, {r['steps']} steps ({r['epochs']} epochs), {r['threads']} thread(s); "
        f"group sparsity {r['group_sparsity']:.4f} ({r['zero_zigs']}/{r['num_zigs']} ZIGs zero, "
        f"target {r['target']}); compact vs dense max |diff| {r['max_abs_diff']:.2g}",
        f"time: trace {t['trace']:.2f}s, train {t['train']:.1f}s, eval dense {t['eval_dense']:.1f}s, "
        f"construct+verify {t['construct']:.2f}s, eval compact {t['eval_compact']:.1f}s; "
        f"total {t['total']:.1f}s wall, {r['cpu_s']:.1f}s CPU",
    ]
    if r.get("saved"):
        lines.append("saved: " + ", ".join(r["saved"]))
    return "\n".join(lines)


# ----- analyze -------------------------------------------------------------------------

def _analyze(args: argparse.Namespace) -> None:
    import torch

    from . import zoo
    from .errors import InputError
    from .metrics import count_flops, count_params
    from .space import trace

    names = zoo.zoo_names()
    if args.model not in names:
        close = difflib.get_close_matches(args.model, names, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise UsageError(f"unknown model {args.model!r}{hint}; `fxprune models` lists the valid names")
    if not 0 <= args.fraction <= 1:
        raise UsageError(f"--fraction must lie in [0, 1], got {args.fraction}")
    if args.rows is not None and args.rows < 0:
        raise UsageError(f"--rows must be >= 0, got {args.rows}")

    model = zoo.build(args.model, seed=args.seed)
    x = torch.randn(args.input, generator=torch.Generator().manual_seed(args.seed))
    try:
        space = trace(model, x)
    except InputError as exc:
        raise UsageError(f"--input {','.join(map(str, args.input))}: {str(exc).splitlines()[0]}") from None
    print(space.summary(max_rows=args.rows))
    print()

    before = count_params(model), count_flops(model, x)
    zeroed = space.zero_random_groups(args.fraction, seed=args.seed)
    t = time.perf_counter()
    compact = space.construct_subnet(verify=True)
    construct_s = time.perf_counter() - t
    after = count_params(compact), count_flops(compact, x)

    rows = [["before", f"{before[0]:,}", f"{before[1]:,}"],
            ["after", f"{after[0]:,} ({after[0] / before[0]:.1%})", f"{after[1]:,} ({after[1] / max(before[1], 1):.1%})"]]
    print(f"zeroed {len(zeroed)} of {space.num_zigs} prunable ZIGs at random (fraction {args.fraction}, "
          f"seed {args.seed}); the compact model matches the zeroed one (verified)")
    print(tabulate(rows, headers=["", "params", "FLOPs"], colalign=("left", "right", "right")))
    timings = ", ".join(f"{k} {v:.3f}s" for k, v in space.timings.items())
    print(f"analysis time: {timings}; construct+verify {construct_s:.3f}s")


def _models(args: argparse.Namespace) -> None:
    from . import zoo

    print("\n".join(zoo.zoo_names()))


# ----- argument parsing ----------------------------------------------------------------

def _shape(text: str) -> tuple[int, ...]:
    """``1,3,224,224`` -> (1, 3, 224, 224); argparse turns the ValueError into a usage error."""
    try:
        dims = tuple(int(d) for d in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 1,3,224,224, got {text!r}")
    if not dims or min(dims) < 1:
        raise argparse.ArgumentTypeError(f"dimensions must be positive, got {text!r}")
    return dims


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fxprune", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = sub.add_parser("train", help="train SmallResNet on Fashion-MNIST once, construct the compact model")
    train.add_argument("--epochs", type=int, default=3)
    train.add_argument("--target", type=float, default=0.5, help="group sparsity to reach (default 0.5)")
    train.add_argument("--optimizer", choices=("dhspg", "hspg", "hesso"), default="dhspg")
    train.add_argument("--batch-size", type=int, default=128)
    train.add_argument("--lr", type=float, default=0.1, help="initial LR of the cosine schedule")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--data", metavar="DIR", help="folder with the Fashion-MNIST IDX .gz files")
    train.add_argument("--out", metavar="DIR", help="save the compact model's state dict and code here")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.set_defaults(run=_train)

    analyze = sub.add_parser("analyze", help="analyse a torchvision model, prune random groups, compare sizes")
    analyze.add_argument("model", metavar="MODEL", help="a torchvision model name (see `fxprune models`)")
    analyze.add_argument("--input", type=_shape, default=(1, 3, 224, 224), metavar="N,C,H,W",
                         help="example input shape (default 1,3,224,224)")
    analyze.add_argument("--fraction", type=float, default=0.5, help="fraction of prunable ZIGs to zero")
    analyze.add_argument("--seed", type=int, default=0)
    analyze.add_argument("--rows", type=int, default=None, metavar="N", help="show at most N groups")
    analyze.set_defaults(run=_analyze)

    models = sub.add_parser("models", help="list the torchvision model names analyze accepts")
    models.set_defaults(run=_models)
    return parser
