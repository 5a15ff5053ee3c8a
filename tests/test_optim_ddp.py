"""DDP (2 CPU processes, gloo): same pruning decisions on every rank, and as a single process.

Each rank sees half of every global batch; DDP averages the gradients, so a single
process on the whole batch follows the same trajectory up to float rounding in the
all-reduce.  Tolerance: parameters agree to 1e-5 (abs and rel); zero sets and the
marked partition must be identical.
"""
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from fxprune.optim import DHSPG
from fxprune.optim.manual_layout import stand_in_space

STEPS, WORLD = 14, 2


def make_model():
    torch.manual_seed(0)
    # No BatchNorm: per-rank batch statistics would differ from the full-batch ones.
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 12, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, 4))


def make_optimizer(model):
    return DHSPG(stand_in_space(model), lr=0.1, momentum=0.9, target_group_sparsity=0.5,
                 start_pruning_step=3, pruning_steps=8, pruning_periods=2)


def global_batches():
    gen = torch.Generator().manual_seed(1)
    return [(torch.randn(8, 3, 6, 6, generator=gen), torch.randint(0, 4, (8,), generator=gen)) for _ in range(STEPS)]


def train(model, opt, batches, forward=None):
    forward = forward or model
    for x, y in batches:
        opt.zero_grad()
        nn.functional.cross_entropy(forward(x), y).backward()
        opt.step()


def worker(rank, port, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        model = make_model()
        ddp = nn.parallel.DistributedDataParallel(model)
        opt = make_optimizer(model)
        half = [(x[rank::WORLD], y[rank::WORLD]) for x, y in global_batches()]
        train(model, opt, half, forward=ddp)
        torch.save({"params": {k: v.detach().clone() for k, v in model.state_dict().items()},
                    "zero": opt.zero_zigs(), "marked": opt.redundant_zigs()}, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not built in")
def test_ddp_ranks_agree_with_each_other_and_with_one_process(tmp_path):
    mp.spawn(worker, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]

    model = make_model()
    opt = make_optimizer(model)
    train(model, opt, global_batches())
    single = {"params": model.state_dict(), "zero": opt.zero_zigs(), "marked": opt.redundant_zigs()}

    assert int(single["zero"].sum()) == opt.target_zero_count
    for result in ranks:
        assert torch.equal(result["zero"], ranks[0]["zero"])
        assert torch.equal(result["zero"], single["zero"])
        assert torch.equal(result["marked"], single["marked"])
        for name, value in single["params"].items():
            torch.testing.assert_close(result["params"][name], value, rtol=1e-5, atol=1e-5, msg=name)
