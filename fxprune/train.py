"""The train-once job: train SmallResNet on Fashion-MNIST once with a group-sparse
optimizer, then construct the compact model — no fine-tuning, no second training run.

    result = train_once(epochs=3, target=0.5)    # dense and compact accuracy, params, FLOPs

The compact model computes the same function as the trained group-sparse model
(``construct_subnet(verify=True)`` checks it), so its accuracy matches the dense one's
up to floating-point rounding.
"""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

import fxprune

from .data import fashion_mnist_loaders
from .metrics import count_flops, count_params
from .models import SmallResNet

OPTIMIZERS = ("dhspg", "hspg", "hesso")
IMAGE_SHAPE = (1, 1, 28, 28)  # FLOPs are reported per image of this shape
MOMENTUM, WEIGHT_DECAY = 0.9, 1e-4
# Postfix refreshes cost a pass over the prunable parameters (group sparsity); every
# few steps is plenty for a display.
POSTFIX_EVERY = 10


def pick_threads() -> int:
    """Intra-op threads for training: the cores not already busy, at least one.

    The default (one thread per core) is much slower when other jobs load the cores:
    measured on a loaded 2-core machine, a SmallResNet step took 58 ms with 1 thread
    and 1.3 s with 2, because each op waits for the thread that was descheduled.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        busy = os.getloadavg()[0]
    except (AttributeError, OSError):  # not available on this platform
        busy = 0.0
    return max(1, min(cores, int(cores - busy + 0.5)))


def make_optimizer(name: str, space, lr: float, target: float, total_steps: int):
    """The group-sparse optimizer ``name`` with the train-once schedule.

    Pruning starts after about a quarter of the steps and reaches the target by about
    three quarters, leaving the last quarter (the low-LR end of the cosine) to recover.
    """
    start = total_steps // 4
    pruning_steps = max(1, 3 * total_steps // 4 - start)
    common = dict(lr=lr, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    if name == "dhspg":
        return fxprune.DHSPG(space, **common, target_group_sparsity=target,
                             start_pruning_step=start, pruning_steps=pruning_steps)
    if name == "hesso":
        return fxprune.HESSO(space, **common, target_group_sparsity=target,
                             start_pruning_step=start, pruning_steps=pruning_steps)
    if name == "hspg":
        # HSPG has no exact target: the target only caps how many groups it zeroes.
        return fxprune.HSPG(space, **common, warmup_steps=start, max_group_sparsity=target)
    raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader) -> float:
    """Top-1 accuracy of ``model`` (put in eval mode) over ``loader``."""
    model.eval()
    correct = total = 0
    for x, y in loader:
        correct += int((model(x).argmax(dim=1) == y).sum())
        total += len(y)
    return correct / max(total, 1)


def train_once(epochs: int = 3, batch_size: int = 128, lr: float = 0.1, target: float = 0.5,
               optimizer: str = "dhspg", seed: int = 0, data_root: str | os.PathLike | None = None,
               device: str = "cpu", progress: bool = True, max_steps: int | None = None,
               out: str | os.PathLike | None = None, threads: int | None = None) -> dict[str, Any]:
    """Train SmallResNet once with group sparsity ``target``, construct the compact model, evaluate both.

    ``max_steps`` caps the optimizer steps (the LR and pruning schedules span the
    capped run).  ``threads``: torch intra-op threads while this runs (default
    :func:`pick_threads`; an ``OMP_NUM_THREADS`` in the environment is respected).
    ``out``: a folder to save the compact model into (see :func:`save_compact`).

    Returns accuracies, parameter counts, FLOPs per 1×1×28×28 image, the group
    sparsity reached, wall and CPU times, and the trained ``model`` and ``compact``
    modules themselves.
    """
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
    if epochs < 1 or (max_steps is not None and max_steps < 1):
        raise ValueError(f"epochs and max_steps must be at least 1, got {epochs} and {max_steps}")
    if not 0 <= target < 1:
        raise ValueError(f"target must lie in [0, 1), got {target}")
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    elif "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(pick_threads())
    try:
        return _run(epochs, batch_size, lr, target, optimizer, seed, data_root, torch.device(device),
                    progress, max_steps, out)
    finally:
        torch.set_num_threads(previous_threads)  # a library call should not leave global state changed


def _run(epochs, batch_size, lr, target, optimizer, seed, data_root, device, progress, max_steps, out):
    wall0, cpu0 = time.perf_counter(), time.process_time()
    times: dict[str, float] = {}
    train_loader, test_loader = fashion_mnist_loaders(batch_size, root=data_root, seed=seed)
    total_steps = epochs * len(train_loader)
    if max_steps is not None:
        total_steps = min(total_steps, max_steps)
    epochs = math.ceil(total_steps / len(train_loader))

    torch.manual_seed(seed)
    model = SmallResNet().to(device)
    example = torch.zeros(IMAGE_SHAPE, device=device)
    t = time.perf_counter()
    space = fxprune.trace(model, example)
    times["trace"] = time.perf_counter() - t
    opt = make_optimizer(optimizer, space, lr, target, total_steps)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total_steps)

    t, c = time.perf_counter(), time.process_time()
    step = 0
    for epoch in range(epochs):
        model.train()
        # Updated by hand: iterating the bar itself would miss the step a max_steps break ends on.
        bar = tqdm(desc=f"epoch {epoch + 1}/{epochs}", disable=not progress,
                   total=min(len(train_loader), total_steps - step), dynamic_ncols=True)
        loss_sum = seen = 0.0
        for x, y in train_loader:
            x, y = x.to(device), y.to(device)
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            loss = loss.detach()
            opt.step()
            schedule.step()
            step += 1
            loss_sum, seen = loss_sum + loss.item() * len(y), seen + len(y)
            if progress and (step % POSTFIX_EVERY == 0 or step == total_steps):
                bar.set_postfix(loss=f"{loss_sum / seen:.3f}", sparsity=f"{opt.group_sparsity():.3f}",
                                lr=f"{schedule.get_last_lr()[0]:.3g}", refresh=False)
            bar.update(1)  # redraws (rate-limited by tqdm) with the postfix above
            if step >= total_steps:
                break
        bar.close()
    times["train"] = time.perf_counter() - t
    train_cpu = time.process_time() - c

    t = time.perf_counter()
    dense_accuracy = evaluate(model, test_loader)
    times["eval_dense"] = time.perf_counter() - t

    model.eval()  # BN must use running statistics in both the check and the compact copy
    t = time.perf_counter()
    compact = space.construct_subnet(verify=True)
    # The example input is all zeros; check on real test images as well.
    max_abs_diff = space.verify(compact, inputs=(next(iter(test_loader))[0].to(device),))
    times["construct"] = time.perf_counter() - t

    t = time.perf_counter()
    compact_accuracy = evaluate(compact, test_loader)
    times["eval_compact"] = time.perf_counter() - t

    result = {
        "optimizer": optimizer, "target": target, "epochs": epochs, "steps": step, "threads": torch.get_num_threads(),
        "num_zigs": space.num_zigs, "zero_zigs": int(space.zero_zigs().sum()), "group_sparsity": opt.group_sparsity(),
        "dense_accuracy": dense_accuracy, "compact_accuracy": compact_accuracy,
        "dense_params": count_params(model), "compact_params": count_params(compact),
        "dense_flops": count_flops(model, example), "compact_flops": count_flops(compact, example),
        "max_abs_diff": max_abs_diff, "times": times, "train_cpu_s": train_cpu,
    }
    times["total"] = time.perf_counter() - wall0
    result["cpu_s"] = time.process_time() - cpu0
    if out is not None:
        result["saved"] = [str(p) for p in save_compact(compact, result, out)]
    result.update(model=model, compact=compact)
    return result


def save_compact(compact: torch.fx.GraphModule, result: dict[str, Any], out: str | os.PathLike) -> list[Path]:
    """Write the compact model and the run's numbers into folder ``out``.

    * ``compact.pt``: the whole GraphModule (``torch.load(path, weights_only=False)``);
    * ``compact_state_dict.pt``: its state dict alone (compact shapes, so it loads
      only into the compact module);
    * ``compact_module.py``: the GraphModule's generated forward, for reading;
    * ``result.json``: accuracies, sizes, sparsity and times.
    """
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / name for name in ("compact.pt", "compact_state_dict.pt", "compact_module.py", "result.json")]
    torch.save(compact, paths[0])
    torch.save(compact.state_dict(), paths[1])
    paths[2].write_text(compact.code)
    plain = {k: v for k, v in result.items() if not isinstance(v, nn.Module)}
    paths[3].write_text(json.dumps(plain, indent=2) + "\n")
    return paths
