"""Accuracy of subnets: BN recalibration, top-1 on the held-out split, and loading a run.

``Evaluator(supernet, data).evaluate(cfg)`` is what the search calls: it extracts the static
subnet (the profiler's builder), recomputes its BN running statistics on a fixed set of
training images at the subnet's resolution (OFA's ``set_running_statistics``: the
statistics of a supernet's BN belong to no single subnet) and returns top-1 (percent) on the
held-out split, never the test set.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from .data import Data, eval_batches, load_data, resize
from .ofa import OFASupernet
from .space import SearchSpace, SubnetConfig, get_space


class CheckpointError(ValueError):
    """A checkpoint or run folder is missing or unreadable; the message names it."""


@torch.no_grad()
def recalibrate_bn(net: nn.Module, batches) -> nn.Module:
    """Reset every BatchNorm's running statistics and recompute them as the exact average
    over ``batches`` (images already at the subnet's resolution).  Returns ``net`` in eval
    mode."""
    bns = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in bns]
    net.eval()
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
        m.train()
    for x in batches:
        net(x)
    for m, mom in zip(bns, saved):
        m.momentum = mom
    return net.eval()


@torch.no_grad()
def top1(net: nn.Module, batches) -> float:
    """Top-1 accuracy in percent over ``(images, labels)`` batches."""
    net.eval()
    correct = total = 0
    for x, y in batches:
        correct += (net(x).argmax(1) == y).sum().item()
        total += len(y)
    return 100.0 * correct / max(1, total)


class Evaluator:
    """``evaluate(cfg) -> top-1`` of subnets of ``supernet`` after BN recalibration.

    Args:
        supernet: the trained supernet.
        data: the run's data (``recal`` and ``valid`` splits are used).
        recal_images: training images for BN recalibration.
        eval_images: held-out images (None: all of the held-out split).
        batch_size: evaluation batch size.
    """

    def __init__(self, supernet: OFASupernet, data: Data, recal_images: int = 2000,
                 eval_images: int | None = None, batch_size: int = 256):
        self.supernet, self.data = supernet, data
        self.recal_images, self.eval_images, self.batch_size = recal_images, eval_images, batch_size
        self._cache: dict[str, list] = {}

    def _base(self, which: str):
        if which not in self._cache:
            split = self.data.recal if which == "recal" else self.data.valid
            limit = self.recal_images if which == "recal" else self.eval_images
            self._cache[which] = list(eval_batches(split, self.batch_size, limit))
        return self._cache[which]

    def subnet(self, cfg: SubnetConfig) -> nn.Module:
        """The extracted, recalibrated static subnet."""
        net = self.supernet.extract(cfg)
        return recalibrate_bn(net, (resize(x, cfg.r) for x, _ in self._base("recal")))

    def evaluate(self, cfg: SubnetConfig, recalibrate: bool = True) -> float:
        """Top-1 (percent) of ``cfg`` on the held-out split; ``recalibrate=False`` keeps the
        supernet's own (shared or switchable) BN statistics."""
        net = self.subnet(cfg) if recalibrate else self.supernet.extract(cfg).eval()
        return top1(net, ((resize(x, cfg.r), y) for x, y in self._base("valid")))


# --------------------------------------------------------------------------- runs


def adapt_space(space: SearchSpace, channels: int, num_classes: int) -> SearchSpace:
    """``space`` with the data's input channels and classes (a new name when they differ,
    e.g. ``tiny-1ch-10cls``) so that a space and a dataset that disagree still train."""
    if space.in_channels == channels and space.num_classes == num_classes:
        return space
    return replace(space, name=f"{space.name}-{channels}ch-{num_classes}cls",
                   in_channels=channels, num_classes=num_classes)


def space_from_record(record: dict) -> SearchSpace:
    base = get_space(record["base"])
    return adapt_space(base, record["in_channels"], record["num_classes"])


def space_record(base: str, space: SearchSpace) -> dict:
    return {"base": base, "name": space.name, "in_channels": space.in_channels,
            "num_classes": space.num_classes}


def load_checkpoint(path: Path) -> dict:
    """``torch.load`` a checkpoint written by the trainer; CheckpointError when missing or corrupt."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # truncated zip, wrong format, unpickling error
        raise CheckpointError(f"checkpoint {path} is corrupt or not a hwnas checkpoint ({type(exc).__name__})") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "space" not in ckpt:
        raise CheckpointError(f"checkpoint {path} is not a hwnas supernet checkpoint")
    return ckpt


def load_supernet(path: Path) -> tuple[OFASupernet, dict]:
    """The supernet stored in a checkpoint and the checkpoint's dict."""
    ckpt = load_checkpoint(path)
    space = space_from_record(ckpt["space"])
    net = OFASupernet(space, bn=ckpt["config"]["bn"], dropout=ckpt["config"].get("dropout"))
    try:
        net.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint {path} does not fit space {space.name}: {str(exc).splitlines()[0]}") from None
    return net.eval(), ckpt


def load_run(run: Path, data: str | None = None) -> tuple[OFASupernet, Evaluator, dict]:
    """The final supernet of a run folder and an ``Evaluator`` on the run's held-out split
    (``data`` overrides the dataset location)."""
    run = Path(run)
    if not run.is_dir():
        raise CheckpointError(f"run folder {run} does not exist")
    net, ckpt = load_supernet(run / "supernet.pt")
    cfg = ckpt["config"]
    d = load_data(data or cfg["data"], cfg["valid_size"], cfg["recal_images"], cfg["train_limit"], cfg["seed"],
                  cfg.get("base_resolution") or max(net.space.resolutions))
    return net, Evaluator(net, d, cfg["recal_images"], None), ckpt


__all__ = ["Evaluator", "recalibrate_bn", "top1", "adapt_space", "load_checkpoint", "load_supernet",
           "load_run", "CheckpointError", "space_record", "space_from_record"]
