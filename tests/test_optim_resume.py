"""Stopping and resuming mid-pruning reproduces an uninterrupted run bit for bit."""
import io

import pytest
import torch
from torch import nn

from fxprune.optim import DHSPG, HESSO, HSPG
from fxprune.optim.manual_layout import stand_in_space

TOTAL, STOP = 16, 7  # the pruning window is steps 2..13, so step 7 is mid-pruning (and mid-period)


def small_cnn():
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 12, 3, padding=1), nn.BatchNorm2d(12), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, 5),
    )


FACTORIES = {
    "dhspg-sgd": lambda s: DHSPG(s, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4, target_group_sparsity=0.4,
                                 start_pruning_step=2, pruning_steps=12, pruning_periods=3, epsilon=0.5),
    "dhspg-adamw": lambda s: DHSPG(s, lr=0.01, variant="adamw", weight_decay=0.05, target_group_sparsity=0.6,
                                   start_pruning_step=2, pruning_steps=12, width_multiple=2),
    "hesso-adam": lambda s: HESSO(s, lr=0.01, variant="adam", target_group_sparsity=0.5, start_pruning_step=2,
                                  pruning_steps=12, pruning_periods=4),
    "hspg": lambda s: HSPG(s, lr=0.1, momentum=0.9, lmbda=3.0, warmup_steps=3, max_group_sparsity=0.3),
}


def batches():
    gen = torch.Generator().manual_seed(0)
    return [(torch.randn(6, 3, 8, 8, generator=gen), torch.randint(0, 5, (6,), generator=gen)) for _ in range(TOTAL)]


def build(kind):
    torch.manual_seed(0)
    model = small_cnn()
    opt = FACTORIES[kind](stand_in_space(model))
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=5, gamma=0.5)
    return model, opt, sched


def train(model, opt, sched, data):
    for x, y in data:
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        sched.step()


def roundtrip(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)


@pytest.mark.parametrize("kind", list(FACTORIES))
def test_resume_mid_pruning_is_bit_exact(kind):
    data = batches()
    straight_model, straight_opt, straight_sched = build(kind)
    train(straight_model, straight_opt, straight_sched, data)

    first_model, first_opt, first_sched = build(kind)
    train(first_model, first_opt, first_sched, data[:STOP])
    checkpoint = roundtrip({"model": first_model.state_dict(), "opt": first_opt.state_dict(),
                            "sched": first_sched.state_dict()})
    assert 0 < int(first_opt.redundant_zigs().sum()) or kind == "hspg"  # the partition is part of what is saved

    resumed_model, resumed_opt, resumed_sched = build(kind)
    resumed_model.load_state_dict(checkpoint["model"])
    resumed_opt.load_state_dict(checkpoint["opt"])
    resumed_sched.load_state_dict(checkpoint["sched"])
    train(resumed_model, resumed_opt, resumed_sched, data[STOP:])

    for (name, a), (_, b) in zip(straight_model.state_dict().items(), resumed_model.state_dict().items()):
        assert torch.equal(a, b), name
    assert torch.equal(straight_opt.zero_zigs(), resumed_opt.zero_zigs())
    assert straight_opt.param_groups[0]["lr"] == resumed_opt.param_groups[0]["lr"]
    assert straight_opt.group_sparsity() > 0


def test_loading_a_foreign_state_dict_is_rejected():
    model, opt, _ = build("dhspg-sgd")
    plain = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="not saved by DHSPG"):
        opt.load_state_dict(plain.state_dict())
