"""Accuracy of subnets: BN recalibration, top-1 on the held-out split, and loading a run.

``Evaluator(supernet, data).evaluate(cfg)`` is what the search calls: it extracts the static
subnet (the profiler's builder), recomputes its BN running statistics on a fixed set of
training images at the subnet's resolution (OFA's ``set_running_statistics``: the
statistics of a supernet's BN belong to no single subnet) and returns top-1 (percent) on the
held-out split, never the test set.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from .data import Data, eval_batches, load_data, resize
from .errors import CheckpointError
from .device import (apply_allocator, apply_cudnn, autocast, place, resolve_allocator, resolve_amp, resolve_cudnn,
                     resolve_device, to_device)
from .ofa import OFASupernet
from .ops import fold_bn
from .safeload import UnreadableFile, load_weights_only
from .space import SearchSpace, SubnetConfig, get_space


@torch.no_grad()
def recalibrate_bn(net: nn.Module, batches, amp_ctx=None) -> nn.Module:
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
        with amp_ctx() if amp_ctx else contextlib.nullcontext():
            net(x)
    for m, mom in zip(bns, saved):
        m.momentum = mom
    return net.eval()


@torch.no_grad()
def top1(net: nn.Module, batches, amp_ctx=None) -> float:
    """Top-1 accuracy in percent over ``(images, labels)`` batches."""
    net.eval()
    correct, total = None, 0
    for x, y in batches:
        with amp_ctx() if amp_ctx else contextlib.nullcontext():
            hits = (net(x).argmax(1) == y).sum()
        correct = hits if correct is None else correct + hits  # one host sync at the end
        total += len(y)
    return 100.0 * (0 if correct is None else correct.item()) / max(1, total)


def standard_error(top1_percent: float, n: int) -> float:
    """The binomial standard error (percentage points) of a top-1 measured on ``n`` images."""
    p = min(max(top1_percent / 100.0, 0.0), 1.0)
    return 100.0 * math.sqrt(p * (1 - p) / max(1, n))


# Images per evaluation and recalibration batch.  On the CPU a batch's activations should stay
# near the caches: at 48 px a batch of 500 holds 111 MB in the largest layer output of the
# largest Fashion-MNIST subnet (44 MB at 200), and every conv, BN and ReLU streams it through
# memory; batches of 200 evaluated it 1.6x and recalibrated it 1.5x as fast (AVX2-only EPYC,
# 2 threads, 2026-12-07; the same at 32 px; 25-50 lose again to per-call overhead).
# Recalibration averages each batch's statistics, an unbiased estimate at any batch size;
# OFA's ``reset_running_statistics`` takes batches of 200 too.
EVAL_BATCH = 200


class Evaluator:
    """``evaluate(cfg) -> top-1`` of subnets of ``supernet`` after BN recalibration.

    Args:
        supernet: the trained supernet.
        data: the run's data (``recal`` and ``valid`` splits are used).
        recal_images: training images for BN recalibration.
        eval_images: held-out images (None: all of the held-out split).
        batch_size: evaluation batch size.
        device: where subnets are recalibrated and evaluated (the training device).
        amp: ``bf16``, ``fp16`` or ``off`` (``supernet.device``).
        channels_last: run subnets and batches NHWC.
    """

    def __init__(self, supernet: OFASupernet, data: Data, recal_images: int = 2000,
                 eval_images: int | None = None, batch_size: int = EVAL_BATCH,
                 device: torch.device | str = "cpu", amp: str = "off", channels_last: bool = True):
        self.supernet, self.data = supernet, data
        self.recal_images, self.eval_images, self.batch_size = recal_images, eval_images, batch_size
        self.device, self.amp, self.channels_last = torch.device(device), amp, channels_last
        self._cache: dict[tuple, list] = {}

    def _base(self, which: str):
        split = self.data.recal if which == "recal" else self.data.valid
        limit = self.recal_images if which == "recal" else self.eval_images
        key = (which, limit)
        if key not in self._cache:
            self._cache[key] = [(to_device(x, self.device), to_device(y, self.device))
                                for x, y in eval_batches(split, self.batch_size, limit)]
        return self._cache[key]

    def _at(self, x: torch.Tensor, r: int) -> torch.Tensor:
        return to_device(resize(x, r), self.device, self.channels_last)

    def _amp(self):
        return autocast(self.device, self.amp)

    def _place(self, net: nn.Module) -> nn.Module:
        return place(net, self.device, self.channels_last)

    def subnet(self, cfg: SubnetConfig) -> nn.Module:
        """The extracted, recalibrated static subnet (on the evaluation device)."""
        return self.recalibrate(self._place(self.supernet.extract(cfg)), cfg.r)

    def recalibrate(self, net: nn.Module, r: int) -> nn.Module:
        """Recalibrate any static network already on the evaluation device (e.g. one trained
        alone) on the same images at resolution ``r`` as the extracted subnets; eval mode."""
        return recalibrate_bn(net, (self._at(x, r) for x, _ in self._base("recal")), self._amp)

    def top1(self, net: nn.Module, r: int) -> float:
        """Top-1 (percent) of a static network on the held-out split at resolution ``r``
        (evaluated as ``fold_bn`` gives it; ``net`` is left as it is)."""
        with torch.inference_mode():
            return top1(fold_bn(net), ((self._at(x, r), y) for x, y in self._base("valid")), self._amp)

    @torch.inference_mode()
    def hits(self, net: nn.Module, r: int) -> torch.Tensor:
        """Per held-out image, whether ``net`` at resolution ``r`` classifies it right (bool,
        on the CPU, in the split's order): ``top1`` image by image."""
        net = fold_bn(net)
        with self._amp():
            return torch.cat([(net(self._at(x, r)).argmax(1) == y).cpu() for x, y in self._base("valid")])

    def int8_top1(self, cfg: SubnetConfig, runtime: str = "tflite", calib_images: int = 128) -> dict:
        """Top-1 (percent) of ``cfg`` extracted, BN recalibrated and post-training quantized to
        int8 as the profiler quantizes for a device (``profiler.quantize.quantized_top1``:
        calibrated on ``calib_images`` of the recalibration images, run image by image with
        ``runtime`` on this host), on the same held-out images as ``evaluate``; with the fp32
        top-1 of the PyTorch subnet (``torch_top1``) and of the runtime's fp32 model.  The
        quantizer is the profiler's (imported here only, lazily: the int8 path of an
        evaluation command, not a layer of ``supernet``)."""
        return self.int8_top1_runtimes(cfg, [runtime], calib_images)[runtime]

    def int8_top1_runtimes(self, cfg: SubnetConfig, runtimes: list[str], calib_images: int = 128) -> dict[str, dict]:
        """``int8_top1`` for several runtimes, keyed by runtime: the subnet is extracted, its BN
        recalibrated and its PyTorch top-1 measured once for all of them.  Each result's
        ``seconds`` is the time spent on it, the shared part counted in the first runtime's."""
        from profiler.quantize import quantized_top1

        t0 = time.perf_counter()
        net = self.subnet(cfg)
        torch_top1 = self.top1(net, cfg.r)
        images, labels = self.held_out_arrays(cfg.r)
        calib = self.calibration_array(cfg.r, calib_images)
        module = net.float().cpu().eval()
        results = {}
        for runtime in runtimes:
            out = quantized_top1(module, calib, images, labels, runtime)
            t1 = time.perf_counter()
            results[runtime] = {"torch_top1": torch_top1, **out, "drop_pp": torch_top1 - out["int8_top1"],
                                "seconds": t1 - t0}
            t0 = t1
        return results

    def _nchw(self, x: torch.Tensor, r: int):
        return self._at(x, r).float().cpu().contiguous().numpy()

    def calibration_array(self, r: int, n: int = 128):
        """The first ``n`` recalibration (training) images at resolution ``r``, NCHW float32
        numpy: what int8 quantization is calibrated on."""
        return self._nchw(torch.cat([x for x, _ in self._base("recal")])[:n], r)

    def held_out_arrays(self, r: int):
        """(images NCHW float32 at ``r``, labels) of the held-out split, as numpy arrays."""
        valid = self._base("valid")
        return self._nchw(torch.cat([x for x, _ in valid]), r), torch.cat([y for _, y in valid]).cpu().numpy()

    def evaluate(self, cfg: SubnetConfig, recalibrate: bool = True) -> float:
        """Top-1 (percent) of ``cfg`` on the held-out split; ``recalibrate=False`` keeps the
        supernet's own (shared or switchable) BN statistics."""
        net = self.subnet(cfg) if recalibrate else self._place(self.supernet.extract(cfg)).eval()
        return self.top1(net, cfg.r)


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


REQUIRED_KEYS = ("config", "space", "model")


def load_checkpoint(path: Path) -> dict:
    """Load a checkpoint written by the trainer without running code from it
    (``torch.load(weights_only=True)``: tensors and plain containers only; a pickle that
    asks for anything else is refused).  CheckpointError, naming the file, when it is
    missing, corrupt, unsafe or lacks a required key."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        ckpt = load_weights_only(path)
    except UnreadableFile as exc:
        raise CheckpointError(f"checkpoint {path} {'' if exc.unsafe else 'is '}{exc.reason}") from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"checkpoint {path} is not a hwnas supernet checkpoint")
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise CheckpointError(f"checkpoint {path} is not a hwnas supernet checkpoint (no {', '.join(missing)})")
    if not isinstance(ckpt["config"], dict) or not isinstance(ckpt["space"], dict):
        raise CheckpointError(f"checkpoint {path}: config and space must be mappings")
    for key in ("base", "in_channels", "num_classes"):
        if key not in ckpt["space"]:
            raise CheckpointError(f"checkpoint {path}: its space record lacks {key!r}")
    return ckpt


def load_supernet(path: Path) -> tuple[OFASupernet, dict]:
    """The supernet stored in a checkpoint and the checkpoint's dict."""
    ckpt = load_checkpoint(path)
    try:
        space = space_from_record(ckpt["space"])
        net = OFASupernet(space, bn=ckpt["config"].get("bn", "shared"), dropout=ckpt["config"].get("dropout"))
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"checkpoint {path}: {exc}") from None
    try:
        net.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint {path} does not fit space {space.name}: {str(exc).splitlines()[0]}") from None
    return net.eval(), ckpt


def load_run(run: Path, data: str | None = None, device: str = "auto",
             amp: str = "auto", cudnn: str = "auto", recal_images: int | None = None,
             allocator: str = "auto") -> tuple[OFASupernet, Evaluator, dict]:
    """The final supernet of a run folder and an ``Evaluator`` on the run's held-out split
    (``data`` overrides the dataset location), on ``device`` with ``amp`` and ``cudnn``
    (``supernet.device``; the cuDNN mode and ``allocator`` are set for the process).  ``recal_images``
    (default: the run's) recalibrates BN on that many training images: the run's own
    recalibration images first, then more of the same seeded order."""
    run = Path(run)
    if not run.is_dir():
        raise CheckpointError(f"run folder {run} does not exist")
    dev = resolve_device(device)
    allocator = resolve_allocator(allocator, dev)  # a bad mode fails before anything is read
    net, ckpt = load_supernet(run / "supernet.pt")
    cfg = ckpt["config"]
    try:
        recal = recal_images or cfg["recal_images"]
        d = load_data(data or cfg["data"], cfg["valid_size"], recal, cfg["train_limit"], cfg["seed"],
                      cfg.get("base_resolution") or max(net.space.resolutions))
    except KeyError as exc:
        raise CheckpointError(f"checkpoint {run / 'supernet.pt'}: its config lacks {exc}") from None
    channels_last = cfg.get("channels_last", True)
    apply_cudnn(resolve_cudnn(cudnn, dev))
    apply_allocator(allocator)
    net = place(net, dev, channels_last)
    return net, Evaluator(net, d, recal, None, device=dev, amp=resolve_amp(amp, dev),
                          channels_last=channels_last), ckpt


__all__ = ["Evaluator", "EVAL_BATCH", "standard_error", "REQUIRED_KEYS", "recalibrate_bn", "top1", "adapt_space", "load_checkpoint", "load_supernet",
           "load_run", "CheckpointError", "space_record", "space_from_record"]
