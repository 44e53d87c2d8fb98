"""Tiny fake datasets in the real on-disk formats, generated inside tests (no downloads)."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np


def class_images(n: int, size: int, channels: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` uint8 images whose class (0..9) is a bright horizontal band, so a net can learn."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 10
    x = rng.integers(0, 60, size=(n, channels, size, size), dtype=np.uint8)
    band = max(1, size // 10)
    for i, c in enumerate(labels):
        x[i, :, c * band:(c + 1) * band, :] = 230
    return x, labels.astype(np.uint8)


def write_fmnist(root: Path, n: int = 240) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    x, y = class_images(n, 28, 1)
    with gzip.open(root / "train-images-idx3-ubyte.gz", "wb") as f:
        f.write(struct.pack(">IIII", 0x803, n, 28, 28) + x.tobytes())
    with gzip.open(root / "train-labels-idx1-ubyte.gz", "wb") as f:
        f.write(struct.pack(">II", 0x801, n) + y.tobytes())
    return root


def write_cifar10(root: Path, per_batch: int = 20) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(1, 6):
        x, y = class_images(per_batch, 32, 3, seed=i)
        with open(root / f"data_batch_{i}", "wb") as f:
            pickle.dump({b"data": x.reshape(per_batch, -1), b"labels": [int(v) for v in y]}, f)
    return root
