"""Search results for people and for scripts: the Pareto table in the terminal, a JSON per
budget, the front as CSV and JSON, and a PNG of predicted accuracy against cost with the
front, the final populations and random subnets for context.

Files written by ``write_search`` (in the output folder)::

    search.json            everything printed (the ``--json`` object)
    budget_<B><unit>.json  one per budget: subnet, predicted accuracy, predicted latency,
                           calibration used, evidence (predictor metrics, history, notes)
    pareto.csv             one row per budget
    pareto.png             accuracy against cost
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from supernet.atomic import atomic_open, atomic_write_text

from .encoding import Choices, Population, random_population

UNITS = {"latency-ms": "ms", "macs-m": "M MACs", "params-m": "M params"}
NAMES = {"latency-ms": "latency", "macs-m": "MACs", "params-m": "parameters"}
FILE_UNITS = {"latency-ms": "ms", "macs-m": "Mmacs", "params-m": "Mparams"}


def random_context(choices: Choices, costs, score: Callable[[Population], np.ndarray], n: int,
                   rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Cost and predicted accuracy of ``n`` uniformly random subnets (for the plot)."""
    if n <= 0:
        return {"cost": np.zeros(0), "acc": np.zeros(0)}
    pop = random_population(choices, n, rng)
    return {"cost": costs(pop), "acc": score(pop)}


def _round(x: float | None, nd: int = 4):
    return None if x is None else round(float(x), nd)


def result_row(res, flag: str, choices: Choices, latency_costs, pred, latency_costs_int8=None) -> dict[str, Any]:
    """The machine-readable record of one budget's result (the contract's ``results`` entry);
    a result of ``search.evolve --precision fp32,int8`` is priced in its own precision and
    carries ``precision`` and ``alternative``."""
    from .latency import MacsModel, ParamsModel

    precision = getattr(res, "precision", "")
    if precision == "int8" and latency_costs_int8 is not None:
        latency_costs = latency_costs_int8
    sp = choices.space
    cfg = res.subnet
    pop = Population.from_subnets([cfg], choices)
    lat = raw = None
    if latency_costs is not None:
        lat = float(latency_costs(pop)[0])
        raw = float(latency_costs.raw(pop)[0])
    cal = None
    if latency_costs is not None and (latency_costs.a, latency_costs.b) != (1.0, 0.0):
        cal = {"a": latency_costs.a, "b": latency_costs.b}
    return {
        "budget": res.budget,
        "unit": UNITS[flag],
        "subnet": cfg.to_dict(),
        "predicted_accuracy": _round(res.accuracy, 5),
        "predicted_latency_ms": _round(lat),
        "lut_sum_ms": _round(raw),
        "calibration": cal,
        "cost": _round(res.cost),
        "macs_m": _round(float(MacsModel(sp).cost([cfg])[0]), 2),
        "params_m": _round(float(ParamsModel(sp).cost([cfg])[0]), 3),
        "evaluations": res.evaluations,
        "seconds": round(res.seconds, 3),
        "notes": res.notes,
        **({"precision": precision, "alternative": res.alternative} if precision else {}),
    }


def write_search(out_dir: Path, results: Sequence, flag: str, costs, latency_costs, pred,
                 choices: Choices, context: dict[str, np.ndarray], params, seed: int,
                 lut: str | None = None, method: str = "evolution", latency_costs_int8=None) -> dict[str, Any]:
    """Write the JSON per budget, the Pareto CSV and PNG and ``search.json``; return the
    summary object (the ``--json`` output).

    Args:
        out_dir: output folder (created).
        results: ``SearchResult`` per budget, ascending budgets.
        flag: the constraint ("latency-ms", "macs-m" or "params-m").
        costs: the constraint's ``CostArrays``; ``latency_costs`` the LUT's (or None).
        pred: the accuracy predictor; ``choices`` the searched choices.
        context: random subnets' cost and accuracy (``random_context``).
        params: the search settings (a dataclass); ``seed`` the seed.
    Returns:
        The summary dict.
    """
    from dataclasses import asdict

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = latency_costs.model if latency_costs is not None else None
    rows = [result_row(r, flag, choices, latency_costs, pred, latency_costs_int8) for r in results]
    summary: dict[str, Any] = {
        "method": method,
        "constraint": NAMES[flag],
        "unit": UNITS[flag],
        "lut": lut,
        "device": getattr(model, "device", None),
        "runtime": getattr(model, "runtime", None),
        "precision": getattr(model, "precision", None),
        "calibration": rows[0]["calibration"] if rows else None,
        "space": choices.space.name,
        "resolutions": list(choices.resolutions),
        "widths": list(choices.widths),
        "predictor": {"source": pred.source, "path": pred.path, "description": pred.describe(),
                      "metrics": pred.metrics},
        "params": asdict(params),
        "seed": seed,
        "results": rows,
    }
    files = {}
    for res, row in zip(results, rows):
        name = f"budget_{res.budget:g}{FILE_UNITS[flag]}.json"
        detail = {**row, "lut": lut, "device": summary["device"], "runtime": summary["runtime"],
                  "predictor": summary["predictor"], "params": summary["params"], "seed": seed,
                  "history": [round(h, 5) for h in res.history[:: max(1, len(res.history) // 100)]],
                  "final_population": [
                      {"subnet": c.to_dict(), "predicted_accuracy": _round(a, 5), "cost": _round(k)}
                      for c, a, k in zip(res.population, res.population_acc, res.population_cost)
                  ]}
        atomic_write_text(out_dir / name, json.dumps(detail, indent=2) + "\n")
        files[f"{res.budget:g}"] = str(out_dir / name)
    csv_path = out_dir / "pareto.csv"
    cols = ["budget", "unit", "predicted_accuracy", "cost", "predicted_latency_ms", "lut_sum_ms",
            "macs_m", "params_m", "r", "w", "d", "subnet"]
    with atomic_open(csv_path, "w", newline="") as f:
        wr = csv.writer(f)
        wr.writerow(cols)
        for row in rows:
            s = row["subnet"]
            wr.writerow([row["budget"], row["unit"], row["predicted_accuracy"], row["cost"],
                         row["predicted_latency_ms"], row["lut_sum_ms"], row["macs_m"], row["params_m"],
                         s["r"], s["w"], "-".join(map(str, s["d"])), json.dumps(s, separators=(",", ":"))])
    png = plot_search(out_dir / "pareto.png", results, flag, context,
                      title=f"{summary['device'] or lut or flag} ({summary['runtime'] or NAMES[flag]}), "
                            f"{pred.source} predictor")
    summary["files"] = {"per_budget": files, "pareto_csv": str(csv_path), "plot": str(png),
                        "summary": str(out_dir / "search.json")}
    atomic_write_text(out_dir / "search.json", json.dumps(summary, indent=2) + "\n")
    return summary


def plot_search(path: Path, results: Sequence, flag: str, context: dict[str, np.ndarray],
                title: str = "") -> Path:
    """PNG of predicted accuracy (%) against cost: random subnets (grey), each budget's final
    parents (light), the chosen subnets joined as the front, the budgets as dashed lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    if len(context["cost"]):
        ax.scatter(context["cost"], 100 * context["acc"], s=4, c="0.75", label=f"{len(context['cost'])} random subnets")
    for i, r in enumerate(results):
        ax.scatter(r.population_cost, 100 * np.asarray(r.population_acc), s=8, alpha=0.35, color="tab:blue",
                   label="final parents" if i == 0 else None)
        ax.axvline(r.budget, ls="--", lw=0.8, color="0.5")
    xs = [r.cost for r in results]
    ys = [100 * r.accuracy for r in results]
    ax.plot(xs, ys, "-o", color="tab:red", label="chosen subnet per budget")
    for r in results:
        ax.annotate(f"{r.budget:g}", (r.cost, 100 * r.accuracy), textcoords="offset points", xytext=(4, -10), fontsize=7)
    return _save_plot(fig, ax, path, flag, title)


def _save_plot(fig, ax, path: Path, flag: str, title: str) -> Path:
    """Axis labels, title, legend and grid of an accuracy-against-cost plot; write the PNG
    atomically and close the figure."""
    import matplotlib.pyplot as plt

    ax.set_xlabel(f"predicted {NAMES[flag]} ({UNITS[flag]})")
    ax.set_ylabel("predicted accuracy (%)")
    if title:
        ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, format="png")
    plt.close(fig)
    return Path(path)


def _runtime_tag(summary: dict[str, Any]) -> str:
    """`` [tflite]``, `` [tflite int8]`` for an int8 table, or nothing without a LUT."""
    if not summary.get("runtime"):
        return ""
    prec = summary.get("precision")
    return f" [{summary['runtime']}{' ' + prec if prec and prec != 'fp32' else ''}]"


def print_search(summary: dict[str, Any]) -> None:
    """The Pareto table and where the files are."""
    unit = summary["unit"]
    print(f"{summary['predictor']['description']}")
    where = summary.get("lut") or summary["constraint"]
    cal = summary.get("calibration")
    cal_txt = f", calibrated {cal['a']:.3f}*sum{cal['b']:+.3f} ms" if cal else ""
    print(f"space {summary['space']}, {summary['constraint']} from {where}"
          f"{_runtime_tag(summary)}{cal_txt}, "
          f"resolutions {','.join(map(str, summary['resolutions']))}, widths {','.join(f'{w:g}' for w in summary['widths'])}")
    prec = any(row.get("precision") for row in summary["results"])
    head = (f"{'budget':>10} {'pred.acc%':>9} {'latency ms':>10}{' precision' if prec else ''} {'MACs M':>8} "
            f"{'params M':>8} {'r':>4} {'w':>4}  {'depths':<10} {'kernels / expands (active)':<30} {'s':>5}")
    print(head)
    print("-" * len(head))
    for row in summary["results"]:
        s = row["subnet"]
        lat = f"{row['predicted_latency_ms']:.2f}" if row["predicted_latency_ms"] is not None else "-"
        nb = len(s["ks"]) // len(s["d"])
        act = [i * nb + j for i, d in enumerate(s["d"]) for j in range(d)]
        ke = " ".join(f"{s['ks'][i]}{_e(s['e'][i])}" for i in act)
        pcol = f" {row.get('precision', ''):>9}" if prec else ""
        print(f"{row['budget']:>7g} {unit:<2} {100 * row['predicted_accuracy']:>9.2f} {lat:>10}{pcol} {row['macs_m']:>8.1f} "
              f"{row['params_m']:>8.2f} {s['r']:>4} {s['w']:>4g}  {'-'.join(map(str, s['d'])):<10} {ke:<30} {row['seconds']:>5.2f}")
        for note in row["notes"]:
            print(f"{'':>10} note: {note}")
        alt = row.get("alternative")
        if alt:
            print(f"{'':>10} best {alt['precision']}: {100 * alt['predicted_accuracy']:.2f}% at "
                  f"{alt['predicted_latency_ms']:.3f} ms")
    if summary.get("int8_drop"):
        d = summary["int8_drop"]
        print(f"int8 candidates ranked at the predicted accuracy minus the int8 drop ({d['pp']:+.2f} points: {d['source']})")
    for note in summary.get("notes", []):
        print(f"note: {note}")
    f = summary["files"]
    print(f"wrote {f['summary']}, {f['pareto_csv']}, {f['plot']} and {len(f['per_budget'])} per-budget JSON files")


def _e(x: float) -> str:
    return f"e{int(x)}" if float(x).is_integer() else f"e{x:g}"


# --------------------------------------------------------------------------- whole fronts


def write_front(out_dir: Path, front, flag: str, latency_costs, pred, choices: Choices,
                context: dict[str, np.ndarray], params, seed: int, lut: str | None = None) -> dict[str, Any]:
    """Write ``front.csv`` (one row per non-dominated subnet, by ascending cost),
    ``front.json`` (the same with the run's settings: the ``--json`` object) and
    ``front.png``; return the summary."""
    from dataclasses import asdict

    from .latency import MacsModel, ParamsModel
    from .pareto import hypervolume

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sp = choices.space
    model = latency_costs.model if latency_costs is not None else None
    pop = Population.from_subnets(front.subnets, choices)
    lat = latency_costs(pop) if latency_costs is not None else [None] * len(pop)
    raw = latency_costs.raw(pop) if latency_costs is not None else [None] * len(pop)
    macs = MacsModel(sp).cost(front.subnets)
    prm = ParamsModel(sp).cost(front.subnets)
    rows = [{"subnet": c.to_dict(), "predicted_accuracy": _round(a, 5), "cost": _round(k),
             "predicted_latency_ms": _round(lt), "lut_sum_ms": _round(rw), "macs_m": _round(m, 2),
             "params_m": _round(p, 3)}
            for c, a, k, lt, rw, m, p in zip(front.subnets, front.accuracy, front.cost, lat, raw, macs, prm)]
    cal = None
    if latency_costs is not None and (latency_costs.a, latency_costs.b) != (1.0, 0.0):
        cal = {"a": latency_costs.a, "b": latency_costs.b}
    lo, hi = front.cost_range
    summary: dict[str, Any] = {
        "method": "pareto",
        "constraint": NAMES[flag], "unit": UNITS[flag], "lut": lut,
        "device": getattr(model, "device", None), "runtime": getattr(model, "runtime", None),
        "precision": getattr(model, "precision", None), "calibration": cal, "space": sp.name,
        "resolutions": list(choices.resolutions), "widths": list(choices.widths),
        "predictor": {"source": pred.source, "path": pred.path, "description": pred.describe(),
                      "metrics": pred.metrics},
        "params": asdict(params), "seed": seed,
        "cost_range": [lo, hi],
        "hypervolume": {"value": hypervolume(front.cost, front.accuracy, hi, front.ref_accuracy),
                        "reference": {"cost": hi, "accuracy": front.ref_accuracy}},
        "evaluations": front.evaluations, "rounds": front.rounds, "seconds": round(front.seconds, 3),
        "notes": front.notes,
        "front": rows,
    }
    csv_path = out_dir / "front.csv"
    cols = ["predicted_accuracy", "cost", "unit", "predicted_latency_ms", "lut_sum_ms", "macs_m", "params_m",
            "r", "w", "d", "subnet"]
    with atomic_open(csv_path, "w", newline="") as f:
        wr = csv.writer(f)
        wr.writerow(cols)
        for row in rows:
            s = row["subnet"]
            wr.writerow([row["predicted_accuracy"], row["cost"], UNITS[flag], row["predicted_latency_ms"],
                         row["lut_sum_ms"], row["macs_m"], row["params_m"], s["r"], s["w"],
                         "-".join(map(str, s["d"])), json.dumps(s, separators=(",", ":"))])
    png = plot_front(out_dir / "front.png", front, flag, context,
                     title=f"{summary['device'] or lut or flag} ({summary['runtime'] or NAMES[flag]}), "
                           f"{pred.source} predictor, {front.evaluations} predictions")
    summary["files"] = {"front_csv": str(csv_path), "plot": str(png), "summary": str(out_dir / "front.json")}
    atomic_write_text(out_dir / "front.json", json.dumps(summary, indent=2) + "\n")
    return summary


def plot_front(path: Path, front, flag: str, context: dict[str, np.ndarray], title: str = "") -> Path:
    """PNG of predicted accuracy (%) against cost: random subnets (grey), the front (red)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    if len(context["cost"]):
        ax.scatter(context["cost"], 100 * context["acc"], s=4, c="0.75", label=f"{len(context['cost'])} random subnets")
    ax.step(front.cost, 100 * np.asarray(front.accuracy), where="post", color="tab:red", lw=1.2)
    ax.scatter(front.cost, 100 * np.asarray(front.accuracy), s=10, color="tab:red",
               label=f"Pareto front ({len(front.subnets)} subnets)")
    return _save_plot(fig, ax, path, flag, title)


def print_front(summary: dict[str, Any], shown: int = 15) -> None:
    """The front as a table: at most ``shown`` rows spread over its cost range (every row is
    in front.csv)."""
    unit = summary["unit"]
    rows = summary["front"]
    print(f"{summary['predictor']['description']}")
    where = summary.get("lut") or summary["constraint"]
    cal = summary.get("calibration")
    cal_txt = f", calibrated {cal['a']:.3f}*sum{cal['b']:+.3f} ms" if cal else ""
    lo, hi = summary["cost_range"]
    print(f"space {summary['space']}, {summary['constraint']} from {where}"
          f"{_runtime_tag(summary)}{cal_txt}, "
          f"resolutions {','.join(map(str, summary['resolutions']))}, widths {','.join(f'{w:g}' for w in summary['widths'])}")
    hv = summary["hypervolume"]
    print(f"Pareto front: {len(rows)} subnets over {lo:.2f}-{hi:.2f} {unit}, {summary['evaluations']} predictions "
          f"in {summary['seconds']:.2f} s; hypervolume {hv['value']:.4f} (reference {hv['reference']['cost']:.2f} "
          f"{unit}, {100 * hv['reference']['accuracy']:.2f}%)")
    idx = np.unique(np.linspace(0, len(rows) - 1, min(shown, len(rows))).round().astype(int)) if rows else []
    head = f"{unit:>8} {'pred.acc%':>9} {'MACs M':>8} {'params M':>8} {'r':>4} {'w':>4}  {'depths':<10} {'kernels / expands (active)':<30}"
    print(head)
    print("-" * len(head))
    for i in idx:
        row = rows[i]
        s = row["subnet"]
        nb = len(s["ks"]) // len(s["d"])
        act = [a * nb + j for a, d in enumerate(s["d"]) for j in range(d)]
        ke = " ".join(f"{s['ks'][a]}{_e(s['e'][a])}" for a in act)
        print(f"{row['cost']:>8.2f} {100 * row['predicted_accuracy']:>9.2f} {row['macs_m']:>8.1f} {row['params_m']:>8.2f} "
              f"{s['r']:>4} {s['w']:>4g}  {'-'.join(map(str, s['d'])):<10} {ke:<30}")
    if len(idx) < len(rows):
        print(f"({len(idx)} of {len(rows)} rows shown)")
    for note in summary["notes"]:
        print(f"note: {note}")
    f = summary["files"]
    print(f"wrote {f['summary']}, {f['front_csv']} and {f['plot']}")
