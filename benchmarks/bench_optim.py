"""Benchmarks for fxprune.optim.

(a) DHSPG.step() time against torch.optim.SGD(foreach=True) on torchvision's
    ResNet-50 parameters (one ZIG per conv output channel, with the following BN's
    weight and bias), in the phases DHSPG goes through: before pruning, while
    pruning, and holding zeros afterwards.  Same gradients, same run, ratio = ours / SGD.
    --compiled adds DHSPG(compiled=True) (torch.compile'd passes; compiles first).
(b) DHSPG vs HSPG vs proximal SGD on one group-lasso least-squares problem with a
    known support: group sparsity reached, support recovery and final objective.

Run: python benchmarks/bench_optim.py [--threads N] [--repeats N] [--compiled]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch
import torchvision
from tabulate import tabulate
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # lets a plain checkout run it uninstalled
from fxprune.layout import PRODUCER, SliceMap, ZigLayout
from fxprune.optim import DHSPG, HSPG
from fxprune.optim.manual_layout import stand_in_space


# ----- (a) step time on ResNet-50 ---------------------------------------------------------

def time_steps(model: nn.Module, opt: torch.optim.Optimizer, steps: int) -> list[float]:
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        opt.step()
        times.append(time.perf_counter() - start)
    return times


def fill_grads(model: nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=gen) * 1e-2


def bench_step_time(repeats: int, compiled: bool) -> None:
    torch.manual_seed(0)
    ours_model, ref_model = torchvision.models.resnet50(), torchvision.models.resnet50()
    ref_model.load_state_dict(ours_model.state_dict())
    fill_grads(ours_model, 0)
    fill_grads(ref_model, 0)
    space = stand_in_space(ours_model)  # fc is left out: the classifier's outputs are not prunable
    warm, phase = 3, repeats
    # Phases by step: [0, warm + phase) plain, then a pruning window of `phase` + warm steps, then holding.
    start = warm + phase
    pruning_steps = warm + phase
    variants = {
        "SGD momentum 0.9": (dict(momentum=0.9), dict(momentum=0.9)),
        "AdamW": (dict(variant="adamw", weight_decay=0.05), None),
    }
    if compiled:
        variants["SGD momentum 0.9, compiled"] = (dict(momentum=0.9, compiled=True), dict(momentum=0.9))
    rows = []
    for label, (ours_kwargs, sgd_kwargs) in variants.items():
        ours = DHSPG(space, lr=0.01, target_group_sparsity=0.5, start_pruning_step=start,
                     pruning_steps=pruning_steps, **ours_kwargs)
        if sgd_kwargs is None:
            ref = torch.optim.AdamW(ref_model.parameters(), lr=0.01, weight_decay=0.05, foreach=True)
            ref_label = "torch AdamW(foreach=True)"
        else:
            ref = torch.optim.SGD(ref_model.parameters(), lr=0.01, foreach=True, **sgd_kwargs)
            ref_label = "torch SGD(foreach=True)"
        # Interleave ours and torch's steps so machine noise hits both alike.
        per_phase = {"before pruning": [], "pruning": [], "after pruning (holding zeros)": []}
        ref_times = {k: [] for k in per_phase}
        total = start + pruning_steps + warm + phase
        for step in range(total):
            name = ("before pruning" if step < start else "pruning" if step < start + pruning_steps
                    else "after pruning (holding zeros)")
            in_window = (step >= warm and step < start) or (start + warm <= step < start + pruning_steps) \
                or step >= start + pruning_steps + warm
            t_ours = time_steps(ours_model, ours, 1)[0]
            t_ref = time_steps(ref_model, ref, 1)[0]
            if in_window:
                per_phase[name].append(t_ours)
                ref_times[name].append(t_ref)
        for name in per_phase:
            o, r = statistics.median(per_phase[name]), statistics.median(ref_times[name])
            rows.append([label, name, f"{o * 1e3:.1f}", ref_label, f"{r * 1e3:.1f}", f"{o / r:.2f}x"])
        assert int(ours.zero_zigs().sum()) == ours.target_zero_count
    num_params = sum(p.numel() for p in ours_model.parameters())
    print(f"\n(a) step() on ResNet-50: {num_params / 1e6:.1f}M parameters, {space.layout.num_zigs} ZIGs, "
          f"{torch.get_num_threads()} thread(s), median of {phase} steps per phase")
    print(tabulate(rows, headers=["DHSPG base", "phase", "DHSPG ms", "reference", "reference ms", "ratio"]))


# ----- (b) group lasso ----------------------------------------------------------------------

GROUPS, DIM, SAMPLES, TRUE_ZERO, LMBDA = 50, 8, 800, 20, 0.05


def lasso_problem(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x_true = torch.randn(GROUPS, DIM, generator=gen, dtype=torch.float64)
    zero = torch.randperm(GROUPS, generator=gen)[:TRUE_ZERO]
    x_true[zero] = 0
    a = torch.randn(SAMPLES, GROUPS * DIM, generator=gen, dtype=torch.float64) / SAMPLES**0.5
    b = a @ x_true.reshape(-1) + 0.01 * torch.randn(SAMPLES, generator=gen, dtype=torch.float64)
    truth = torch.zeros(GROUPS, dtype=torch.bool)
    truth[zero] = True
    return a, b, truth


class Vector(nn.Module):
    def __init__(self):
        super().__init__()
        self.x = nn.Parameter(torch.randn(GROUPS, DIM, generator=torch.Generator().manual_seed(1), dtype=torch.float64))


def lasso_space(model: Vector):
    layout = ZigLayout(GROUPS, (SliceMap("x", 0, torch.arange(GROUPS), PRODUCER),), torch.arange(GROUPS) * 0)
    return SimpleNamespace(model=model, layout=layout)


def objective(model, a, b):
    residual = a @ model.x.reshape(-1) - b
    return 0.5 * residual.square().sum()


def run_lasso(name: str, make_opt, a, b, truth, steps: int, prox: bool = False):
    model = Vector()
    opt = make_opt(model)
    lr = opt.param_groups[0]["lr"]
    for _ in range(steps):
        opt.zero_grad()
        objective(model, a, b).backward()
        opt.step()
        if prox:  # group soft-thresholding: the proximal operator of lr·λ·Σ‖x_g‖
            with torch.no_grad():
                norms = model.x.norm(dim=1, keepdim=True)
                model.x.mul_((1 - lr * LMBDA / norms.clamp_min(1e-300)).clamp_min(0))
    with torch.no_grad():
        zero = model.x.norm(dim=1) == 0
        f = float(objective(model, a, b))
        penalised = f + LMBDA * float(model.x.norm(dim=1).sum())
    return [name, f"{float(zero.double().mean()):.2f}", int(zero.sum()), bool(torch.equal(zero, truth)),
            f"{f:.6f}", f"{penalised:.6f}"]


def bench_group_lasso() -> None:
    a, b, truth = lasso_problem()
    steps, lr = 600, 0.3
    rows = [
        run_lasso("proximal SGD (group soft-threshold)", lambda m: torch.optim.SGD(m.parameters(), lr=lr),
                  a, b, truth, steps, prox=True),
        run_lasso(f"HSPG (λ={LMBDA}, ε=0.5, n_p=150)",
                  lambda m: HSPG(lasso_space(m), lr=lr, lmbda=LMBDA, epsilon=0.5, warmup_steps=150), a, b, truth, steps),
        run_lasso(f"DHSPG (target {TRUE_ZERO}/{GROUPS}, steps 50..250)",
                  lambda m: DHSPG(lasso_space(m), lr=lr, target_group_sparsity=TRUE_ZERO / GROUPS,
                                  start_pruning_step=50, pruning_steps=200), a, b, truth, steps),
    ]
    print(f"\n(b) group lasso: {GROUPS} groups of {DIM}, {TRUE_ZERO} truly zero, {SAMPLES} samples, "
          f"{steps} full-batch steps, lr {lr}")
    print(tabulate(rows, headers=["optimizer", "group sparsity", "zero groups", "support exact",
                                  "f(x)", f"f(x) + {LMBDA}·Σ‖x_g‖"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--repeats", type=int, default=10, help="timed steps per phase")
    parser.add_argument("--compiled", action="store_true", help="also time DHSPG(compiled=True) with SGD")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    bench_step_time(args.repeats, args.compiled)
    bench_group_lasso()


if __name__ == "__main__":
    main()
