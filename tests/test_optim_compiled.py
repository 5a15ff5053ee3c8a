"""``compiled=True`` (the SGD rule's passes under torch.compile) prunes like the eager default.

The compiled row sums may be added in another order, and with weight decay eager torch
uses a fused multiply-add that inductor's CPU code does not, so the check is on the
decisions (marked and zero sets, the exact target) and on the parameters to float tolerance.
"""
import torch
from torch import nn

from fxprune.optim import DHSPG
from fxprune.optim.manual_layout import stand_in_space

STEPS = 12


def small_cnn():
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 24, 3, padding=1), nn.BatchNorm2d(24), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(24, 5))


def run(compiled: bool):
    torch.manual_seed(0)
    model = small_cnn()
    # Pruning from step 0: the first step has no momentum buffer yet and must run eagerly.
    opt = DHSPG(stand_in_space(model), lr=0.1, momentum=0.9, weight_decay=1e-4, target_group_sparsity=0.5,
                start_pruning_step=0, pruning_steps=10, pruning_periods=2, compiled=compiled)
    gen = torch.Generator().manual_seed(1)
    used = []
    for _ in range(STEPS):
        for p in model.parameters():
            p.grad = torch.randn(p.shape, generator=gen)
        opt.step()
        used.append(bool(opt.stats()["last_step"].get("compiled")))
    return model, opt, used


def test_compiled_steps_prune_like_eager():
    eager_model, eager, eager_used = run(compiled=False)
    model, opt, used = run(compiled=True)
    assert not any(eager_used)
    assert not used[0] and all(used[1:10]) and not any(used[10:])  # pruning window only, once buffers exist
    assert torch.equal(opt.redundant_zigs(), eager.redundant_zigs())
    assert torch.equal(opt.zero_zigs(), eager.zero_zigs())
    assert int(opt.zero_zigs().sum()) == opt.target_zero_count
    for (name, a), (_, b) in zip(model.named_parameters(), eager_model.named_parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=name)
