"""Fidelity report: how well does the LUT sum predict whole networks on the device?

    python -m profiler.validate --device local --runtime onnxruntime --lut luts/local.csv \
        --subnets 20 [--seed 0] [--space ofa_mbv3] [--json]

Samples N random subnets at resolutions the LUT covers completely, exports each whole
network with the same exporter as the blocks, measures it end to end on the same device and
runtime, and compares with the LUT sum.  Writes next to the LUT:

- ``<lut>.validate.csv``: per subnet, the prediction, the measurement and the error;
- ``<lut>.validate.json``: the summary (median absolute error, share within 5% and 10%,
  the fitted calibration ``measured ~ a * sum + b`` and the error after it);
- ``<lut>.calibration.json``: ``{a, b, runtime}``, what the latency model applies with
  calibration on;
- ``<lut>.validate.png``: measured against predicted.

The numbers are what they are; nothing is tuned to look good.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import random
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np

from supernet.space import SearchSpace, SubnetConfig, get_space, space_names

from .devices import DEFAULT_DEVICES_FILE, RUNTIMES, DeviceConfigError, load_devices, select_devices
from .export import ArtifactCache, export_network, format_for_runtime
from supernet.atomic import atomic_open, atomic_write_text, ensure_writable_folder

from .lut import LutError, calibration_path, lut_sibling


def covered_resolutions(model, space: SearchSpace, w: float) -> list[int]:
    """Resolutions whose every block the LUT has."""
    from search.latency import MissingKeysError

    out = []
    for r in space.resolutions:
        try:
            model.tables(r, w)
            out.append(r)
        except MissingKeysError:
            pass
    return out


def summarise(pred: np.ndarray, meas: np.ndarray) -> dict[str, Any]:
    """Error statistics of ``pred`` against ``meas`` and the least-squares calibration."""
    err = (pred - meas) / meas
    out: dict[str, Any] = {
        "n": int(len(meas)),
        "median_abs_error_pct": float(np.median(np.abs(err)) * 100),
        "mean_error_pct": float(np.mean(err) * 100),
        "within_5pct": float(np.mean(np.abs(err) <= 0.05)),
        "within_10pct": float(np.mean(np.abs(err) <= 0.10)),
        "sum_over_measured": float(np.median(pred / meas)),
    }
    fit = "least-squares"
    if len(meas) >= 2 and np.ptp(pred) > 0:
        a, b = np.polyfit(pred, meas, 1)
    else:
        a, b = 0.0, 0.0
    if not (np.isfinite(a) and np.isfinite(b) and a > 0):
        # a flat or falling fit (few or noisy networks) would price bigger subnets cheaper:
        # fall back to the plain ratio, which the latency model can use
        a, b, fit = float(np.median(meas / pred)), 0.0, "ratio"
    cal = a * pred + b
    cerr = (cal - meas) / meas
    out.update({
        "a": float(a), "b": float(b), "fit": fit,
        "calibrated_median_abs_error_pct": float(np.median(np.abs(cerr)) * 100),
        "calibrated_within_5pct": float(np.mean(np.abs(cerr) <= 0.05)),
        "calibrated_within_10pct": float(np.mean(np.abs(cerr) <= 0.10)),
    })
    if len(meas) >= 3:
        out["pearson_r"] = float(np.corrcoef(pred, meas)[0, 1])
    return out


def _median_load(rows: list[dict[str, Any]]) -> float | None:
    loads = [r["load_avg"] for r in rows if r.get("load_avg") is not None]
    return float(np.median(loads)) if loads else None


def _lut_load(lut: Path, runtime: str) -> float | None:
    """Median device load while the LUT's rows were measured: compare it with the load during
    validation before trusting a calibration (a busy machine measures slow)."""
    from .lut import LutTable

    loads = [r["load_avg"] for (_, rt, _), r in LutTable.load(lut).rows.items()
             if rt == runtime and r["status"] == "ok" and r.get("load_avg") not in ("", None)]
    return float(np.median(loads)) if loads else None


def _plot(path: Path, pred: np.ndarray, meas: np.ndarray, summary: dict[str, Any], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.scatter(pred, meas, s=18, label="subnets")
    lo, hi = float(min(pred.min(), meas.min())), float(max(pred.max(), meas.max()))
    xs = np.linspace(lo, hi, 50)
    ax.plot(xs, xs, "k--", lw=1, label="measured = LUT sum")
    ax.plot(xs, summary["a"] * xs + summary["b"], "r-", lw=1,
            label=f"fit: {summary['a']:.3f} x + {summary['b']:.3f}")
    ax.set_xlabel("LUT sum (ms)")
    ax.set_ylabel("measured whole network (ms)")
    ax.set_title(f"{title}\nmedian |error| {summary['median_abs_error_pct']:.1f}%, "
                 f"within 10%: {summary['within_10pct'] * 100:.0f}%", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m profiler.validate", description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="local")
    ap.add_argument("--devices", type=Path, default=DEFAULT_DEVICES_FILE)
    ap.add_argument("--runtime", default=None, help="onnxruntime or tflite (default: the device's)")
    ap.add_argument("--lut", type=Path, required=True)
    ap.add_argument("--subnets", type=int, default=20, help="number of random subnets (default 20)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--space", default="ofa_mbv3", help=f"search space ({', '.join(space_names())})")
    ap.add_argument("--width", type=float, default=None, help="width multiplier (default: the space's first)")
    ap.add_argument("--cache", type=Path, default=None)
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    args = ap.parse_args(argv)

    from search.latency import LatencyModel

    try:
        space = get_space(args.space)
        device = select_devices(load_devices(args.devices), args.device, args.devices)[0]
        runtime = args.runtime or device.runtime
        if runtime not in RUNTIMES:
            raise ValueError(f"unknown runtime {runtime!r} (known: {', '.join(RUNTIMES)})")
        if args.subnets < 1:
            raise ValueError("--subnets must be at least 1")
        w = args.width if args.width is not None else space.default_width
        model = LatencyModel.from_lut(args.lut, space, runtime)
        resolutions = covered_resolutions(model, space, w)
        if not resolutions:
            raise ValueError(f"{args.lut}: no resolution of space {space.name!r} at width {w:g} is fully "
                             f"covered by the {runtime} rows; run profiler.run first")
        ensure_writable_folder(Path(args.lut).parent, "LUT folder (the report goes beside the LUT)")
        outputs = {s: lut_sibling(args.lut, s) for s in (".validate.csv", ".validate.json", ".validate.png")}
        outputs[".calibration.json"] = calibration_path(args.lut)
        for p in outputs.values():
            if p.exists() and not p.is_file():
                raise ValueError(f"{p}: exists and is not a file; the report cannot be written there")
    except (DeviceConfigError, ValueError, LutError) as exc:
        ap.exit(2, f"error: {exc}\n")

    rng = random.Random(args.seed)
    subnets = [space.sample(rng, resolutions=resolutions, widths=[w]) for _ in range(args.subnets)]
    pred = model.latency(subnets)
    fmt = format_for_runtime(runtime)
    cache = ArtifactCache(args.cache)
    net_dir = cache.root / "networks" / fmt / cache.version(fmt)
    done: list[dict[str, Any]] = []

    def keep(row: dict[str, Any]) -> None:  # each network's result on disk as soon as it is measured
        done.append(row)
        atomic_write_text(outputs[".validate.csv"], _report_csv(subnets, pred, done))

    try:
        out = measure_networks(device, runtime, space, subnets, fmt, net_dir, progress=not args.no_progress,
                               on_row=keep)
        if isinstance(out, str):
            print(f"error: {out} ({len(done)} network(s) measured, kept in {outputs['.validate.csv']})",
                  file=sys.stderr)
            return 1
        return _report(args, device, runtime, space, subnets, pred, resolutions, out, outputs)
    except OSError as exc:
        print(f"error: cannot write the report beside {args.lut}: {exc}", file=sys.stderr)
        return 1


def _report_csv(subnets: list[SubnetConfig], pred: np.ndarray, rows: list[dict[str, Any]]) -> str:
    """The per-subnet CSV (prediction, measurement, error) of the rows measured so far."""
    buf = io.StringIO()
    wr = csv.DictWriter(buf, fieldnames=["subnet", "r", "lut_sum_ms", "measured_ms", "error_pct", "load_avg", "error"],
                        lineterminator="\n")
    wr.writeheader()
    for cfg, p, row in zip(subnets, pred, rows):
        m = row["measured_ms"]
        wr.writerow({"subnet": cfg.to_json(), "r": cfg.r, "lut_sum_ms": f"{p:.4f}",
                     "measured_ms": "" if np.isnan(m) else f"{m:.4f}",
                     "error_pct": "" if np.isnan(m) else f"{(p - m) / m * 100:.2f}",
                     "load_avg": "" if row["load_avg"] is None else row["load_avg"], "error": row["error"]})
    return buf.getvalue()


def _report(args, device, runtime: str, space: SearchSpace, subnets: list[SubnetConfig], pred: np.ndarray,
            resolutions: list[int], out, outputs: dict[str, Path]) -> int:
    """Summarise, write the report files and print the table."""
    meas, rows = out
    ok = ~np.isnan(meas)
    if ok.sum() == 0:
        print("error: no subnet could be measured: " + "; ".join(r["error"] for r in rows if r["error"])[:500],
              file=sys.stderr)
        return 1
    summary = summarise(pred[ok], meas[ok])
    summary.update({"device": device.name, "runtime": runtime, "lut": str(args.lut), "space": space.name,
                    "seed": args.seed, "resolutions": resolutions, "failed": int((~ok).sum()),
                    "load_avg_median": _median_load(rows), "lut_load_avg_median": _lut_load(args.lut, runtime),
                    "validated_at": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    atomic_write_text(outputs[".validate.csv"], _report_csv(subnets, pred, rows))
    atomic_write_text(outputs[".validate.json"], json.dumps(summary, indent=2) + "\n")
    atomic_write_text(outputs[".calibration.json"], json.dumps(
        {"a": summary["a"], "b": summary["b"], "runtime": runtime, "device": device.name,
         "n": summary["n"], "fitted_at": summary["validated_at"]}, indent=2) + "\n")
    _plot(outputs[".validate.png"], pred[ok], meas[ok], summary,
          f"{device.name} / {runtime} / {space.name}")
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"{'subnet':>6} {'r':>4} {'LUT sum ms':>10} {'measured ms':>11} {'error':>7}")
        for i, (cfg, p, row) in enumerate(zip(subnets, pred, rows)):
            m = row["measured_ms"]
            tail = f"{(p - m) / m * 100:>6.1f}%" if not np.isnan(m) else f"  failed: {row['error'][:80]}"
            print(f"{i:>6} {cfg.r:>4} {p:>10.3f} {m:>11.3f} {tail}")
        s = summary
        print(f"\n{device.name} / {runtime}: median |error| {s['median_abs_error_pct']:.1f}%, "
              f"within 5%: {s['within_5pct'] * 100:.0f}%, within 10%: {s['within_10pct'] * 100:.0f}%, "
              f"LUT sum / measured (median) {s['sum_over_measured']:.3f}")
        if s["load_avg_median"] is not None and s["lut_load_avg_median"] is not None:
            print(f"device load (1-min average, median): {s['lut_load_avg_median']:.2f} while the LUT was measured, "
                  f"{s['load_avg_median']:.2f} during validation")
        print(f"calibration: measured ~ {s['a']:.4f} * sum + {s['b']:.4f} ms -> median |error| "
              f"{s['calibrated_median_abs_error_pct']:.1f}%, within 5%: {s['calibrated_within_5pct'] * 100:.0f}%")
        print(f"wrote {outputs['.validate.csv']}, .validate.json, .validate.png and {outputs['.calibration.json']}")
    return 0


def measure_networks(device, runtime: str, space: SearchSpace, subnets: list[SubnetConfig], fmt: str,
                     net_dir: Path, progress: bool, on_row: Callable[[dict[str, Any]], None] | None = None):
    """Export every network (all before the first measurement), then measure each; ``on_row``
    receives each network's row (``measured_ms``, ``error``, ``load_avg``) in order as soon as
    it is known.  Returns (measured ms array with NaN for failures, per-subnet rows) or an
    error string."""
    import hashlib

    from tqdm import tqdm

    from .measure import Session, connect, measure_artifact, request_base
    from .transport import TransportError, make_transport

    paths: list[Path | None] = []
    errors: list[str] = []
    for cfg in tqdm(subnets, desc=f"export {fmt} networks", unit="net", disable=not progress):
        h = hashlib.sha1(f"{space.name}:{cfg.to_json()}".encode()).hexdigest()[:16]
        path = net_dir / f"{space.name}-r{cfg.r}-{h}.{fmt}"
        try:
            if not path.is_file():
                export_network(space, cfg, fmt, path)
            paths.append(path)
            errors.append("")
        except Exception as exc:  # noqa: BLE001 - a failed export is a failed row
            paths.append(None)
            errors.append(f"export: {exc}"[:500])
    meas = np.full(len(subnets), np.nan)
    loads: list[float | None] = [None] * len(subnets)
    req = request_base(device, runtime)
    session = Session(make_transport(device))
    try:
        connect(session, device)
        for i, path in enumerate(tqdm(paths, desc=f"{device.name} {runtime} networks", unit="net",
                                      disable=not progress)):
            if path is not None:
                # the same loop as the blocks: reconnects, retries, benchmark_model summaries
                out = measure_artifact(session, device, path, req, timeout_s=device.timeout_s * 4)
                if isinstance(out, str):
                    errors[i] = f"measure: {out}"[:500]
                else:
                    meas[i] = out["median_ms"] if out.get("median_ms") not in (None, "") else out["mean_ms"]
                    loads[i] = out.get("load_avg")
            if on_row is not None:
                on_row({"measured_ms": meas[i], "error": errors[i], "load_avg": loads[i]})
    except TransportError as exc:
        return f"{device.name}: {exc}"
    finally:
        session.close()
    rows = [{"measured_ms": m, "error": e, "load_avg": ld} for m, e, ld in zip(meas, errors, loads)]
    return meas, rows


if __name__ == "__main__":
    sys.exit(main())
