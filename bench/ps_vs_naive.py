"""Progressive shrinking against naive random sampling and the sandwich rule on
Fashion-MNIST, at equal training budgets (subnet passes), plus the largest network trained
alone; and shared against switchable BN at the smallest width.  Prints a table and one JSON
object.

    .venv/bin/python bench/ps_vs_naive.py [--preset tiny] [--seeds 0,1,2] [--subnets 20] [--out DIR]

For every method and seed: train from scratch with ``supernet.trainer.train`` (the seed is
the run's: weights, batches, sampled subnets and the held-out split), then top-1 on that
run's held-out split of 20 fixed random subnets (drawn with seed 0, default width) after BN
recalibration; mean, standard deviation, min and max, plus the largest and smallest subnets.
With several seeds the table gives each figure's mean over seeds and the per-seed means.
Resumable: a finished run (``OUT/<method>-seed<S>/supernet.pt``) is evaluated, not retrained.
The BN comparison trains the sandwich rule with the width multiplier elastic (1.0 and 1.5) once
with shared and once with switchable BN and reports the 20 subnets at width 1.0 (the
smallest), with and without recalibration.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from supernet.evaluation import Evaluator, load_supernet  # noqa: E402
from supernet.data import load_data  # noqa: E402
from supernet.presets import get_preset, with_method  # noqa: E402
from supernet.trainer import train  # noqa: E402


def stats(xs):
    return {"mean": round(statistics.mean(xs), 2), "std": round(statistics.pstdev(xs), 2),
            "min": round(min(xs), 2), "max": round(max(xs), 2)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="tiny")
    p.add_argument("--seeds", default="0", help="comma-separated training seeds")
    p.add_argument("--subnets", type=int, default=20)
    p.add_argument("--eval-images", type=int, default=2000)
    p.add_argument("--out", type=Path, default=Path("runs/ps_vs_naive"))
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is steadiest on a shared 2-core box)")
    p.add_argument("--only", help="comma-separated subset of: ps,naive,sandwich,full,bn_shared,bn_switchable")
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    base = get_preset(args.preset)
    widths = (1.0, 1.5)
    runs = {
        "ps": with_method(base, "ps"),
        "naive": with_method(base, "naive"),
        "sandwich": with_method(base, "sandwich"),
        "full": with_method(base, "full"),
        "bn_shared": replace(with_method(base, "sandwich", widths=widths), bn="shared"),
        "bn_switchable": replace(with_method(base, "sandwich", widths=widths), bn="switchable"),
    }
    if args.only:
        runs = {k: v for k, v in runs.items() if k in args.only.split(",")}
    seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
    results = {}
    for seed in seeds:
        data = load_data(base.data, base.valid_size, base.recal_images, base.train_limit, seed)
        for name, cfg in runs.items():
            cfg = replace(cfg, seed=seed, threads=args.threads)
            out = args.out / f"{name}-seed{seed}"
            t = time.time()
            if not (out / "supernet.pt").is_file():
                train(cfg, out, resume=True, progress=False)
            wall = time.time() - t
            net, _ = load_supernet(out / "supernet.pt")
            ev = Evaluator(net, data, base.recal_images, args.eval_images)
            rng = random.Random(0)
            subnets = [net.space.sample(rng) for _ in range(args.subnets)]
            accs = [ev.evaluate(c) for c in subnets]
            row = {"seed": seed, "budget_subnet_epochs": cfg.budget(), "train_wall_s": round(wall, 1),
                   "random": stats(accs), "largest": round(ev.evaluate(net.space.max_subnet()), 2),
                   "smallest": round(ev.evaluate(net.space.min_subnet()), 2), "top1": [round(a, 2) for a in accs]}
            if name.startswith("bn_"):
                row["random_no_recal"] = stats([ev.evaluate(c, recalibrate=False) for c in subnets])
            results.setdefault(name, []).append(row)
            print(f"{name} seed {seed}: {row['random']} largest {row['largest']} smallest {row['smallest']} "
                  f"({row['train_wall_s']} s)", file=sys.stderr)

    mean = statistics.mean
    lines = [f"| method | budget (subnet-epochs) | {args.subnets} random: mean ± std [min, max] (averaged over seeds) "
             "| per-seed means | largest | smallest |", "|---|---|---|---|---|---|"]
    for name, rs in results.items():
        s = {k: mean([r["random"][k] for r in rs]) for k in ("mean", "std", "min", "max")}
        extra = ""
        if "random_no_recal" in rs[0]:
            nr = [r["random_no_recal"] for r in rs]
            extra = f" (no recal: {mean([x['mean'] for x in nr]):.2f} ± {mean([x['std'] for x in nr]):.2f})"
        per_seed = ", ".join(f"{r['random']['mean']:.2f}" for r in rs)
        lines.append(f"| {name} | {rs[0]['budget_subnet_epochs']:g} | {s['mean']:.2f} ± {s['std']:.2f} "
                     f"[{s['min']:.2f}, {s['max']:.2f}]{extra} | {per_seed} | {mean([r['largest'] for r in rs]):.2f} "
                     f"| {mean([r['smallest'] for r in rs]):.2f} |")
    print("\n".join(lines), file=sys.stderr)
    out = {"bench": "ps_vs_naive", "preset": args.preset, "subnets": args.subnets,
           "seeds": seeds, "eval_images": args.eval_images, "recal_images": base.recal_images, "threads": torch.get_num_threads(),
           "load_avg": os.getloadavg(), "results": results, "table": lines}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
