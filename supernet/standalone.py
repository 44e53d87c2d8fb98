"""Train one static network from scratch (a derived architecture, a baseline) and measure it.

The recipe is the supernet presets' first phase (SGD with Nesterov momentum, no weight decay
on BN parameters and biases, label smoothing, linear warm-up then cosine to 0, batch 64,
channels-last), so a network trained here and a subnet of a supernet run see the same data
and augmentation.  Top-1 is on the dataset's held-out split (never the test set).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .data import Data, eval_batches, resize, steps_per_epoch, train_batches
from .device import apply_allocator, place, resolve_allocator, to_device
from .dynamic import fast_depthwise
from .evaluation import EVAL_BATCH, top1
from .optim import SGD


@dataclass(frozen=True)
class Recipe:
    epochs: float = 3.0
    batch_size: int = 64
    lr: float = 0.15
    warmup_epochs: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 3e-5
    label_smoothing: float = 0.1
    channels_last: bool = True
    nesterov: bool = True

    @classmethod
    def from_train_config(cls, rc, epochs: float = 3.0) -> "Recipe":
        """A supernet run's own recipe: its first phase's peak rate and warm-up, its batch,
        momentum, Nesterov, weight decay, label smoothing and memory format."""
        phase = rc.phases[0]
        return cls(epochs=epochs, batch_size=rc.batch_size, lr=phase.lr, warmup_epochs=phase.warmup_epochs,
                   momentum=rc.momentum, weight_decay=rc.weight_decay, label_smoothing=rc.label_smoothing,
                   channels_last=rc.channels_last, nesterov=rc.nesterov)


def sgd(params: list[tuple[str, nn.Parameter]], lr: float, momentum: float, weight_decay: float,
        nesterov: bool = True) -> torch.optim.SGD:
    """SGD (Nesterov momentum by default); no weight decay on 1-d parameters (BN, biases);
    PyTorch's fused kernel where the parameters allow it (``optim.SGD``)."""
    decay = [p for _, p in params if p.dim() > 1]
    no_decay = [p for _, p in params if p.dim() <= 1]
    return SGD([{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
               lr=lr, momentum=momentum, nesterov=nesterov)


def cosine_lr(base: float, step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    return base * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def split_top1(net: nn.Module, split, r: int, device: torch.device, channels_last: bool = True,
               limit: int | None = None) -> float:
    """Top-1 (%) of ``net`` on ``split`` (a split of ``Data``: the held-out or the test
    images) at resolution ``r``, in batches of ``EVAL_BATCH``."""
    net.eval()
    return top1(net, ((to_device(resize(to_device(x, device), r), device, channels_last), to_device(y, device))
                      for x, y in eval_batches(split, EVAL_BATCH, limit)))


def evaluate(net: nn.Module, data: Data, r: int, device: torch.device, channels_last: bool = True,
             limit: int | None = None) -> float:
    """Top-1 (%) of ``net`` on the held-out split at resolution ``r``."""
    return split_top1(net, data.valid, r, device, channels_last, limit)


def train_standalone(net: nn.Module, data: Data, r: int, recipe: Recipe, device: torch.device,
                     seed: int = 0, progress: bool = True, desc: str = "retrain",
                     seconds: float | None = None, allocator: str = "auto") -> dict:
    """Train ``net`` (fresh weights) at resolution ``r`` for ``recipe.epochs`` epochs of the
    training split or, with ``seconds``, for as many steps as fit in that wall time (timed from
    step 4 over at least 12 steps and 5 s (2% of a short budget); the cosine schedule then spans them).  Returns steps, epochs, seconds,
    images/s and held-out top-1 (%).  ``allocator`` as ``supernet.train --allocator``
    (``supernet.device.resolve_allocator``; auto keeps freed memory on the CPU, as the
    supernet's training does)."""
    from tqdm import tqdm

    apply_allocator(resolve_allocator(allocator, device))
    torch.manual_seed(seed)
    net = place(net, device, recipe.channels_last).train()
    opt = sgd(list(net.named_parameters()), recipe.lr, recipe.momentum, recipe.weight_decay, recipe.nesterov)
    spe = steps_per_epoch(len(data.train), recipe.batch_size)
    if spe < 1:  # no batch would ever be drawn: the loop below would never end
        raise ValueError(f"{len(data.train)} training images give no full batch of {recipe.batch_size}")
    total = None if seconds else max(1, round(recipe.epochs * spe))
    warm = max(1, round(recipe.warmup_epochs * spe))
    # with ``seconds``: steps timed, after 3 untimed ones, to size the schedule (at least 12
    # steps and 5 s, or 2% of a shorter budget: 12 steps of a small network took 0.4 s and
    # under-estimated its speed by a third on this shared host)
    probe, probe_s = 12, min(5.0, 0.02 * (seconds or 0))
    bar = tqdm(total=total, desc=desc, disable=not progress, leave=False)
    step, epoch, t0, t_probe = 0, 0, time.time(), None
    with fast_depthwise(net):  # the supernet's depthwise weight-gradient kernel, for a like-for-like speed
        while total is None or step < total:
            for _s, x, y in train_batches(data.train, recipe.batch_size, seed, epoch):
                lr = recipe.lr if total is None and step >= warm else cosine_lr(recipe.lr, step, total or warm, warm)
                for g in opt.param_groups:
                    g["lr"] = lr
                x = to_device(resize(to_device(x, device), r), device, recipe.channels_last)
                loss = F.cross_entropy(net(x), to_device(y, device), label_smoothing=recipe.label_smoothing)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1
                bar.update(1)
                if seconds and step == 3:
                    t_probe = time.time()
                elif seconds and total is None and step >= 3 + probe and time.time() - t_probe >= probe_s:
                    per_step = (time.time() - t_probe) / (step - 3)
                    total = max(step + 1, step + int((seconds - (time.time() - t0)) / per_step))
                    bar.total = total
                    bar.refresh()
                if total is not None and step >= total:
                    break
            epoch += 1
    bar.close()
    wall = time.time() - t0
    acc = evaluate(net, data, r, device, recipe.channels_last)
    return {"steps": step, "epochs": round(step / spe, 3), "seconds": round(wall, 1),
            "images_per_s": round(step * recipe.batch_size / wall, 1), "top1": round(acc, 3)}


__all__ = ["Recipe", "sgd", "cosine_lr", "evaluate", "split_top1", "train_standalone"]
