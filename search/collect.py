"""Accuracy data for the predictor: sample subnets of a trained supernet, recalibrate BN and
evaluate each on the held-out split (``supernet.evaluation.Evaluator``).

    python -m search.collect --run RUN --subnets N [--seed S] [--eval-images M]
    torchrun --nproc_per_node 2 -m search.collect -- --run RUN --subnets N     # sharded

(The ``--`` keeps torchrun from reading ``--run`` as an abbreviation of its own ``--run-path``.)

Subnet ``i`` is drawn from its own seeded generator (``random.Random(f"{seed}:{i}")``), so
the list does not depend on how it is sharded or resumed.  Process ``rank`` of ``world``
(torchrun's RANK / WORLD_SIZE) evaluates the indices ``i % world == rank`` and appends each
row, flushed, to ``RUN/accuracy.parts/rank<rank>.csv``; a rerun skips the indices any part
already holds (resumable; a torn last line is ignored).  Whenever a process finishes it
merges all parts into ``RUN/accuracy.csv`` (atomically), so the last to finish leaves the
complete table.  No process group is needed.

Columns of ``accuracy.csv``: ``index, subnet, acc`` (fraction), ``top1`` (percent),
``r, w, macs_m, params_m, seconds, rank, status, error``.  The resolved settings are written
to ``RUN/accuracy.config.json``.

``--workers N`` (CPU, one process: default ``auto``, 2 or the cores this process may use if
fewer, once there are at least 8 subnets to evaluate) evaluates N subnets at a time in spawned
processes of one thread each that die with this one (``search.workers``); this
process writes every row, so the files and the resumption are those of one process.  On two
cores two one-thread processes evaluate 1.1-1.3x faster than one process of two threads
(measured on two AMD EPYC hosts; README, "Hardware-aware search"), with the same accuracies.

``--precision int8 [--runtime tflite|onnxruntime]`` (issue 16) evaluates the same subnets
post-training quantized as the profiler quantizes for a device (``Evaluator.int8_top1``:
calibrated on real training images, run by the runtime on this host) into
``RUN/accuracy-int8-<runtime>.csv`` (its own parts and config; ``acc``/``top1`` are the int8
accuracy, ``fp32_top1`` beside it), which ``search.predictor --data`` takes like
``accuracy.csv`` to train an int8 predictor.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Callable, Iterable, Sequence

from profiler.lut import drop_torn_tail
from supernet.atomic import ExclusiveLock, atomic_open, atomic_write_text, file_sha256, lock_path
from supernet.cliargs import allocator_mode, run_main, seed_arg
from supernet.space import SearchSpace, SubnetConfig

COLUMNS = ["index", "subnet", "acc", "top1", "r", "w", "macs_m", "params_m", "seconds", "rank", "status", "error"]
INT8_COLUMNS = COLUMNS + ["fp32_top1"]  # accuracy-int8-<runtime>.csv: the fp32 top-1 beside the int8 one


def columns_for(stem: str) -> list[str]:
    return COLUMNS if stem == "accuracy" else INT8_COLUMNS


def stem_for(precision: str = "fp32", runtime: str = "tflite") -> str:
    """The file stem of a run's accuracy data: ``accuracy``, or ``accuracy-int8-<runtime>``."""
    return "accuracy" if precision == "fp32" else f"accuracy-{precision}-{runtime}"


def subnet_at(space: SearchSpace, seed: int, index: int, resolutions: Sequence[int],
              widths: Sequence[float]) -> SubnetConfig:
    """Subnet number ``index`` of the seeded list (independent of sharding)."""
    return space.canonical(space.sample(random.Random(f"{seed}:{index}"), resolutions=resolutions, widths=widths))


def parse_row(row: dict[str, str], where: str) -> tuple[SubnetConfig, float | None]:
    """The subnet and accuracy (a finite fraction in [0, 1]; None for a failed row) of one
    accuracy row.  Raises ValueError naming ``where``."""
    try:
        cfg = SubnetConfig.from_json(row["subnet"])  # a too deeply nested JSON is a ValueError there
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{where}: {str(exc)[:300]}") from None
    if row.get("status", "ok") not in ("ok", ""):
        return cfg, None
    try:
        acc = float(row["acc"])
    except (KeyError, TypeError, ValueError):
        acc = math.nan
    if not 0.0 <= acc <= 1.0:  # NaN fails too
        raise ValueError(f"{where}: acc must be a fraction in [0, 1], got {str(row.get('acc'))[:40]!r}")
    return cfg, acc


def read_csv_rows(path: Path) -> list[tuple[str, dict[str, str]]]:
    """(``file:line``, row) for every row of a CSV, a torn last line (no newline: a killed
    writer) left out.  Raises ValueError naming the file and line."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise ValueError(f"{path}: cannot read: {exc.strerror}") from None
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
    reader = csv.DictReader(io.StringIO(text))
    out = []
    try:
        for row in reader:
            where = f"{path}:{reader.line_num}"
            if None in row or None in row.values():
                raise ValueError(f"{where}: wrong number of fields")
            out.append((where, row))
    except csv.Error as exc:
        raise ValueError(f"{path}:{reader.line_num}: malformed CSV: {exc}") from None
    return out


def read_rows(paths: Iterable[Path]) -> dict[int, dict[str, str]]:
    """Rows by index from CSV files (missing files skipped, a torn last line left out; the
    last row of an index wins).  A row that does not parse is an error naming file and line,
    never dropped: the merge rewrites accuracy.csv from these rows."""
    out: dict[int, dict[str, str]] = {}
    for p in paths:
        if not p.is_file():
            continue
        for where, row in read_csv_rows(p):
            try:
                idx = int(row["index"])
            except (KeyError, TypeError, ValueError):
                raise ValueError(f"{where}: index is not an integer: {str(row.get('index'))[:40]!r}") from None
            parse_row(row, where)
            out[idx] = row
    return out


def merge(run: Path, stem: str = "accuracy") -> Path:
    """Write ``<stem>.csv`` from every part (sorted by index), atomically.  Ranks merge one at
    a time (a lock in the parts folder), so a rank that read the parts before another rank's
    last row cannot replace that rank's later, complete table."""
    import fcntl

    parts_dir = run / f"{stem}.parts"
    parts_dir.mkdir(parents=True, exist_ok=True)
    with open(parts_dir / ".merge.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        parts = sorted(parts_dir.glob("rank*.csv"))
        rows = read_rows([run / f"{stem}.csv", *parts])
        path = run / f"{stem}.csv"
        with atomic_open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=columns_for(stem), extrasaction="ignore")
            w.writeheader()
            for idx in sorted(rows):
                w.writerow(rows[idx])
    return path


def timed(evaluate: Callable[[SubnetConfig], float | dict], cfg: SubnetConfig) -> tuple[float | dict | None, str, float]:
    """(what ``evaluate(cfg)`` returned or None, the error or "", seconds): a failed subnet is
    a row, not a crash."""
    t0 = time.perf_counter()
    try:
        out, error = evaluate(cfg), ""
    except Exception as exc:  # noqa: BLE001 - a failed subnet is a row, not a crash
        out, error = None, f"{type(exc).__name__}: {exc}"[:300]
    return out, error, round(time.perf_counter() - t0, 3)


def evaluation(evaluator, precision: str = "fp32", runtime: str = "tflite") -> Callable[[SubnetConfig], float | dict]:
    """What a collection calls per subnet: the fp32 top-1, or for int8 ``{top1, fp32_top1}``."""
    if precision == "fp32":
        return evaluator.evaluate

    def evaluate(cfg: SubnetConfig) -> dict:
        q = evaluator.int8_top1(cfg, runtime)
        return {"top1": q["int8_top1"], "fp32_top1": q["torch_top1"]}
    return evaluate


MIN_POOLED = 8  # fewer subnets than this are evaluated in this process: a worker takes seconds to start

def _worker_task(cfg_json: str, precision: str, runtime: str) -> tuple[float | dict | None, str, float]:
    from search.workers import evaluator

    return timed(evaluation(evaluator(), precision, runtime), SubnetConfig.from_json(cfg_json))


def worker_pool(workers: int, run: Path, data: str | None, eval_images: int | None, recal_images: int | None,
                allocator: str, precision: str = "fp32", runtime: str = "tflite"):
    """For ``collect(pool=...)``: ``workers`` evaluation processes (``search.workers``) and the
    task they run per subnet (the subnet as JSON in, ``timed``'s triple out)."""
    from functools import partial

    from search.workers import evaluator_pool

    return (evaluator_pool(workers, run, data, eval_images, recal_images, allocator),
            partial(_worker_task, precision=precision, runtime=runtime))


def _evaluations(todo: list[int], cfgs: dict[int, SubnetConfig], evaluate, pool, task):
    """(index, result, error, seconds) for every index of ``todo``: in this process, in
    order, or as ``pool``'s workers finish ``task`` for them."""
    if pool is None:
        for i in todo:
            yield (i, *timed(evaluate, cfgs[i]))
        return
    from search.workers import WorkerDied, finished

    try:
        for i, got in finished(pool, task, {i: (cfgs[i].to_json(),) for i in todo}):
            yield (i, *got)
    except WorkerDied:
        raise OSError("an evaluation worker died (out of memory?); the rows so far are kept; "
                      "rerun with --workers 1") from None


def collect(
    run: Path,
    space: SearchSpace,
    evaluate: Callable[[SubnetConfig], float | dict],
    n: int,
    seed: int,
    resolutions: Sequence[int],
    widths: Sequence[float],
    rank: int = 0,
    world: int = 1,
    progress: bool = True,
    stem: str = "accuracy",
    pool: Callable[[], tuple[object, Callable]] | None = None,
) -> tuple[int, int]:
    """Evaluate this rank's share of the first ``n`` subnets that no part holds yet.

    Args:
        run: run folder (parts and the merged CSV go there).
        space: the run's space; ``evaluate(cfg)`` returns top-1 in percent, or a dict with
            ``top1`` and ``fp32_top1`` (an int8 evaluation).
        n, seed, resolutions, widths: which subnets.
        rank, world: this process's shard.
        stem: ``accuracy`` or ``stem_for(precision, runtime)`` (files ``<stem>.csv``, ``<stem>.parts``).
        pool: called with no argument when at least ``MIN_POOLED`` subnets are to be evaluated,
            it returns an executor and the task its workers run per subnet (``worker_pool``);
            this process still writes every row.
    Returns:
        (evaluated now, already present) for this rank's share.
    """
    from contextlib import nullcontext

    from tqdm import tqdm

    from search.latency import MacsModel, ParamsModel

    parts_dir = run / f"{stem}.parts"
    parts_dir.mkdir(parents=True, exist_ok=True)
    part = parts_dir / f"rank{rank}.csv"
    # one process per part: a second collection of the same rank would evaluate the same
    # subnets and interleave its rows with this one's
    with ExclusiveLock(lock_path(part), f"{part} (search.collect rank {rank})"):
        done = read_rows([run / f"{stem}.csv", *parts_dir.glob("rank*.csv")])
        mine = [i for i in range(n) if i % world == rank]
        todo = [i for i in mine if i not in done or done[i].get("status") != "ok"]
        new_file = not part.is_file() or part.stat().st_size == 0
        macs, params = MacsModel(space), ParamsModel(space)
        if not new_file:
            drop_torn_tail(part)  # a row torn by a kill is evaluated again
        cfgs = {i: subnet_at(space, seed, i, resolutions, widths) for i in todo}
        executor, task = pool() if pool is not None and len(todo) >= MIN_POOLED else (None, None)
        with part.open("a", newline="") as f, executor or nullcontext():
            w = csv.DictWriter(f, fieldnames=columns_for(stem))
            if new_file:
                w.writeheader()
            bar = tqdm(total=len(todo), desc=f"collect (rank {rank})", unit="subnet", disable=not progress or rank != 0)
            for i, out, error, seconds in _evaluations(todo, cfgs, evaluate, executor, task):
                cfg = cfgs[i]
                row = {"index": i, "subnet": cfg.to_json(), "r": cfg.r, "w": cfg.w, "rank": rank, "seconds": seconds,
                       "macs_m": round(float(macs.cost([cfg])[0]), 3), "params_m": round(float(params.cost([cfg])[0]), 4)}
                if error:
                    row.update(acc="", top1="", status="error", error=error)
                else:
                    top1 = float(out["top1"] if isinstance(out, dict) else out)
                    if isinstance(out, dict):
                        row["fp32_top1"] = round(float(out["fp32_top1"]), 4)
                    row.update(acc=round(top1 / 100.0, 6), top1=round(top1, 4), status="ok", error="")
                    bar.set_postfix(top1=f"{top1:.2f}")
                w.writerow(row)
                f.flush()
                os.fsync(f.fileno())
                bar.update(1)
            bar.close()
        merge(run, stem)
        return len(todo), len(mine) - len(todo)


SETTINGS = ("seed", "resolutions", "widths", "space_name")  # what decides subnet number i
# and what decides its accuracy: the supernet's weights (a run trained again is another supernet)
IDENTITY = ("supernet_sha256",)


def check_settings(run: Path, config: dict, force: bool, rank: int, world: int, stem: str = "accuracy") -> None:
    """Refuse to add to accuracy data collected with other settings (row ``i`` would be
    another subnet's) or from another supernet (its rows would be another network's
    accuracies: the run was trained again); with ``force``, rank 0 renames the old data aside first.  Raises
    ValueError."""
    path = run / f"{stem}.config.json"
    old_data = [p for p in (run / f"{stem}.csv", run / f"{stem}.parts") if p.exists()]
    if not path.is_file() or not old_data:
        return
    try:
        prev = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: unreadable ({exc}); move it and the accuracy data aside") from None
    changed = [k for k in (*SETTINGS, *IDENTITY) if isinstance(prev, dict) and k in prev and k in config
               and prev[k] != config[k]]
    if not changed:
        return
    said = ", ".join(f"another supernet.pt (SHA-256 {str(prev[k])[:12]}, now {str(config[k])[:12]}: the run was "
                     f"trained again)" if k in IDENTITY else f"--{k.replace('_name', '')} {prev[k]} (now {config[k]})"
                     for k in changed)
    if not force:
        raise ValueError(f"{path}: the accuracy data there was collected with {said}; use the same settings, "
                         f"or --force to set it aside and start again")
    if world > 1:
        raise ValueError("--force with several processes: run it once with one process first")
    stamp = time.strftime("%Y%m%dT%H%M%S")
    for p in (*old_data, path):
        aside = p.with_name(f"{p.stem}.{stamp}{p.suffix}")
        p.rename(aside)
        print(f"note: {p} -> {aside} (collected with other settings)", file=sys.stderr)


def collect_workers(flag: str, device_type: str, world: int) -> int:
    """``--workers``: auto is 2 (or the usable cores if fewer) on the CPU in one process, 1 on
    a GPU or under torchrun (a rank is a worker).  Raises ValueError for more than one there."""
    if flag == "auto":
        from profiler.export import default_export_workers

        return default_export_workers() if device_type == "cpu" and world == 1 else 1
    if int(flag) > 1 and device_type != "cpu":
        raise ValueError(f"--workers {flag}: evaluation workers are for the CPU (this run evaluates on {device_type}); "
                         "use --workers 1, or torchrun for one rank per GPU")
    if int(flag) > 1 and world > 1:
        raise ValueError(f"--workers {flag} under torchrun ({world} ranks): each rank is a worker; use --workers 1")
    return int(flag)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m search.collect", description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True, type=Path, help="run folder written by supernet.train")
    ap.add_argument("--subnets", required=True, type=int, help="number of subnets (the first N of the seeded list)")
    ap.add_argument("--seed", type=seed_arg, default=0)
    ap.add_argument("--resolutions", help="resolutions to sample, comma separated (default: the space's)")
    ap.add_argument("--widths", help="width multipliers to sample (default: the ones the run trained)")
    ap.add_argument("--eval-images", type=int, help="held-out images per subnet (default: all)")
    ap.add_argument("--recal-images", type=int,
                    help="training images each subnet's BN is recalibrated on (default: the run's recal_images)")
    ap.add_argument("--data", help="override the run's dataset location")
    ap.add_argument("--force", action="store_true",
                    help="other --seed/--resolutions/--widths (or another supernet.pt) than the run's accuracy data was "
                         "collected with: "
                         "set the old data aside (renamed with a time stamp) and start a new list")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (under torchrun: cuda:LOCAL_RANK)")
    ap.add_argument("--amp", default="auto", help="auto | bf16 | fp16 | off (auto: bf16 on CUDA, off on the CPU)")
    ap.add_argument("--cudnn", default="auto", help="CUDA: on | off | no-depthwise (default auto: no-depthwise)")
    ap.add_argument("--allocator", default="auto",
                    help="keep | system: glibc keeps freed memory (fewer page faults) or its defaults (auto: keep on the CPU)")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "int8"],
                    help="int8: the subnets post-training quantized, into accuracy-int8-<runtime>.csv")
    ap.add_argument("--runtime", default="tflite", choices=["tflite", "onnxruntime"],
                    help="--precision int8: whose quantizer and kernels (default tflite)")
    ap.add_argument("--workers", default="auto",
                    help="CPU: evaluate this many subnets at a time in processes of one thread each (default auto: "
                         f"2, or the cores this process may use if fewer, from {MIN_POOLED} subnets on; 1: in this process)")
    ap.add_argument("--json", action="store_true", help="print a JSON summary")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
    stem = stem_for(args.precision, args.runtime)
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))

    from supernet.errors import CheckpointError, DataError

    try:
        if args.recal_images is not None and args.recal_images < 1:
            raise ValueError("--recal-images must be at least 1")
        if args.subnets < 1:
            raise ValueError("--subnets must be at least 1")
        if args.eval_images is not None and args.eval_images < 1:
            raise ValueError("--eval-images must be at least 1 (leave it out for all held-out images)")
        if args.workers != "auto" and not (args.workers.isdigit() and int(args.workers) >= 1):
            raise ValueError(f"--workers must be auto or a whole number of at least 1, got {args.workers[:40]!r}")
        allocator = allocator_mode(args.allocator)
        from supernet.evaluation import load_run  # torch: after the flags are checked

        device = args.device
        if world > 1 and device in ("auto", "cuda"):
            import torch

            if torch.cuda.is_available():  # one GPU per rank
                device = f"cuda:{int(os.environ.get('LOCAL_RANK', rank)) % torch.cuda.device_count()}"
        net, evaluator, ckpt = load_run(args.run, args.data, device, args.amp, args.cudnn,
                                         args.recal_images, allocator=allocator)
        space = net.space
        res = [int(x) for x in args.resolutions.split(",")] if args.resolutions else list(space.resolutions)
        from supernet.presets import trained_widths

        wid = ([float(x) for x in args.widths.split(",")] if args.widths
               else trained_widths(ckpt["config"], space.default_width))  # the widths the run trained
        for r in res:
            space.require_resolution(r, flag="--resolutions")
        for x in wid:
            space.require_width(x, flag="--widths")
        workers = collect_workers(args.workers, evaluator.device.type, world)
    except (CheckpointError, DataError, ValueError) as exc:
        ap.error(str(exc))
    if args.eval_images:
        evaluator.eval_images = args.eval_images
    config = {"run": str(args.run), "subnets": args.subnets, "seed": args.seed, "resolutions": res, "widths": wid,
              "space": ckpt["space"].get("base", space.name), "space_name": space.name,
              "eval_images": evaluator.eval_images, "recal_images": evaluator.recal_images, "world": world,
              "workers": workers,
              "device": str(evaluator.device), "amp": evaluator.amp, "precision": args.precision,
              **({"runtime": args.runtime} if args.precision == "int8" else {}),
              "supernet_sha256": file_sha256(args.run / "supernet.pt")}
    pool = None
    if workers > 1:
        def pool():  # noqa: E306 - started only when there is enough to evaluate
            return worker_pool(workers, args.run, args.data, evaluator.eval_images, args.recal_images, allocator,
                               args.precision, args.runtime)
    try:
        check_settings(args.run, config, args.force, rank, world, stem)
        if rank == 0:
            atomic_write_text(args.run / f"{stem}.config.json", json.dumps(config, indent=2) + "\n")
        t0 = time.time()
        new, old = collect(args.run, space, evaluation(evaluator, args.precision, args.runtime), args.subnets,
                           args.seed, res, wid, rank, world, progress=not (args.json or args.no_progress), stem=stem,
                           pool=pool)
        total = read_rows([args.run / f"{stem}.csv"])
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    ok = [float(r["acc"]) for r in total.values() if r.get("status") == "ok"]
    summary = {"rank": rank, "world": world, "evaluated": new, "skipped_existing": old,
               "rows": len(total), "ok": len(ok), "seconds": round(time.time() - t0, 1),
               "acc_min": min(ok, default=None), "acc_max": max(ok, default=None),
               "csv": str(args.run / f"{stem}.csv")}
    if args.json:
        print(json.dumps(summary))
    else:
        rng = f", accuracy {100 * summary['acc_min']:.2f}..{100 * summary['acc_max']:.2f}%" if ok else ""
        print(f"rank {rank}/{world}: evaluated {new} subnets ({old} already there) in {summary['seconds']} s; "
              f"{summary['csv']} holds {len(total)} rows{rng}")
    return 0


if __name__ == "__main__":
    run_main(main, "search.collect",
             "the rows collected so far are kept; the same command continues from them")
