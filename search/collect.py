"""Accuracy data for the predictor: sample subnets of a trained supernet, recalibrate BN and
evaluate each on the held-out split (``supernet.evaluation.Evaluator``).

    python -m search.collect --run RUN --subnets N [--seed S] [--eval-images M]
    torchrun --nproc_per_node 2 -m search.collect --run RUN --subnets N     # sharded

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
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Callable, Iterable, Sequence

from supernet.atomic import atomic_open, atomic_write_text
from supernet.space import SearchSpace, SubnetConfig

COLUMNS = ["index", "subnet", "acc", "top1", "r", "w", "macs_m", "params_m", "seconds", "rank", "status", "error"]


def subnet_at(space: SearchSpace, seed: int, index: int, resolutions: Sequence[int],
              widths: Sequence[float]) -> SubnetConfig:
    """Subnet number ``index`` of the seeded list (independent of sharding)."""
    return space.canonical(space.sample(random.Random(f"{seed}:{index}"), resolutions=resolutions, widths=widths))


def read_rows(paths: Iterable[Path]) -> dict[int, dict[str, str]]:
    """Rows by index from CSV files (missing files and torn or malformed lines skipped;
    the last row of an index wins)."""
    out: dict[int, dict[str, str]] = {}
    for p in paths:
        if not p.is_file():
            continue
        text = p.read_text()
        if text and not text.endswith("\n"):
            text = text[: text.rfind("\n") + 1]  # a torn last line from a killed process
        for row in csv.DictReader(io.StringIO(text)):
            try:
                idx = int(row["index"])
                SubnetConfig.from_json(row["subnet"])
                float(row["acc"]) if row.get("status") == "ok" else None
            except (KeyError, TypeError, ValueError):
                continue
            out[idx] = row
    return out


def merge(run: Path) -> Path:
    """Write ``accuracy.csv`` from every part (sorted by index), atomically."""
    parts = sorted((run / "accuracy.parts").glob("rank*.csv"))
    rows = read_rows([run / "accuracy.csv", *parts])
    path = run / "accuracy.csv"
    with atomic_open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        for idx in sorted(rows):
            w.writerow(rows[idx])
    return path


def collect(
    run: Path,
    space: SearchSpace,
    evaluate: Callable[[SubnetConfig], float],
    n: int,
    seed: int,
    resolutions: Sequence[int],
    widths: Sequence[float],
    rank: int = 0,
    world: int = 1,
    progress: bool = True,
) -> tuple[int, int]:
    """Evaluate this rank's share of the first ``n`` subnets that no part holds yet.

    Args:
        run: run folder (parts and the merged CSV go there).
        space: the run's space; ``evaluate(cfg)`` returns top-1 in percent.
        n, seed, resolutions, widths: which subnets.
        rank, world: this process's shard.
    Returns:
        (evaluated now, already present) for this rank's share.
    """
    from tqdm import tqdm

    from search.latency import MacsModel, ParamsModel

    parts_dir = run / "accuracy.parts"
    parts_dir.mkdir(parents=True, exist_ok=True)
    done = read_rows([run / "accuracy.csv", *parts_dir.glob("rank*.csv")])
    mine = [i for i in range(n) if i % world == rank]
    todo = [i for i in mine if i not in done or done[i].get("status") != "ok"]
    part = parts_dir / f"rank{rank}.csv"
    new_file = not part.is_file() or part.stat().st_size == 0
    macs, params = MacsModel(space), ParamsModel(space)
    with part.open("a", newline="") as f:
        if not new_file and not part.read_text().endswith("\n"):
            f.write("\n")  # close a torn line so the next row starts clean
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        if new_file:
            w.writeheader()
        bar = tqdm(todo, desc=f"collect (rank {rank})", unit="subnet", disable=not progress or rank != 0)
        for i in bar:
            cfg = subnet_at(space, seed, i, resolutions, widths)
            t0 = time.perf_counter()
            row = {"index": i, "subnet": cfg.to_json(), "r": cfg.r, "w": cfg.w, "rank": rank,
                   "macs_m": round(float(macs.cost([cfg])[0]), 3), "params_m": round(float(params.cost([cfg])[0]), 4)}
            try:
                top1 = float(evaluate(cfg))
                row.update(acc=round(top1 / 100.0, 6), top1=round(top1, 4), status="ok", error="")
                bar.set_postfix(top1=f"{top1:.2f}")
            except Exception as exc:  # noqa: BLE001 - a failed subnet is a row, not a crash
                row.update(acc="", top1="", status="error", error=f"{type(exc).__name__}: {exc}"[:300])
            row["seconds"] = round(time.perf_counter() - t0, 3)
            w.writerow(row)
            f.flush()
            os.fsync(f.fileno())
    merge(run)
    return len(todo), len(mine) - len(todo)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m search.collect", description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True, type=Path, help="run folder written by supernet.train")
    ap.add_argument("--subnets", required=True, type=int, help="number of subnets (the first N of the seeded list)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--resolutions", help="resolutions to sample, comma separated (default: the space's)")
    ap.add_argument("--widths", help="width multipliers to sample (default: the space's)")
    ap.add_argument("--eval-images", type=int, help="held-out images per subnet (default: all)")
    ap.add_argument("--data", help="override the run's dataset location")
    ap.add_argument("--json", action="store_true", help="print a JSON summary")
    args = ap.parse_args(argv)
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))

    from supernet.data import DataError
    from supernet.evaluation import CheckpointError, load_run

    try:
        if args.subnets < 1:
            raise ValueError("--subnets must be at least 1")
        net, evaluator, ckpt = load_run(args.run, args.data)
        space = net.space
        res = [int(x) for x in args.resolutions.split(",")] if args.resolutions else list(space.resolutions)
        wid = [float(x) for x in args.widths.split(",")] if args.widths else list(space.width_mults)
        for r in res:
            if r not in space.resolutions:
                raise ValueError(f"--resolutions: {r} is not in space {space.name!r}")
        for x in wid:
            if x not in space.width_mults:
                raise ValueError(f"--widths: {x:g} is not in space {space.name!r}")
    except (CheckpointError, DataError, ValueError) as exc:
        ap.error(str(exc))
    if args.eval_images:
        evaluator.eval_images = args.eval_images
    config = {"run": str(args.run), "subnets": args.subnets, "seed": args.seed, "resolutions": res, "widths": wid,
              "space": ckpt["space"].get("base", space.name), "space_name": space.name,
              "eval_images": evaluator.eval_images, "recal_images": evaluator.recal_images, "world": world}
    if rank == 0:
        atomic_write_text(args.run / "accuracy.config.json", json.dumps(config, indent=2) + "\n")
    t0 = time.time()
    new, old = collect(args.run, space, evaluator.evaluate, args.subnets, args.seed, res, wid, rank, world,
                       progress=not args.json)
    total = read_rows([args.run / "accuracy.csv"])
    ok = [float(r["acc"]) for r in total.values() if r.get("status") == "ok"]
    summary = {"rank": rank, "world": world, "evaluated": new, "skipped_existing": old,
               "rows": len(total), "ok": len(ok), "seconds": round(time.time() - t0, 1),
               "acc_min": min(ok, default=None), "acc_max": max(ok, default=None),
               "csv": str(args.run / "accuracy.csv")}
    if args.json:
        print(json.dumps(summary))
    else:
        rng = f", accuracy {100 * summary['acc_min']:.2f}..{100 * summary['acc_max']:.2f}%" if ok else ""
        print(f"rank {rank}/{world}: evaluated {new} subnets ({old} already there) in {summary['seconds']} s; "
              f"{summary['csv']} holds {len(total)} rows{rng}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
