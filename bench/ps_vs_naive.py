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
Resumable: a finished run (``OUT/<method>-seed<S>/supernet.pt``) is evaluated, not retrained,
and its evaluation is kept in ``evaluation.pt`` beside it, reused while the supernet file,
the subnet and image counts and the threads are the same (``evaluation_cached`` in its row).
The BN comparison trains the sandwich rule with the width multiplier elastic (1.0 and 1.5) once
with shared and once with switchable BN and reports the 20 subnets at width 1.0 (the
smallest), with and without recalibration.

Every method is also compared with progressive shrinking subnet by subnet (the same 20
subnets, seed and held-out images: ``paired_vs_ps``: the mean difference, its standard error
over the subnet-seed pairs, and how many pairs each wins), and the training curves of every
run (training top-1 of the subnets each step trained, the learning rate, and the held-out
top-1 of the largest and smallest where a phase end was evaluated) go to
``OUT/curves.csv`` and ``OUT/curves.png`` against the budget spent (subnet-epochs).
The standard error over pairs leaves out the luck of the image sample, which all the
subnets of a seed share: on the ``small`` preset the sandwich rule's mean difference from
PS was +0.09 ± 0.06 on three seeds' held-out images and -0.19 ± 0.05 on the test images.
So ``se_boot`` (the table's second figure) is the standard error from a two-way bootstrap
over subnets and images (``bootstrap_se``), the one to judge a difference by.

Each seed draws its own held-out split, so per-seed means do not compare across seeds on
it: three PS runs of the ``small`` preset that agree within 0.23 points on the test images
spread 1.7 points over their seeds' held-out images (2,000 each).  With
``--test-images N`` (default 10,000: all of Fashion-MNIST's; 0: off) every run is also
evaluated on the first N images of the dataset's own test split, which no seed trains on:
the same subnets after the same recalibration (``test`` in each result row and
``paired_vs_ps_test``; the table's test column).  A report figure only: nothing here or in
training chooses anything by it.
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
from supernet.atomic import file_sha256  # noqa: E402
from supernet.evaluation import Evaluator, load_supernet  # noqa: E402
from supernet.data import DataError, load_data, load_test  # noqa: E402
from supernet.presets import get_preset, with_method  # noqa: E402
from supernet.trainer import atomic_save, train  # noqa: E402
from supernet.cliargs import seeds_arg, threads_arg  # noqa: E402


def stats(xs):
    return {"mean": round(statistics.mean(xs), 2), "std": round(statistics.pstdev(xs), 2),
            "min": round(min(xs), 2), "max": round(max(xs), 2)}


def scores(evs: list, subnets: list, space) -> list[dict]:
    """Per evaluator of ``evs`` (the same recalibration images, different images scored):
    top-1 of ``subnets`` (``random`` statistics and ``top1``), the largest and the smallest,
    and ``hits`` (bool, subnets x images: which image each random subnet got right; kept
    out of the JSON); each subnet is extracted and recalibrated once, by the first evaluator."""
    def hits(cfg) -> list[torch.Tensor]:
        net = evs[0].subnet(cfg)
        return [ev.hits(net, cfg.r) for ev in evs]

    def pct(h: torch.Tensor) -> float:
        return 100.0 * h.sum().item() / max(1, h.numel())

    per = [hits(c) for c in subnets]
    largest, smallest = hits(space.max_subnet()), hits(space.min_subnet())
    out = []
    for i in range(len(evs)):
        xs = [pct(h[i]) for h in per]
        out.append({"random": stats(xs), "largest": round(pct(largest[i]), 2), "smallest": round(pct(smallest[i]), 2),
                    "top1": [round(a, 2) for a in xs], "hits": torch.stack([h[i] for h in per])})
    return out


def paired(xs: list[float], refs: list[float], hits: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
           reps: int = 1000, shared_images: bool = False) -> dict:
    """Paired differences ``xs - refs`` (same subnets, seed and images): mean, standard error
    of the mean over the pairs (``se``), and the pairs won, tied and lost.

    ``se`` treats the pairs as independent, but every subnet of a seed is scored on the same
    images, so the luck of that image sample is shared by all its pairs and ``se`` leaves it
    out.  With ``hits`` (per seed, the method's and the reference's subnets x images hit
    matrices), ``se_boot`` is the standard error from a two-way bootstrap that draws the
    subnets and the images again (``bootstrap_se``; ``shared_images`` when every seed was
    scored on the same images, as on the test split)."""
    d = [x - r for x, r in zip(xs, refs, strict=True)]
    se = statistics.stdev(d) / len(d) ** 0.5 if len(d) > 1 else float("nan")
    out = {"mean_diff": round(statistics.mean(d), 2), "se": round(se, 2), "pairs": len(d),
           "wins": sum(x > 0 for x in d), "ties": sum(x == 0 for x in d), "losses": sum(x < 0 for x in d)}
    if hits:
        out["se_boot"] = round(bootstrap_se(hits, reps, shared_images=shared_images), 2)
    return out


def bootstrap_se(hits: list[tuple[torch.Tensor, torch.Tensor]], reps: int = 1000, seed: int = 0,
                 shared_images: bool = False) -> float:
    """Standard error (points) of the mean paired difference over seeds, subnets and images,
    by a two-way bootstrap: each draw takes, per seed, the subnets and the images with
    replacement and averages the method's minus the reference's hits over them.  Each seed
    draws its own images (each seed's own held-out split) unless ``shared_images``: then one
    draw of images serves every seed, whose luck they share."""
    g = torch.Generator().manual_seed(seed)
    diffs = [a.float() - b.float() for a, b in hits]
    if shared_images and len({d.shape[1] for d in diffs}) > 1:
        raise ValueError("shared_images needs the same images for every seed")
    weights = torch.tensor([float(d.shape[0]) for d in diffs])
    draws = torch.empty(reps)
    for k in range(reps):
        means = torch.empty(len(diffs))
        cols = torch.randint(diffs[0].shape[1], (diffs[0].shape[1],), generator=g) if shared_images else None
        for s, d in enumerate(diffs):
            n_sub, n_img = d.shape
            c = cols if shared_images else torch.randint(n_img, (n_img,), generator=g)
            rows = torch.randint(n_sub, (n_sub,), generator=g)
            means[s] = d[:, c].mean(1)[rows].mean()
        draws[k] = (means * weights).sum() / weights.sum()
    return 100.0 * draws.std().item()


EVAL_CACHE = "evaluation.pt"
EVAL_VERSION = 1


def cached_evaluation(path: Path, key: dict, compute) -> tuple[dict, bool]:
    """A run's evaluation (accuracies and per-image hits), kept in ``path`` beside its
    supernet: reused when ``key`` (the supernet file's SHA-256, the subnet and image counts,
    the threads) is the one it was computed under, else computed and written atomically.
    Returns (evaluation, whether it came from the file).  An unreadable file is computed
    again, never trusted."""
    if path.is_file():
        try:
            stored = torch.load(path, weights_only=True)
            if isinstance(stored, dict) and stored.get("key") == key:
                return stored["value"], True
        except Exception:  # noqa: BLE001 - a torn or foreign file: evaluate again
            pass
    value = compute()
    atomic_save({"key": key, "value": value}, path)
    return value, False


def curve_rows(name: str, seed: int, run: Path) -> list[dict]:
    """A run's metrics (``metrics.csv``) against the budget spent: subnet-epochs so far (each
    phase's epochs times the subnets it trains a step, from ``config.yaml``)."""
    import csv

    import yaml

    cfg = yaml.safe_load((run / "config.yaml").read_text())
    per = {ph["name"]: ph.get("subnets_per_step", 1) for ph in cfg["phases"]}
    before, spent, rows = {}, 0.0, []
    for ph in cfg["phases"]:
        before[ph["name"]] = spent
        spent += ph["epochs"] * per[ph["name"]]
    last_epoch: dict[str, float] = {}
    for r in csv.DictReader((run / "metrics.csv").open()):
        ph = r["phase"]
        if ph not in before:
            continue
        if r["kind"] == "train":
            last_epoch[ph] = float(r["epoch"])
            rows.append({"method": name, "seed": seed, "subnet_epochs": round(before[ph] + last_epoch[ph] * per[ph], 4),
                         "phase": ph, "kind": "train", "lr": float(r["lr"]), "train_top1": float(r["acc"]),
                         "subnet": "", "heldout_top1": ""})
        elif r["kind"] == "eval" and r.get("top1"):
            rows.append({"method": name, "seed": seed, "subnet_epochs": round(before[ph] + last_epoch.get(ph, 0) * per[ph], 4),
                         "phase": ph, "kind": "eval", "lr": "", "train_top1": "", "subnet": r["subnet"],
                         "heldout_top1": float(r["top1"])})
    return rows


def write_curves(out: Path, rows: list[dict]) -> None:
    """``curves.csv`` and ``curves.png``: training top-1 (smoothed over 20 log lines) and the
    learning rate against subnet-epochs, one line per method (first seed), held-out points
    where the run evaluated its largest (x) and smallest (o)."""
    import csv

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    with (out / "curves.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(8, 7), sharex=True, height_ratios=(3, 1))
    for i, name in enumerate(dict.fromkeys(r["method"] for r in rows)):
        seed = min(r["seed"] for r in rows if r["method"] == name)
        tr = [r for r in rows if r["method"] == name and r["seed"] == seed and r["kind"] == "train"]
        x = np.array([r["subnet_epochs"] for r in tr])
        y = np.array([r["train_top1"] for r in tr])
        k = min(20, len(y))
        ys = np.convolve(y, np.ones(k) / k, mode="valid") if k else y
        color = f"C{i}"
        ax.plot(x[len(x) - len(ys):], ys, color=color, label=f"{name} (training top-1)")
        ax2.plot(x, [r["lr"] for r in tr], color=color)
        for r in rows:
            if r["method"] == name and r["seed"] == seed and r["kind"] == "eval" and r["subnet"] in ("max", "min"):
                ax.scatter(r["subnet_epochs"], r["heldout_top1"], color=color, marker="x" if r["subnet"] == "max" else "o",
                           zorder=3)
    ax.set_ylabel("top-1 %")
    ax.set_ylim(bottom=max(0.0, ax.get_ylim()[0]))
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title("training curves (held-out: x largest, o smallest, at evaluated phase ends)", fontsize=9)
    ax2.set_ylabel("learning rate")
    ax2.set_xlabel("budget spent (subnet-epochs)")
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=110)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="tiny")
    p.add_argument("--seeds", default="0", type=seeds_arg, help="comma-separated training seeds")
    p.add_argument("--subnets", type=int, default=20)
    p.add_argument("--eval-images", type=int, default=2000)
    p.add_argument("--out", type=Path, default=Path("runs/ps_vs_naive"))
    p.add_argument("--threads", type=threads_arg, default=1, help="torch threads (1 is steadiest on a shared 2-core box)")
    p.add_argument("--only", help="comma-separated subset of: ps,naive,sandwich,full,bn_shared,bn_switchable")
    p.add_argument("--test-images", type=int, default=10000,
                   help="also evaluate on this many of the dataset's test images, the same for every seed (0: off)")
    args = p.parse_args()
    if args.test_images < 0:
        p.error("--test-images must be 0 or more")

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
    seeds = args.seeds
    results: dict[str, list[dict]] = {}
    hits: dict[tuple[str, int, str], torch.Tensor] = {}  # (method, seed, split) -> subnets x images
    curves: list[dict] = []
    test = None
    if args.test_images:
        from supernet.space import get_space

        try:
            test = load_test(base.data, base_resolution=max(get_space(base.space).resolutions))
        except DataError as exc:
            sys.exit(f"ps_vs_naive: error: {exc} (or --test-images 0)")
    for seed in seeds:
        data = load_data(base.data, base.valid_size, base.recal_images, base.train_limit, seed)
        for name, cfg in runs.items():
            cfg = replace(cfg, seed=seed, threads=args.threads)
            out = args.out / f"{name}-seed{seed}"
            t = time.time()
            if not (out / "supernet.pt").is_file():
                train(cfg, out, resume=True, progress=False)
            wall = time.time() - t

            def evaluate() -> dict:
                net, _ = load_supernet(out / "supernet.pt")
                evs = [Evaluator(net, data, base.recal_images, args.eval_images)]
                if test is not None:  # the same recalibration images, the dataset's test images instead of this seed's split
                    evs.append(Evaluator(net, replace(data, valid=test), base.recal_images, args.test_images))
                rng = random.Random(0)
                subnets = [net.space.sample(rng) for _ in range(args.subnets)]
                held_out, *on_test = scores(evs, subnets, net.space)
                return {"held_out": held_out, "test": on_test[0] if on_test else None,
                        "random_no_recal": (stats([evs[0].evaluate(c, recalibrate=False) for c in subnets])
                                            if name.startswith("bn_") else None)}

            key = {"version": EVAL_VERSION, "supernet_sha256": file_sha256(out / "supernet.pt"),
                   "subnets": args.subnets, "eval_images": args.eval_images, "test_images": args.test_images,
                   "recal_images": base.recal_images, "threads": args.threads}
            ev, cached = cached_evaluation(out / EVAL_CACHE, key, evaluate)
            held_out = dict(ev["held_out"])
            hits[(name, seed, "held_out")] = held_out.pop("hits")
            row = {"seed": seed, "budget_subnet_epochs": cfg.budget(), "train_wall_s": round(wall, 1),
                   "evaluation_cached": cached, **held_out}
            if ev["random_no_recal"] is not None:
                row["random_no_recal"] = ev["random_no_recal"]
            if ev["test"] is not None:
                on_test = dict(ev["test"])
                hits[(name, seed, "test")] = on_test.pop("hits")
                row["test"] = {"images": min(args.test_images, len(test)), **on_test}
            results.setdefault(name, []).append(row)
            curves.extend(curve_rows(name, seed, out))
            print(f"{name} seed {seed}: {row['random']} largest {row['largest']} smallest {row['smallest']} "
                  f"({row['train_wall_s']} s)", file=sys.stderr)

    mean = statistics.mean

    def top1_on(split: str):
        return (lambda r: r["top1"]) if split == "held_out" else (lambda r: r.get("test", {}).get("top1"))

    def paired_with(reference: str, names: list[str], split: str) -> dict:
        top1 = top1_on(split)
        ref = {r["seed"]: top1(r) for r in results.get(reference, []) if top1(r) is not None}
        out = {}
        for name in names:
            kept = [r for r in results.get(name, []) if r["seed"] in ref and top1(r) is not None]
            if kept:
                out[name] = paired([a for r in kept for a in top1(r)], [b for r in kept for b in ref[r["seed"]]],
                                   [(hits[(name, r["seed"], split)], hits[(reference, r["seed"], split)])
                                    for r in kept],
                                   shared_images=split == "test")  # every seed scores the same test images
        return out

    splits = ("held_out", "test") if test is not None else ("held_out",)
    vs_ps = [n for n in results if n != "ps" and not n.startswith("bn_")]
    paired_vs_ps = paired_with("ps", vs_ps, "held_out")
    paired_vs_ps_test = paired_with("ps", vs_ps, "test") if test is not None else {}
    # the BN pair: switchable against shared BN, the same subnets, seeds and images
    paired_bn = {split: p["bn_switchable"] for split in splits
                 if (p := paired_with("bn_shared", ["bn_switchable"], split))}
    lines = [f"| method | budget (subnet-epochs) | {args.subnets} random: mean ± std [min, max] (averaged over seeds) "
             "| per-seed means | largest | smallest | against PS, paired: mean diff ± s.e. over subnets / "
             "over subnets and images (won/lost) "
             "| test images: per-seed means; largest / smallest | test, against PS |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, rs in results.items():
        s = {k: mean([r["random"][k] for r in rs]) for k in ("mean", "std", "min", "max")}
        extra = ""
        if "random_no_recal" in rs[0]:
            nr = [r["random_no_recal"] for r in rs]
            extra = f" (no recal: {mean([x['mean'] for x in nr]):.2f} ± {mean([x['std'] for x in nr]):.2f})"
        per_seed = ", ".join(f"{r['random']['mean']:.2f}" for r in rs)
        lines.append(f"| {name} | {rs[0]['budget_subnet_epochs']:g} | {s['mean']:.2f} ± {s['std']:.2f} "
                     f"[{s['min']:.2f}, {s['max']:.2f}]{extra} | {per_seed} | {mean([r['largest'] for r in rs]):.2f} "
                     f"| {mean([r['smallest'] for r in rs]):.2f} | {_paired_cell(paired_vs_ps.get(name))} "
                     f"| {_test_cell(rs)} | {_paired_cell(paired_vs_ps_test.get(name))} |")
    if paired_bn:
        lines.append("")
        lines.append("bn_switchable against bn_shared, paired: held-out " + _paired_cell(paired_bn.get("held_out"))
                     + "; test images " + _paired_cell(paired_bn.get("test")))
    print("\n".join(lines), file=sys.stderr)
    out = {"bench": "ps_vs_naive", "preset": args.preset, "subnets": args.subnets, "paired_vs_ps": paired_vs_ps,
           "paired_bn_switchable_vs_shared": paired_bn,
           "seeds": seeds, "eval_images": args.eval_images, "recal_images": base.recal_images, "threads": torch.get_num_threads(),
           "test_images": args.test_images, "paired_vs_ps_test": paired_vs_ps_test,
           "load_avg": os.getloadavg(), "results": results, "table": lines}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(out, indent=2) + "\n")
    if curves:
        write_curves(args.out, curves)
    print(json.dumps(out))


def _test_cell(rs: list[dict]) -> str:
    """Per-seed means of the random subnets on the test images, then the largest and
    smallest averaged over seeds ("-" without test figures)."""
    ts = [r["test"] for r in rs if "test" in r]
    if not ts:
        return "-"
    means = ", ".join(f"{t['random']['mean']:.2f}" for t in ts)
    return (f"{means}; {statistics.mean([t['largest'] for t in ts]):.2f} / "
            f"{statistics.mean([t['smallest'] for t in ts]):.2f}")


def _paired_cell(p: dict | None) -> str:
    if p is None:
        return "-"
    boot = f" / {p['se_boot']:.2f}" if "se_boot" in p else ""
    return f"{p['mean_diff']:+.2f} ± {p['se']:.2f}{boot} ({p['wins']}/{p['losses']} of {p['pairs']})"


if __name__ == "__main__":
    main()
