"""Fidelity report: how well does the LUT sum predict whole networks on the device?

    python -m profiler.validate --device local --runtime onnxruntime[,tflite] --lut luts/local.csv \
        --subnets 20 [--passes 2] [--seed 0] [--space ofa_mbv3] [--precision fp32|int8 [--data fmnist]] [--json]

Samples N random subnets at resolutions the LUT covers completely, exports each whole
network with the same exporter as the blocks, measures it end to end on the same device and
runtime, and compares with the latency model (``profiler.costmodel``: the LUT sum, less each
block's invocation overhead plus the network's once when the LUT has overhead probes).

Every network is measured ``--passes`` times (default 2), interleaved (all networks, then
all again), and the report puts the **repeat agreement** (how well one measurement of a
network predicts another: the noise floor of this device at this moment) beside the LUT's
error.  Both are pooled over the passes: the LUT's error is taken against each measurement.
Beside them (``fastest_pass``) the error against each network's faster pass, the way a LUT
row is its block's faster sweep (a shared CPU only adds time); the verdict and the
calibration stay on the pooled figures.  The plain sum (no overhead model) is reported
beside it.  Several runtimes (comma list) are validated on the same networks, one after the
other.  Writes next to the LUT:

- ``<lut>.validate.csv``: per runtime, subnet and pass, the prediction, the measurement and
  the error;
- ``<lut>.validate.json``: the summary (median absolute error, share within 5% and 10%,
  repeat agreement, the fitted calibration ``measured ~ a * sum + b`` and the error after
  it); with several runtimes ``{"runtimes": {runtime: summary}}``;
- ``<lut>.calibration.json``: ``{"runtimes": {runtime: {a, b, overhead, ...}}}``, what the
  latency model applies with calibration on (other runtimes' entries are kept);
- ``<lut>.validate.png``: measured against predicted, one panel per runtime.

``--precision int8`` validates the LUT's int8 rows: every network is quantized whole, the
way its blocks were (``profiler.quantize``, from the network's fp32 model), and the report
files are ``<lut>.validate-int8.*``; its calibration is the ``<runtime>-int8`` entry.  The
networks are calibrated on seeded random inputs, or with ``--data`` on real images of the
dataset (``--calib-images``, default 8; the images are the network's input, so nothing
carries them); the report's ``int8_calibration`` says which.  Real- and random-calibrated
networks are cached apart, as blocks are.

**LUT drift** (``--drift-blocks N``, default 8; 0: off): after a runtime's networks, the
N blocks that weigh most in the sampled networks' model are timed again from the artifact
cache, the way their LUT rows were (one block on end, warm, in the device's ``sweeps``, the
fastest sweep kept), and the report gives their median time now over their LUT rows.  A
table carries the minute it was measured in; when the device has since become slower or
faster, this says by how much, apart from what the model gets wrong (the report also gives
the model's error scaled by that ratio; the uncalibrated error stays the headline).  Skipped, with the reason in the report, for a LUT
whose blocks were timed in rotation (``--context round-robin``: a warm re-timing would not
compare) and when the blocks' artifacts are not in ``--cache``.

The numbers are what they are; nothing is tuned to look good.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import random
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np

from supernet.cliargs import run_main, seed_arg
from supernet.space import SearchSpace, SubnetConfig, get_space, overhead_probe, space_names

from .devices import DEFAULT_DEVICES_FILE, RUNTIMES, DeviceConfigError, load_devices, select_devices
from .export import ArtifactCache, base_format, default_export_workers, export_networks, format_for_runtime
from supernet.atomic import Busy, ExclusiveLock, atomic_open, atomic_write_text, ensure_writable_folder, lock_path

from .calibrate import CalibrationError, calibration_id, network_inputs
from .costmodel import UNUSABLE_VERDICTS, LatencyModel, calibration_key, write_calibration
from .lut import LutError, calibration_path, lut_sibling
from .quantize import CALIB_SAMPLES


def covered_resolutions(model, space: SearchSpace, w: float) -> list[int]:
    """Resolutions whose every block the LUT has."""
    from .costmodel import MissingKeysError

    out = []
    for r in space.resolutions:
        try:
            model.tables(r, w)
            out.append(r)
        except MissingKeysError:
            pass
    return out


def summarise(pred: np.ndarray, meas: np.ndarray, floor: float | None = None) -> dict[str, Any]:
    """Error statistics of ``pred`` against ``meas`` and the least-squares calibration.
    ``floor``: the smallest prediction the calibration will be applied to (the LUT model's
    cheapest subnet, ``CostModel.cheapest_block_sum``); a fit whose intercept would take more
    than half of its scaled cost away (or make it negative; at a floor of zero or below, any
    negative intercept) falls back to the plain ratio, like a falling one: a line through a
    few noisy networks must not price the networks below them at nothing (a search's budgets
    start at the cheapest network's price)."""
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
    if not (np.isfinite(a) and np.isfinite(b) and a > 0) or (floor is not None and b < -0.5 * a * floor):
        # a flat or falling fit (few or noisy networks) would price bigger subnets cheaper, and
        # a steep one with a large negative intercept smaller ones at nothing: fall back to the
        # plain ratio, which the latency model can use
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


def repeat_agreement(meas: np.ndarray) -> dict[str, Any]:
    """How well one measurement of a network predicts another (``meas``: passes x networks,
    NaN for failures): relative differences pooled over every ordered pair of passes, the
    same way the LUT's error is pooled over the passes."""
    rel = []
    for i in range(meas.shape[0]):
        for j in range(meas.shape[0]):
            if i != j:
                ok = ~(np.isnan(meas[i]) | np.isnan(meas[j]))
                rel.append((meas[i][ok] - meas[j][ok]) / meas[j][ok])
    if not rel or not sum(len(r) for r in rel):
        return {}
    d = np.abs(np.concatenate(rel))
    return {"repeat_median_abs_diff_pct": float(np.median(d) * 100),
            "repeat_within_5pct": float(np.mean(d <= 0.05)), "repeat_within_10pct": float(np.mean(d <= 0.10))}


TARGET_PCT = 5.0  # issue 11: median |error| <= 5%; a repeat median difference above it cannot show that


# a validation whose networks disagree with themselves by more than 10% this often cannot
# judge a table against issue 11's targets, whatever its median says (2026-12-07, AVX2 EPYC:
# a median repeat difference of 4.4% with 7 of 20 networks 1.2-1.8x apart between passes)
NOISY_APART = 0.25


# the table's own blocks timed again (lut_drift) further than this from their rows: the device
# is not the one the table measured (AMD EPYC VM, 2026-12-07, 20:31-20:34: every block 1.16-1.18x
# its row and two validations "off" by 15-16%; an hour later, blocks at 1.00x, the same table
# within 2.7%)
DRIFT_TOLERANCE = 0.05


def drift_ratio(s: dict[str, Any]) -> float | None:
    """How far the device drifted since the table was measured (``lut_drift``'s median ratio
    of the blocks' time now to their rows), None where it was not measured."""
    d = s.get("lut_drift") or {}
    return float(d["ratio_median"]) if d.get("status") == "measured" else None


def fidelity_verdict(s: dict[str, Any]) -> tuple[str, str]:
    """What a validation says about the table, as (key, words), by issue 11's targets:
    ``unjudged`` (one pass: no noise floor), ``noisy`` (the same networks measured twice
    differ by more than ``TARGET_PCT`` in the median, or more than ``NOISY_APART`` of them by
    more than 10%: the device, not the table, is what the error shows), ``faithful`` (median
    error <= 5% and a share within 10% no more than 5 points under the repeat's),
    ``drifted`` (beyond that, while the table's own blocks now take more than
    ``DRIFT_TOLERANCE`` more or less than their rows: the device changed since the table was
    measured, so the error does not judge the table) or ``off`` (beyond the device's noise)."""
    if "repeat_median_abs_diff_pct" not in s:
        return "unjudged", "one pass: no noise floor to judge the table against (--passes 2)"
    noise, apart = s["repeat_median_abs_diff_pct"], 1.0 - s["repeat_within_10pct"]
    if noise > TARGET_PCT or apart > NOISY_APART:
        return "noisy", (f"too noisy to judge the table: the same networks measured twice differ by {noise:.1f}% "
                         f"in the median" + (f", {apart * 100:.0f}% of them by more than 10%" if apart > NOISY_APART
                                             else "") + "; measure on a quiet device (cpu_mask pins the runner)")
    if s["median_abs_error_pct"] <= TARGET_PCT and s["within_10pct"] >= s["repeat_within_10pct"] - 0.05:
        return "faithful", "the table predicts this device within its noise"
    drift = drift_ratio(s)
    if drift is not None and abs(drift - 1.0) > DRIFT_TOLERANCE:
        scaled = (s["lut_drift"].get("model_x_drift") or {}).get("median_abs_error_pct")
        return "drifted", (f"the device drifted since the table was measured: its blocks now take {drift:.2f}x their "
                           f"LUT time" + (f" (the model scaled by that: median |error| {scaled:.1f}%)"
                                          if scaled is not None else "")
                           + "; measure the table again, or validate when the device is as it was")
    ratio = s.get("sum_over_measured")
    return "off", ("the table is off by more than the device's noise"
                   + (f" (model / measured {ratio:.2f} in the median)" if ratio is not None else ""))


def fidelity_line(runtime: str, s: dict[str, Any]) -> str:
    """One line: the LUT's error beside the noise floor, and the verdict (``fidelity_verdict``)."""
    line = (f"{runtime}: LUT median |error| {s['median_abs_error_pct']:.1f}%, "
            f"{s['within_10pct'] * 100:.0f}% within 10%")
    if "repeat_within_10pct" in s:
        line += (f"; repeat agreement {s['repeat_median_abs_diff_pct']:.1f}%, "
                 f"{s['repeat_within_10pct'] * 100:.0f}% within 10%")
    if "plain" in s:
        line += (f"; plain sum {s['plain']['median_abs_error_pct']:.1f}%, "
                 f"{s['plain']['within_10pct'] * 100:.0f}% within 10%")
    drift = s.get("lut_drift") or {}
    if drift.get("status") == "measured":
        line += f"; its blocks now {drift['ratio_median']:.2f}x their LUT time"
    return line + "; " + fidelity_verdict(s)[1]


DRIFT_BLOCKS = 8  # the LUT's own blocks timed again after the networks (--drift-blocks)


def drift_blocks(model: LatencyModel, subnets: list[SubnetConfig], n: int) -> list[tuple[str, float, float]]:
    """The ``n`` blocks that weigh most in ``subnets``' model (their LUT rows summed over
    every network they occur in), as (key, LUT ms, share of the networks' summed rows)."""
    weight: dict[str, float] = {}
    row: dict[str, float] = {}
    for cfg in subnets:
        for block in model.space.blocks(cfg):
            key = str(block)
            row[key] = model.row(block, cfg.r)
            weight[key] = weight.get(key, 0.0) + row[key]
    total = sum(weight.values()) or 1.0
    top = sorted(weight, key=lambda k: (-weight[k], k))[:n]
    return [(k, row[k], weight[k] / total) for k in top]


def lut_drift(device, runtime: str, model: LatencyModel, subnets: list[SubnetConfig], cache: ArtifactCache,
              fmt: str, n: int, progress: bool = False) -> dict[str, Any]:
    """Time the ``n`` heaviest blocks of ``subnets`` again, from ``cache``, as their LUT rows
    were timed (``measure_paths``: the runner's loop, one block on end, in the device's
    ``sweeps`` with each block's fastest kept: a single timing against the fastest of two
    reads slow on a noisy CPU), and compare: how far the device has drifted since the table
    was measured.  Returns ``{"status": "measured", "ratio_median", ...}``, or
    ``{"status": "skipped", "reason"}`` / ``{"status": "off"}``."""
    if n <= 0:
        return {"status": "off"}
    if model.context != "warm":
        return {"status": "skipped", "reason": f"the LUT's {runtime} blocks were timed in rotation (context "
                f"{model.context}); timed again on end they would not compare"}
    picked = drift_blocks(model, subnets, n)
    paths = [cache.path(key, fmt) for key, _, _ in picked]
    have = [i for i, p in enumerate(paths) if p.is_file()]
    if not have:
        hint = "" if fmt == base_format(fmt) else "; int8 blocks are looked up as calibrated with the same --data"
        return {"status": "skipped", "reason": f"none of the {len(picked)} blocks' {fmt} artifacts is in "
                f"{cache.root} (validate with the --cache the LUT was built with{hint})"}
    picked = [picked[i] for i in have]
    sweeps = max(1, device.sweeps)
    out = measure_paths(device, runtime, [paths[i] for i in have], [""] * len(have), progress, passes=sweeps,
                        desc="LUT blocks again", sweeps=sweeps)
    if isinstance(out, str):
        return {"status": "skipped", "reason": f"the blocks could not be measured again: {out}"[:500]}
    timings = np.atleast_2d(out[0])  # sweeps x blocks (NaN for a block that failed)
    blocks = [{"key": key, "lut_ms": lut_ms,
               "now_ms": None if np.isnan(t).any() else float(t.min()),
               "sweeps_ms": [None if np.isnan(x) else float(x) for x in t],
               "share_of_model": round(share, 4)} for (key, lut_ms, share), t in zip(picked, timings.T)]
    ratios = np.array([b["now_ms"] / b["lut_ms"] for b in blocks if b["now_ms"] is not None and b["lut_ms"] > 0])
    if not len(ratios):
        return {"status": "skipped", "reason": "none of the blocks could be measured again", "blocks": blocks}
    return {"status": "measured", "n": int(len(ratios)), "sweeps": sweeps, "ratio_median": float(np.median(ratios)),
            "ratio_min": float(ratios.min()), "ratio_max": float(ratios.max()),
            "share_of_model": round(sum(b["share_of_model"] for b in blocks if b["now_ms"] is not None), 4),
            "blocks": blocks}


def drift_line(d: dict[str, Any]) -> str:
    """One line on the LUT's drift (``lut_drift``'s result, with ``model_x_drift`` added)."""
    if d.get("status") == "measured":
        line = (f"LUT drift: its {d['n']} heaviest blocks here (rows worth {d['share_of_model'] * 100:.0f}% of the "
                f"networks' sums) now take {d['ratio_median']:.3f}x their LUT time [{d['ratio_min']:.2f}, "
                f"{d['ratio_max']:.2f}]")
        if "model_x_drift" in d:
            md = d["model_x_drift"]
            line += (f"; the model scaled by it: median |error| {md['median_abs_error_pct']:.1f}%, "
                     f"{md['within_10pct'] * 100:.0f}% within 10%")
        return line
    if d.get("status") == "skipped":
        return f"LUT drift not measured: {d['reason']}"
    return "LUT drift not measured (--drift-blocks 0)"


def _median_load(rows: list[dict[str, Any]]) -> float | None:
    loads = [r["load_avg"] for r in rows if r.get("load_avg") is not None]
    return float(np.median(loads)) if loads else None


def _lut_load(lut: Path, runtime: str, precision: str = "fp32") -> float | None:
    """Median device load while the LUT's rows were measured: compare it with the load during
    validation before trusting a calibration (a busy machine measures slow)."""
    from .lut import LutTable

    loads = [r["load_avg"] for (_, rt, _, prec), r in LutTable.load(lut).rows.items()
             if rt == runtime and prec == precision and r["status"] == "ok" and r.get("load_avg") not in ("", None)]
    return float(np.median(loads)) if loads else None


def _plot(path: Path, panels: list[tuple[str, np.ndarray, np.ndarray, dict[str, Any]]]) -> None:
    """One panel per runtime: (title, predicted, measured, summary)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 5), squeeze=False)
    for ax, (title, pred, meas, summary) in zip(axes[0], panels):
        ax.scatter(pred, meas, s=18, label="subnets (every pass)")
        lo, hi = float(min(pred.min(), meas.min())), float(max(pred.max(), meas.max()))
        xs = np.linspace(lo, hi, 50)
        ax.plot(xs, xs, "k--", lw=1, label="measured = LUT model")
        ax.plot(xs, summary["a"] * xs + summary["b"], "r-", lw=1,
                label=f"fit: {summary['a']:.3f} x + {summary['b']:.3f}")
        ax.set_xlabel("LUT model (ms)")
        ax.set_ylabel("measured whole network (ms)")
        rep = (f", repeat {summary['repeat_within_10pct'] * 100:.0f}%" if "repeat_within_10pct" in summary else "")
        ax.set_title(f"{title}\nmedian |error| {summary['median_abs_error_pct']:.1f}%, "
                     f"within 10%: {summary['within_10pct'] * 100:.0f}%{rep}", fontsize=9)
        ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    with contextlib.ExitStack() as held:  # the LUT's lock, released however the command ends
        return _main(argv, held)


def _main(argv: list[str] | None, held: contextlib.ExitStack) -> int:
    ap = argparse.ArgumentParser(prog="python -m profiler.validate", description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="local")
    ap.add_argument("--devices", type=Path, default=DEFAULT_DEVICES_FILE)
    ap.add_argument("--runtime", default=None, help="onnxruntime, tflite, or both comma-separated (default: the device's runtimes)")
    ap.add_argument("--lut", type=Path, required=True)
    ap.add_argument("--subnets", type=int, default=20, help="number of random subnets (default 20)")
    ap.add_argument("--passes", type=int, default=2, help="measurements of every network, interleaved (default 2: "
                    "the second gives the repeat agreement)")
    ap.add_argument("--seed", type=seed_arg, default=0)
    ap.add_argument("--space", default="ofa_mbv3", help=f"search space ({', '.join(space_names())})")
    ap.add_argument("--width", type=float, default=None, help="width multiplier (default: the space's first)")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "int8"],
                    help="validate the LUT's rows of this precision (int8: networks quantized whole as the blocks were)")
    ap.add_argument("--data", default=None,
                    help="with --precision int8: calibrate each whole network on real images of this dataset "
                         "(fmnist, fmnist:PATH, cifar10:PATH, imagefolder:PATH; default: seeded random inputs)")
    ap.add_argument("--calib-images", type=int, default=None,
                    help=f"real calibration images per int8 network (default {CALIB_SAMPLES})")
    ap.add_argument("--cache", type=Path, default=None)
    ap.add_argument("--drift-blocks", type=int, default=DRIFT_BLOCKS,
                    help=f"time this many of the LUT's own blocks again after the networks, to report how far the "
                         f"device has drifted since the table was measured (default {DRIFT_BLOCKS}; 0: off)")
    ap.add_argument("--export-workers", type=int, default=default_export_workers(),
                    help="processes converting the networks to TFLite (default: 2, or the cores there are if "
                         "fewer; 0 or 1: this process); all exports finish before the first measurement")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    args = ap.parse_args(argv)

    try:
        space = get_space(args.space)
        device = select_devices(load_devices(args.devices), args.device, args.devices)[0]
        runtimes = [r.strip() for r in (args.runtime or ",".join(device.all_runtimes)).split(",") if r.strip()]
        bad = [r for r in runtimes if r not in RUNTIMES]
        if bad or not runtimes:
            raise ValueError(f"unknown runtime {', '.join(map(repr, bad)) or repr(args.runtime)} "
                             f"(known: {', '.join(RUNTIMES)})")
        if args.subnets < 1:
            raise ValueError("--subnets must be at least 1")
        if args.passes < 1:
            raise ValueError("--passes must be at least 1")
        if args.drift_blocks < 0:
            raise ValueError("--drift-blocks must be 0 (off) or more")
        if args.export_workers < 0:
            raise ValueError(f"--export-workers must be at least 0 (0 or 1: convert in this process), "
                             f"got {args.export_workers}")
        if (args.data is not None or args.calib_images is not None) and args.precision != "int8":
            raise ValueError("--data and --calib-images calibrate int8 networks: add --precision int8")
        if args.calib_images is not None and args.data is None:
            raise ValueError("--calib-images needs --data (random calibration uses "
                             f"{CALIB_SAMPLES} seeded inputs)")
        if args.calib_images is not None and args.calib_images < 1:
            raise ValueError("--calib-images must be at least 1")
        w = args.width if args.width is not None else space.default_width
        space.require_width(w, flag="--width")  # also nan and inf, which no table covers
        prec = args.precision
        models = {rt: (LatencyModel.from_lut(args.lut, space, rt, precision=prec),
                       LatencyModel.from_lut(args.lut, space, rt, overhead=False, stream=False, precision=prec))
                  for rt in runtimes}
        resolutions = sorted(set.intersection(*(set(covered_resolutions(m, space, w)) for m, _ in models.values())))
        if not resolutions:
            raise ValueError(f"{args.lut}: no resolution of space {space.name!r} at width {w:g} is fully "
                             f"covered by the {' and '.join(runtimes)} rows; run profiler.run first")
        ensure_writable_folder(Path(args.lut).parent, "LUT folder (the report goes beside the LUT)")
        # held until the command ends: a LUT still being built (or validated) is not validated,
        # and this run's networks do not share the device with that run's blocks
        held.enter_context(ExclusiveLock(lock_path(args.lut), f"LUT {args.lut}"))
        tag = "" if prec == "fp32" else f"-{prec}"
        outputs = {s: lut_sibling(args.lut, s.replace(".validate", ".validate" + tag))
                   for s in (".validate.csv", ".validate.json", ".validate.png")}
        outputs[".calibration.json"] = calibration_path(args.lut)
        for p in outputs.values():
            if p.exists() and not p.is_file():
                raise ValueError(f"{p}: exists and is not a file; the report cannot be written there")
    except (DeviceConfigError, ValueError, LutError, Busy) as exc:
        ap.exit(2, f"error: {exc}\n")

    rng = random.Random(args.seed)
    subnets = [space.sample(rng, resolutions=resolutions, widths=[w]) for _ in range(args.subnets)]
    cache, calibration, args.int8_calibration = ArtifactCache(args.cache), None, None
    if args.precision == "int8":
        args.int8_calibration = f"random-normal n={CALIB_SAMPLES}, seeded per network"
    if args.data is not None:
        n = args.calib_images or CALIB_SAMPLES
        try:
            inputs, args.int8_calibration = network_inputs(space, args.data, n, resolutions)
        except CalibrationError as exc:
            ap.exit(2, f"error: {exc}\n")
        cache = ArtifactCache(args.cache, calibration=calibration_id(args.data, None, n, 0))
        calibration = lambda cfg: (inputs[cfg.r], args.int8_calibration)  # noqa: E731
    done: list[dict[str, Any]] = []
    preds = {rt: m.latency(subnets) for rt, (m, _) in models.items()}

    def keep(row: dict[str, Any]) -> None:  # each measurement on disk as soon as it is made
        done.append(row)
        atomic_write_text(outputs[".validate.csv"], _report_csv(subnets, preds, done))

    results: dict[str, Any] = {}
    drift: dict[str, dict[str, Any]] = {}
    try:
        for rt in runtimes:
            fmt, base = format_for_runtime(rt, args.precision), format_for_runtime(rt)
            net_dir = cache.root / "networks" / fmt / cache.version(fmt)
            out = measure_networks(device, rt, space, subnets, fmt, net_dir, progress=not args.no_progress,
                                   on_row=lambda row, rt=rt: keep(dict(row, runtime=rt)), passes=args.passes,
                                   fp32_dir=cache.root / "networks" / base / cache.version(base),
                                   calibration=calibration, export_workers=args.export_workers)
            if isinstance(out, str):
                print(f"error: {out} ({len(done)} measurement(s) made, kept in {outputs['.validate.csv']})",
                      file=sys.stderr)
                return 1
            results[rt] = (np.atleast_2d(out[0]), out[1])  # passes x networks, one pass too
            drift[rt] = lut_drift(device, rt, models[rt][0], subnets, cache, fmt, args.drift_blocks,
                                  progress=not args.no_progress)
        return _report(args, device, models, space, subnets, preds, resolutions, results, done, outputs, drift)
    except OSError as exc:
        print(f"error: cannot write the report beside {args.lut}: {exc}", file=sys.stderr)
        return 1


def _report_csv(subnets: list[SubnetConfig], preds: dict[str, np.ndarray], rows: list[dict[str, Any]]) -> str:
    """The per-measurement CSV (runtime, subnet, pass, prediction, measurement, error) so far."""
    buf = io.StringIO()
    wr = csv.DictWriter(buf, fieldnames=["runtime", "index", "pass", "subnet", "r", "lut_model_ms", "measured_ms",
                                         "error_pct", "load_avg", "error"], lineterminator="\n")
    wr.writeheader()
    for row in rows:
        i, m, p = row["index"], row["measured_ms"], preds[row["runtime"]][row["index"]]
        cfg = subnets[i]
        wr.writerow({"runtime": row["runtime"], "index": i, "pass": row["pass"], "subnet": cfg.to_json(), "r": cfg.r,
                     "lut_model_ms": f"{p:.4f}", "measured_ms": "" if np.isnan(m) else f"{m:.4f}",
                     "error_pct": "" if np.isnan(m) else f"{(p - m) / m * 100:.2f}",
                     "load_avg": "" if row["load_avg"] is None else row["load_avg"], "error": row["error"]})
    return buf.getvalue()


def _summary_for(model, plain, subnets, pred: np.ndarray, meas: np.ndarray) -> tuple[dict[str, Any], np.ndarray,
                                                                                      np.ndarray]:
    """Summary of one runtime (``meas``: passes x networks); returns it with the pooled
    (prediction, measurement) pairs."""
    raw = plain.latency(subnets)
    ok = ~np.isnan(meas)
    p_all = np.concatenate([pred[o] for o in ok])
    m_all = np.concatenate([m[o] for m, o in zip(meas, ok)])
    # the floor is the model's cheapest subnet wherever the LUT reaches (a search's budgets start
    # there), not the space's smallest network: with each block's probe taken off, a larger
    # kernel's row can be the cheaper, and a fit guarded by the smallest network's price once
    # priced the cheapest subnet of the pipeline test's tiny space below zero (2026-12-07)
    summary = summarise(p_all, m_all, floor=model.cheapest_block_sum())
    summary["overhead_model"] = bool(model.uses_overhead())
    summary["boundary_model"] = bool(model.uses_boundary())
    keep = ("median_abs_error_pct", "within_5pct", "within_10pct", "sum_over_measured", "mean_error_pct")

    def kept(p: np.ndarray, m: np.ndarray) -> dict[str, Any]:
        return {k: v for k, v in summarise(p, m).items() if k in keep}

    def compared(other: np.ndarray) -> dict[str, Any]:
        """The kept statistics of another prediction per network (a variant of the model)."""
        return kept(np.concatenate([other[o] for o in ok]), m_all)

    summary["plain"] = compared(raw)
    streams = [model.has_weight_cost(c.r) for c in subnets]
    summary["stream_model"] = bool(any(streams))
    if any(streams):  # the same model without its weight-streaming term, for comparison
        term = np.array([model.network_weight_cost(model.space.blocks(c), c.r) for c in subnets])
        summary["without_stream"] = compared(pred - term)
    if summary["boundary_model"]:  # the same model with the overhead probe as each block's edge
        extra = np.array([sum(model.edge(b, c.r) - model.row(overhead_probe(b), c.r) for b in model.space.blocks(c))
                          for c in subnets])
        summary["without_boundary"] = compared(pred + extra)
    if meas.shape[0] > 1:  # each network's faster pass, as a LUT row is its block's faster sweep
        fast = np.where(ok, meas, np.inf).min(axis=0)
        seen = np.isfinite(fast)
        summary["fastest_pass"] = kept(pred[seen], fast[seen])
    summary.update(repeat_agreement(meas))
    summary["passes"] = int(meas.shape[0])
    return summary, p_all, m_all


def _report(args, device, models, space: SearchSpace, subnets: list[SubnetConfig], preds, resolutions: list[int],
            results, rows: list[dict[str, Any]], outputs: dict[str, Path],
            drift: dict[str, dict[str, Any]] | None = None) -> int:
    """Summarise, write the report files and print the table."""
    summaries, panels = {}, []
    for rt, (meas, _) in results.items():
        if (~np.isnan(meas)).sum() == 0:
            print(f"error: no subnet could be measured with {rt}: "
                  + "; ".join(r["error"] for r in rows if r["error"] and r["runtime"] == rt)[:500], file=sys.stderr)
            return 1
        s, p_all, m_all = _summary_for(*models[rt], subnets, preds[rt], meas)
        s.update({"device": device.name, "runtime": rt, "precision": args.precision, "lut": str(args.lut),
                  "space": space.name, **({"int8_calibration": args.int8_calibration} if args.int8_calibration else {}),
                  "seed": args.seed, "resolutions": resolutions, "failed": int(np.isnan(meas).any(axis=0).sum()),
                  "load_avg_median": _median_load([r for r in rows if r["runtime"] == rt]),
                  "lut_load_avg_median": _lut_load(args.lut, rt, args.precision),
                  "validated_at": datetime.now(timezone.utc).isoformat(timespec="seconds")})
        s["n"] = len(subnets) - s["failed"]
        d = dict((drift or {}).get(rt) or {"status": "off"})
        if d.get("status") == "measured":  # the model as if the table had been measured now
            scaled = summarise(p_all * d["ratio_median"], m_all)
            d["model_x_drift"] = {k: scaled[k] for k in ("median_abs_error_pct", "within_10pct", "sum_over_measured")}
        s["lut_drift"] = d
        s["verdict"] = fidelity_verdict(s)[0]
        summaries[rt] = s
        panels.append((f"{device.name} / {rt} {args.precision} / {space.name}", p_all, m_all, s))
    atomic_write_text(outputs[".validate.csv"], _report_csv(subnets, preds, rows))
    doc = next(iter(summaries.values())) if len(summaries) == 1 else {"runtimes": summaries}
    atomic_write_text(outputs[".validate.json"], json.dumps(doc, indent=2) + "\n")
    for rt, s in summaries.items():
        write_calibration(outputs[".calibration.json"], calibration_key(rt, args.precision), {
            "a": s["a"], "b": s["b"], "overhead": s["overhead_model"], "stream": s["stream_model"],
            "boundary": s["boundary_model"],
            "context": models[rt][0].context, "device": device.name, "n": s["n"],
            "fitted_at": s["validated_at"], "verdict": s["verdict"],
            "noise_pct": s.get("repeat_median_abs_diff_pct"), "drift": drift_ratio(s)})
    _plot(outputs[".validate.png"], panels)
    if args.json:
        print(json.dumps(doc))
        return 0
    for rt, s in summaries.items():
        meas = results[rt][0]
        pred = preds[rt]
        print(f"{rt}: {'subnet':>6} {'r':>4} {'LUT model ms':>12} " + " ".join(f"{'pass ' + str(k + 1) + ' ms':>10}"
                                                                          for k in range(meas.shape[0])))
        for i, cfg in enumerate(subnets):
            ms = " ".join(f"{m:>10.3f}" if not np.isnan(m) else f"{'failed':>10}" for m in meas[:, i])
            print(f"{'':{len(rt) + 2}}{i:>6} {cfg.r:>4} {pred[i]:>12.3f} {ms}")
        print(f"\n{device.name} / {fidelity_line(rt if args.precision == 'fp32' else f'{rt} {args.precision}', s)}")
        print(f"  within 5%: {s['within_5pct'] * 100:.0f}%, LUT model / measured (median) {s['sum_over_measured']:.3f}, "
              f"overhead model {'on' if s['overhead_model'] else 'off (the LUT has no overhead probes)'}"
              f"{' (edges from the layout-boundary probes)' if s['boundary_model'] else ''}, "
              f"weight streaming {'on' if s['stream_model'] else 'off (the LUT has no stream probes)'}")
        if s.get("fastest_pass"):
            fp = s["fastest_pass"]
            print(f"  against each network's faster pass (a shared CPU only adds time): median |error| "
                  f"{fp['median_abs_error_pct']:.1f}%, within 10%: {fp['within_10pct'] * 100:.0f}%, "
                  f"model / measured {fp['sum_over_measured']:.3f}")
        if s.get("without_stream"):
            ws = s["without_stream"]
            print(f"  without the weight-streaming term: median |error| {ws['median_abs_error_pct']:.1f}%, "
                  f"within 10%: {ws['within_10pct'] * 100:.0f}%")
        if s.get("without_boundary"):
            wb = s["without_boundary"]
            print(f"  with the overhead probe as each block's edge instead: median |error| "
                  f"{wb['median_abs_error_pct']:.1f}%, within 10%: {wb['within_10pct'] * 100:.0f}%, "
                  f"model / measured {wb['sum_over_measured']:.3f}")
        if s.get("int8_calibration"):
            print(f"  int8 networks calibrated on {s['int8_calibration']}")
        print(f"  {drift_line(s['lut_drift'])}")
        if s["load_avg_median"] is not None and s["lut_load_avg_median"] is not None:
            print(f"  device load (1-min average, median): {s['lut_load_avg_median']:.2f} while the LUT was measured, "
                  f"{s['load_avg_median']:.2f} during validation")
        sign = "-" if s["b"] < 0 else "+"
        how = "least-squares fit" if s["fit"] == "least-squares" else "the plain ratio: the fit fell or priced small networks at nothing"
        unused = (f"; searches will not apply it (fitted {UNUSABLE_VERDICTS[s['verdict']][0]})"
                  if s["verdict"] in UNUSABLE_VERDICTS else "")
        print(f"  calibration ({how}): measured ~ {s['a']:.4f} * model {sign} {abs(s['b']):.4f} ms -> median |error| "
              f"{s['calibrated_median_abs_error_pct']:.1f}%, within 10%: {s['calibrated_within_10pct'] * 100:.0f}%"
              f"{unused}\n")
    print(f"wrote {outputs['.validate.csv']}, {outputs['.validate.json'].name}, {outputs['.validate.png'].name} "
          f"and {outputs['.calibration.json']}")
    return 0


def measure_networks(device, runtime: str, space: SearchSpace, subnets: list[SubnetConfig], fmt: str,
                     net_dir: Path, progress: bool, on_row: Callable[[dict[str, Any]], None] | None = None,
                     passes: int = 1, fp32_dir: Path | None = None,
                     calibration: Callable[[SubnetConfig], tuple[list, str]] | None = None,
                     export_workers: int = 1):
    """Export every network (all before the first measurement), then measure each, ``passes``
    times interleaved (every network, then every network again); ``on_row`` receives each
    measurement's row (``index``, ``pass``, ``measured_ms``, ``error``, ``load_avg``) as soon
    as it is known.  Returns (measured ms: an array of N with NaN for failures for one pass,
    passes x N for more; the last pass's per-subnet rows) or an error string.  An int8 ``fmt``
    quantizes each network from its fp32 model, kept under ``fp32_dir`` (default: beside),
    calibrated on ``calibration(cfg)`` when given (``export_networks``); ``export_workers``
    processes convert TFLite networks."""
    import hashlib

    from tqdm import tqdm

    def name(cfg: SubnetConfig, ext: str) -> str:
        return f"{space.name}-r{cfg.r}-{hashlib.sha1(f'{space.name}:{cfg.to_json()}'.encode()).hexdigest()[:16]}.{ext}"

    ext = base_format(fmt)
    paths = [net_dir / name(cfg, ext) for cfg in subnets]
    twins = [fp32_dir / name(cfg, ext) for cfg in subnets] if fp32_dir is not None and fmt != ext else None
    todo = [i for i, p in enumerate(paths) if not p.is_file()]
    errors = [""] * len(subnets)
    if todo:
        with tqdm(total=len(todo), desc=f"export {fmt} networks", unit="net", disable=not progress) as bar:
            errs = export_networks(space, [subnets[i] for i in todo], fmt, [paths[i] for i in todo], done=bar.update,
                                   fp32_paths=None if twins is None else [twins[i] for i in todo],
                                   calibration=calibration, workers=export_workers)
            for i, err in zip(todo, errs):
                errors[i] = err
    paths = [None if err else p for p, err in zip(paths, errors)]
    return measure_paths(device, runtime, paths, errors, progress, on_row, passes)


def measure_paths(device, runtime: str, paths: list[Path | None], errors: list[str], progress: bool,
                  on_row: Callable[[dict[str, Any]], None] | None = None, passes: int = 1,
                  desc: str = "networks", sweeps: int = 1):
    """Measure already exported whole networks (``paths``; None where ``errors`` says why)
    on ``device`` with ``runtime`` as ``measure_networks`` does: the profiler's own loop
    (reconnects, retries, the runner's summaries), ``passes`` times interleaved, each timing
    one of ``sweeps`` (``profiler.measure.sweep_request``: 1, a whole timing).  Returns
    (measured ms: N, or passes x N; the last pass's rows) or an error string."""
    from tqdm import tqdm

    from .measure import Session, connect, measure_artifact, reply_ms, request_base, sweep_request
    from .transport import TransportError, make_transport

    errors = list(errors)
    meas = np.full((passes, len(paths)), np.nan)
    loads: list[float | None] = [None] * len(paths)
    req = sweep_request(request_base(device, runtime), sweeps)
    session = Session(make_transport(device))
    bar = tqdm(total=passes * len(paths), desc=f"{device.name} {runtime} {desc}", unit="net", disable=not progress)
    try:
        connect(session, device)
        for k in range(passes):
            for i, path in enumerate(paths):
                err = errors[i]
                if path is not None and not err:
                    # the same loop as the blocks: reconnects, retries, benchmark_model summaries
                    out = measure_artifact(session, device, path, req, timeout_s=device.timeout_s * 4)
                    if isinstance(out, str):
                        err = errors[i] = f"measure: {out}"[:500]
                    else:
                        meas[k, i] = reply_ms(out)
                        loads[i] = out.get("load_avg")
                bar.update(1)
                if on_row is not None:
                    on_row({"index": i, "pass": k + 1, "measured_ms": meas[k, i], "error": err, "load_avg": loads[i]})
    except TransportError as exc:
        return f"{device.name}: {exc}"
    finally:
        bar.close()
        session.close()
    meas[:, [bool(e) for e in errors]] = np.nan  # a network that failed once is out of every pass
    rows = [{"measured_ms": m, "error": e, "load_avg": ld} for m, e, ld in zip(meas[-1], errors, loads)]
    return (meas[0] if passes == 1 else meas), rows


if __name__ == "__main__":
    run_main(main, "profiler.validate",
             "nothing is written until every network is measured; the same command measures them again (their exports are cached)")
