"""hwnas evolution vs OFA's EvolutionFinder: same predictor, same LUT, same budgets, same
population and generations.  Wall time and best predicted accuracy, several seeds.

    bash bench/make_ref_env.sh                  # once: bench/.venv-ref with PyPI `ofa`
    .venv/bin/python bench/search_vs_ofa.py [--seeds 0,1,2] [--budgets 15,20,25,30]
        [--population 100] [--generations 500] [--out out/bench/search_vs_ofa]

- OFA side: ``ofa.tutorial.EvolutionFinder`` (the one OFA's tutorial uses for Note10), its
  ``AccuracyPredictor`` loaded with the shipped copy ``search/data/ofa_acc_predictor.pth``
  (``search.predictor.OFA_PREDICTOR``) and its ``LatencyTable`` over
  ``tests/data/ofa/note10/*.yaml``, run in ``bench/.venv-ref``.
  The only change: OFA's ``LatencyEstimator`` calls ``yaml.load(fp)`` without a Loader,
  which PyYAML 6 rejects (once-for-all#94), so the tables are read with ``yaml.safe_load``
  and handed to OFA's own estimator objects; the latency queries are OFA's code.
- hwnas side: ``search.evolve.evolve`` with the same predictor file (``ofa:PATH``) and the
  same tables imported into an hwnas LUT CSV (``profiler.import_lut``).
- Both run in separate processes under the same conditions, one torch thread each; the
  timed part is the search call alone (``run_evolution_search`` / ``evolve``), per budget.
  hwnas runs once before and once after OFA (same answers) and its time is the mean.
  OFA's finder picks random samples with Python's ``random`` and ``np.random``; both are
  seeded with the seed.
- Every OFA result is re-scored with hwnas's predictor and LUT (the numbers must agree), and
  every hwnas result is checked against the budget.

Prints a table and writes ``results.json`` (all runs) and ``summary.json`` beside a PNG.

``--pareto``: the whole front instead of one subnet per budget.  ``search.pareto`` (the
search behind ``search.evolve --pareto``) against pymoo's NSGA-II (``bench/.venv-ref``,
pymoo 0.6.2, its documented set-up for integer variables: ``IntegerRandomSampling``, SBX and
polynomial mutation with ``RoundingRepair``, duplicates eliminated, population 100), the
same predictor and the same LUT costs, each with its own budget of predictor evaluations
(``--pareto-evals``, ``--nsga2-evals``), several seeds.  Hypervolume of the front of every
subnet each method evaluated, reference point (the dearest subnet's LUT latency, the
cheapest subnet's predicted accuracy), normalized by the hypervolume of the best front any
run found; and the wall time of the search call.  Writes ``pareto.json`` and
``pareto.png`` (fronts, and hypervolume against evaluations).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NOTE10 = REPO / "tests" / "data" / "ofa" / "note10"  # OFA's published Note10 tables (tests/data/README.md)
REF_PY = REPO / "bench" / ".venv-ref" / "bin" / "python"
RESOLUTIONS = (160, 176, 192, 208, 224)


# --------------------------------------------------------------------------- OFA worker
# Runs inside bench/.venv-ref: imports only ofa, torch, numpy, yaml.


def ofa_worker(args: argparse.Namespace) -> None:
    import random

    import numpy as np
    import torch
    import yaml

    torch.set_num_threads(1)
    from ofa.tutorial.accuracy_predictor import AccuracyPredictor
    from ofa.tutorial.evolution_finder import EvolutionFinder
    from ofa.tutorial.latency_table import LatencyEstimator, LatencyTable

    predictor = AccuracyPredictor(pretrained=False, device="cpu")
    predictor.model.load_state_dict(torch.load(args.predictor, map_location="cpu", weights_only=True))
    table = LatencyTable.__new__(LatencyTable)  # OFA's __init__ downloads; fill it from disk
    table.latency_tables = {}
    for r in RESOLUTIONS:
        est = LatencyEstimator.__new__(LatencyEstimator)
        with open(Path(args.note10) / f"{r}_lookup_table.yaml") as f:
            est.lut = yaml.safe_load(f)
        table.latency_tables[r] = est
    out = []
    for seed in args.seeds:
        for budget in args.budgets:
            random.seed(seed)
            np.random.seed(seed)
            finder = EvolutionFinder(
                "note10", budget, table, predictor,
                mutate_prob=0.1, population_size=args.population, max_time_budget=args.generations,
                parent_ratio=0.25, mutation_ratio=0.5,
            )
            t0 = time.perf_counter()
            _, (acc, sample, lat) = finder.run_evolution_search()
            dt = time.perf_counter() - t0
            out.append({"seed": seed, "budget": budget, "seconds": dt, "accuracy": float(acc),
                        "latency_ms": float(lat),
                        "subnet": {"ks": sample["ks"], "e": sample["e"], "d": sample["d"], "r": sample["r"][0]}})
            print(json.dumps(out[-1]), file=sys.stderr, flush=True)
    print(json.dumps(out))


# --------------------------------------------------------------------------- fronts


def _front_setup(args: argparse.Namespace, lut_csv: Path):
    import torch

    torch.set_num_threads(1)
    from search.evolve import CostArrays, covered_choices
    from search.latency import LatencyModel
    from search.predictor import load_predictor
    from supernet.space import OFA_MBV3

    pred = load_predictor(f"ofa:{args.predictor}", OFA_MBV3)
    lat = LatencyModel.from_lut(lut_csv, OFA_MBV3, calibration=None)
    choices = covered_choices(lat, OFA_MBV3, pred.supports)
    costs = CostArrays(lat, choices)
    score = lambda p: pred.predict_population(p, choices)  # noqa: E731
    lo, cheapest = costs.cheapest()
    ref = (float(costs.dearest()), float(score(cheapest)[0]))
    return costs, score, ref


def _curve(cost, acc, ref, step: int = 50) -> list[list[float]]:
    """(evaluations, hypervolume) of the first n evaluated points, every ``step``."""
    from search.pareto import hypervolume

    n = len(acc)
    marks = sorted(set(list(range(step, n, step)) + [n]))
    return [[m, hypervolume(cost[:m], acc[:m], *ref)] for m in marks]


def nsga2_worker(args: argparse.Namespace) -> None:
    """Runs inside bench/.venv-ref (pymoo); hwnas's predictor and LUT costs."""
    import numpy as np
    from pymoo.algorithms.moo.nsga2 import NSGA2
    from pymoo.core.problem import Problem
    from pymoo.operators.crossover.sbx import SBX
    from pymoo.operators.mutation.pm import PM
    from pymoo.operators.repair.rounding import RoundingRepair
    from pymoo.operators.sampling.rnd import IntegerRandomSampling
    from pymoo.optimize import minimize

    sys.path.insert(0, str(REPO))
    from search.encoding import Population, gene_sizes
    from search.pareto import hypervolume, nondominated

    costs, score, ref = _front_setup(args, Path(args.lut))
    choices = costs.choices
    sizes = gene_sizes(choices)
    nb, ns = choices.space.num_blocks, len(choices.space.stages)
    out = []
    for seed in args.seeds:
        for n_eval in args.nsga2_evals:
            seen_c, seen_a = [], []

            class Front(Problem):
                def __init__(self):
                    super().__init__(n_var=len(sizes), n_obj=2, xl=np.zeros(len(sizes)), xu=sizes - 1.0, vtype=int)

                def _evaluate(self, x, out_, *a, **k):
                    pop = Population(np.asarray(np.round(x), dtype=np.int64), nb, ns)
                    c, acc = costs(pop), score(pop)
                    seen_c.extend(c.tolist())
                    seen_a.extend(acc.tolist())
                    out_["F"] = np.column_stack([c, -acc])

            algo = NSGA2(pop_size=100, sampling=IntegerRandomSampling(),
                         crossover=SBX(prob=1.0, eta=3.0, vtype=float, repair=RoundingRepair()),
                         mutation=PM(prob=1.0, eta=3.0, vtype=float, repair=RoundingRepair()),
                         eliminate_duplicates=True)
            t0 = time.perf_counter()
            minimize(Front(), algo, ("n_eval", n_eval), seed=seed, verbose=False)
            dt = time.perf_counter() - t0
            c, a = np.asarray(seen_c), np.asarray(seen_a)
            f = nondominated(c, a)
            out.append({"method": "nsga2", "seed": seed, "budget_evals": n_eval, "evaluations": len(a),
                        "seconds": dt, "hv": hypervolume(c, a, *ref), "front": [[float(c[i]), float(a[i])] for i in f],
                        "curve": _curve(c, a, ref)})
            print(json.dumps({k: v for k, v in out[-1].items() if k not in ("front", "curve")}), file=sys.stderr, flush=True)
    print(json.dumps({"ref": ref, "runs": out}))


def run_pareto_hwnas(args: argparse.Namespace, lut_csv: Path) -> tuple[list[dict], tuple[float, float]]:
    import numpy as np

    from search.pareto import ParetoParams, hypervolume, pareto_front

    costs, score, ref = _front_setup(args, lut_csv)
    out = []
    for seed in args.seeds:
        for n_eval in args.pareto_evals:
            t0 = time.perf_counter()
            res = pareto_front(costs, score, ParetoParams(evaluations=n_eval), np.random.default_rng(seed),
                               ref_accuracy=ref[1], progress=False)
            dt = time.perf_counter() - t0
            out.append({"method": "hwnas", "seed": seed, "budget_evals": n_eval, "evaluations": res.evaluations,
                        "seconds": dt, "hv": hypervolume(res.cost, res.accuracy, *ref),
                        "front": [[float(c), float(a)] for c, a in zip(res.cost, res.accuracy)],
                        "curve": [[e, h] for e, h in res.history], "notes": res.notes})
            print(json.dumps({k: v for k, v in out[-1].items() if k not in ("front", "curve")}), file=sys.stderr, flush=True)
    return out, ref


def pareto_main(args: argparse.Namespace, lut_csv: Path, out: Path) -> int:
    import numpy as np

    from search.pareto import hypervolume, nondominated

    print("hwnas search.pareto ...", file=sys.stderr)
    ours, ref = run_pareto_hwnas(args, lut_csv)
    print(f"pymoo NSGA-II ({REF_PY.relative_to(REPO)}) ...", file=sys.stderr)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    cmd = [str(REF_PY), str(Path(__file__).resolve()), "--nsga2-worker", "--seeds", ",".join(map(str, args.seeds)),
           "--nsga2-evals", ",".join(map(str, args.nsga2_evals)), "--predictor", args.predictor, "--lut", str(lut_csv)]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, env=env, cwd=REPO, timeout=6 * 3600, text=True)
    if proc.returncode != 0:
        sys.exit(f"error: NSGA-II worker failed with exit code {proc.returncode}")
    theirs = json.loads(proc.stdout.strip().splitlines()[-1])
    assert np.allclose(theirs["ref"], ref), (theirs["ref"], ref)
    runs = ours + theirs["runs"]
    pts = np.array([p for r in runs for p in r["front"]])
    best = hypervolume(pts[:, 0], pts[:, 1], *ref)
    for r in runs:
        r["hv_norm"] = r["hv"] / best
    rows = []
    for method, budgets in (("hwnas", args.pareto_evals), ("nsga2", args.nsga2_evals)):
        for b in budgets:
            rs = [r for r in runs if r["method"] == method and r["budget_evals"] == b]
            rows.append({"method": method, "budget_evals": b,
                         "evaluations_mean": float(np.mean([r["evaluations"] for r in rs])),
                         "hv_norm_mean": float(np.mean([r["hv_norm"] for r in rs])),
                         "hv_norm_min": float(np.min([r["hv_norm"] for r in rs])),
                         "hv_norm_max": float(np.max([r["hv_norm"] for r in rs])),
                         "seconds_mean": float(np.mean([r["seconds"] for r in rs])),
                         "front_size_mean": float(np.mean([len(r["front"]) for r in rs]))})
    meta = {"ref_point": {"latency_ms": ref[0], "accuracy": ref[1]}, "best_known_hv": best, "seeds": args.seeds,
            "predictor": args.predictor, "lut": str(lut_csv), "host_cpus": os.cpu_count(),
            "load_avg": os.getloadavg()[0]}
    (out / "pareto.json").write_text(json.dumps({"meta": meta, "rows": rows, "runs": runs}, indent=2) + "\n")
    _plot_pareto(runs, out / "pareto.png", best)
    print(f"reference point: {ref[0]:.2f} ms, {100 * ref[1]:.2f}%; hypervolume normalized by the best front "
          f"of all runs ({best:.4f} ms x accuracy)")
    head = f"{'method':>6} | {'evals (budget)':>14} | {'HV norm (mean, min-max)':>24} | {'seconds':>8} | {'front':>5}"
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['method']:>6} | {r['evaluations_mean']:>7.0f} ({r['budget_evals']:>5}) | "
              f"{r['hv_norm_mean']:.4f} ({r['hv_norm_min']:.4f}-{r['hv_norm_max']:.4f}) | "
              f"{r['seconds_mean']:>8.2f} | {r['front_size_mean']:>5.0f}")
    print(json.dumps({"meta": meta, "rows": rows}))
    print(f"wrote {out / 'pareto.json'} and {out / 'pareto.png'}", file=sys.stderr)
    return 0


def _plot_pareto(runs: list[dict], path: Path, best: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=120)
    colors = {"hwnas": "tab:red", "nsga2": "tab:blue"}
    shown = set()
    for r in runs:
        if r["seed"] != runs[0]["seed"]:
            continue
        f = r["front"]
        label = f"{r['method']} ({r['budget_evals']} evals)"
        a1.step([p[0] for p in f], [100 * p[1] for p in f], where="post", label=label, alpha=0.8,
                color=colors[r["method"]], linestyle="-" if r["budget_evals"] == max(
                    x["budget_evals"] for x in runs if x["method"] == r["method"]) else ":")
    for r in runs:
        key = (r["method"], r["budget_evals"])
        c = r["curve"]
        a2.plot([p[0] for p in c], [p[1] / best for p in c], color=colors[r["method"]], alpha=0.5,
                label=None if key in shown else f"{r['method']} ({r['budget_evals']} evals)")
        shown.add(key)
    a1.set_xlabel("Note10 latency (ms, LUT)")
    a1.set_ylabel("predicted ImageNet top-1 (%)")
    a1.set_title("fronts, seed " + str(runs[0]["seed"]))
    a1.legend(fontsize=7)
    a1.grid(alpha=0.3)
    a2.set_xscale("log")
    a2.set_xlabel("predictor evaluations")
    a2.set_ylabel("hypervolume / best known")
    a2.legend(fontsize=7)
    a2.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# --------------------------------------------------------------------------- hwnas side


def run_hwnas(args: argparse.Namespace, lut_csv: Path) -> list[dict]:
    import numpy as np
    import torch

    torch.set_num_threads(1)
    from search.evolve import CostArrays, EvolutionParams, covered_choices, evolve
    from search.latency import LatencyModel
    from search.predictor import load_predictor
    from supernet.space import OFA_MBV3

    pred = load_predictor(f"ofa:{args.predictor}", OFA_MBV3)
    lat = LatencyModel.from_lut(lut_csv, OFA_MBV3, calibration=None)
    choices = covered_choices(lat, OFA_MBV3, pred.supports)
    assert choices.resolutions == RESOLUTIONS and choices.widths == (1.2,), choices
    costs = CostArrays(lat, choices)
    params = EvolutionParams(population=args.population, generations=args.generations)
    score = lambda p: pred.predict_population(p, choices)  # noqa: E731
    score(costs.cheapest()[1])  # warm up torch once, outside the timed part
    out = []
    for seed in args.seeds:
        for budget in args.budgets:
            t0 = time.perf_counter()
            res = evolve(budget, costs, score, params, np.random.default_rng([seed, int(budget * 1000)]), progress=False)
            dt = time.perf_counter() - t0
            lat_check = float(lat.latency([res.subnet])[0])
            assert lat_check <= budget + 1e-9, (lat_check, budget)
            out.append({"seed": seed, "budget": budget, "seconds": dt, "accuracy": res.accuracy,
                        "latency_ms": lat_check, "evaluations": res.evaluations, "ranked": res.ranked,
                        "notes": res.notes, "subnet": res.subnet.to_dict()})
            print(json.dumps({k: v for k, v in out[-1].items() if k != "subnet"}), file=sys.stderr, flush=True)
    return out


def rescore_ofa(rows: list[dict], args: argparse.Namespace, lut_csv: Path) -> None:
    """Re-evaluate OFA's answers with hwnas's predictor and LUT (fields ``hwnas_*``)."""
    from search.latency import LatencyModel
    from search.predictor import load_predictor
    from supernet.space import OFA_MBV3, SubnetConfig

    pred = load_predictor(f"ofa:{args.predictor}", OFA_MBV3)
    lat = LatencyModel.from_lut(lut_csv, OFA_MBV3, calibration=None)
    cfgs = [SubnetConfig(ks=r["subnet"]["ks"], e=r["subnet"]["e"], d=r["subnet"]["d"], r=r["subnet"]["r"], w=1.2)
            for r in rows]
    accs = pred.predict(cfgs, OFA_MBV3)
    lats = lat.latency(cfgs)
    for r, a, l in zip(rows, accs, lats):
        r["hwnas_accuracy"] = float(a)
        r["hwnas_latency_ms"] = float(l)


def summarize(ofa: list[dict], ours: list[dict], budgets: list[float]) -> list[dict]:
    import numpy as np

    rows = []
    for b in budgets:
        o = [r for r in ofa if r["budget"] == b]
        h = [r for r in ours if r["budget"] == b]
        by_seed = {r["seed"]: r for r in o}
        wins = sum(r["accuracy"] >= by_seed[r["seed"]]["accuracy"] - 1e-6 for r in h)
        rows.append({
            "budget_ms": b,
            "ofa_seconds": float(np.mean([r["seconds"] for r in o])),
            "hwnas_seconds": float(np.mean([r["seconds"] for r in h])),
            "speedup": float(np.mean([r["seconds"] for r in o]) / np.mean([r["seconds"] for r in h])),
            "ofa_acc_mean": float(np.mean([r["accuracy"] for r in o])),
            "ofa_acc_best": float(np.max([r["accuracy"] for r in o])),
            "hwnas_acc_mean": float(np.mean([r["accuracy"] for r in h])),
            "hwnas_acc_best": float(np.max([r["accuracy"] for r in h])),
            "hwnas_ge_ofa_seeds": f"{wins}/{len(h)}",
            "ofa_latency_ms_mean": float(np.mean([r["latency_ms"] for r in o])),
            "hwnas_latency_ms_mean": float(np.mean([r["latency_ms"] for r in h])),
            "hwnas_predictor_evals_mean": float(np.mean([r["evaluations"] for r in h])),
        })
    return rows


def plot(rows: list[dict], ofa: list[dict], ours: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4), dpi=120)
    a1.scatter([r["latency_ms"] for r in ofa], [100 * r["accuracy"] for r in ofa], marker="x", label="OFA EvolutionFinder")
    a1.scatter([r["latency_ms"] for r in ours], [100 * r["accuracy"] for r in ours], marker="o", facecolors="none",
               edgecolors="tab:red", label="hwnas evolve")
    a1.set_xlabel("Note10 latency (ms, LUT)")
    a1.set_ylabel("predicted ImageNet top-1 (%)")
    a1.legend(fontsize=8)
    a1.grid(alpha=0.3)
    x = range(len(rows))
    a2.bar([i - 0.2 for i in x], [r["ofa_seconds"] for r in rows], 0.4, label="OFA")
    a2.bar([i + 0.2 for i in x], [r["hwnas_seconds"] for r in rows], 0.4, label="hwnas", color="tab:red")
    a2.set_xticks(list(x), [f"{r['budget_ms']:g} ms" for r in rows])
    a2.set_ylabel("search wall time per budget (s)")
    a2.set_yscale("log")
    a2.legend(fontsize=8)
    a2.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--budgets", default="15,20,25,30")
    ap.add_argument("--population", type=int, default=100)
    ap.add_argument("--generations", type=int, default=500)
    ap.add_argument("--predictor", default=None, help="OFA's predictor (default: search.predictor.OFA_PREDICTOR)")
    ap.add_argument("--note10", default=str(NOTE10))
    ap.add_argument("--out", default="out/bench/search_vs_ofa")
    ap.add_argument("--pareto", action="store_true", help="compare whole fronts: search.pareto against NSGA-II")
    ap.add_argument("--pareto-evals", default="400,2000", help="--pareto: hwnas's evaluation budgets")
    ap.add_argument("--nsga2-evals", default="2000,10000", help="--pareto: NSGA-II's evaluation budgets")
    ap.add_argument("--ofa-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--nsga2-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--lut", help=argparse.SUPPRESS)
    args = ap.parse_args()
    try:  # parsed here, not by supernet.cliargs: the workers run in bench/.venv-ref, outside the repository's packages
        args.seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        ap.error(f"--seeds must be a comma list of integers, got {args.seeds!r}")
    if any(not 0 <= s < 2**32 for s in args.seeds):
        ap.error(f"--seeds must be between 0 and {2**32 - 1}, got {args.seeds}")
    args.budgets = [float(b) for b in args.budgets.split(",")]
    args.pareto_evals = [int(b) for b in args.pareto_evals.split(",")]
    args.nsga2_evals = [int(b) for b in args.nsga2_evals.split(",")]
    if args.ofa_worker:
        ofa_worker(args)
        return 0
    if args.nsga2_worker:
        nsga2_worker(args)
        return 0

    sys.path.insert(0, str(REPO))
    if args.predictor is None:
        from search.predictor import OFA_PREDICTOR

        args.predictor = str(OFA_PREDICTOR)
    if not Path(args.predictor).is_file():
        sys.exit(f"error: OFA's predictor not found: {args.predictor} (see search/data/README.md)")
    if not Path(args.note10).is_dir():
        sys.exit(f"error: OFA's Note10 tables not found: {args.note10} (see tests/data/README.md)")
    if not REF_PY.exists():
        sys.exit("error: bench/.venv-ref missing; run: bash bench/make_ref_env.sh")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lut_csv = out / "note10.csv"
    subprocess.run([sys.executable, "-m", "profiler.import_lut", "--format", "ofa",
                    *sorted(str(p) for p in Path(args.note10).glob("*_lookup_table.yaml")),
                    "--out", str(lut_csv), "--device", "note10", "--force"], check=True, cwd=REPO, timeout=300)
    if args.pareto:
        return pareto_main(args, lut_csv, out)

    # hwnas runs before and after OFA's (same seeds, same answers); its time is the mean of the
    # two passes, so a change in machine load during the long OFA runs does not favour either
    print("hwnas evolve (pass 1) ...", file=sys.stderr)
    ours_before = run_hwnas(args, lut_csv)
    print(f"OFA EvolutionFinder ({REF_PY.relative_to(REPO)}) ...", file=sys.stderr)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    cmd = [str(REF_PY), str(Path(__file__).resolve()), "--ofa-worker",
           "--seeds", ",".join(map(str, args.seeds)), "--budgets", ",".join(f"{b:g}" for b in args.budgets),
           "--population", str(args.population), "--generations", str(args.generations),
           "--predictor", args.predictor, "--note10", args.note10]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, env=env, cwd=REPO, timeout=6 * 3600, text=True)
    if proc.returncode != 0:
        sys.exit(f"error: OFA worker failed with exit code {proc.returncode}")
    ofa = json.loads(proc.stdout.strip().splitlines()[-1])
    rescore_ofa(ofa, args, lut_csv)
    print("hwnas evolve (pass 2) ...", file=sys.stderr)
    ours = run_hwnas(args, lut_csv)
    for a, b in zip(ours, ours_before):
        assert a["subnet"] == b["subnet"], "hwnas search is not reproducible"
        a["seconds_passes"] = [b["seconds"], a["seconds"]]
        a["seconds"] = (a["seconds"] + b["seconds"]) / 2

    rows = summarize(ofa, ours, args.budgets)
    meta = {"population": args.population, "generations": args.generations, "seeds": args.seeds,
            "predictor": args.predictor, "lut": str(lut_csv), "host_cpus": os.cpu_count(),
            "max_rescore_acc_diff": max(abs(r["accuracy"] - r["hwnas_accuracy"]) for r in ofa),
            "max_rescore_latency_diff_ms": max(abs(r["latency_ms"] - r["hwnas_latency_ms"]) for r in ofa)}
    (out / "results.json").write_text(json.dumps({"meta": meta, "ofa": ofa, "hwnas": ours}, indent=2) + "\n")
    (out / "summary.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    plot(rows, ofa, ours, out / "search_vs_ofa.png")

    print(f"population {args.population}, generations {args.generations}, seeds {args.seeds}; "
          f"OFA results re-scored by hwnas: max |acc diff| {meta['max_rescore_acc_diff']:.2e}, "
          f"max |latency diff| {meta['max_rescore_latency_diff_ms']:.3f} ms")
    head = (f"{'budget':>7} | {'OFA s':>7} {'hwnas s':>8} {'speedup':>8} | {'OFA acc% (mean/best)':>21} "
            f"{'hwnas acc% (mean/best)':>23} {'hwnas>=OFA':>10}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['budget_ms']:>4g} ms | {r['ofa_seconds']:>7.2f} {r['hwnas_seconds']:>8.3f} {r['speedup']:>7.1f}x | "
              f"{100 * r['ofa_acc_mean']:>10.2f} / {100 * r['ofa_acc_best']:<8.2f} "
              f"{100 * r['hwnas_acc_mean']:>11.2f} / {100 * r['hwnas_acc_best']:<9.2f} {r['hwnas_ge_ofa_seeds']:>10}")
    print(json.dumps({"meta": meta, "rows": rows}))
    print(f"wrote {out / 'results.json'}, {out / 'summary.json'}, {out / 'search_vs_ofa.png'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
