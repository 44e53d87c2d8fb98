"""How much of the spread of collected subnet accuracies is measurement noise (issue 13, "a
predictor that ranks"): the held-out images and the BN recalibration images, separately.

    .venv/bin/python bench/eval_noise.py --run RUN [--subnets 40] [--recal 1000] [--big 4000] [--out F.json]

For ``--subnets`` seeded random subnets of a trained run (the run's resolutions and widths),
each subnet is extracted and its BN statistics recalibrated three times: on recalibration
set A (``--recal`` training images, the run's own when ``--recal`` is the run's
``recal_images``), on a disjoint set B of the same size, and on ``--big`` images (A and
more); each time every held-out image's hit is kept, so the held-out split can be cut in two
halves.  Accuracies are compared *within a resolution* (each minus its resolution's mean),
because resolution is what every predictor gets right; what is left is what a predictor has
to rank, and it is part architecture, part noise:

- recalibration noise: A against B on the same held-out images (``recal_noise_pp``: the
  standard deviation of one measurement's recalibration error, ``sd(A - B) / sqrt 2``);
- held-out noise: half 1 against half 2 after the same recalibration (``heldout_noise_pp``:
  for the whole split, ``sd(h1 - h2) / 2``);
- ``reliability_*``: the correlation of the within-resolution deviations between two
  measurements that differ only in that noise, and Kendall tau over all subnets between two
  independent measurements (A on half 1 against B on half 2: the agreement two collections
  of the same subnets reach, a ceiling for what a predictor can show against one of them).

Prints one JSON object (``bench.emit``).
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.emit import emit  # noqa: E402
from search.predictor import kendall_tau  # noqa: E402
from supernet.evaluation import Evaluator, load_checkpoint, load_run  # noqa: E402
from supernet.cliargs import seed_arg, threads_arg  # noqa: E402


def within(acc: np.ndarray, res: np.ndarray) -> np.ndarray:
    """Each accuracy minus the mean of its resolution."""
    out = acc.astype(float).copy()
    for r in np.unique(res):
        out[res == r] -= acc[res == r].mean()
    return out


def corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a, b)[0, 1]) if np.std(a) > 0 and np.std(b) > 0 else float("nan")


def summarize(res: np.ndarray, acc: dict[str, np.ndarray], halves: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict:
    """The noise figures of one collection (accuracies in percent per recalibration set)."""
    d = {k: within(v, res) for k, v in acc.items()}
    h1, h2 = halves["A"]
    out = {
        "total_sd_pp": round(float(np.std(acc["A"])), 4),
        "within_res_sd_pp": {k: round(float(np.std(v)), 4) for k, v in d.items()},
        "recal_noise_pp": round(float(np.std(acc["A"] - acc["B"]) / np.sqrt(2)), 4),
        "heldout_noise_pp": round(float(np.std(within(h1, res) - within(h2, res)) / 2), 4),
        "reliability_recal_corr": round(corr(d["A"], d["B"]), 3),
        "reliability_heldout_corr": round(corr(within(h1, res), within(h2, res)), 3),
        "big_vs_A_corr": round(corr(d["big"], d["A"]), 3),
        "tau_A_vs_B": round(kendall_tau(acc["A"], acc["B"]), 3),
        "tau_A_half1_vs_B_half2": round(kendall_tau(halves["A"][0], halves["B"][1]), 3),
        "tau_big_vs_A": round(kendall_tau(acc["big"], acc["A"]), 3),
    }
    signal = np.var(d["A"]) - out["recal_noise_pp"] ** 2 - out["heldout_noise_pp"] ** 2
    out["within_res_signal_sd_pp"] = round(float(np.sqrt(max(signal, 0.0))), 4)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, required=True, help="a supernet.train run folder")
    ap.add_argument("--subnets", type=int, default=40)
    ap.add_argument("--recal", type=int, default=None, help="images per recalibration set (default: the run's)")
    ap.add_argument("--big", type=int, default=4000, help="images of the large recalibration set")
    ap.add_argument("--eval-images", type=int, default=None, help="held-out images (default: the whole split)")
    ap.add_argument("--data", help="override the run's dataset location")
    ap.add_argument("--seed", type=seed_arg, default=0)
    ap.add_argument("--threads", type=threads_arg, default=None)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        recal = args.recal or load_checkpoint(args.run / "supernet.pt")["config"]["recal_images"]
        if min(args.subnets, recal, args.big) < 1 or args.subnets < 4:
            raise ValueError("--subnets must be >= 4, --recal and --big >= 1")
        # the run's data with a recalibration pool for all three sets (the run's own images first)
        net, pool, ckpt = load_run(args.run, args.data, device="cpu", amp="off", recal_images=max(2 * recal, args.big))
    except ValueError as exc:
        ap.exit(2, f"eval_noise: error: {exc}\n")
    sets = {"A": torch.arange(recal), "B": torch.arange(recal, 2 * recal), "big": torch.arange(args.big)}
    evals = {k: Evaluator(net, replace(pool.data, recal=pool.data.recal.subset(idx)), len(idx), args.eval_images,
                          channels_last=pool.channels_last) for k, idx in sets.items()}
    from supernet.presets import trained_widths

    widths = trained_widths(ckpt["config"], net.space.default_width)
    rng = random.Random(args.seed)
    subnets = [net.space.sample(rng, widths=widths) for _ in range(args.subnets)]
    res = np.array([c.r for c in subnets])
    acc = {k: np.empty(len(subnets)) for k in sets}
    halves = {k: (np.empty(len(subnets)), np.empty(len(subnets))) for k in sets}
    t0 = time.time()
    for i, c in enumerate(subnets):
        for k, ev in evals.items():
            hits = ev.hits(ev.subnet(c), c.r).float()
            n = len(hits) // 2
            acc[k][i] = 100 * hits.mean().item()
            halves[k][0][i], halves[k][1][i] = 100 * hits[:n].mean().item(), 100 * hits[n:2 * n].mean().item()
        print(f"{i + 1}/{len(subnets)} r={c.r}: A {acc['A'][i]:.2f} B {acc['B'][i]:.2f} big {acc['big'][i]:.2f} "
              f"({time.time() - t0:.0f} s)", file=sys.stderr)
    result = {
        "bench": "eval_noise", "run": str(args.run), "subnets": len(subnets), "recal_images": recal,
        "big_recal_images": args.big, "heldout_images": int(len(hits)), "seed": args.seed,
        "resolutions": sorted({int(r) for r in res}), "seconds": round(time.time() - t0, 1),
        "load_avg": os.getloadavg(), "threads": torch.get_num_threads(),
        **summarize(res, acc, halves),
        "rows": [{"subnet": c.to_json(), "r": int(c.r), **{f"acc_{k}": round(float(acc[k][i]), 3) for k in sets},
                  "acc_A_half1": round(float(halves["A"][0][i]), 3), "acc_A_half2": round(float(halves["A"][1][i]), 3)}
                 for i, c in enumerate(subnets)],
    }
    return emit(result, args.out)


if __name__ == "__main__":
    sys.exit(main())
