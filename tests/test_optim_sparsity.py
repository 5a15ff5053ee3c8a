"""Exact group-sparsity targets on a small CNN, the width rule, and the selection helpers."""
import pytest
import torch
from torch import nn

from fxprune.optim import DHSPG, HESSO
from fxprune.optim.manual_layout import stand_in_space
from fxprune.optim.partition import max_prunable, select_redundant, target_count

START, STEPS = 3, 8


def small_cnn():
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10),
    )


def train_and_count(opt, model, steps, seed=0):
    """Zero-ZIG count after every step."""
    gen = torch.Generator().manual_seed(seed)
    x, y = torch.randn(8, 3, 8, 8, generator=gen), torch.randint(0, 10, (8,), generator=gen)
    counts = []
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        counts.append(int(opt.zero_zigs().sum()))
    return counts


TARGETS = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("variant", ["sgd", "adamw"])
def test_dhspg_lands_exactly_on_the_target(target, variant):
    torch.manual_seed(0)
    model = small_cnn()
    opt = DHSPG(stand_in_space(model), lr=0.05, momentum=0.9 if variant == "sgd" else 0.0, variant=variant,
                weight_decay=1e-4, target_group_sparsity=target, start_pruning_step=START, pruning_steps=STEPS,
                pruning_periods=2)
    want = target_count(target, opt.num_zigs)
    counts = train_and_count(opt, model, START + STEPS + 4)
    assert max(counts) == want  # never overshoots
    assert counts[START + STEPS - 1:] == [want] * 5  # there by the end of the window, and held
    assert torch.equal(opt.zero_zigs(), opt.redundant_zigs())  # exactly the marked groups, nothing else


@pytest.mark.parametrize("target", TARGETS)
def test_hesso_lands_exactly_on_the_target(target):
    torch.manual_seed(0)
    model = small_cnn()
    opt = HESSO(stand_in_space(model), lr=0.05, momentum=0.9, target_group_sparsity=target,
                start_pruning_step=START, pruning_steps=STEPS, pruning_periods=3)
    want = target_count(target, opt.num_zigs)
    counts = train_and_count(opt, model, START + STEPS + 4)
    assert max(counts) == want
    assert counts[START + STEPS - 1:] == [want] * 5
    assert torch.equal(opt.zero_zigs(), opt.redundant_zigs())


def layer_widths_kept(opt):
    zero = opt.zero_zigs()
    groups = opt.zigs.zig_group
    return {int(g): int((~zero[groups == g]).sum()) for g in groups.unique()}


@pytest.mark.parametrize("target", [0.25, 0.5, 0.6])
def test_width_multiple_keeps_layer_widths_aligned(target):
    torch.manual_seed(0)
    model = small_cnn()  # widths 8, 16, 16: Z = 40
    opt = DHSPG(stand_in_space(model), lr=0.05, target_group_sparsity=target, start_pruning_step=START,
                pruning_steps=STEPS, width_multiple=4)
    train_and_count(opt, model, START + STEPS)
    widths = layer_widths_kept(opt)
    full = {0: 8, 1: 16, 2: 16}
    assert all(w == full[g] or (w % 4 == 0 and w > 0) for g, w in widths.items()), widths
    # All widths are multiples of 4 here, so the count is the target rounded down to a multiple of 4.
    assert int(opt.zero_zigs().sum()) == target_count(target, 40) // 4 * 4


def test_select_redundant_picks_the_most_redundant_and_keeps_a_channel_per_layer():
    redundancy = torch.tensor([0.9, 0.8, 0.7, 0.1, 0.95, 0.5, 0.2])
    groups = torch.tensor([0, 0, 0, 0, 1, 1, 1])
    none = torch.zeros(7, dtype=torch.bool)
    picked = select_redundant(redundancy, groups, none, 3, None)
    assert picked.tolist() == [True, True, False, False, True, False, False]
    # Asking for all but one per layer: each layer keeps its least redundant channel.
    picked = select_redundant(redundancy, groups, none, 5, None)
    assert picked.tolist() == [True, True, True, False, True, True, False]
    assert max_prunable(groups, None) == 5


def test_select_redundant_width_rule_fills_with_short_first_chunks():
    # Layer 0 has 6 channels (6 mod 4 = 2: it can lose 2), layer 1 has 8 (it can lose 4).
    redundancy = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5, 0.6] + [0.9] * 8)
    groups = torch.tensor([0] * 6 + [1] * 8)
    none = torch.zeros(14, dtype=torch.bool)
    assert max_prunable(groups, 4) == 6
    picked = select_redundant(redundancy, groups, none, 5, 4)
    # Greedy: layer 1's 4-chunk (mean 0.9) first, then 1 left: no chunk fits -> 4, never more than asked.
    assert int(picked.sum()) == 4 and bool(picked[6:].sum() == 4)
    picked = select_redundant(redundancy, groups, none, 6, 4)
    assert int(picked.sum()) == 6 and picked[4] and picked[5]  # layer 0's 2 most redundant fill the rest


def test_ties_are_broken_by_zig_id():
    redundancy = torch.zeros(6)
    groups = torch.zeros(6, dtype=torch.int64)
    picked = select_redundant(redundancy, groups, torch.zeros(6, dtype=torch.bool), 2, None)
    assert picked.tolist() == [True, True, False, False, False, False]


def test_target_count_is_a_robust_floor():
    assert target_count(0.29, 100) == 29  # 0.29 * 100 == 28.999999999999996 in binary
    assert target_count(0.5, 41) == 20
    assert target_count(0.0, 10) == 0
