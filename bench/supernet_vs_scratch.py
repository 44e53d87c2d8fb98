"""Subnets taken from a trained supernet against the same architectures trained alone
(OFA's central claim; issue 13, item 4).  Prints a table and one JSON object, and writes
``OUT/supernet_vs_scratch.{csv,json}``.

    .venv/bin/python bench/supernet_vs_scratch.py --run RUN [--search DIR] [--subnets max,min,FILE,...]
        [--seconds S] [--out DIR] [--threads 2]

For each subnet (default: the largest and the smallest at the space's largest resolution,
plus the subnets ``search.evolve`` picked, i.e. the ``budget_*ms.json`` files of ``--search``
DIR, e.g. a pipeline's ``search-onnxruntime/``):

- **from the supernet**: extracted from RUN's supernet, BN recalibrated, top-1 on the run's
  held-out split (``supernet.evaluation.Evaluator``, what ``search.collect`` measures);
- **trained alone**: the same architecture built fresh by ``supernet.ops.build_network``
  (the profiler's builder) and trained with the run's own recipe (its first phase's
  optimiser: SGD with the run's momentum, Nesterov, weight decay, peak learning rate and
  warm-up, label smoothing, batch size, channels-last, threads; the same data and
  augmentation) at the subnet's own resolution, for the same wall time as the whole
  supernet run (``result.json``'s ``train_seconds``, or ``--seconds``): the number of steps
  that fit is measured on the first steps, and the cosine schedule spans them.  Then top-1
  on the same held-out images with its own BN statistics.

The goal (issue 13) is every subnet within 1.5 points of its trained-alone twin.  Each
trained-alone run costs the supernet's whole training time, so N subnets cost N times it:
the CSV and JSON are rewritten (atomically) after every subnet, and ``--resume`` keeps the
rows of the same subnet, supernet file (SHA-256), budget and seed and trains only the rest.
An existing table is never replaced without ``--resume`` or ``--force``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from search.latency import _unwrap_result  # noqa: E402
from supernet.atomic import atomic_open, atomic_write_text, file_sha256  # noqa: E402
from supernet.data import DataError  # noqa: E402
from supernet.evaluation import CheckpointError, load_run  # noqa: E402
from supernet.ops import build_network, count_params  # noqa: E402
from supernet.space import SubnetConfig, parse_subnet  # noqa: E402
from supernet.standalone import Recipe, train_standalone  # noqa: E402
from supernet.presets import TrainConfig  # noqa: E402
from supernet.cliargs import run_main, seed_arg, threads_arg  # noqa: E402


def subnets_to_compare(space, spec: str, search: Path | None) -> list[tuple[str, SubnetConfig]]:
    """(name, subnet) pairs: ``max``/``min`` at the largest resolution, JSON files, and the
    ``budget_*ms.json`` results of a search folder (in budget order)."""
    r = max(space.resolutions)
    out = []
    for item in [s.strip() for s in spec.split(",") if s.strip()]:
        if item in ("max", "min"):
            out.append((item, parse_subnet(item, space, r=r)))
        else:
            out.append((Path(item).stem, parse_subnet(_unwrap_result(item), space)))
    if search is not None:
        files = sorted(search.glob("budget_*ms.json"), key=lambda p: float(p.stem[7:-2]))
        if not files:
            raise SystemExit(f"error: {search}: no budget_*ms.json files (a search.evolve --out folder)")
        for p in files:
            out.append((f"search {p.stem[7:]}", parse_subnet(_unwrap_result(str(p)), space)))
    return out


def train_alone(space, cfg: SubnetConfig, rc: TrainConfig, data, seconds: float, device, seed: int) -> dict:
    """``cfg`` built fresh and trained with the run's first-phase recipe for ``seconds`` of
    wall time (``supernet.standalone.train_standalone``); returns parameters, steps, epochs,
    images/s and held-out top-1."""
    net = build_network(space, cfg)
    out = train_standalone(net, data, cfg.r, Recipe.from_train_config(rc), device, seed=seed,
                           desc=f"alone r{cfg.r}", seconds=seconds)
    return {"params_m": round(count_params(net) / 1e6, 4), **out}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, required=True, help="a supernet.train run folder")
    ap.add_argument("--search", type=Path, help="a search.evolve --out folder (its budget_*ms.json subnets)")
    ap.add_argument("--subnets", default="max,min", help="max, min and/or JSON files, comma separated")
    ap.add_argument("--seconds", type=float, help="training time of each trained-alone run "
                    "(default: the supernet run's train_seconds)")
    ap.add_argument("--threads", type=threads_arg, default=None, help="torch threads (default: the run's)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seed", type=seed_arg, default=0)
    ap.add_argument("--out", type=Path, default=None, help="output folder (default: RUN)")
    ap.add_argument("--resume", action="store_true", help="keep the rows OUT already holds for the same subnet, "
                    "supernet, budget and seed; train the others")
    ap.add_argument("--force", action="store_true", help="replace an existing table")
    args = ap.parse_args()

    try:
        net, ev, ckpt = load_run(args.run, device=args.device)
        compare = subnets_to_compare(net.space, args.subnets, args.search)
    except (CheckpointError, DataError, ValueError, OSError) as exc:
        raise SystemExit(f"supernet_vs_scratch: error: {exc}") from None
    if not compare:
        raise SystemExit("supernet_vs_scratch: error: no subnet to compare (--subnets and --search name none)")
    rc = TrainConfig.from_dict(ckpt["config"])
    threads = args.threads or rc.threads
    if threads:
        torch.set_num_threads(threads)
    space = net.space
    result = json.loads((args.run / "result.json").read_text()) if (args.run / "result.json").is_file() else {}
    seconds = args.seconds or result.get("train_seconds")
    if not seconds:
        raise SystemExit(f"error: {args.run}: no result.json with train_seconds; give --seconds")
    out = args.out or args.run
    out.mkdir(parents=True, exist_ok=True)
    csv_path, json_path = out / "supernet_vs_scratch.csv", out / "supernet_vs_scratch.json"
    if (csv_path.exists() or json_path.exists()) and not (args.resume or args.force):
        there = csv_path if csv_path.exists() else json_path
        raise SystemExit(f"supernet_vs_scratch: error: {there} exists; --resume to continue it, --force to replace it")
    sha = file_sha256(args.run / "supernet.pt")
    kept = []
    if args.resume and json_path.is_file():  # the JSON twin keeps the rows' types
        try:
            kept = [r for r in json.loads(json_path.read_text(encoding="utf-8")).get("rows", []) if isinstance(r, dict)]
        except (ValueError, AttributeError):  # not JSON, or not our object: every subnet trained again
            kept = []

    def same(row: dict, name: str, cfg) -> bool:
        try:
            return (row["subnet"] == name and row["config"] == cfg.to_json() and row["supernet_sha256"] == sha
                    and float(row["budget_seconds"]) == float(seconds) and int(row["seed"]) == args.seed)
        except (KeyError, TypeError, ValueError):  # a table of another version: trained again
            return False

    def write(rows: list[dict]) -> dict:
        summary = {"run": str(args.run), "preset": rc.preset, "supernet_train_seconds": seconds,
                   "supernet_sha256": sha, "seed": args.seed, "threads": threads,
                   "load_avg_end": os.getloadavg()[0], "rows": rows,
                   "all_within_1_5pp": all(r["within_1_5pp"] for r in rows),
                   "max_gap_pp": max(r["gap_pp"] for r in rows) if rows else None,
                   "complete": len(rows) == len(compare)}
        with atomic_open(csv_path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        atomic_write_text(json_path, json.dumps(summary, indent=2) + "\n")
        return summary

    rows: list[dict] = []
    summary: dict = {}
    for name, cfg in compare:
        old = next((r for r in kept if same(r, name, cfg)), None)
        if old is not None:
            rows.append(row := old)
            print(f"{name:>14}  r{cfg.r}  supernet {row['supernet_top1']:6.2f}%  alone {row['alone_top1']:6.2f}%  "
                  f"gap {row['gap_pp']:+.2f} pp  [kept from {json_path}]", flush=True)
            summary = write(rows)
            continue
        t = time.time()
        from_supernet = ev.evaluate(cfg)
        alone = train_alone(space, cfg, rc, ev.data, seconds, ev.device, args.seed)
        row = {"subnet": name, "r": cfg.r, "params_m": alone["params_m"],
               "supernet_top1": round(from_supernet, 3), "alone_top1": alone["top1"],
               "gap_pp": round(alone["top1"] - from_supernet, 3), "within_1_5pp": alone["top1"] - from_supernet <= 1.5,
               "alone_seconds": alone["seconds"], "alone_epochs": alone["epochs"],
               "alone_images_per_s": alone["images_per_s"], "held_out_images": len(ev.data.valid),
               "budget_seconds": float(seconds), "seed": args.seed, "supernet_sha256": sha, "config": cfg.to_json()}
        rows.append(row)
        print(f"{name:>14}  r{cfg.r}  supernet {from_supernet:6.2f}%  alone {alone['top1']:6.2f}% "
              f"({alone['epochs']:.2f} epochs in {alone['seconds']:.0f} s)  gap {row['gap_pp']:+.2f} pp  "
              f"[{time.time() - t:.0f} s]", flush=True)
        summary = write(rows)  # after every subnet: a stopped run keeps what it trained
    print(json.dumps({k: v for k, v in summary.items() if k != "rows"}))


if __name__ == "__main__":
    run_main(main, "supernet_vs_scratch.py", "the subnets finished so far are kept in OUT's table; the same command with "
             "--resume goes on from them")
