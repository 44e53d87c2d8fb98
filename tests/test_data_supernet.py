"""Data readers: Fashion-MNIST idx files, CIFAR-10 batches, ImageFolder; splits and errors."""

from __future__ import annotations

import gzip
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from supernet.data import DataError, epoch_order, load_data, load_test, resize, train_batches
from supernet_fakes import class_images, write_cifar10, write_fmnist

REPO = Path(__file__).resolve().parents[1]


def test_fmnist_reader_and_held_out_split(tmp_path):
    root = write_fmnist(tmp_path / "fm", n=240)
    d = load_data(f"fmnist:{root}", valid_size=40, recal_size=30, seed=1)
    assert (d.channels, d.num_classes) == (1, 10)
    assert len(d.train) + len(d.valid) == 240 and len(d.valid) == 40
    # held-out and training images are disjoint; recalibration images come from training
    key = lambda s: {bytes(im.numpy()) for im in s.images}  # noqa: E731
    assert not key(d.train) & key(d.valid)
    assert key(d.recal) <= key(d.train)
    x, y = d.valid.batch(torch.arange(4), train=False)
    assert x.shape == (4, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.long
    # same split for the same seed
    d2 = load_data(f"fmnist:{root}", valid_size=40, recal_size=30, seed=1)
    assert torch.equal(d.valid.labels, d2.valid.labels)


def test_real_fmnist_when_installed():
    if not Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz").is_file():
        pytest.skip("dataset-fashion-mnist is not installed")
    d = load_data("fmnist", valid_size=10000, recal_size=2000)
    assert len(d.train) == 50000 and len(d.valid) == 10000
    assert set(d.valid.labels.unique().tolist()) == set(range(10))


def test_malformed_and_missing_fmnist(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_data(f"fmnist:{tmp_path / 'nope'}")
    root = write_fmnist(tmp_path / "bad")
    with gzip.open(root / "train-images-idx3-ubyte.gz", "wb") as f:
        f.write(struct.pack(">IIII", 0x999, 10, 28, 28))
    with pytest.raises(DataError, match="magic number"):
        load_data(f"fmnist:{root}")
    with gzip.open(root / "train-images-idx3-ubyte.gz", "wb") as f:
        f.write(struct.pack(">IIII", 0x803, 240, 28, 28) + b"\0" * 100)
    with pytest.raises(DataError, match="header says"):
        load_data(f"fmnist:{root}")
    (root / "train-images-idx3-ubyte.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="gzip"):
        load_data(f"fmnist:{root}")


def test_cifar10_reader(tmp_path):
    root = write_cifar10(tmp_path / "c10", per_batch=20)
    d = load_data(f"cifar10:{root}", valid_size=10, recal_size=10)
    assert (d.channels, d.num_classes) == (3, 10)
    assert len(d.train) == 90 and d.train.images.shape[1:] == (3, 32, 32)
    (root / "data_batch_3").write_bytes(b"garbage")
    with pytest.raises(DataError, match="data_batch_3"):
        load_data(f"cifar10:{root}")
    (root / "data_batch_3").unlink()
    with pytest.raises(DataError, match="missing CIFAR-10 file"):
        load_data(f"cifar10:{root}")


def test_imagefolder_reader(tmp_path):
    from PIL import Image

    x, y = class_images(30, 40, 3)
    for i, (im, c) in enumerate(zip(x, y)):
        d = tmp_path / "inet" / "train" / f"class{c % 3}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(im.transpose(1, 2, 0)).save(d / f"{i}.png")
    data = load_data(f"imagefolder:{tmp_path / 'inet'}", valid_size=6, recal_size=4, base_resolution=32)
    assert data.num_classes == 3 and len(data.valid) == 6
    xb, yb = data.train.batch(torch.arange(4), train=True)
    assert xb.shape == (4, 3, 32, 32)
    with pytest.raises(DataError, match="no class subdirectories"):
        (tmp_path / "empty").mkdir()
        load_data(f"imagefolder:{tmp_path / 'empty'}")


def test_test_splits_are_the_datasets_own(tmp_path):
    """load_test reads the split training never sees: t10k, test_batch, val/ (or test/)."""
    import pickle

    from PIL import Image

    if Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz").is_file():
        t = load_test("fmnist")
        assert len(t) == 10000 and set(t.labels.unique().tolist()) == set(range(10))
        assert load_test("fmnist", channels=3).batch(torch.arange(2), train=False)[0].shape == (2, 3, 28, 28)
    root = write_fmnist(tmp_path / "fm")
    with pytest.raises(DataError, match="t10k-images"):
        load_test(f"fmnist:{root}")
    c10 = write_cifar10(tmp_path / "c10", per_batch=5)
    with pytest.raises(DataError, match="test_batch"):
        load_test(f"cifar10:{c10}")
    x, y = class_images(7, 32, 3, seed=9)
    with open(c10 / "test_batch", "wb") as f:
        pickle.dump({b"data": x.reshape(7, -1), b"labels": [int(v) for v in y]}, f)
    t = load_test(f"cifar10:{c10}")
    assert len(t) == 7 and torch.equal(t.labels, torch.as_tensor(y, dtype=torch.long))
    x, y = class_images(12, 32, 3)
    for split in ("train", "val"):
        for i, (im, c) in enumerate(zip(x, y)):
            d = tmp_path / "inet" / split / f"class{c % 3}"
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(im.transpose(1, 2, 0)).save(d / f"{i}.png")
    assert len(load_test(f"imagefolder:{tmp_path / 'inet'}", base_resolution=32)) == 12
    (tmp_path / "inet" / "val" / "class0").rename(tmp_path / "inet" / "val" / "other")
    with pytest.raises(DataError, match="differ from the training set"):
        load_test(f"imagefolder:{tmp_path / 'inet'}", base_resolution=32)
    with pytest.raises(DataError, match="no test split"):
        load_test("bogus")


def test_unknown_spec_and_resize():
    with pytest.raises(DataError, match="unknown dataset"):
        load_data("mnist")
    x = torch.rand(2, 1, 28, 28)
    assert resize(x, 40).shape == (2, 1, 40, 40) and resize(x, 28) is x


def test_epoch_order_shards_and_batches_are_reproducible(tmp_path):
    a = epoch_order(100, seed=3, epoch=1, rank=0, world=2)
    b = epoch_order(100, seed=3, epoch=1, rank=1, world=2)
    assert len(a) == len(b) == 50 and not set(a.tolist()) & set(b.tolist())
    d = load_data(f"fmnist:{write_fmnist(tmp_path / 'fm')}", valid_size=40, recal_size=10)
    first = list(train_batches(d.train, 16, seed=0, epoch=0))
    resumed = list(train_batches(d.train, 16, seed=0, epoch=0, start_step=2))
    assert resumed[0][0] == 2 and torch.equal(first[2][1], resumed[0][1])


@pytest.mark.parametrize("data", ["cifar10:/nonexistent/c10", "fmnist:/nonexistent/fm", "bogus"])
def test_train_cli_reports_bad_data_in_one_line(tmp_path, data):
    proc = subprocess.run(
        [sys.executable, "-m", "supernet.train", "--preset", "test", "--data", data, "--out", str(tmp_path / "run")],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "error" in lines[0] and ("nonexistent" in lines[0] or "bogus" in lines[0]), proc.stderr
