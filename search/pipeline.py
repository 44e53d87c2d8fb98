"""The main job: the whole hardware-aware NAS pipeline on this machine, offline.

    python -m search.pipeline [--out out/pipeline] [--preset tiny] [--subnets 150]

1. profile the local device at the demo resolutions, onnxruntime and TFLite (profiler.run);
2. train a small supernet on Fashion-MNIST with progressive shrinking (supernet.train);
3. collect (subnet, held-out accuracy) rows from it (search.collect);
4. train the accuracy predictor on them (search.predictor);
5. search two or three latency budgets per runtime (search.evolve);
6. a table and a plot: the architecture chosen for each runtime and budget, with its latency
   under *both* runtimes' LUTs, so where the runtimes' costs differ the choices differ.

Every step is the project's own command line, run as a subprocess with a timeout, and is
skipped when its output already exists (rerun to resume; ``--force`` redoes everything).
Outputs: ``OUT/luts/local.csv``, ``OUT/supernet/`` (run, accuracy.csv, predictor.pt),
``OUT/search-<runtime>/``, ``OUT/summary.json``, ``OUT/summary.csv``, ``OUT/summary.png``.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

RUNTIMES = ("onnxruntime", "tflite")


def step(name: str, cmd: list[str], done: Path | None, force: bool, timeout_s: float) -> None:
    """Run one step's command (streaming its output) unless ``done`` exists; exit on failure."""
    if done is not None and done.exists() and not force:
        print(f"[pipeline] {name}: {done} exists, skipped", flush=True)
        return
    print(f"[pipeline] {name}: {' '.join(cmd)}", flush=True)
    t0 = time.time()
    try:
        proc = subprocess.run(cmd, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise SystemExit(f"error: pipeline step {name} exceeded {timeout_s:.0f} s") from None
    if proc.returncode != 0:
        raise SystemExit(f"error: pipeline step {name} failed with exit code {proc.returncode}")
    print(f"[pipeline] {name}: done in {time.time() - t0:.0f} s", flush=True)


def budgets_for(lut: Path, runtime: str, space, fractions: list[float]) -> tuple[list[float], float, float]:
    """Budgets at ``fractions`` of the way from the cheapest to the largest subnet's latency."""
    from search.evolve import CostArrays, covered_choices
    from search.latency import LatencyModel

    model = LatencyModel.from_lut(lut, space, runtime)
    ch = covered_choices(model, space)
    costs = CostArrays(model, ch)
    lo, _ = costs.cheapest()
    hi = max(float(model.latency([space.max_subnet(r, w)])[0]) for r in ch.resolutions for w in ch.widths)
    return [round(lo + f * (hi - lo), 3) for f in fractions], lo, hi


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m search.pipeline", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("out/pipeline"))
    ap.add_argument("--space", default="fmnist")
    ap.add_argument("--resolutions", default="32,48,64", help="demo resolutions (profiled, trained, searched)")
    ap.add_argument("--width", default="1.0")
    ap.add_argument("--preset", default="tiny", help="supernet.train preset")
    ap.add_argument("--subnets", type=int, default=150, help="subnets evaluated for the predictor")
    ap.add_argument("--eval-images", type=int, default=2000, help="held-out images per evaluated subnet")
    ap.add_argument("--fractions", default="0.25,0.5,0.75", help="budgets between the cheapest and largest subnet")
    ap.add_argument("--generations", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--force", action="store_true", help="redo every step")
    args = ap.parse_args(argv)

    from supernet.space import get_space

    try:
        space = get_space(args.space)
    except ValueError as exc:
        ap.error(str(exc))
    py = sys.executable
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    lut = out / "luts" / "local.csv"
    run = out / "supernet"
    lut.parent.mkdir(parents=True, exist_ok=True)
    t_start = time.time()

    # 1. profile (the profiler resumes by itself, so it always runs: a finished LUT returns fast)
    step("profile", [py, "-m", "profiler.run", "--device", "local", "--runtime", ",".join(RUNTIMES),
                     "--space", args.space, "--resolutions", args.resolutions, "--widths", args.width,
                     "--lut", str(lut)], None, args.force, 3600)
    # 2. train
    step("train", [py, "-m", "supernet.train", "--preset", args.preset, "--space", args.space, "--out", str(run),
                   "--seed", str(args.seed)], run / "supernet.pt", args.force, 3600)
    # 3. collect (resumable by itself)
    step("collect", [py, "-m", "search.collect", "--run", str(run), "--subnets", str(args.subnets),
                     "--resolutions", args.resolutions, "--widths", args.width, "--eval-images", str(args.eval_images),
                     "--seed", str(args.seed)], None, args.force, 3600)
    # 4. predictor
    step("predictor", [py, "-m", "search.predictor", "--data", str(run / "accuracy.csv"), "--space", args.space,
                       "--out", str(run / "predictor.pt"), "--seed", str(args.seed)],
         None, args.force, 1800)
    # 5. search per runtime
    fractions = [float(f) for f in args.fractions.split(",")]
    searches = {}
    for rt in RUNTIMES:
        budgets, lo, hi = budgets_for(lut, rt, space, fractions)
        dest = out / f"search-{rt}"
        step(f"search {rt}", [py, "-m", "search.evolve", "--lut", str(lut), "--runtime", rt,
                              "--predictor", str(run), "--space", args.space, "--calibration", "auto",
                              "--resolutions", args.resolutions, "--widths", args.width,
                              "--latency-ms", ",".join(map(str, budgets)), "--generations", str(args.generations),
                              "--seed", str(args.seed), "--out", str(dest)], None, args.force, 1800)
        searches[rt] = {"budgets": budgets, "cheapest_ms": lo, "largest_ms": hi,
                        "summary": json.loads((dest / "search.json").read_text())}

    # 6. cross-runtime table and plot
    rows = cross_table(searches, lut, space)
    write_summary(out, rows, searches, time.time() - t_start)
    return 0


def cross_table(searches: dict, lut: Path, space) -> list[dict]:
    """One row per (runtime searched for, budget): the chosen subnet and its predicted
    latency under every runtime's LUT."""
    from search.latency import LatencyModel
    from supernet.space import SubnetConfig

    models = {rt: LatencyModel.from_lut(lut, space, rt, calibration="auto") for rt in RUNTIMES}
    rows = []
    for rt, s in searches.items():
        for res in s["summary"]["results"]:
            cfg = SubnetConfig.from_dict(res["subnet"])
            row = {"searched_for": rt, "budget_ms": res["budget"], "predicted_accuracy": res["predicted_accuracy"],
                   "subnet": res["subnet"]}
            for other, m in models.items():
                row[f"{other}_ms"] = round(float(m.latency([cfg])[0]), 4)
            rows.append(row)
    return rows


def write_summary(out: Path, rows: list[dict], searches: dict, seconds: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with (out / "summary.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["searched_for", "budget_ms", "predicted_accuracy", *[f"{rt}_ms" for rt in RUNTIMES], "subnet"])
        for r in rows:
            w.writerow([r["searched_for"], r["budget_ms"], r["predicted_accuracy"], *[r[f"{rt}_ms"] for rt in RUNTIMES],
                        json.dumps(r["subnet"], separators=(",", ":"))])
    same = {}
    for i, rt in enumerate(RUNTIMES):
        for j, b in enumerate(searches[rt]["budgets"]):
            same.setdefault(j, []).append(json.dumps([r for r in rows if r["searched_for"] == rt][j]["subnet"]))
    differs = [len(set(v)) > 1 for v in same.values()]
    summary = {"seconds": round(seconds, 1), "rows": rows, "runtimes": list(RUNTIMES),
               "architectures_differ_per_budget_level": differs,
               "budgets": {rt: searches[rt]["budgets"] for rt in RUNTIMES}}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")

    fig, axes = plt.subplots(1, len(RUNTIMES), figsize=(11, 4.2), dpi=120)
    for ax, lut_rt in zip(axes, RUNTIMES):
        for rt, marker in zip(RUNTIMES, ("o", "s")):
            rs = [r for r in rows if r["searched_for"] == rt]
            ax.plot([r[f"{lut_rt}_ms"] for r in rs], [100 * r["predicted_accuracy"] for r in rs], marker=marker,
                    label=f"chosen for {rt}")
        for b in searches[lut_rt]["budgets"]:
            ax.axvline(b, ls="--", lw=0.8, color="0.6")
        ax.set_title(f"latency on the local {lut_rt} LUT (dashed: its budgets)", fontsize=9)
        ax.set_xlabel("predicted latency (ms)")
        ax.set_ylabel("predicted accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "summary.png")
    plt.close(fig)

    print(f"{'searched for':>12} {'budget ms':>9} {'pred.acc%':>9} " + " ".join(f"{rt + ' ms':>14}" for rt in RUNTIMES)
          + "  r   depths")
    for r in rows:
        s = r["subnet"]
        print(f"{r['searched_for']:>12} {r['budget_ms']:>9.3f} {100 * r['predicted_accuracy']:>9.2f} "
              + " ".join(f"{r[f'{rt}_ms']:>14.3f}" for rt in RUNTIMES) + f"  {s['r']:<3} {'-'.join(map(str, s['d']))}")
    print(f"architectures differ between runtimes at budget levels: {differs}; total {seconds / 60:.1f} min")
    print(f"wrote {out / 'summary.json'}, {out / 'summary.csv'}, {out / 'summary.png'}")


if __name__ == "__main__":
    sys.exit(main())
