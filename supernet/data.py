"""Training data for the supernet: Fashion-MNIST by default, or the user's CIFAR-10 or
ImageFolder directory.  Nothing is ever downloaded.

- ``fmnist`` (default): Debian's ``dataset-fashion-mnist`` package, gzipped idx files in
  ``/usr/share/datasets/fashion-mnist`` (or ``fmnist:PATH``).
- ``cifar10:PATH``: the python batches directory (``data_batch_1`` .. ``data_batch_5``).
- ``imagefolder:PATH``: ImageNet layout, ``PATH/train/<class>/<image>`` (or
  ``PATH/<class>/<image>``).

Only the training set is read.  A fixed, seeded held-out part of it (``valid_size`` images)
serves for accuracy measurements; BN recalibration uses a fixed subset of the remaining
training images.  The test set is never touched.

Batches are produced at the dataset's base resolution and resized per batch to the
resolution the step draws (``resize``).  The order of an epoch is a permutation seeded by
(seed, epoch) and sharded over ranks, so a run resumed at step ``s`` sees the same batches.
A missing or malformed dataset raises ``DataError`` with one line naming what and where.
"""

from __future__ import annotations

import gzip
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from .errors import DataError

FMNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FMNIST_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz")
FMNIST_TEST_FILES = ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp", ".tif", ".tiff")


# --------------------------------------------------------------------------- splits


class TensorSplit:
    """Images held as one uint8 N x C x H x W tensor (Fashion-MNIST, CIFAR-10), on the CPU or
    on the training device (``to``).  A training batch is cropped (zero padding ``pad``) and
    flipped with one gather over the whole batch: no per-image Python in the step."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, mean, std, pad: int, flip: bool):
        self.images, self.labels = images, labels
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self.pad, self.flip = pad, flip
        self.repeat = 1  # channel copies per batch (grayscale fed to an RGB network)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def device(self) -> torch.device:
        return self.images.device

    def subset(self, idx: torch.Tensor) -> "TensorSplit":
        out = TensorSplit.__new__(TensorSplit)
        out.__dict__.update(self.__dict__)
        out.images, out.labels = self.images[idx], self.labels[idx]
        return out

    def to(self, device: torch.device | str) -> "TensorSplit":
        """The same split held on ``device`` (images stay uint8)."""
        out = TensorSplit.__new__(TensorSplit)
        out.__dict__.update(self.__dict__)
        for name in ("images", "labels", "mean", "std"):
            setattr(out, name, getattr(self, name).to(device))
        return out

    def batch(self, idx: torch.Tensor, train: bool, gen: torch.Generator | None = None):
        """Normalised float images and labels of ``idx``; ``train`` adds the random crop and
        flip, drawn from ``gen`` (on the CPU, so a batch is the same on every device)."""
        dev = self.images.device
        idx = idx.to(dev)
        x = self.images[idx]
        if train and (self.pad or self.flip):
            n, c, h, w = x.shape
            p = self.pad
            a = torch.randint(0, 2 * p + 1, (n, 1), generator=gen) if p else torch.zeros(n, 1, dtype=torch.long)
            b = torch.randint(0, 2 * p + 1, (n, 1), generator=gen) if p else torch.zeros(n, 1, dtype=torch.long)
            flip = (torch.rand(n, 1, generator=gen) < 0.5) if self.flip else torch.zeros(n, 1, dtype=torch.bool)
            rows = a + torch.arange(h)  # n x h, indices into the padded image
            cols = torch.where(flip, b + torch.arange(w - 1, -1, -1), b + torch.arange(w))
            xp = F.pad(x, (p, p, p, p)) if p else x
            x = xp[torch.arange(n).view(n, 1, 1, 1), torch.arange(c).view(1, c, 1, 1),
                   rows.to(dev).view(n, 1, h, 1), cols.to(dev).view(n, 1, 1, w)]
        x = (x.float().div_(255.0) - self.mean) / self.std
        if self.repeat > 1:
            x = x.repeat(1, self.repeat, 1, 1)
        return x, self.labels[idx]

    def with_repeat(self, repeat: int) -> "TensorSplit":
        """The same split with each batch's channels repeated ``repeat`` times."""
        out = TensorSplit.__new__(TensorSplit)
        out.__dict__.update(self.__dict__)
        out.repeat = repeat
        return out


class FolderSplit:
    """Image files decoded on demand (ImageFolder); ``base`` is the side length produced."""

    def __init__(self, samples: list[tuple[str, int]], base: int):
        self.samples, self.base = samples, base

    def __len__(self) -> int:
        return len(self.samples)

    def subset(self, idx: torch.Tensor) -> "FolderSplit":
        return FolderSplit([self.samples[i] for i in idx.tolist()], self.base)

    def _transform(self, train: bool):
        from torchvision import transforms as T

        norm = T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
        if train:
            return T.Compose([T.RandomResizedCrop(self.base, scale=(0.08, 1.0)),
                              T.RandomHorizontalFlip(), T.ToTensor(), norm])
        return T.Compose([T.Resize(int(round(self.base / 0.875))), T.CenterCrop(self.base), T.ToTensor(), norm])

    def batch(self, idx: torch.Tensor, train: bool, gen: torch.Generator | None = None):
        from PIL import Image

        tf = self._transform(train)
        xs, ys = [], []
        for i in idx.tolist():
            path, label = self.samples[i]
            try:
                with Image.open(path) as im:
                    xs.append(tf(im.convert("RGB")))
            except OSError as exc:
                raise DataError(f"cannot read image {path}: {exc}") from None
            ys.append(label)
        return torch.stack(xs), torch.tensor(ys, dtype=torch.long)


@dataclass
class Data:
    """A dataset's training split, held-out split and recalibration subset."""

    name: str
    source: str
    train: TensorSplit | FolderSplit
    valid: TensorSplit | FolderSplit
    recal: TensorSplit | FolderSplit
    channels: int
    num_classes: int

    def with_channels(self, channels: int) -> "Data":
        """A grayscale dataset fed to a network of ``channels`` inputs: each batch's one
        channel repeated (torchvision's ``Grayscale(num_output_channels=3)``)."""
        if channels == self.channels:
            return self
        if self.channels != 1 or not isinstance(self.train, TensorSplit):
            raise DataError(f"dataset {self.source!r} has {self.channels} channels; a network of {channels} "
                            "can take only a 1-channel dataset, repeated")
        return Data(self.name, self.source, self.train.with_repeat(channels), self.valid.with_repeat(channels),
                    self.recal.with_repeat(channels), channels, self.num_classes)


# --------------------------------------------------------------------------- readers


def _read_idx(path: Path, magic: int, ndim: int) -> np.ndarray:
    if not path.is_file():
        raise DataError(f"missing dataset file {path}")
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"cannot read {path}: not a valid gzip file ({exc})") from None
    if len(raw) < 4 + 4 * ndim:
        raise DataError(f"malformed idx file {path}: only {len(raw)} bytes")
    got = struct.unpack(">I", raw[:4])[0]
    if got != magic:
        raise DataError(f"malformed idx file {path}: magic number {got:#x}, expected {magic:#x}")
    dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    body = raw[4 + 4 * ndim:]
    if len(body) != int(np.prod(dims)):
        raise DataError(f"malformed idx file {path}: header says {dims} but holds {len(body)} bytes")
    return np.frombuffer(body, dtype=np.uint8).reshape(dims)


def read_fmnist(root: Path, test: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Fashion-MNIST training (or, with ``test``, test) images (N x 1 x 28 x 28 uint8) and
    labels from idx.gz files."""
    if not root.is_dir():
        raise DataError(f"Fashion-MNIST directory {root} does not exist "
                        "(install Debian's dataset-fashion-mnist or pass --data fmnist:PATH)")
    files = FMNIST_TEST_FILES if test else FMNIST_FILES
    images = _read_idx(root / files[0], 0x803, 3)
    labels = _read_idx(root / files[1], 0x801, 1)
    if len(images) != len(labels):
        raise DataError(f"Fashion-MNIST in {root}: {len(images)} images but {len(labels)} labels")
    if labels.max(initial=0) > 9:
        raise DataError(f"Fashion-MNIST in {root}: label {labels.max()} out of range 0..9")
    return torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))


class _CifarUnpickler(pickle.Unpickler):
    """Unpickle CIFAR batches allowing only numpy array reconstruction, never arbitrary code."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def read_cifar10(root: Path, test: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """CIFAR-10 training (or, with ``test``, test) images (N x 3 x 32 x 32 uint8) from the
    python batches directory."""
    if not root.is_dir():
        raise DataError(f"CIFAR-10 directory {root} does not exist (expected the python batches "
                        "directory with data_batch_1 .. data_batch_5)")
    xs, ys = [], []
    for name in (["test_batch"] if test else [f"data_batch_{i}" for i in range(1, 6)]):
        path = root / name
        if not path.is_file():
            raise DataError(f"missing CIFAR-10 file {path}")
        try:
            with open(path, "rb") as f:
                d = _CifarUnpickler(f, encoding="bytes").load()
            data, labels = d[b"data"], d[b"labels"]
            data = np.asarray(data, dtype=np.uint8).reshape(-1, 3, 32, 32)
            labels = np.asarray(labels, dtype=np.int64)
        except Exception as exc:  # any unpickling/shape problem is a malformed file
            raise DataError(f"malformed CIFAR-10 batch {path}: {exc}") from None
        if len(data) != len(labels) or labels.min(initial=0) < 0 or labels.max(initial=0) > 9:
            raise DataError(f"malformed CIFAR-10 batch {path}: {len(data)} images, {len(labels)} labels")
        xs.append(data)
        ys.append(labels)
    return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))


def scan_imagefolder(root: Path) -> tuple[list[tuple[str, int]], list[str]]:
    """(path, class index) of every image under ``root/train`` (or ``root``), classes sorted."""
    if not root.is_dir():
        raise DataError(f"ImageFolder directory {root} does not exist")
    base = root / "train" if (root / "train").is_dir() else root
    classes = sorted(p.name for p in base.iterdir() if p.is_dir())
    if not classes:
        raise DataError(f"ImageFolder {base} has no class subdirectories (expected {base}/<class>/<image>)")
    samples = [
        (str(p), ci)
        for ci, c in enumerate(classes)
        for p in sorted((base / c).rglob("*"))
        if p.suffix.lower() in IMAGE_EXTS and p.is_file()
    ]
    if not samples:
        raise DataError(f"ImageFolder {base} holds no images ({', '.join(IMAGE_EXTS)})")
    return samples, classes


# --------------------------------------------------------------------------- loading


def _split_indices(n: int, valid_size: int, recal_size: int, seed: int):
    if not 0 < valid_size < n:
        raise DataError(f"held-out size {valid_size} must be between 1 and {n - 1} (dataset has {n} images)")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    valid, train = perm[:valid_size].sort().values, perm[valid_size:].sort().values
    recal = train[torch.randperm(len(train), generator=torch.Generator().manual_seed(seed + 1))[:recal_size]]
    return train, valid, recal


def load_data(spec: str = "fmnist", valid_size: int = 10000, recal_size: int = 2000,
              train_limit: int | None = None, seed: int = 0, base_resolution: int = 224) -> Data:
    """Read the dataset named by ``spec`` and split it.

    Args:
        spec: ``fmnist``, ``fmnist:PATH``, ``cifar10:PATH`` or ``imagefolder:PATH``.
        valid_size: held-out images taken from the training set.
        recal_size: training images used for BN recalibration.
        train_limit: keep only this many training images (small presets, tests).
        seed: seed of the split (fixed per run).
        base_resolution: side length ImageFolder images are decoded to.
    Raises:
        DataError: unknown spec, missing or malformed files.
    """
    kind, _, path = spec.partition(":")
    if kind == "fmnist":
        root = Path(path) if path else FMNIST_DIR
        images, labels = read_fmnist(root)
        full = TensorSplit(images, labels, (0.2860,), (0.3530,), pad=2, flip=True)
        channels, classes = 1, 10
    elif kind == "cifar10":
        if not path:
            raise DataError("--data cifar10 needs a directory: cifar10:PATH (the python batches directory)")
        images, labels = read_cifar10(Path(path))
        full = TensorSplit(images, labels, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), pad=4, flip=True)
        channels, classes = 3, 10
    elif kind == "imagefolder":
        if not path:
            raise DataError("--data imagefolder needs a directory: imagefolder:PATH")
        samples, names = scan_imagefolder(Path(path))
        full = FolderSplit(samples, base_resolution)
        channels, classes = 3, len(names)
    else:
        raise DataError(f"unknown dataset {spec!r} (use fmnist, fmnist:PATH, cifar10:PATH or imagefolder:PATH)")
    valid_size = min(valid_size, len(full) // 5) if len(full) < 5 * valid_size else valid_size
    train, valid, recal = _split_indices(len(full), valid_size, recal_size, seed)
    if train_limit is not None:
        train = train[torch.randperm(len(train), generator=torch.Generator().manual_seed(seed + 2))[:train_limit]]
        recal = recal[:min(len(recal), train_limit)]
    return Data(kind, spec, full.subset(train), full.subset(valid), full.subset(recal), channels, classes)


def load_test(spec: str = "fmnist", base_resolution: int = 224, channels: int | None = None) -> TensorSplit | FolderSplit:
    """The dataset's own test split, for a final report only (training, search and every
    evaluation during them use the held-out split of the training set): Fashion-MNIST's
    t10k files, CIFAR-10's ``test_batch``, ImageFolder's ``val/`` (or ``test/``) folder
    (decoded at ``base_resolution``).  ``channels``: a 1-channel dataset repeated for a
    network of more input channels, as ``Data.with_channels`` does.

    Raises:
        DataError: the dataset has no test split there, or its files are missing or malformed.
    """
    kind, _, path = spec.partition(":")
    if kind == "fmnist":
        images, labels = read_fmnist(Path(path) if path else FMNIST_DIR, test=True)
        split = TensorSplit(images, labels, (0.2860,), (0.3530,), pad=2, flip=True)
        return split.with_repeat(channels) if channels and channels != 1 else split
    if kind == "cifar10" and path:
        images, labels = read_cifar10(Path(path), test=True)
        return TensorSplit(images, labels, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), pad=4, flip=True)
    if kind == "imagefolder" and path:
        root = Path(path)
        _, names = scan_imagefolder(root)
        for sub in ("val", "test"):
            if (root / sub).is_dir():
                samples, test_names = scan_imagefolder(root / sub)
                if test_names != names:
                    raise DataError(f"{root / sub}: classes {test_names[:5]}... differ from the training set's")
                return FolderSplit(samples, base_resolution)
        raise DataError(f"{root}: no val/ or test/ folder (the ImageFolder test split)")
    raise DataError(f"no test split for dataset {spec!r}")


# --------------------------------------------------------------------------- iteration


def epoch_order(n: int, seed: int, epoch: int, rank: int = 0, world: int = 1) -> torch.Tensor:
    """This rank's share of epoch ``epoch``'s permutation (equal length on every rank)."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
    per_rank = n // world
    return perm[rank * per_rank:(rank + 1) * per_rank]


def steps_per_epoch(n: int, batch_size: int, world: int = 1) -> int:
    return (n // world) // batch_size


class _StepBatches(torch.utils.data.Dataset):
    """Whole batches as dataset items, so a DataLoader can decode them in worker processes."""

    def __init__(self, split, batches: list[torch.Tensor], seeds: list[int]):
        self.split, self.batches, self.seeds = split, batches, seeds

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int):
        return self.split.batch(self.batches[i], True, torch.Generator().manual_seed(self.seeds[i]))


def train_batches(split, batch_size: int, seed: int, epoch: int, start_step: int = 0,
                  rank: int = 0, world: int = 1, workers: int = 0) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """(step, images, labels) of one epoch from ``start_step`` on, augmentation seeded per
    (seed, epoch, step, rank) so that a resumed run sees identical batches (ImageFolder
    decoding uses torchvision's transforms and is not bit-reproducible).  ``workers`` > 0
    decodes in DataLoader worker processes."""
    order = epoch_order(len(split), seed, epoch, rank, world)
    steps = list(range(start_step, len(order) // batch_size))
    batches = [order[s * batch_size:(s + 1) * batch_size] for s in steps]
    seeds = [(((seed * 7919 + epoch) * 1_000_003 + s) * 131 + rank) % 2**64 for s in steps]  # manual_seed's range
    items = _StepBatches(split, batches, seeds)
    if workers > 0:
        items = torch.utils.data.DataLoader(items, batch_size=None, num_workers=workers)
    for step, (x, y) in zip(steps, items):
        yield step, x, y


def eval_batches(split, batch_size: int, limit: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The split in order, without augmentation (at most ``limit`` images)."""
    n = len(split) if limit is None else min(limit, len(split))
    for start in range(0, n, batch_size):
        yield split.batch(torch.arange(start, min(n, start + batch_size)), False)


def resize(x: torch.Tensor, r: int) -> torch.Tensor:
    """Bilinear resize of a batch to r x r (antialiased when shrinking)."""
    if x.shape[-1] == r and x.shape[-2] == r:
        return x
    return F.interpolate(x, size=(r, r), mode="bilinear", align_corners=False, antialias=r < x.shape[-1])


__all__ = ["DataError", "Data", "load_data", "load_test", "read_fmnist", "read_cifar10", "scan_imagefolder",
           "train_batches", "eval_batches", "epoch_order", "steps_per_epoch", "resize", "FMNIST_DIR"]
