"""ProxylessNAS: search one architecture directly on the target task and the target device.

    python -m search.proxyless --lut luts/local_pf.csv --latency-ms 0.5 [--space proxyless_fmnist]
        [--data fmnist] [--resolution R] [--warmup-epochs 2] [--search-epochs 1]
        [--grad-mode binaryconnect|reinforce] [--latency-loss target|add] [--retrain-epochs 3]
        [--verify] [--out runs/proxyless-...] [--resume | --force]
    python -m search.proxyless --lut luts/pixel1.csv --latency-ms 80 --data imagefolder:PATH   # the Pixel 1 table

Cai, Zhu, Han, "ProxylessNAS" (ICLR 2019).  The over-parameterized network
(``supernet.proxyless``) holds every candidate path of every block with its own weights and
real-valued architecture parameters ``alpha``.  After a warm-up of weight steps with one
sampled path per block, weight steps (training split, one path per block sampled from
``softmax(alpha)``: the memory of one compact network) alternate with architecture steps
on a held-out part of the training split: two paths per block, binary gates, the
BinaryConnect estimate of ``dL/dalpha`` and the rescaling that keeps the other paths'
probabilities (``--grad-mode reinforce``: the REINFORCE estimate with a moving-average
baseline instead).

Latency is a loss: ``E[latency] = sum over blocks of sum over paths p * LUT(path)`` from the
device's LUT (the zero path costs nothing; the LUT's overhead model and calibration apply as
in ``search.latency``), differentiable in ``alpha``.  ``--latency-loss add`` is the paper's
``CE + lambda1 ||w||^2 + lambda2 E[latency]`` (``--lambda-latency``, per ms; ``lambda1`` is
the weight decay); ``--latency-loss target`` (the default with ``--latency-ms T``) is
``CE * max(1, E[latency] / T) ** beta``: no reward below the target, a penalty growing as
the beta-th power of the overshoot above it (a soft constraint in the spirit of MnasNet's;
the paper's code's ``CE * (log E / log T) ** beta`` only rescales the loss for a fixed T and
has no sign below 1 ms).

The most probable path per block is the derived architecture (a ``SubnetConfig`` of the
space, JSON), trained from scratch (``--retrain-epochs``), evaluated on the held-out split,
exported to ONNX and TFLite, and with ``--verify`` measured as a whole network on the LUT's
device.  Writes into ``--out``: ``search.csv`` (the search's history: E[latency] beside the
derived architecture's LUT latency), ``search.png``, ``alphas.json``, ``arch.json``,
``result.json``, ``subnet.onnx`` and ``subnet.tflite``; ``search.ckpt.pt`` holds the search's
state every ``--checkpoint-every`` steps (atomic), and ``--resume`` continues a killed search
from it with the same flags, reaching the same architecture.

A dataset is fitted to a space whose LUT fixes the network's input and classifier: a
1-channel dataset (Fashion-MNIST) is repeated to 3 channels, and a dataset with fewer
classes uses the first N outputs of the space's classifier (softmax and argmax over all of
them; the classifier is kept, so the deployed network is the one the LUT priced):
``--lut luts/pixel1.csv`` runs on Fashion-MNIST at 224 px on a fresh clone (slow on a CPU:
a GPU, or ``--train-limit``, for a demo).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import math
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from supernet.atomic import Busy, ExclusiveLock, file_sha256
from supernet.cliargs import resume_command, run_main, seed_arg, threads_arg

CKPT_FORMAT = "hwnas-proxyless-search-1"
HISTORY_FIELDS = ["step", "phase", "epoch", "lr", "train_ce", "arch_ce", "expected_ms", "derived_ms",
                  "derived_zero_blocks", "seconds", "derived"]


@dataclass
class SearchConfig:
    latency_ms: float | None = None
    latency_loss: str = "target"
    beta: float = 3.0
    lambda_latency: float = 0.0
    grad_mode: str = "binaryconnect"
    warmup_epochs: float = 2.0
    search_epochs: float = 1.0
    batch_size: int = 64
    lr: float = 0.05
    weight_decay: float = 3e-5
    label_smoothing: float = 0.1
    arch_lr: float = 0.02
    arch_every: int = 1
    arch_images: int = 5000
    seed: int = 0
    log_every: int = 50


def latency_loss(ce, cost, cfg: SearchConfig):
    """The architecture loss: ``add``: CE + lambda * cost; ``target``: CE * max(1, cost/T)**beta."""
    if cfg.latency_loss == "add":
        return ce + cfg.lambda_latency * cost
    ratio = cost / cfg.latency_ms
    factor = ratio.clamp(min=1.0) ** cfg.beta if hasattr(ratio, "clamp") else max(1.0, ratio) ** cfg.beta
    return ce * factor


def covered_resolutions(model, space) -> list[int]:
    from profiler.costmodel import MissingKeysError

    out = []
    for r in space.resolutions:
        try:
            model.tables(r, space.default_width)
            out.append(r)
        except MissingKeysError:
            pass
    return out


def path_costs(net, model, r: int):
    """Per mixed block, the LUT cost of each path (zero path 0), and the fixed part (``base``),
    uncalibrated, by the same tables ``search.latency`` sums."""
    import torch

    sp = net.space
    base, slot = model.tables(r, sp.default_width)
    kidx = {k: i for i, k in enumerate(sp.kernels)}
    eidx = {float(x): i for i, x in enumerate(sp.expands)}
    costs = []
    for m in net.mixed:
        s = m.stage * sp.max_depth + m.position
        costs.append(torch.tensor([0.0 if p.zero else float(slot[s, kidx[p.kernel], eidx[float(p.expand)]])
                                   for p in m.paths], dtype=torch.float64))
    return float(base), costs


class Search:
    """The search state: network, optimizers, per-path costs, history."""

    def __init__(self, space, r: int, data, model, cfg: SearchConfig, device):
        import torch

        from supernet.proxyless import ProxylessSupernet
        from supernet.standalone import sgd

        self.space, self.r, self.data, self.model, self.cfg, self.device = space, r, data, model, cfg, device
        self.inputs: dict[str, Any] = {}  # the data, LUT and calibration the search ran on (main sets them)
        torch.manual_seed(cfg.seed)
        self.net = ProxylessSupernet(space, r).to(device)
        self.base, self.costs = path_costs(self.net, model, r)
        cal = model.calibration
        self.a, self.b = (float(cal[0]), float(cal[1])) if cal else (1.0, 0.0)
        self.w_opt = sgd(self.net.named_weight_parameters(), cfg.lr, 0.9, cfg.weight_decay)
        # the paper's architecture optimizer: Adam with beta1 = 0
        self.a_opt = torch.optim.Adam(self.net.arch_parameters(), lr=cfg.arch_lr, betas=(0.0, 0.999), eps=1e-8)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.baseline: float | None = None
        self.history: list[dict[str, Any]] = []

    # costs -------------------------------------------------------------------------
    def expected(self):
        from supernet.proxyless import expected_cost

        return self.a * expected_cost(self.net, self.costs, self.base) + self.b

    def cost_of(self, indices: Sequence[int]) -> float:
        from supernet.proxyless import sampled_cost

        return self.a * sampled_cost(self.net, self.costs, self.base, list(indices)) + self.b

    # steps -------------------------------------------------------------------------
    def _batch(self, split, idx, train: bool, gen=None):
        from supernet.data import resize
        from supernet.device import to_device

        x, y = split.batch(idx, train, gen)
        return to_device(resize(to_device(x, self.device), self.r), self.device, True), to_device(y, self.device)

    def weight_step(self, x, y, lr: float) -> float:
        import torch.nn.functional as F

        self.net.train()
        self.net.set_mode("sample", self.gen)
        for g in self.w_opt.param_groups:
            g["lr"] = lr
        loss = F.cross_entropy(self.net(x), y, label_smoothing=self.cfg.label_smoothing)
        self.w_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.w_opt.step()
        return float(loss.detach())

    def arch_step(self, x, y) -> float:
        import torch
        import torch.nn.functional as F

        net, cfg = self.net, self.cfg
        net.train()
        weights = net.weight_parameters()
        for p in weights:
            p.requires_grad_(False)
        try:
            self.a_opt.zero_grad(set_to_none=True)
            if cfg.grad_mode == "binaryconnect":
                net.set_mode("two", self.gen)
                ce = F.cross_entropy(net(x), y)
                loss = latency_loss(ce, self.expected(), cfg)
                old = [a.detach().clone() for a in net.arch_parameters()]
                loss.backward()
                self.a_opt.step()
                net.rescale(old)
                ce = ce.detach()
            else:  # REINFORCE with a moving-average baseline
                net.set_mode("sample", self.gen)
                idx = net.active_paths()
                with torch.no_grad():
                    ce = F.cross_entropy(net(x), y)
                reward = -float(latency_loss(float(ce), self.cost_of(idx), cfg))
                self.baseline = reward if self.baseline is None else 0.9 * self.baseline + 0.1 * reward
                (-(reward - self.baseline) * net.log_prob(idx)).backward()
                self.a_opt.step()
        finally:
            for p in weights:
                p.requires_grad_(True)
        return float(ce)

    def derived(self):
        return self.net.derive()

    def log(self, step: int, phase: str, epoch: float, lr: float, train_ce: float, arch_ce: float | None,
            t0: float) -> dict[str, Any]:
        import torch

        cfg = self.derived()
        with torch.no_grad():
            e = float(self.expected())
        zeros = sum(1 for m in self.net.mixed if m.paths[int(m.alpha.argmax())].zero)
        row = {"step": step, "phase": phase, "epoch": round(epoch, 4), "lr": round(lr, 6),
               "train_ce": round(train_ce, 4), "arch_ce": "" if arch_ce is None else round(arch_ce, 4),
               "expected_ms": round(e, 5), "derived_ms": round(float(self.model.cost([cfg])[0]), 5),
               "derived_zero_blocks": zeros, "seconds": round(time.time() - t0, 1), "derived": cfg.to_json()}
        self.history.append(row)
        return row

    # checkpoints ----------------------------------------------------------------------
    def state(self, step: int, epoch: int, a_order, a_pos: int, elapsed: float) -> dict[str, Any]:
        """Everything the loop needs to continue exactly where it was (plain tensors and
        numbers only, so it loads with ``torch.load(weights_only=True)``)."""
        from dataclasses import asdict

        import torch

        return {"format": CKPT_FORMAT, "config": asdict(self.cfg), "space": self.space.name, "r": self.r,
                "inputs": dict(self.inputs),
                "step": step, "epoch": epoch, "a_order": a_order, "a_pos": a_pos, "elapsed": elapsed,
                "net": self.net.state_dict(), "w_opt": self.w_opt.state_dict(), "a_opt": self.a_opt.state_dict(),
                "gen": self.gen.get_state(), "baseline": self.baseline, "history": self.history,
                # dropout draws from the global generators: without them a resumed run diverges
                "rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state() if self.device.type == "cuda" else None}

    def restore(self, path: Path) -> dict[str, Any]:
        """Load a checkpoint ``state()`` wrote; raises ValueError naming the file when it is not
        one, or is one of another search (space, resolution or settings differ)."""
        from dataclasses import asdict

        import torch

        from supernet.safeload import UnreadableFile, load_weights_only

        try:
            st = load_weights_only(path)
        except UnreadableFile as exc:
            raise ValueError(f"{path}: not a search.proxyless checkpoint: it {'' if exc.unsafe else 'is '}"
                             f"{exc.reason}") from None
        if not isinstance(st, dict) or st.get("format") != CKPT_FORMAT:
            raise ValueError(f"{path}: not a search.proxyless checkpoint")
        mine = asdict(self.cfg)
        diff = sorted(k for k in mine if st["config"].get(k) != mine[k])
        theirs = st.get("inputs") or {}  # what the search ran on: data, LUT, calibration
        diff += sorted(k for k in self.inputs if k in theirs and theirs[k] != self.inputs[k])
        if st["space"] != self.space.name or st["r"] != self.r or diff:
            what = ", ".join(diff) or f"space/resolution {st['space']} {st['r']}"
            raise ValueError(f"{path}: a search with other settings ({what}); use the same flags, or --force")
        self.net.load_state_dict(st["net"])
        self.w_opt.load_state_dict(st["w_opt"])
        self.a_opt.load_state_dict(st["a_opt"])
        self.gen.set_state(st["gen"])
        torch.set_rng_state(st["rng"])
        if st.get("cuda_rng") is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(st["cuda_rng"])
        self.baseline, self.history = st["baseline"], list(st["history"])
        return st

    def run(self, progress: bool = True, checkpoint: Path | None = None, every: int = 200,
            resume: dict[str, Any] | None = None, stop_after: int | None = None,
            asked: dict | None = None) -> bool:
        """Warm-up (weight steps only), then alternating weight and architecture steps.

        With ``checkpoint``, the state is written there atomically every ``every`` steps (and
        at the end of the warm-up); ``resume`` (from ``restore``) continues from it, reaching
        the same weights and alphas as an uninterrupted run.  ``stop_after`` stops after that
        many steps (tests); so does a signal recorded in ``asked`` (``supernet.trainer.stop_requests``),
        after the step it arrives in.  Returns True when the search is complete."""
        import torch
        from tqdm import tqdm

        from supernet.trainer import atomic_save
        from supernet.data import epoch_order, steps_per_epoch
        from supernet.standalone import cosine_lr

        cfg, data = self.cfg, self.data
        train, arch = self.split()
        spe = steps_per_epoch(len(train), cfg.batch_size)
        warm = round(cfg.warmup_epochs * spe)
        total = warm + max(1, round(cfg.search_epochs * spe))
        a_order = torch.randperm(len(arch), generator=torch.Generator().manual_seed(cfg.seed + 7))
        a_pos, step, epoch, last_arch, done_before = 0, 0, 0, None, 0.0
        if resume is not None:
            step, epoch, a_order, a_pos, done_before = (resume["step"], resume["epoch"], resume["a_order"],
                                                        resume["a_pos"], resume["elapsed"])
            rows = [r for r in self.history if r["arch_ce"] != ""]
            last_arch = rows[-1]["arch_ce"] if rows else None
        bar = tqdm(total=total, initial=step, desc="proxyless", disable=not progress)
        t0 = time.time() - done_before
        skip = step - epoch * (len(train) // cfg.batch_size)  # steps of this epoch already done
        while step < total:
            order = epoch_order(len(train), cfg.seed, epoch)
            for s in range(skip, len(order) // cfg.batch_size):
                if step >= total:
                    break
                idx = order[s * cfg.batch_size:(s + 1) * cfg.batch_size]
                gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
                x, y = self._batch(train, idx, True, gen)
                lr = cosine_lr(cfg.lr, step, total, max(1, round(0.05 * spe)))
                ce = self.weight_step(x, y, lr)
                phase = "warmup" if step < warm else "search"
                if phase == "search" and (step - warm) % cfg.arch_every == 0:
                    if a_pos + cfg.batch_size > len(arch):
                        a_order = torch.randperm(len(arch), generator=torch.Generator().manual_seed(cfg.seed + step))
                        a_pos = 0
                    ax, ay = self._batch(arch, a_order[a_pos:a_pos + cfg.batch_size], False)
                    a_pos += cfg.batch_size
                    last_arch = self.arch_step(ax, ay)
                step += 1
                bar.update(1)
                if step % cfg.log_every == 0 or step == total:
                    row = self.log(step, phase, step / spe, lr, ce, last_arch if phase == "search" else None, t0)
                    bar.set_postfix_str(f"E[lat] {row['expected_ms']:.3f} ms, derived {row['derived_ms']:.3f} ms")
                    if phase == "search" and (step % (cfg.log_every * 5) == 0 or step == total):
                        tqdm.write(f"step {step:>5}  E[latency] {row['expected_ms']:.4f} ms  derived "
                                   f"{row['derived_ms']:.4f} ms  zero blocks {row['derived_zero_blocks']}  "
                                   f"arch CE {row['arch_ce']}", file=sys.stderr)
                at_end_of_epoch = s + 1 == len(order) // cfg.batch_size
                stopping = step < total and ((stop_after is not None and step >= stop_after)
                                             or (asked is not None and asked["signal"] is not None))
                if checkpoint is not None and (step % every == 0 or step == warm or step == total or stopping):
                    atomic_save(self.state(step, epoch + at_end_of_epoch, a_order, a_pos,
                                          time.time() - t0), checkpoint)
                if stopping:
                    bar.close()
                    self.stopped_at = (step, total)
                    return False
            epoch += 1
            skip = 0
        bar.close()
        return True

    def split(self):
        """(weight-step split, architecture-step split) of the training images."""
        import torch

        n = len(self.data.train)
        k = min(self.cfg.arch_images, n // 5)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.cfg.seed + 11))
        return self.data.train.subset(perm[k:].sort().values), self.data.train.subset(perm[:k].sort().values)


# --------------------------------------------------------------------------- outputs


def write_history(path: Path, rows: list[dict[str, Any]]) -> None:
    from supernet.atomic import atomic_write_text

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=HISTORY_FIELDS)
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def plot_history(path: Path, rows: list[dict[str, Any]], target: float | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, [r["expected_ms"] for r in rows], label="E[latency] (softmax(alpha))")
    ax.plot(steps, [r["derived_ms"] for r in rows], label="derived architecture (LUT)")
    if target:
        ax.axhline(target, color="k", ls="--", lw=1, label=f"target {target:g} ms")
    warm = [r["step"] for r in rows if r["phase"] == "warmup"]
    if warm:
        ax.axvspan(0, max(warm), color="0.9", label="warm-up")
    ax.set_xlabel("weight step")
    ax.set_ylabel("ms")
    ax.legend()
    ax.set_title("ProxylessNAS search")
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


OUTPUTS = ("search.ckpt.pt", "search.csv", "search.png", "alphas.json", "arch.json", "subnet.onnx", "subnet.tflite",
           "result.json")  # what a search writes in its --out folder


def main(argv: Sequence[str] | None = None) -> int:
    with contextlib.ExitStack() as held:  # the --out folder's lock, released when the command ends
        return _main(argv, held)


def _main(argv: Sequence[str] | None, held: contextlib.ExitStack) -> int:
    ap = argparse.ArgumentParser(prog="python -m search.proxyless", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lut", required=True, help="latency LUT CSV of the target device (a ProxylessNAS space's)")
    ap.add_argument("--latency-ms", type=float, help="target latency T (the target form of the latency loss)")
    ap.add_argument("--latency-loss", choices=["target", "add"], help="target: CE * max(1, E/T)^beta (default "
                    "with --latency-ms); add: CE + lambda * E[latency] (the paper's form, --lambda-latency)")
    ap.add_argument("--beta", type=float, default=SearchConfig.beta, help="target form: exponent (default 3)")
    ap.add_argument("--lambda-latency", type=float, default=None, help="add form: weight per ms of E[latency]")
    ap.add_argument("--grad-mode", choices=["binaryconnect", "reinforce"], default="binaryconnect")
    ap.add_argument("--space", help="search space (default: the one the LUT records)")
    ap.add_argument("--runtime", help="LUT runtime, when the LUT holds several")
    ap.add_argument("--calibration", default="auto", help="auto (the LUT's calibration file when it fits), none, or a file")
    ap.add_argument("--data", default="fmnist", help="fmnist, fmnist:PATH, cifar10:PATH, imagefolder:PATH")
    ap.add_argument("--resolution", type=int, help="input resolution (default: the largest the LUT covers)")
    ap.add_argument("--warmup-epochs", type=float, default=SearchConfig.warmup_epochs)
    ap.add_argument("--search-epochs", type=float, default=SearchConfig.search_epochs)
    ap.add_argument("--batch-size", type=int, default=SearchConfig.batch_size)
    ap.add_argument("--lr", type=float, default=SearchConfig.lr, help="weights: SGD learning rate (cosine)")
    ap.add_argument("--weight-decay", type=float, default=SearchConfig.weight_decay, help="lambda1 of the loss")
    ap.add_argument("--arch-lr", type=float, default=SearchConfig.arch_lr, help="alpha: Adam learning rate")
    ap.add_argument("--arch-every", type=int, default=1, help="one architecture step every N weight steps")
    ap.add_argument("--arch-images", type=int, default=SearchConfig.arch_images,
                    help="training images set aside for the architecture steps")
    ap.add_argument("--retrain-lr", type=float, default=0.15, help="retraining: SGD learning rate (cosine)")
    ap.add_argument("--retrain-epochs", type=float, default=3.0, help="train the derived architecture from "
                    "scratch for this many epochs (0: skip)")
    ap.add_argument("--no-export", action="store_true", help="do not write subnet.onnx / subnet.tflite")
    ap.add_argument("--verify", action="store_true", help="measure the derived network on the LUT's device")
    ap.add_argument("--train-limit", type=int, help="use only this many training images (tests, demos)")
    ap.add_argument("--valid-size", type=int, default=5000, help="held-out images for the final evaluation")
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    ap.add_argument("--threads", type=threads_arg, help="CPU threads (default: all)")
    ap.add_argument("--seed", type=seed_arg, default=0)
    ap.add_argument("--log-every", type=int, default=SearchConfig.log_every, help="history row every N steps")
    ap.add_argument("--out", type=Path, help="output folder (default: runs/proxyless-<lut>-<T>ms)")
    ap.add_argument("--force", action="store_true", help="overwrite an existing --out")
    ap.add_argument("--resume", action="store_true", help="continue the search of an existing --out from its "
                    "checkpoint (same flags; the retraining after it is redone)")
    ap.add_argument("--checkpoint-every", type=int, default=200, help="search steps between checkpoints")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--json", action="store_true", help="print the result as one JSON object")
    args = ap.parse_args(argv)

    import torch

    from profiler.costmodel import LatencyModel, MissingKeysError
    from profiler.lut import LutError, lut_spaces
    from supernet.atomic import atomic_write_text
    from supernet.data import DataError, load_data
    from supernet.device import describe, resolve_device
    from supernet.space import get_space

    def fail(msg: str) -> int:
        print(f"error: {msg}", file=sys.stderr)
        return 2

    # every number a finite one in its range (nan and inf passed `< 0` checks and then failed
    # deep inside the run, or trained on nonsense)
    for name in ("latency_ms", "beta", "lambda_latency", "warmup_epochs", "search_epochs", "retrain_epochs", "lr",
                 "weight_decay", "arch_lr", "retrain_lr"):
        value = getattr(args, name)
        if value is not None and not math.isfinite(value):
            return fail(f"--{name.replace('_', '-')} must be a finite number, got {value}")
    for name in ("lr", "arch_lr", "retrain_lr"):
        if getattr(args, name) <= 0:
            return fail(f"--{name.replace('_', '-')} must be > 0, got {getattr(args, name):g}")
    for name in ("beta", "lambda_latency", "weight_decay"):
        if getattr(args, name) is not None and getattr(args, name) < 0:
            return fail(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name):g}")
    for name in ("resolution", "train_limit", "valid_size"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            return fail(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    loss_form = args.latency_loss or ("target" if args.latency_ms is not None else "add")
    if loss_form == "target" and (args.latency_ms is None or args.latency_ms <= 0):
        return fail("--latency-loss target needs --latency-ms T > 0")
    if loss_form == "add" and args.lambda_latency is None:
        return fail("give --latency-ms T (target form) or --lambda-latency L (the paper's additive form)")
    for name in ("warmup_epochs", "search_epochs", "retrain_epochs"):
        if getattr(args, name) < 0:
            return fail(f"--{name.replace('_', '-')} must be >= 0")
    if args.search_epochs <= 0:
        return fail("--search-epochs must be > 0")
    for name in ("batch_size", "arch_images", "checkpoint_every", "arch_every", "log_every"):
        if getattr(args, name) < 1:
            return fail(f"--{name.replace('_', '-')} must be at least 1")
    progress = not (args.no_progress or args.json)
    try:
        if not Path(args.lut).is_file():
            raise LutError(f"{args.lut}: no such LUT file")
        recorded = lut_spaces(Path(args.lut))
        space_name = args.space or (recorded[0] if len(recorded) == 1 else None)
        if space_name is None:
            raise ValueError(f"{args.lut}: records no single search space; give --space")
        space = get_space(space_name)
        if min(space.depths) != 1:
            raise ValueError(f"space {space.name!r} has depths from {min(space.depths)}: a ProxylessNAS space lets "
                             "every block after a stage's first be the zero path, i.e. depths from 1 "
                             "(proxyless_mobile, proxyless_fmnist); search OFA spaces with search.evolve")
        model = LatencyModel.from_lut(args.lut, space, args.runtime,
                                      calibration={"auto": "auto", "none": None}.get(args.calibration, args.calibration))
        covered = covered_resolutions(model, space)
        if not covered:
            raise ValueError(f"{args.lut} covers no resolution of space {space.name!r} "
                             f"(profile it: python -m profiler.run --space {space.name} --resolutions R)")
        r = args.resolution if args.resolution is not None else max(covered)
        space.require_resolution(r)
        if r not in covered:
            model.tables(r, space.default_width)  # raises MissingKeysError naming the blocks
        device = resolve_device(args.device)
        if args.threads:
            torch.set_num_threads(args.threads)
        data = load_data(args.data, valid_size=args.valid_size, train_limit=args.train_limit, seed=0)
        adapted = adapt_data_note(data, space, args.data)
        data = data.with_channels(space.in_channels)
    except MissingKeysError as exc:
        return fail(str(exc))
    except (ValueError, LutError, DataError) as exc:
        return fail(str(exc))
    n_arch = min(args.arch_images, len(data.train) // 5)
    if len(data.train) - n_arch < args.batch_size:
        return fail(f"{len(data.train) - n_arch} training images for weight steps ({len(data.train)} less {n_arch} "
                    f"for architecture steps) give no full batch of {args.batch_size}: a larger --train-limit or a "
                    f"smaller --batch-size")
    target = args.latency_ms
    out = args.out or Path("runs") / f"proxyless-{Path(args.lut).stem}-{f'{target:g}ms' if target else 'add'}"
    ckpt = out / "search.ckpt.pt"
    if args.resume and args.force:
        return fail("--resume and --force exclude each other")
    if args.resume and not ckpt.is_file():
        return fail(f"{out}: no search checkpoint to resume (search.ckpt.pt); start without --resume")
    if out.exists() and not out.is_dir():
        return fail(f"--out {out} exists and is not a folder")
    if out.exists() and any(out.iterdir()) and not (args.force or args.resume):
        return fail(f"{out}: already exists (--resume to continue its search, --force to start over, or another --out)")
    try:
        out.mkdir(parents=True, exist_ok=True)
        # one search in a folder at a time (a second would overwrite the first's checkpoints)
        held.enter_context(ExclusiveLock(out, f"search folder {out}"))
        if args.force:  # what an earlier search wrote there describes another architecture
            for name in OUTPUTS:
                if (out / name).exists():
                    (out / name).unlink()
    except Busy as exc:
        return fail(str(exc))
    except OSError as exc:
        return fail(f"{out}: cannot write there ({exc.strerror or exc})")

    cfg = SearchConfig(latency_ms=target, latency_loss=loss_form, beta=args.beta,
                       lambda_latency=args.lambda_latency or 0.0, grad_mode=args.grad_mode,
                       warmup_epochs=args.warmup_epochs, search_epochs=args.search_epochs,
                       batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
                       arch_lr=args.arch_lr, arch_every=max(1, args.arch_every), arch_images=args.arch_images,
                       seed=args.seed, log_every=max(1, args.log_every))
    print(f"search.proxyless: {space.name} at {r} px on {describe(device)}, {len(data.train)} training images "
          f"({min(cfg.arch_images, len(data.train) // 5)} for architecture steps), LUT {args.lut} "
          f"[{model.runtime}], loss {loss_form}"
          + (f" (T = {target:g} ms, beta {cfg.beta:g})" if loss_form == "target" else f" (lambda {cfg.lambda_latency:g}/ms)"),
          file=sys.stderr)
    if adapted:
        print(f"note: {adapted}", file=sys.stderr)
    t0 = time.time()
    search = Search(space, r, data, model, cfg, device)
    search.inputs = {"data": args.data, "train_limit": args.train_limit, "valid_size": args.valid_size,
                     "lut_sha256": file_sha256(Path(args.lut)), "runtime": model.runtime,
                     "calibration": list(model.calibration) if model.calibration else None}
    state = None
    if args.resume:
        try:
            state = search.restore(ckpt)
        except ValueError as exc:
            return fail(str(exc))
        print(f"search.proxyless: resuming {ckpt} at step {state['step']}", file=sys.stderr)
        t0 -= state["elapsed"]
    from supernet.dynamic import fast_depthwise

    from supernet.trainer import stop_requests

    # Ctrl-C or SIGTERM: the step finishes, the checkpoint is written there, and --resume goes on
    with fast_depthwise(search.net), stop_requests("search.proxyless") as asked:
        complete = search.run(progress, checkpoint=ckpt, every=args.checkpoint_every, resume=state, asked=asked)
    if not complete:
        again = resume_command("search.proxyless", argv)
        sig = asked["signal"] or "SIGTERM"
        print(f"search.proxyless: {sig}: stopped at step {search.stopped_at[0]} of {search.stopped_at[1]}, saved in "
              f"{ckpt}; continue with: {again}", file=sys.stderr)
        return 128 + getattr(signal, sig)
    search_s = time.time() - t0
    write_history(out / "search.csv", search.history)
    plot_history(out / "search.png", search.history, target)
    atomic_write_text(out / "alphas.json", json.dumps(search.net.path_table(), indent=1) + "\n")
    arch = search.derived()
    lut_ms = float(model.cost([arch])[0])
    blocks = space.blocks(arch)
    result: dict[str, Any] = {
        "space": space.name, "lut": str(args.lut), "runtime": model.runtime, "device": model.device,
        "resolution": r, "subnet": arch.to_dict(), "lut_latency_ms": round(lut_ms, 5),
        "expected_latency_ms": search.history[-1]["expected_ms"], "target_ms": target, "loss": loss_form,
        "grad_mode": cfg.grad_mode, "params": sum(b.params() for b in blocks), "macs": sum(b.macs() for b in blocks),
        "search_seconds": round(search_s, 1), "config": vars(cfg), "train_device": describe(device),
    }
    atomic_write_text(out / "arch.json", json.dumps(arch.to_dict()) + "\n")
    if args.retrain_epochs > 0 or not args.no_export:
        from supernet.ops import build_network

        net = build_network(space, arch)
        if args.retrain_epochs > 0:
            from supernet.standalone import Recipe, train_standalone

            rec = Recipe(epochs=args.retrain_epochs, batch_size=cfg.batch_size, lr=args.retrain_lr,
                         weight_decay=cfg.weight_decay, label_smoothing=cfg.label_smoothing)
            result["retrain"] = train_standalone(net, data, r, rec, device, seed=args.seed, progress=progress)
            result["retrain"]["held_out_images"] = len(data.valid)
        if not args.no_export:
            from profiler.export import export_network

            net = net.cpu().to(memory_format=torch.contiguous_format).eval()
            for fmt in ("onnx", "tflite"):
                path = out / f"subnet.{fmt}"
                try:
                    export_network(space, arch, fmt, path, module=net)
                    result[fmt] = str(path)
                except Exception as exc:  # noqa: BLE001 - one failed format is reported, not fatal
                    result[fmt] = None
                    result[f"{fmt}_error"] = f"{type(exc).__name__}: {exc}"[:300]
    if args.verify:
        from .evolve import verify_on_device

        try:
            result["verify"] = verify_on_device(model, space, [arch], progress=progress)[0]
        except ValueError as exc:
            atomic_write_text(out / "result.json", json.dumps(result, indent=2) + "\n")
            return fail(f"--verify: {exc}")
    result["seconds"] = round(time.time() - t0, 1)
    atomic_write_text(out / "result.json", json.dumps(result, indent=2) + "\n")
    if args.json:
        print(json.dumps(result))
        return 0
    print_table(result, out)
    return 0


def adapt_data_note(data, space, spec: str) -> str | None:
    """How a dataset is fitted to a space whose LUT fixes the network's input channels and
    classifier (e.g. Fashion-MNIST on the Pixel 1 table's 3-channel, 1000-class network): a
    grayscale dataset is repeated to 3 channels; a dataset with fewer classes uses the
    first N outputs of the space's classifier, which is kept so that the deployed network is
    the one the LUT priced.  Raises ValueError for what cannot be fitted."""
    notes = []
    if data.channels != space.in_channels:
        if data.channels != 1:
            raise ValueError(f"dataset {spec!r} has {data.channels} channels; space {space.name!r} takes "
                             f"{space.in_channels}")
        notes.append(f"the 1-channel images repeated to the space's {space.in_channels} channels")
    if data.num_classes > space.num_classes:
        raise ValueError(f"dataset {spec!r} has {data.num_classes} classes; space {space.name!r} has "
                         f"{space.num_classes} outputs")
    if data.num_classes < space.num_classes:
        notes.append(f"its {data.num_classes} classes are the first {data.num_classes} of the space's "
                     f"{space.num_classes} outputs (trained and evaluated over all of them: the classifier "
                     f"the LUT priced is kept)")
    return f"dataset {spec!r}: " + "; ".join(notes) if notes else None


def print_table(result: dict[str, Any], out: Path) -> None:
    rows = [("architecture", json.dumps(result["subnet"], separators=(",", ":"))),
            ("LUT latency", f"{result['lut_latency_ms']:.4f} ms ({result['runtime']}, {result['device']})"),
            ("E[latency] at the end", f"{result['expected_latency_ms']:.4f} ms"
             + (f" (target {result['target_ms']:g} ms)" if result["target_ms"] else "")),
            ("params / MACs", f"{result['params'] / 1e6:.3f} M / {result['macs'] / 1e6:.2f} M"),
            ("search", f"{result['search_seconds']:.0f} s on {result['train_device']}")]
    if "retrain" in result:
        rt = result["retrain"]
        rows.append(("retrained from scratch", f"{rt['top1']:.2f}% held-out top-1 ({rt['epochs']:g} epochs, "
                                               f"{rt['seconds']:.0f} s, {rt['held_out_images']} images)"))
    for fmt in ("onnx", "tflite"):
        if fmt in result:
            rows.append((fmt, result[fmt] or f"failed: {result.get(f'{fmt}_error')}"))
    if "verify" in result:
        v = result["verify"]
        m = v["measured_latency_ms"]
        rows.append((f"measured on {v['device']}", f"{m:.4f} ms ({v['error_pct']:+.1f}% LUT error)" if m is not None
                     else f"failed: {v['measure_error']}"))
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    print(f"wrote {out}/result.json, arch.json, search.csv, search.png, alphas.json")


if __name__ == "__main__":
    run_main(main, "search.proxyless",
             "the last checkpoint (every --checkpoint-every steps) is kept; the same command with --resume continues from it")
