"""Fashion-MNIST from the local IDX ``.gz`` files, with no download path.

The files come from Debian's ``dataset-fashion-mnist`` package (installed to
``/usr/share/datasets/fashion-mnist``) or any folder holding the four original
files; ``FXPRUNE_FASHION_MNIST`` or ``root=`` selects another folder.
"""
from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"
ENV_VAR = "FXPRUNE_FASHION_MNIST"
FILES = {
    True: ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    False: ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
# Training-set pixel statistics (after scaling to [0, 1]); the test split uses
# the same ones so both are normalised identically.
MEAN, STD = 0.2860, 0.3530

# IDX type byte -> big-endian numpy dtype (the format stores values MSB first).
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Parse one IDX file (gzip-compressed when the name ends in ``.gz``)."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise ValueError(f"{path}: not an IDX file (bad magic {data[:4].hex()})")
    dtype, ndim = np.dtype(_IDX_DTYPES[data[2]]), data[3]
    header = 4 + 4 * ndim
    shape = tuple(int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4))
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(data) != expected:
        raise ValueError(f"{path}: {len(data)} bytes, header {shape} implies {expected}")
    # astype copies into a writable native-endian array that torch can share.
    return np.frombuffer(data, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _resolve_root(root: str | os.PathLike | None) -> Path:
    return Path(root if root is not None else os.environ.get(ENV_VAR) or DEFAULT_ROOT)


def load_fashion_mnist(root: str | os.PathLike | None = None, train: bool = True) -> TensorDataset:
    """The train (60k) or test (10k) split as float32 images [N,1,28,28] and int64 labels.

    Images are scaled to [0, 1] and normalised with the training-set mean/std.
    """
    folder = _resolve_root(root)
    paths = [folder / name for name in FILES[train]]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"Fashion-MNIST files missing from {folder}: {', '.join(missing)}. "
            f"Install them with `apt-get install dataset-fashion-mnist` (Debian/Ubuntu, "
            f"puts them in {DEFAULT_ROOT}), or point to a folder holding the original "
            f"IDX .gz files with root=... or the {ENV_VAR} environment variable."
        )
    images, labels = (read_idx(p) for p in paths)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(f"{folder}: image shape {images.shape} does not match labels {labels.shape}")
    x = torch.from_numpy(images).to(torch.float32).div_(255.0).sub_(MEAN).div_(STD).unsqueeze(1)
    y = torch.from_numpy(labels).to(torch.int64)
    return TensorDataset(x, y)


def fashion_mnist_loaders(
    batch_size: int,
    root: str | os.PathLike | None = None,
    num_workers: int = 0,
    *,
    seed: int | None = None,
) -> tuple[DataLoader, DataLoader]:
    """(train, test) loaders; train is shuffled (reproducibly when ``seed`` is given)."""
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    train = DataLoader(
        load_fashion_mnist(root, train=True), batch_size=batch_size, shuffle=True,
        num_workers=num_workers, generator=generator,
    )
    test = DataLoader(
        load_fashion_mnist(root, train=False), batch_size=batch_size, shuffle=False,
        num_workers=num_workers,
    )
    return train, test
