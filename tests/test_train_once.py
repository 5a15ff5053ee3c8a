"""Train once, then construct: the compact model must compute what the trained dense one does.

Synthetic data only (no Fashion-MNIST needed): tiny images whose label is the
brightest quadrant, so training has something to learn.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import fxprune
from fxprune import train as train_mod
from fxprune.metrics import count_flops, count_params
from fxprune.models import SmallResNet


def quadrant_data(n: int, size: int, seed: int) -> TensorDataset:
    """[n,1,size,size] noise with one brightened quadrant; the label is that quadrant (4 classes)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, size, size, generator=gen)
    y = torch.randint(0, 4, (n,), generator=gen)
    half = size // 2
    for label, (r, c) in enumerate([(0, 0), (0, half), (half, 0), (half, half)]):
        x[y == label, :, r:r + half, c:c + half] += 1.5
    return TensorDataset(x, y)


def tiny_loaders(batch_size: int, root=None, num_workers: int = 0, *, seed: int | None = None):
    """Stands in for fashion_mnist_loaders: 28×28 synthetic images, 128 train / 48 test."""
    gen = torch.Generator().manual_seed(seed or 0)
    train = DataLoader(quadrant_data(128, 28, seed=1), batch_size=batch_size, shuffle=True, generator=gen)
    test = DataLoader(quadrant_data(48, 28, seed=2), batch_size=batch_size)
    return train, test


@pytest.fixture
def one_thread():
    """One intra-op thread: these nets are tiny, and extra threads only add contention on a busy CI box."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("name", ["dhspg", "hesso"])
def test_trained_compact_model_equals_dense(name, one_thread):
    torch.manual_seed(0)
    # blocks (1, 1, 2): an identity-shortcut block in a strided stage; 57 ZIGs, so the target is a floor.
    model = SmallResNet(num_classes=4, widths=(5, 7, 11), blocks=(1, 1, 2))
    x_example = torch.randn(1, 1, 8, 8)
    space = fxprune.trace(model, x_example)
    loader = DataLoader(quadrant_data(256, 8, seed=0), batch_size=32, shuffle=True,
                        generator=torch.Generator().manual_seed(0))
    steps = 240
    cls = {"dhspg": fxprune.DHSPG, "hesso": fxprune.HESSO}[name]
    opt = cls(space, lr=0.05, momentum=0.9, weight_decay=1e-4, target_group_sparsity=0.5,
              start_pruning_step=steps // 4, pruning_steps=steps // 2)
    model.train()
    done, first_loss, last_loss = 0, None, None
    while done < steps:
        for x, y in loader:
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            first_loss = first_loss if first_loss is not None else loss.item()
            last_loss, done = loss.item(), done + 1
            if done == steps:
                break
    assert last_loss < first_loss  # it trained, through the pruning window

    expected = math.floor(0.5 * space.num_zigs)
    assert space.num_zigs == 57
    assert opt.group_sparsity() == expected / space.num_zigs
    assert int(space.zero_zigs().sum()) == expected

    model.eval()
    compact = space.construct_subnet(verify=True)
    compact.eval()
    x = torch.randn(64, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        y, y_compact = model(x), compact(x)
    assert y_compact.shape == y.shape
    tolerance = 1e-4 * max(1.0, y.abs().max().item())
    assert (y - y_compact).abs().max().item() <= tolerance
    assert count_params(compact) < count_params(model)
    assert count_flops(compact, x_example) < count_flops(model, x_example)


def test_train_once_reports_what_it_trained(monkeypatch, tmp_path):
    monkeypatch.setattr(train_mod, "fashion_mnist_loaders", tiny_loaders)
    r = train_mod.train_once(epochs=2, batch_size=32, max_steps=6, progress=False, threads=1, out=tmp_path)

    assert r["steps"] == 6 and r["epochs"] == 2  # 4 batches per epoch, capped at 6 steps
    assert r["group_sparsity"] == math.floor(0.5 * r["num_zigs"]) / r["num_zigs"]
    assert r["zero_zigs"] == math.floor(0.5 * r["num_zigs"])
    # Recompute both accuracies from the returned modules on the same test split.
    _, test = tiny_loaders(32)
    for key, module in (("dense_accuracy", r["model"]), ("compact_accuracy", r["compact"])):
        module.eval()
        with torch.no_grad():
            correct = sum(int((module(x).argmax(1) == y).sum()) for x, y in test)
        assert r[key] == correct / len(test.dataset), key
    assert r["compact_params"] == count_params(r["compact"]) < r["dense_params"] == count_params(r["model"])
    assert r["compact_flops"] < r["dense_flops"] == count_flops(r["model"], torch.zeros(1, 1, 28, 28))
    assert set(r["times"]) >= {"trace", "train", "construct", "total"} and r["cpu_s"] > 0

    # The saved module computes what the returned one does; the state dict loads into it.
    saved = torch.load(tmp_path / "compact.pt", weights_only=False).eval()
    x = next(iter(test))[0]
    with torch.no_grad():
        assert torch.equal(saved(x), r["compact"](x))
    saved.load_state_dict(torch.load(tmp_path / "compact_state_dict.pt"))
    assert (tmp_path / "compact_module.py").read_text() == r["compact"].code
    assert '"compact_accuracy"' in (tmp_path / "result.json").read_text()


def test_train_once_rejects_bad_arguments():
    with pytest.raises(ValueError, match="unknown optimizer"):
        train_mod.train_once(optimizer="adam")
    with pytest.raises(ValueError, match="target"):
        train_mod.train_once(target=1.5)
