"""Fashion-MNIST IDX parsing on tiny hand-made files, plus the real data when installed."""
import gzip
import struct

import numpy as np
import pytest
import torch

from fxprune import data


def write_idx(path, array: np.ndarray, type_byte: int = 0x08) -> None:
    """Write ``array`` in IDX format: magic (0, 0, type, ndim), big-endian dims, data."""
    header = bytes([0, 0, type_byte, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(array.dtype.newbyteorder(">")).tobytes())


@pytest.fixture
def tiny_root(tmp_path):
    """A folder with 3 train and 2 test 28x28 images whose pixels are known."""
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 3), ("t10k", 2)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        images[0, 0, 0], images[0, 0, 1] = 0, 255  # the two ends of the pixel range
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n, dtype=np.uint8) + 7)
        np.save(tmp_path / f"{prefix}.npy", images)
    return tmp_path


@pytest.mark.parametrize("train,prefix,n", [(True, "train", 3), (False, "t10k", 2)])
def test_load_shapes_values_labels(tiny_root, train, prefix, n):
    x, y = data.load_fashion_mnist(tiny_root, train=train).tensors
    assert x.shape == (n, 1, 28, 28) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and y.tolist() == [7 + i for i in range(n)]
    raw = torch.from_numpy(np.load(tiny_root / f"{prefix}.npy")).float()
    torch.testing.assert_close(x[:, 0], (raw / 255 - data.MEAN) / data.STD)
    assert x[0, 0, 0, 0].item() == pytest.approx(-data.MEAN / data.STD)
    assert x[0, 0, 0, 1].item() == pytest.approx((1 - data.MEAN) / data.STD)


def test_env_var_selects_root(tiny_root, monkeypatch):
    monkeypatch.setenv(data.ENV_VAR, str(tiny_root))
    assert len(data.load_fashion_mnist(train=False)) == 2


def test_read_idx_other_dtypes_and_truncation(tmp_path):
    values = np.array([[1.5, -2.0], [3.25, 0.0]], dtype=np.float32)
    write_idx(tmp_path / "f.gz", values, type_byte=0x0D)
    np.testing.assert_array_equal(data.read_idx(tmp_path / "f.gz"), values)
    with gzip.open(tmp_path / "f.gz", "rb") as f:
        blob = f.read()
    with gzip.open(tmp_path / "short.gz", "wb") as f:
        f.write(blob[:-1])
    with pytest.raises(ValueError, match="bytes"):
        data.read_idx(tmp_path / "short.gz")


def test_missing_folder_says_how_to_install(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        data.load_fashion_mnist(tmp_path / "nowhere")
    msg = str(info.value)
    assert "train-images-idx3-ubyte.gz" in msg
    assert "apt-get install dataset-fashion-mnist" in msg and data.ENV_VAR in msg


def test_loaders(tiny_root):
    train, test = data.fashion_mnist_loaders(2, tiny_root, seed=0)
    first_epoch = [b[1].tolist() for b in train]
    assert [len(b) for b in first_epoch] == [2, 1] and [len(b[0]) for b in test] == [2]
    assert sorted(sum(first_epoch, [])) == [7, 8, 9]
    # Same seed, same shuffle order in the first epoch.
    again, _ = data.fashion_mnist_loaders(2, tiny_root, seed=0)
    assert [b[1].tolist() for b in again] == first_epoch


@pytest.mark.skipif(
    not (data._resolve_root(None) / "t10k-images-idx3-ubyte.gz").is_file(),
    reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)",
)
def test_real_test_split():
    x, y = data.load_fashion_mnist(train=False).tensors
    assert x.shape == (10000, 1, 28, 28)
    assert torch.bincount(y).tolist() == [1000] * 10  # the test split is balanced
