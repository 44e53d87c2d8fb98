"""The machinery behind ``python -m supernet.train``: run folder, checkpoints, distributed
set-up and the training loop over the phases of a ``TrainConfig``.

Run folder (``--out DIR``): ``config.yaml`` (resolved config, written first), ``metrics.csv``
(one row per logged step and per evaluation), ``checkpoints/last.pt`` (every
``ckpt_every`` steps and at phase ends; holds phase, step, model, optimizer, scheduler,
teacher and RNG state) and ``supernet.pt`` (the final supernet).  Every file is written to a
temporary name and ``os.replace``d, so a kill -9 never leaves a broken checkpoint.

Per step, every rank derives the same ``random.Random`` from (seed, phase, step) and so
samples the same resolution and subnets; data are sharded by rank; gradients are averaged by
DistributedDataParallel (gloo on CPU, nccl on GPU).
"""

from __future__ import annotations

import contextlib
import copy
import csv
import io
import json
import math
import os
import random
import signal
import sys
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.distributed as tdist
import torch.nn.functional as F
import yaml
from torch import nn

from .atomic import ExclusiveLock, atomic_open, atomic_write_bytes, atomic_write_text, run_folder_lock  # noqa: F401 (run_folder_lock re-exported)
from .data import Data, TensorSplit, load_data, resize, steps_per_epoch, train_batches
from .device import (apply_allocator, apply_cudnn, resolve_allocator, autocast, describe, grad_scaler, place, process_threads, resolve_amp, resolve_cudnn, resolve_device,
                     to_device)
from .errors import TrainingStopped
from .evaluation import CheckpointError, Evaluator, adapt_space, load_checkpoint, space_record
from .ofa import OFASupernet
from .optim import SGD
from .presets import Phase, TrainConfig
from .space import get_space

METRIC_FIELDS = ("kind", "phase", "phase_step", "global_step", "epoch", "lr", "loss", "acc", "r",
                 "images_per_s", "subnet", "top1", "elapsed_s")


# --------------------------------------------------------------------------- small helpers


@contextlib.contextmanager
def stop_requests(prog: str = "supernet.train"):
    """While training: SIGINT (Ctrl-C) and SIGTERM (a scheduler's preemption) only ask the run
    to stop (``asked["signal"]`` holds the signal's name); the training loop checkpoints and
    stops at the end of its step.  A second signal, half a second or more after the first,
    aborts at once (KeyboardInterrupt).  Outside the main thread, where handlers cannot be set,
    signals keep their defaults."""
    asked: dict[str, str | None] = {"signal": None}
    if threading.current_thread() is not threading.main_thread():
        yield asked
        return
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def restore():
        for s, h in previous.items():
            signal.signal(s, h)

    first = [0.0]

    def handler(signum, _frame):
        if asked["signal"] is not None:
            if time.monotonic() - first[0] < 0.5:  # the same request again: torchrun forwards the
                return  # terminal's Ctrl-C (or a scheduler's SIGTERM) to ranks that already have it
            restore()
            raise KeyboardInterrupt
        asked["signal"], first[0] = signal.Signals(signum).name, time.monotonic()
        if os.environ.get("RANK", "0") != "0":  # under torchrun rank 0 speaks for all
            return
        try:  # the signal may land while the progress bar is writing to stderr: a message, not a crash
            os.write(2, f"\n{prog}: {asked['signal']}: stopping after this step with a checkpoint "
                        "(again to abort at once)\n".encode())
        except OSError:
            pass

    for s in previous:
        signal.signal(s, handler)
    try:
        yield asked
    finally:
        restore()


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str = "auto") -> Dist:
    """The device (``supernet.device.resolve_device``) and, under torchrun (``WORLD_SIZE`` >
    1), the process group: NCCL with one GPU per rank (``cuda:LOCAL_RANK``) on CUDA, gloo on
    the CPU.  Raises ValueError for a device that is not there."""
    dev = resolve_device(device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        return Dist(device=dev)
    if dev.type == "cuda":
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(dev)
    tdist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return Dist(tdist.get_rank(), tdist.get_world_size(), dev)


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` into memory, then ``supernet.atomic.atomic_write_bytes`` (temporary
    file in the same folder, fsync, rename, fsync of the folder): a kill -9 leaves the old
    file or the new one, never a torn one."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buf.getvalue())


def step_rng(seed: int, phase: int, step: int) -> random.Random:
    """The same generator on every rank and after a resume."""
    return random.Random(f"{seed}/{phase}/{step}")


def soft_cross_entropy(logits: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against a soft target distribution (OFA's ``cross_entropy_loss_with_soft_target``)."""
    return torch.mean(torch.sum(-soft * F.log_softmax(logits, dim=1), dim=1))


def make_optimizer(model: nn.Module, cfg: TrainConfig, lr: float) -> torch.optim.Optimizer:
    """SGD; no weight decay on BN parameters and biases (OFA ``no_decay_keys='bn#bias'``);
    PyTorch's fused kernel where the parameters allow it (``optim.SGD``)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if (p.dim() == 1 or ".bns." in name) else decay).append(p)
    return SGD([{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
               lr=lr, momentum=cfg.momentum, nesterov=cfg.nesterov)


def make_scheduler(opt: torch.optim.Optimizer, total: int, warmup: int,
                   final: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up then cosine decay to ``final`` times the base rate, per step."""
    def f(s: int) -> float:
        if s < warmup:
            return (s + 1) / warmup
        return final + (1 - final) * 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, total - warmup)))
    return torch.optim.lr_scheduler.LambdaLR(opt, f)


def phase_subnets(model: OFASupernet, phase: Phase, rng: random.Random):
    """The resolution and the subnets of one step, per the phase's rule."""
    space = model.space
    choices = phase.choices.resolve(space)
    r = rng.choice(space.resolutions)
    if phase.rule == "max":
        return r, [choices.largest(space, r=r)]
    if phase.rule == "sandwich":
        rest = [replace(choices.sample(space, rng), r=r) for _ in range(phase.subnets_per_step - 2)]
        return r, [choices.largest(space, r=r), choices.smallest(space, r=r)] + rest
    return r, [replace(choices.sample(space, rng), r=r) for _ in range(phase.subnets_per_step)]


class Metrics:
    """``metrics.csv``, appended line by line; on resume rows past the checkpoint are dropped."""

    def __init__(self, path: Path, active: bool, keep_until: int | None):
        self.path, self.active = path, active
        if not active:
            return
        rows = []
        if keep_until is not None and path.is_file():
            text = path.read_text(errors="replace")
            if text and not text.endswith("\n"):
                text = text[: text.rfind("\n") + 1]  # a torn last line from a kill -9
            for r in csv.DictReader(io.StringIO(text)):
                try:
                    if int(r["global_step"]) <= keep_until:
                        rows.append(r)
                except (KeyError, TypeError, ValueError):
                    continue  # a malformed row is dropped on resume, never a traceback
        with atomic_open(path, "w", newline="") as f:
            w = csv.DictWriter(f, METRIC_FIELDS)
            w.writeheader()
            w.writerows(rows)

    def write(self, **row: Any) -> None:
        if not self.active:
            return
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, METRIC_FIELDS).writerow({k: row.get(k, "") for k in METRIC_FIELDS})


# --------------------------------------------------------------------------- training


RESUME_FREE = ("device", "amp", "cudnn", "allocator", "threads", "workers")  # may differ on a resume (where it runs, not what)


def prepare(cfg: TrainConfig, dist: Dist) -> tuple[Data, OFASupernet]:
    """The run's data and a fresh supernet on ``dist.device`` (channels-last when asked).
    In-memory datasets move to a GPU when they take under a quarter of its free memory."""
    base = cfg.base_resolution or max(get_space(cfg.space).resolutions)
    data = load_data(cfg.data, cfg.valid_size, cfg.recal_images, cfg.train_limit, cfg.seed, base)
    if dist.device.type == "cuda" and isinstance(data.train, TensorSplit):
        free, _total = torch.cuda.mem_get_info(dist.device)
        size = sum(s.images.numel() for s in (data.train, data.valid, data.recal))
        if size < free / 4:
            data.train, data.valid, data.recal = (s.to(dist.device) for s in (data.train, data.valid, data.recal))
    space = adapt_space(get_space(cfg.space), data.channels, data.num_classes)
    torch.manual_seed(cfg.seed)  # weight init and dropout; the state is checkpointed
    return data, place(OFASupernet(space, bn=cfg.bn, dropout=cfg.dropout), dist.device, cfg.channels_last)


def resolve_runtime(cfg: TrainConfig, dist: Dist) -> TrainConfig:
    """``cfg`` with the device and precision actually used (written to ``config.yaml``)."""
    return replace(cfg, device=str(dist.device), amp=resolve_amp(cfg.amp, dist.device),
                   cudnn=resolve_cudnn(cfg.cudnn, dist.device), allocator=resolve_allocator(cfg.allocator, dist.device))


def _comparable(d: dict) -> dict:
    return {k: v for k, v in d.items() if k not in RESUME_FREE}


def train(cfg: TrainConfig, out: Path, resume: bool = False, dist: Dist = Dist(),
          progress: bool = True, crash_after_step: int | None = None, dump_rank_weights: bool = False,
          crash_signal: int = signal.SIGKILL, lock: ExclusiveLock | None = None) -> Path:
    """Train ``cfg`` into run folder ``out``; returns the path of the final supernet.

    The run folder must be new or empty unless ``resume`` (the caller checks; see
    ``supernet.train``).  Writes ``config.yaml`` (with the device and precision used),
    ``metrics.csv``, ``checkpoints/last.pt``, ``supernet.pt`` and ``result.json`` (top-1 of
    the largest and smallest subnet on the whole held-out split).  SIGINT or SIGTERM stops
    the run at the end of a step with a checkpoint (``TrainingStopped``).  The run folder is
    locked while it runs (``lock``: the caller's lock on it, taken before it looked inside;
    otherwise taken here once the folder exists): a second run in it is ``Busy``."""
    with stop_requests() as asked, contextlib.ExitStack() as held:
        if lock is not None:
            held.enter_context(lock)
        return _train(cfg, Path(out), resume, dist, progress, crash_after_step, dump_rank_weights, crash_signal, asked,
                      held, lock)


def _train(cfg: TrainConfig, out: Path, resume: bool, dist: Dist, progress: bool, crash_after_step: int | None,
           dump_rank_weights: bool, crash_signal: int, asked: dict, held: contextlib.ExitStack,
           lock: ExclusiveLock | None) -> Path:
    out = Path(out)
    ckpt_path, final_path = out / "checkpoints" / "last.pt", out / "supernet.pt"
    cfg = replace(cfg, threads=process_threads(cfg.threads))  # config.yaml records what each process ran
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.deterministic:
        if dist.device.type == "cuda":  # cuBLAS matrix products are deterministic only with a fixed workspace
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    cfg = resolve_runtime(cfg, dist)
    apply_cudnn(cfg.cudnn)
    apply_allocator(cfg.allocator)
    data, model = prepare(cfg, dist)  # a missing dataset fails here, before anything is written
    teacher, teacher_cfg, ckpt = None, None, None
    if resume and ckpt_path.is_file():  # a refused resume leaves the run folder as it was
        ckpt = load_checkpoint(ckpt_path)
        if _comparable(ckpt["config"]) != _comparable(cfg.to_dict()):
            raise CheckpointError(f"{ckpt_path} was written by a different config; resume with the same flags")
    if dist.main:
        out.mkdir(parents=True, exist_ok=True)
        # one run in a folder at a time (two would overwrite each other's checkpoints)
        if lock is None:
            held.enter_context(run_folder_lock(out))
        atomic_write_text(out / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    space = model.space
    record = space_record(cfg.space, space)
    state = {"phase": 0, "pstep": 0, "global_step": 0, "elapsed": 0.0}
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        state = dict(ckpt["state"])
        if ckpt.get("teacher") is not None:
            teacher_cfg = ckpt["teacher_cfg"]
            teacher = _teacher_from_state(space, teacher_cfg, ckpt["teacher"], device=dist.device,
                                          channels_last=cfg.channels_last)
        torch.set_rng_state(ckpt["torch_rng"])  # last: dropout continues exactly
        if dist.device.type == "cuda" and ckpt.get("cuda_rng") is not None:  # dropout on the GPU draws from it
            torch.cuda.set_rng_state(ckpt["cuda_rng"], dist.device)
    metrics = Metrics(out / "metrics.csv", dist.main, state["global_step"] if ckpt else None)

    ddp = model
    if dist.world > 1:
        ddp = nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)

    spe = steps_per_epoch(len(data.train), cfg.batch_size, dist.world)
    if spe < 1:
        raise ValueError(f"{len(data.train)} training images give no full batch of {cfg.batch_size} per rank")
    totals = [max(1, round(p.epochs * spe)) for p in cfg.phases]
    evaluator = (Evaluator(model, data, cfg.recal_images, cfg.eval_images, device=dist.device, amp=cfg.amp,
                           channels_last=cfg.channels_last) if dist.main else None)
    scaler = grad_scaler(dist.device, cfg.amp)

    from tqdm import tqdm
    bar = tqdm(total=sum(totals), initial=state["global_step"], disable=not (progress and dist.main),
               dynamic_ncols=True, unit="step")
    if dist.main:  # where it runs, always said (stderr, beside the bar)
        cudnn = f", cuDNN {cfg.cudnn}" if dist.device.type == "cuda" else ""
        keep = ", allocator keeps freed memory" if cfg.allocator == "keep" else ""
        ranks = f" in each of {dist.world} processes" if dist.world > 1 else ""
        bar.write(f"supernet.train: {describe(dist.device)}{ranks}, amp {cfg.amp}{cudnn}{keep}, "
                  f"{'channels-last' if cfg.channels_last else 'NCHW'}, {len(data.train)} training images",
                  file=sys.stderr)
        if ckpt is not None:
            phase_name = cfg.phases[min(state["phase"], len(cfg.phases) - 1)].name if cfg.phases else "-"
            bar.write(f"supernet.train: resuming {ckpt_path} at step {state['global_step']} of {sum(totals)} "
                      f"(phase {phase_name})", file=sys.stderr)
        elif resume:
            bar.write(f"supernet.train: --resume: no checkpoint at {ckpt_path} yet, starting from the first step",
                      file=sys.stderr)
    start_time = time.time() - state["elapsed"]

    def checkpoint(opt, sched):
        if not dist.main:
            return
        state["elapsed"] = time.time() - start_time
        atomic_save({
            "version": 1, "config": cfg.to_dict(), "space": record, "state": dict(state),
            "model": model.state_dict(),
            "optimizer": opt.state_dict() if opt else None, "scheduler": sched.state_dict() if sched else None,
            "scaler": scaler.state_dict() if scaler is not None else None,
            "teacher": teacher.state_dict() if teacher is not None else None, "teacher_cfg": teacher_cfg,
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(dist.device) if dist.device.type == "cuda" else None,
        }, ckpt_path)

    def evaluate(kind: str, phase: Phase, images: int | None):
        model.eval()
        choices = phase.choices.resolve(space)
        r = max(space.resolutions)
        results = {}
        saved = evaluator.eval_images
        evaluator.eval_images = images
        for tag, sub in (("max", choices.largest(space, r=r)), ("min", choices.smallest(space, r=r))):
            results[tag] = {"subnet": sub.to_dict(), "top1": evaluator.evaluate(sub)}
            metrics.write(kind=kind, phase=phase.name, phase_step=state["pstep"],
                          global_step=state["global_step"], subnet=tag, r=r,
                          top1=f"{results[tag]['top1']:.2f}", elapsed_s=f"{time.time() - start_time:.1f}")
        evaluator.eval_images = saved
        model.train()
        return results

    trained_expands: set[float] = set()
    for p in cfg.phases[:state["phase"]]:
        trained_expands.update(p.choices.resolve(space).expands)

    def stop_asked(at_log_step: bool) -> bool:
        """Whether a signal asked the run to stop; under DDP the ranks agree at log steps
        (one small all-reduce there, not a device sync every step)."""
        if dist.world == 1:
            return asked["signal"] is not None
        if not at_log_step:
            return False
        flag = torch.tensor([1.0 if asked["signal"] is not None else 0.0], device=dist.device)
        tdist.all_reduce(flag, op=tdist.ReduceOp.MAX)
        return bool(flag.item())

    def stop(opt, sched):
        checkpoint(opt, sched)
        bar.close()
        raise TrainingStopped(asked["signal"] or "SIGTERM", state["global_step"], sum(totals), ckpt_path)

    state_phase_at_start = state["phase"]
    for pi in range(state["phase"], len(cfg.phases)):
        phase = cfg.phases[pi]
        total = totals[pi]
        fresh = state["pstep"] == 0
        if fresh and phase.sort_channels:
            model.sort_channels(keep_expands=sorted(trained_expands))
        lr = phase.lr * (dist.world if cfg.scale_lr_by_world else 1)
        opt = make_optimizer(model, cfg, lr)
        sched = make_scheduler(opt, total, round(phase.warmup_epochs * spe), phase.final_lr_ratio)
        if not fresh and ckpt is not None and ckpt["optimizer"] is not None:
            opt.load_state_dict(ckpt["optimizer"])
            sched.load_state_dict(ckpt["scheduler"])
        if pi == state_phase_at_start and ckpt is not None and scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])  # fp16's loss scale carries over phases, as in an unbroken run
        use_teacher = phase.distill and teacher is not None and cfg.kd_weight > 0
        model.train()
        t_log, n_log = time.time(), 0
        loss_sum = torch.zeros((), device=dist.device)  # over the log window, read once per log line
        acc_sum = torch.zeros((), device=dist.device)
        while state["pstep"] < total:
            epoch, in_epoch = divmod(state["pstep"], spe)
            batches = train_batches(data.train, cfg.batch_size, cfg.seed, pi * 100_000 + epoch, in_epoch,
                                    dist.rank, dist.world, cfg.workers)
            for _step, x, y in batches:
                r, subnets = phase_subnets(model, phase, step_rng(cfg.seed, pi, state["pstep"]))
                x = to_device(resize(to_device(x, dist.device), r), dist.device, cfg.channels_last)
                y = to_device(y, dist.device)
                soft = None
                if use_teacher:
                    with torch.no_grad(), autocast(dist.device, cfg.amp):
                        soft = F.softmax(teacher(x).float(), dim=1)
                opt.zero_grad(set_to_none=True)
                for i, sub in enumerate(subnets):
                    model.set_active(sub)
                    sync = contextlib.nullcontext() if (dist.world == 1 or i == len(subnets) - 1) else ddp.no_sync()
                    with sync:
                        with autocast(dist.device, cfg.amp):
                            logits = ddp(x).float()
                            loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
                            if soft is not None:
                                loss = loss + cfg.kd_weight * soft_cross_entropy(logits, soft)
                        (scaler.scale(loss) if scaler is not None else loss).backward()
                    if phase.rule == "sandwich" and i == 0 and soft is None:
                        soft = F.softmax(logits.detach(), dim=1)  # in-place distillation
                    loss_sum += loss.detach() / len(subnets)
                    acc_sum += (logits.detach().argmax(1) == y).float().mean() * 100 / len(subnets)
                if scaler is not None:
                    scaler.step(opt)
                    scaler.update()
                else:
                    opt.step()
                sched.step()
                state["pstep"] += 1
                state["global_step"] += 1
                n_log += 1
                bar.update(1)
                if state["pstep"] % cfg.log_every == 0 or state["pstep"] == total:
                    now = time.time()
                    cur_lr = opt.param_groups[0]["lr"]
                    row = dict(kind="train", phase=phase.name, phase_step=state["pstep"],
                               global_step=state["global_step"], epoch=f"{state['pstep'] / spe:.3f}",
                               lr=f"{cur_lr:.6g}", loss=f"{loss_sum.item() / n_log:.4f}",
                               acc=f"{acc_sum.item() / n_log:.2f}",
                               r=r, images_per_s=f"{n_log * len(y) * dist.world / (now - t_log):.1f}",
                               elapsed_s=f"{now - start_time:.1f}")
                    metrics.write(**row)
                    bar.set_postfix(phase=phase.name, loss=row["loss"], acc=row["acc"], lr=row["lr"])
                    t_log, n_log = now, 0
                    loss_sum.zero_()
                    acc_sum.zero_()
                if state["pstep"] == total:
                    break
                if state["pstep"] % cfg.ckpt_every == 0:
                    checkpoint(opt, sched)
                if crash_after_step is not None and state["global_step"] == crash_after_step:
                    os.kill(os.getpid(), crash_signal)  # tests: kill -9, or a signal that asks to stop
                if stop_asked(state["pstep"] % cfg.log_every == 0):
                    stop(opt, sched)
        # end of phase: teacher, evaluation, checkpoint at the start of the next phase
        trained_expands.update(phase.choices.resolve(space).expands)
        if phase.rule == "max" and teacher is None and cfg.kd_weight > 0:
            teacher_cfg = phase.choices.largest(space).to_dict()
            teacher = _teacher_from_state(space, teacher_cfg, None, model, device=dist.device,
                                          channels_last=cfg.channels_last)
        if dist.main and cfg.eval_phases:
            evaluate("eval", phase, cfg.eval_images)
        state["phase"], state["pstep"] = pi + 1, 0
        ckpt = None
        checkpoint(None, None)
        if dist.world > 1:
            tdist.barrier()
        if stop_asked(True) and pi + 1 < len(cfg.phases):
            stop(None, None)
    bar.close()
    if dump_rank_weights:  # tests compare the ranks' weights
        atomic_save({k: v for k, v in model.named_parameters()}, out / f"rank{dist.rank}.pt")
    if dist.main:
        atomic_save({"version": 1, "config": cfg.to_dict(), "space": record, "model": model.state_dict(),
                     "state": dict(state)}, final_path)
        if cfg.phases and not (out / "result.json").is_file():
            if asked["signal"] is not None:  # trained and saved; the evaluation waits for --resume
                raise TrainingStopped(asked["signal"], state["global_step"], sum(totals), final_path)
            res = evaluate("final", cfg.phases[-1], None)
            n = len(data.valid)
            result = {"preset": cfg.preset, "method": cfg.method, "device": cfg.device, "amp": cfg.amp,
                      "train_seconds": round(state["elapsed"] or (time.time() - start_time), 1),
                      "held_out_images": n, "recal_images": cfg.recal_images,
                      **{f"{k}_top1": round(v["top1"], 3) for k, v in res.items()},
                      **{f"{k}_subnet": v["subnet"] for k, v in res.items()}}
            atomic_write_text(out / "result.json", json.dumps(result, indent=2) + "\n")
            if progress:
                print(f"supernet.train: largest {result['max_top1']:.2f}%, smallest {result['min_top1']:.2f}% "
                      f"top-1 on {n} held-out images after {result['train_seconds']:.0f} s of training")
    return final_path


def _teacher_from_state(space, teacher_cfg: dict, state: dict | None, model: OFASupernet | None = None,
                        device: torch.device = torch.device("cpu"), channels_last: bool = False):
    """The frozen full network used for knowledge distillation."""
    from .ops import build_network
    from .space import SubnetConfig

    cfg = SubnetConfig.from_dict(teacher_cfg)
    if model is not None:
        net = model.extract(cfg)
    else:
        with torch.random.fork_rng(devices=[]):
            net = build_network(space, cfg)
        net.load_state_dict(state)
    net = place(copy.deepcopy(net).eval(), device, channels_last)
    for p in net.parameters():
        p.requires_grad_(False)
    return net


__all__ = ["Dist", "init_distributed", "train", "atomic_save", "Metrics", "phase_subnets", "step_rng", "TrainingStopped"]
