"""ProxylessNAS's derived architectures against baselines of the same LUT latency (issue 9).

    .venv/bin/python bench/proxyless_vs_baselines.py --lut LUT --budgets 0.12,0.2 --seeds 0,1
        [--retrain-epochs 3] [--search-args '...'] [--ofa-run RUN --ofa-lut LUT] --out DIR

For every budget and seed: ``search.proxyless`` (its defaults, the given budget as target,
the seed) derives an architecture and retrains it from scratch; then, at that architecture's
LUT latency L, the baselines are built and trained from scratch with the same recipe, data
and seed (``supernet.standalone``):

- ``uniform closest``: the uniform (kernel, expand, depth) whose latency is the largest <= L;
- ``uniform k3 e3`` (``--k3e3``): kernel 3, expand 3 everywhere, the deepest uniform depth
  with latency <= L;
- ``random``: a random architecture of the space with latency in [0.9 L, L] (seeded).

``--ofa-run RUN --ofa-lut LUT`` adds what ``search.evolve`` finds for the same budget in a
trained OFA supernet of Fashion-MNIST (e.g. the main job's ``out/supernet`` and
``out/luts/local.csv``, a LUT measured on the same device and runtime as ``--lut``), with the
run's predictor and the seed: ``ofa evolve (supernet)`` is that subnet's top-1 taken from the
supernet after BN recalibration (how OFA deploys it), ``ofa evolve (retrained)`` the same
architecture trained from scratch with the recipe of every other row.  Top-1 is on the same
held-out split for every row (the supernet row: its run's split, the same when the run's
split seed is 0, as the presets' is).  Writes ``DIR/rows.csv``,
``DIR/rows.json`` and ``DIR/summary.png``; resumable (finished rows are kept and skipped).
"""

from __future__ import annotations

import argparse
import json
import random
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from profiler.costmodel import LatencyModel  # noqa: E402
from profiler.lut import lut_spaces  # noqa: E402
from supernet.atomic import atomic_write_text  # noqa: E402
from supernet.data import load_data  # noqa: E402
from supernet.ops import build_network  # noqa: E402
from supernet.space import get_space  # noqa: E402
from supernet.standalone import Recipe, train_standalone  # noqa: E402
from supernet.cliargs import seeds_arg, threads_arg  # noqa: E402

FIELDS = ["budget_ms", "seed", "model", "lut_ms", "params", "macs", "top1", "epochs", "seconds", "subnet"]


def uniform(space, r, model, limit, k=None, e=None):
    """The dearest uniform architecture with LUT latency <= limit (restricted to k, e)."""
    best = None
    for kk in space.kernels:
        for ee in space.expands:
            if (k and kk != k) or (e and ee != e):
                continue
            for d in space.depths:
                cfg = space.uniform_subnet(kk, ee, d, r=r)
                ms = float(model.cost([cfg])[0])
                if ms <= limit and (best is None or ms > best[1]):
                    best = (cfg, ms)
    return best


def random_near(space, r, model, limit, seed, tries=20000):
    rng = random.Random(seed)
    for _ in range(tries):
        cfg = space.canonical(space.sample(rng, resolutions=[r]))
        ms = float(model.cost([cfg])[0])
        if 0.9 * limit <= ms <= limit:
            return cfg, ms
    return None


class OfaRows:
    """What ``search.evolve`` picks for a budget in a trained OFA supernet, and its top-1."""

    NAMES = ("ofa evolve (supernet)", "ofa evolve (retrained)")

    def __init__(self, run: Path, lut: str, predictor: str | None, runtime: str, out: Path):
        from supernet.evaluation import load_run

        self.lut, self.runtime, self.out = lut, runtime, out
        self.predictor = predictor or str(run / "predictor.pt")
        self.net, self.ev, _ = load_run(run, device="cpu")
        self.space = self.net.space
        self.model = LatencyModel.from_lut(lut, self.space, runtime, calibration="auto")  # as for --lut

    def search(self, budget: float, seed: int):
        """(subnet, its LUT latency) that search.evolve finds for ``budget`` ms."""
        from search.evolve import main as evolve_main
        from supernet.space import SubnetConfig

        folder = self.out / f"evolve-{budget:g}ms-seed{seed}"
        path = folder / f"budget_{budget:g}ms.json"
        if not path.exists():
            code = evolve_main(["--lut", self.lut, "--runtime", self.runtime, "--predictor", self.predictor,
                                "--latency-ms", f"{budget:g}", "--seed", str(seed), "--out", str(folder)])
            if code:
                raise SystemExit(f"search.evolve failed ({code}) for {budget} ms seed {seed}")
        res = json.loads(path.read_text())
        cfg = SubnetConfig.from_dict(res["subnet"]).validated(self.space)
        return cfg, float(self.model.cost([cfg])[0])

    def from_supernet(self, cfg) -> float:
        return round(self.ev.evaluate(cfg), 3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lut", required=True)
    ap.add_argument("--budgets", required=True, help="target latencies in ms, comma separated")
    ap.add_argument("--seeds", default="0,1", type=seeds_arg)
    ap.add_argument("--retrain-epochs", type=float, default=3.0)
    ap.add_argument("--search-args", default="", help="extra arguments for search.proxyless")
    ap.add_argument("--ofa-run", type=Path, help="a supernet.train run of the fmnist space (with predictor.pt)")
    ap.add_argument("--ofa-lut", help="a LUT of the OFA run's space on the same device and runtime as --lut")
    ap.add_argument("--ofa-predictor", help="predictor for search.evolve (default: OFA-RUN/predictor.pt)")
    ap.add_argument("--k3e3", action="store_true", help="also the uniform kernel 3 / expand 3 baseline")
    ap.add_argument("--threads", type=threads_arg, default=2)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    if bool(args.ofa_run) != bool(args.ofa_lut):
        raise SystemExit("error: --ofa-run and --ofa-lut go together")
    torch.set_num_threads(args.threads)
    from search.proxyless import main as proxyless_main

    space = get_space(lut_spaces(Path(args.lut))[0])
    model = LatencyModel.from_lut(args.lut, space, calibration="auto")
    args.out.mkdir(parents=True, exist_ok=True)
    rows_path = args.out / "rows.json"
    rows = json.loads(rows_path.read_text()) if rows_path.exists() else []
    done = {(r["budget_ms"], r["seed"], r["model"]) for r in rows}
    data = load_data("fmnist", valid_size=5000, seed=0)
    ofa = OfaRows(args.ofa_run, args.ofa_lut, args.ofa_predictor, model.runtime, args.out) if args.ofa_run else None

    def save():
        atomic_write_text(rows_path, json.dumps(rows, indent=1) + "\n")
        lines = [",".join(FIELDS)]
        for r in rows:
            lines.append(",".join(json.dumps(r[f]) if f == "subnet" else str(r[f]) for f in FIELDS).replace('"', "'"))
        atomic_write_text(args.out / "rows.csv", "\n".join(lines) + "\n")

    def add(budget, seed, name, cfg, ms, res, sp=space):
        blocks = sp.blocks(cfg)
        rows.append({"budget_ms": budget, "seed": seed, "model": name, "lut_ms": round(ms, 5),
                     "params": sum(b.params() for b in blocks), "macs": sum(b.macs() for b in blocks),
                     "top1": res["top1"], "epochs": res.get("epochs"), "seconds": res.get("seconds"),
                     "subnet": cfg.to_dict()})
        save()
        print(f"{budget:g} ms seed {seed} {name:<18} {ms:.4f} ms  {res['top1']:.2f}%", flush=True)

    def retrain(sp, cfg, seed):
        """Every trained-from-scratch row's recipe: the same data, epochs and seed."""
        return train_standalone(build_network(sp, cfg), data, cfg.r, Recipe(epochs=args.retrain_epochs),
                                torch.device("cpu"), seed=seed, progress=False)

    for budget in [float(b) for b in args.budgets.split(",")]:
        for seed in args.seeds:
            run = args.out / f"search-{budget:g}ms-seed{seed}"
            reuse = run / "result.json"
            if (budget, seed, "proxylessnas") not in done and not (reuse.exists() and "retrain" in reuse.read_text()):
                code = proxyless_main(["--lut", args.lut, "--latency-ms", str(budget), "--seed", str(seed),
                                       "--retrain-epochs", str(args.retrain_epochs), "--no-export", "--no-progress",
                                       "--out", str(run), "--force", *shlex.split(args.search_args)])
                if code:
                    raise SystemExit(f"search.proxyless failed ({code}) for {budget} ms seed {seed}")
            if (budget, seed, "proxylessnas") not in done:
                res = json.loads((run / "result.json").read_text())
                from supernet.space import SubnetConfig

                cfg = SubnetConfig.from_dict(res["subnet"])
                add(budget, seed, "proxylessnas", cfg, res["lut_latency_ms"], res["retrain"])
            prox = next(r for r in rows if (r["budget_ms"], r["seed"], r["model"]) == (budget, seed, "proxylessnas"))
            limit = prox["lut_ms"] * 1.0001
            r = prox["subnet"]["r"]
            closest = uniform(space, r, model, limit)
            k3e3 = uniform(space, r, model, limit, 3, 3)
            for name, found in (("uniform closest", closest),
                                ("uniform k3 e3", k3e3 if args.k3e3 else None),
                                ("random", random_near(space, r, model, limit, seed))):
                if (budget, seed, name) in done or found is None:
                    continue
                cfg, ms = found
                add(budget, seed, name, cfg, ms, retrain(space, cfg, seed))
            if ofa is not None and not {(budget, seed, n) for n in OfaRows.NAMES} <= done:
                cfg, ms = ofa.search(budget, seed)
                if (budget, seed, OfaRows.NAMES[0]) not in done:
                    add(budget, seed, OfaRows.NAMES[0], cfg, ms, {"top1": ofa.from_supernet(cfg)}, ofa.space)
                if (budget, seed, OfaRows.NAMES[1]) not in done:
                    add(budget, seed, OfaRows.NAMES[1], cfg, ms, retrain(ofa.space, cfg, seed), ofa.space)
    plot(rows, args.out / "summary.png")


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, marker in (("proxylessnas", "*"), ("uniform k3 e3", "o"), ("uniform closest", "s"), ("random", "^"),
                         (OfaRows.NAMES[0], "D"), (OfaRows.NAMES[1], "v")):
        pts = [(r["lut_ms"], r["top1"]) for r in rows if r["model"] == name]
        if pts:
            ax.scatter(*zip(*pts), marker=marker, s=80 if marker == "*" else 40, label=name)
    ax.set_xlabel("LUT latency (ms)")
    ax.set_ylabel("held-out top-1 (%)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
