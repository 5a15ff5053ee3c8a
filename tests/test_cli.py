"""The ``fxprune`` command line: analyze, train, and one-line errors with exit code 2."""
from __future__ import annotations

import gzip
import re
import struct

import numpy as np
import pytest
import torch

from fxprune.cli import main


def test_analyze_prints_groups_and_sizes_before_after(capsys):
    assert main(["analyze", "resnet18", "--input", "1,3,32,32", "--rows", "5"]) == 0
    out = capsys.readouterr().out
    assert "prunable" in out and "(8 more)" in out  # summary cut to 5 of resnet18's 13 groups
    before = re.search(r"^before\s+([\d,]+)\s+([\d,]+)$", out, re.M)
    after = re.search(r"^after\s+([\d,]+) \([\d.]+%\)\s+([\d,]+) \([\d.]+%\)$", out, re.M)
    assert before and after, out
    params_before, flops_before = (int(g.replace(",", "")) for g in before.groups())
    params_after, flops_after = (int(g.replace(",", "")) for g in after.groups())
    assert params_before == 11_689_512  # torchvision's resnet18
    assert params_after < params_before and flops_after < flops_before
    assert "analysis time:" in out


@pytest.mark.parametrize("argv,message", [
    (["analyze", "resnet81"], r"unknown model 'resnet81' \(did you mean resnet18.*`fxprune models`"),
    (["analyze", "resnet18", "--input", "1,1,32,32"], r"--input 1,1,32,32: .*expected input"),
    (["analyze", "resnet18", "--fraction", "2"], r"--fraction must lie in \[0, 1\]"),
])
def test_analyze_bad_input_is_one_line_and_exit_2(capsys, argv, message):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("fxprune analyze: error:")
    assert re.search(message, err), err


def test_models_lists_torchvision_names(capsys):
    main(["models"])
    names = capsys.readouterr().out.split()
    assert "resnet18" in names and "vit_b_16" in names


def test_train_without_data_says_how_to_install(capsys, tmp_path):
    with pytest.raises(SystemExit) as info:
        main(["train", "--data", str(tmp_path / "nowhere")])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "apt-get install dataset-fashion-mnist" in err and "--data" in err


def _write_idx(path, array: np.ndarray) -> None:
    """An unsigned-byte IDX file: magic (0, 0, 0x08, ndim), big-endian dims, the bytes."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.tobytes())


@pytest.fixture
def tiny_fashion_mnist(tmp_path):
    """64 train / 32 test 28×28 images in the original file layout; label = brightest half."""
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 64), ("t10k", 32)):
        labels = rng.integers(0, 2, size=n).astype(np.uint8)
        images = rng.integers(0, 100, size=(n, 28, 28)).astype(np.uint8)
        for i, label in enumerate(labels):
            images[i, 14 * label:14 * label + 14] += 120
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", images)
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return tmp_path


def test_train_quiet_prints_dense_and_compact(capsys, tiny_fashion_mnist):
    threads = torch.get_num_threads()
    assert main(["train", "--data", str(tiny_fashion_mnist), "--epochs", "2", "--batch-size", "16",
                 "--quiet"]) == 0
    assert torch.get_num_threads() == threads  # train_once restores the caller's setting
    captured = capsys.readouterr()
    assert "epoch" not in captured.err  # --quiet: no progress bar
    rows = {line.split()[0]: line for line in captured.out.splitlines() if line.split()[:1] in (["dense"], ["compact"])}
    assert set(rows) == {"dense", "compact"}, captured.out
    assert re.search(r"\d+\.\d\d%", rows["dense"]) and re.search(r"\d+\.\d\d%", rows["compact"])
    assert "group sparsity 0.5000 (112/224 ZIGs zero" in captured.out
    assert "8 steps (2 epochs)" in captured.out and "CPU" in captured.out
