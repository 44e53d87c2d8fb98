"""Subnets of a trained supernet against the hand-picked models a user would take instead, at
equal measured latency on the device (issue 15, item 1).

    .venv/bin/python bench/vs_handpicked.py --run RUN --lut LUT [--predictor P]
        [--runtime onnxruntime] [--runtimes onnxruntime,tflite] [--models all|NAME,...]
        [--epochs 5] [--seeds 0,1,2] [--multi-seed-below-ms 1] [--device local] [--out DIR]
        [--resume] [--threads 2]

**Theirs.** torchvision's MobileNetV2 (width 0.35, 0.5, 0.75, 1.0), MobileNetV3-Small and
-Large (0.5, 0.75, 1.0) and MNASNet (0.5, 0.75, 1.0), with three changes so that they take
the supernet's data: the stem convolution takes the dataset's channels (1 for
Fashion-MNIST), the classifier has the dataset's classes, and the stem's stride is set so
that the network downsamples its input as much as the search space does (the fmnist space
downsamples 16x: 48 px in, 3x3 maps at the head, so the stem's stride becomes 1; at 32x,
as in the ImageNet space, it stays 2).  Nothing else is changed (widths, SE, activations,
dropout are torchvision's).  Each is trained from scratch with the supernet run's own recipe
(``supernet.standalone``: its first phase's SGD, peak rate, warm-up, label smoothing,
batch, channels-last, threads; the same training images and augmentation) for ``--epochs``
at the space's largest resolution.  Every trained network, theirs and our fine-tuned
ones, then has its BN statistics recalibrated on the run's recalibration images before it
is evaluated, exactly as the extracted subnets are (torchvision's MNASNet keeps
TensorFlow's BN momentum, 0.0003, whose running statistics lag far behind the weights after
a few epochs: 14% held-out top-1 with them after 2 epochs here); the top-1 with the
training's own running statistics is kept in ``heldout_top1_running_bn``.

**Ours.** For each hand-picked model, its latency is measured as a whole network on the
device (the profiler's own loop, ``profiler.validate.measure_paths``), for every runtime of
``--runtimes``; ``search.evolve``'s evolution then picks, with the run's predictor and the
LUT's latency model for ``--runtime`` (calibrated when the LUT has a calibration), the best
subnet under that latency; the subnet is exported and measured the same way, and when the
measurement is over the hand-picked model's the budget is lowered by the excess and the
search re-run (``--fit-tries``).  Its accuracy is reported (a) as extracted from the
supernet (BN recalibrated, no training) and (b) fine-tuned from the supernet's weights with
the same recipe and epochs as the hand-picked models, at ``--finetune-lr`` (default: the
rate of the run's last phase).

Top-1 on the run's held-out split (5,000 images of the training set, what the search saw)
and on the dataset's test split (never seen by training or search).  Models whose measured
latency (``--runtime``) is under ``--multi-seed-below-ms`` are trained with every seed of
``--seeds``, the others with the first.  Writes ``OUT/vs_handpicked.{csv,json,png}``: one row
per trained or evaluated model and seed; the JSON adds, per hand-picked model, whether our
subnet at no more than its measured latency has at least its accuracy.  ``--resume`` keeps
the rows already in the CSV (each is written as soon as it is known) and the latencies of
``OUT/latency.json``.  The run goes seed by seed and, within a seed, model by model from
the cheapest (theirs, then ours at its latency), so a run stopped early holds whole
comparisons; when one subnet answers several hand-picked models' budgets it is fine-tuned
once per seed and the other models' rows carry that result, naming the model it was
trained for (``trained_for``).  ``--merge DIR`` folds in the rows of another output folder
of the same comparison (started from a copy of this one's ``latency.json``, e.g. seeds or
models split over processes or machines with ``--seeds``/``--models``): rows present in
both must agree and latencies must be the same, or it stops with one line saying which.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from supernet.atomic import atomic_open, atomic_write_text  # noqa: E402
from supernet.ops import count_macs, count_params  # noqa: E402
from supernet.cliargs import run_main, seeds_arg, threads_arg  # noqa: E402

# name -> (family, width): torchvision's constructors, adapted by ``handpicked_model``
HANDPICKED: dict[str, tuple[str, float]] = {
    **{f"mobilenet_v2_{w:g}": ("mobilenet_v2", w) for w in (0.35, 0.5, 0.75, 1.0)},
    **{f"mobilenet_v3_small_{w:g}": ("mobilenet_v3_small", w) for w in (0.5, 0.75, 1.0)},
    **{f"mobilenet_v3_large_{w:g}": ("mobilenet_v3_large", w) for w in (0.5, 0.75, 1.0)},
    **{f"mnasnet_{w:g}": ("mnasnet", w) for w in (0.5, 0.75, 1.0)},
}
SIDES = ("hand-picked", "hwnas extracted", "hwnas fine-tuned")


# --------------------------------------------------------------------------- the models


def space_stride(space) -> int:
    """How much the search space downsamples its input before the head (16 for fmnist)."""
    from supernet.space import parse_subnet

    r = max(space.resolutions)
    blocks = space.blocks(parse_subnet("max", space, r=r))
    head = next(b for b in blocks if b.kind in ("final_expand", "pool"))
    return max(1, r // head.in_h)


def handpicked_model(name: str, in_channels: int, num_classes: int, stem_stride: int = 2) -> nn.Module:
    """torchvision's ``name`` (a key of ``HANDPICKED``) with ``num_classes`` outputs and its
    stem convolution taking ``in_channels`` at ``stem_stride`` (torchvision's is 3 channels,
    stride 2); fresh weights from torch's current seed."""
    from torchvision import models

    try:
        family, w = HANDPICKED[name]
    except KeyError:
        raise ValueError(f"unknown hand-picked model {name!r} (known: {', '.join(HANDPICKED)})") from None
    if family == "mobilenet_v2":
        net = models.mobilenet_v2(width_mult=w, num_classes=num_classes)
    elif family == "mobilenet_v3_small":
        net = models.mobilenet_v3_small(width_mult=w, num_classes=num_classes)
    elif family == "mobilenet_v3_large":
        net = models.mobilenet_v3_large(width_mult=w, num_classes=num_classes)
    else:
        net = models.MNASNet(w, num_classes=num_classes)
    stem_name, stem = next((n, m) for n, m in net.named_modules() if isinstance(m, nn.Conv2d))
    new = nn.Conv2d(in_channels, stem.out_channels, stem.kernel_size, stride=stem_stride, padding=stem.padding,
                    bias=stem.bias is not None)
    parent, _, child = stem_name.rpartition(".")
    setattr(net.get_submodule(parent) if parent else net, child, new)
    return net


# --------------------------------------------------------------------------- fitting a budget


def fit_to_latency(target_ms: float, search: Callable[[float], Any], measure: Callable[[Any], float | None],
                   tries: int = 4, margin: float = 0.99) -> tuple[Any, float | None, float, int]:
    """Search under ``target_ms`` and measure what it returns; while the measurement is over
    the target, lower the budget by the excess (times ``margin``) and search again, ``tries``
    searches at most.  ``search(budget)`` returns a candidate or None (nothing fits);
    ``measure(candidate)`` its measured ms or None (failed).  Returns (the last candidate
    found, its measured ms, the budget that found it, searches made); a candidate still over
    the target after ``tries`` is returned as it is (the caller reports it)."""
    budget, best = target_ms, (None, None, target_ms)
    for k in range(1, tries + 1):
        cand = search(budget)
        if cand is None:
            return best[0], best[1], best[2], k
        ms = measure(cand)
        best = (cand, ms, budget)
        if ms is None or ms <= target_ms:
            return cand, ms, budget, k
        budget *= target_ms / ms * margin
    return best[0], best[1], best[2], tries


# --------------------------------------------------------------------------- the comparison


def compare(rows: list[dict[str, Any]], runtime: str) -> list[dict[str, Any]]:
    """Per hand-picked model: its mean accuracy over seeds and measured latency against our
    extracted and fine-tuned subnet picked at that latency (``rows`` as in the CSV)."""
    out = []
    ms_key = f"{runtime}_ms"

    def values(side: str, model: str, key: str) -> list[float]:
        return [float(r[key]) for r in rows if r["side"] == side and r["model"] == model and r.get(key) not in (None, "")]

    def mean(side: str, model: str, key: str) -> float | None:
        vals = values(side, model, key)
        return float(np.mean(vals)) if vals else None

    def std(side: str, model: str, key: str) -> float | None:  # over seeds (sample standard deviation)
        vals = values(side, model, key)
        return round(float(np.std(vals, ddof=1)), 3) if len(vals) > 1 else None

    def by_seed(side: str, model: str) -> dict[int, float]:
        return {int(float(r["seed"])): float(r["heldout_top1"]) for r in rows
                if r["side"] == side and r["model"] == model and r.get("seed") not in (None, "")
                and r.get("heldout_top1") not in (None, "")}

    for model in dict.fromkeys(r["model"] for r in rows if r["side"] == "hand-picked"):
        theirs = next(r for r in rows if r["side"] == "hand-picked" and r["model"] == model)
        ours = next((r for r in rows if r["side"] == "hwnas extracted" and r["model"] == model), None)
        rec: dict[str, Any] = {"model": model, f"theirs_{ms_key}": theirs.get(ms_key),
                               "theirs_heldout_top1": mean("hand-picked", model, "heldout_top1"),
                               "theirs_test_top1": mean("hand-picked", model, "test_top1"),
                               "seeds": sum(1 for r in rows if r["side"] == "hand-picked" and r["model"] == model)}
        rec["theirs_heldout_std"] = std("hand-picked", model, "heldout_top1")
        if ours is not None:
            rec["finetuned_heldout_std"] = std("hwnas fine-tuned", model, "heldout_top1")
            theirs_s, ours_s = by_seed("hand-picked", model), by_seed("hwnas fine-tuned", model)
            paired = sorted(set(theirs_s) & set(ours_s))
            # seed for seed: in how many of the seeds both sides ran is ours fine-tuned at least theirs
            rec["finetuned_seeds_ahead"] = sum(ours_s[k] >= theirs_s[k] for k in paired)
            rec["paired_seeds"] = len(paired)
            rec.update({f"ours_{ms_key}": ours.get(ms_key), "ours_subnet": ours.get("subnet"),
                        "ours_fits": ours.get(ms_key) not in (None, "") and theirs.get(ms_key) not in (None, "")
                        and float(ours[ms_key]) <= float(theirs[ms_key])})
            for side, tag in (("hwnas extracted", "extracted"), ("hwnas fine-tuned", "finetuned")):
                for split in ("heldout", "test"):
                    mine, base = mean(side, model, f"{split}_top1"), rec[f"theirs_{split}_top1"]
                    rec[f"{tag}_{split}_top1"] = mine
                    rec[f"{tag}_{split}_delta_pp"] = None if mine is None or base is None else round(mine - base, 3)
            rec["at_least_theirs"] = bool(rec["ours_fits"]) and any(
                rec[f"{t}_heldout_delta_pp"] is not None and rec[f"{t}_heldout_delta_pp"] >= 0
                for t in ("extracted", "finetuned"))
        out.append(rec)
    return out


def fronts_png(path: Path, rows: list[dict[str, Any]], runtimes: list[str]) -> None:
    """Held-out top-1 against measured latency, one panel per runtime: the hand-picked models
    (mean over seeds, a bar for their spread) and our extracted and fine-tuned subnets, with
    each side's Pareto front."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    styles = {"hand-picked": ("o", "tab:gray"), "hwnas extracted": ("s", "tab:blue"),
              "hwnas fine-tuned": ("^", "tab:red")}
    fig, axes = plt.subplots(1, len(runtimes), figsize=(6.5 * len(runtimes), 5), squeeze=False)
    for ax, rt in zip(axes[0], runtimes):
        for side in SIDES:
            pts = {}
            for r in rows:
                if r["side"] == side and r.get(f"{rt}_ms") not in (None, "") and r.get("heldout_top1") not in (None, ""):
                    pts.setdefault(r["model"], (float(r[f"{rt}_ms"]), []))[1].append(float(r["heldout_top1"]))
            if not pts:
                continue
            xs = np.array([v[0] for v in pts.values()])
            ys = np.array([np.mean(v[1]) for v in pts.values()])
            es = np.array([np.std(v[1]) for v in pts.values()])
            marker, color = styles[side]
            ax.errorbar(xs, ys, yerr=es, fmt=marker, color=color, label=side, ms=5, capsize=2)
            if side == "hand-picked":
                for (name, _), x, y in zip(pts.items(), xs, ys):
                    ax.annotate(name.replace("mobilenet_v", "mbv"), (x, y), fontsize=6, alpha=0.7)
            order = np.argsort(xs)
            fx, fy, top = [], [], -math.inf
            for i in order:
                if ys[i] > top:
                    top = ys[i]
                    fx.append(xs[i])
                    fy.append(ys[i])
            ax.step(fx, fy, where="post", color=color, alpha=0.6)
        ax.set_xlabel(f"measured whole-network latency, {rt} (ms)")
        ax.set_ylabel("held-out top-1 (%)")
        ax.set_title(f"{rt}: hand-picked models against hwnas subnets", fontsize=10)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------- the run


FIELDS = ["side", "model", "family", "width", "r", "seed", "params", "macs", "heldout_top1", "test_top1",
          "heldout_top1_running_bn", "epochs", "train_seconds", "images_per_s", "threads", "budget_ms", "predicted_ms",
          "predicted_top1", "searches", "subnet", "trained_for", "note"]


INT_FIELDS = ("r", "seed", "params", "macs", "searches", "threads")


def _read_rows(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        for k, v in r.items():
            if k not in ("side", "model", "family", "subnet", "trained_for", "note") and v not in ("", None):
                # counts stay integers: a resumed table rewrote them as 48.0, 1.0 and 2236106.0
                r[k] = int(float(v)) if k in INT_FIELDS else float(v)
    return rows


def _write_rows(path: Path, rows: list[dict[str, Any]], fields: list[str]) -> None:
    with atomic_open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


SIDES = ("hand-picked", "hwnas extracted", "hwnas fine-tuned")


def _row_key(r: dict[str, Any]) -> tuple[str, str, int]:
    return r["side"], r["model"], int(r["seed"]) if r.get("seed") not in ("", None) else -1


def merge_tables(rows: list[dict[str, Any]], lat: dict[str, dict[str, Any]], dirs: list[Path]) -> int:
    """Fold the rows and latencies of other output folders of the same comparison into
    ``rows`` and ``lat`` (in place), e.g. seeds or models split over processes or machines,
    each started from a copy of one ``latency.json``.  Same comparison means: every model
    measured in both has the same latencies, and a row present in both (side, model, seed)
    has the same accuracy and subnet; anything else is a ValueError naming it.  Returns the
    number of rows added."""
    have = {_row_key(r): r for r in rows}
    added = 0
    for d in dirs:
        csv_path, lat_path = d / "vs_handpicked.csv", d / "latency.json"
        if not csv_path.is_file() or not lat_path.is_file():
            raise ValueError(f"--merge {d}: needs the vs_handpicked.csv and latency.json of a vs_handpicked.py run")
        try:
            other_lat = json.loads(lat_path.read_text())
            other = _read_rows(csv_path)
            if not isinstance(other_lat, dict):
                raise ValueError("not a mapping of model to latencies")
            for r in other:
                if r.get("side") not in SIDES or r.get("model") not in HANDPICKED:
                    raise ValueError(f"a row of side {r.get('side')!r} and model {r.get('model')!r}")
        except (OSError, ValueError, KeyError) as exc:  # json's errors are ValueErrors
            raise ValueError(f"--merge {d}: cannot read its table ({exc})") from None
        for m, v in other_lat.items():
            if m in lat and lat[m] != v:
                raise ValueError(f"--merge {d}: {m} measured {v} there and {lat[m]} here; only tables of the same "
                                 f"measured latencies (one latency.json) merge")
        for m, v in other_lat.items():
            lat.setdefault(m, v)
        for r in other:
            k = _row_key(r)
            mine = have.get(k)
            if mine is None:
                rows.append(r)
                have[k] = r
                added += 1
            elif any(str(mine.get(f) or "") != str(r.get(f) or "") for f in ("heldout_top1", "subnet")):
                raise ValueError(f"--merge {d}: its {k[0]} row of {k[1]}" + (f" seed {k[2]}" if k[2] >= 0 else "")
                                 + f" differs from this table's ({r.get('heldout_top1')} against "
                                 f"{mine.get('heldout_top1')}): not the same comparison")
    return added


def _export(module: nn.Module, example: torch.Tensor, fmt: str, path: Path) -> str:
    """Export ``module`` to ``path`` unless it is there; '' or the error."""
    from profiler.export import export_onnx, export_tflite

    if path.is_file():
        return ""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        (export_onnx if fmt == "onnx" else export_tflite)(module.eval(), example, path)
        return ""
    except Exception as exc:  # noqa: BLE001 - a failed export is reported in the row
        return f"export: {exc}"[:300]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, required=True, help="a supernet.train run folder")
    ap.add_argument("--lut", type=Path, required=True, help="the device's LUT (of the run's space)")
    ap.add_argument("--predictor", help="accuracy predictor (default: RUN/predictor.pt)")
    ap.add_argument("--runtime", default="onnxruntime", help="the runtime whose latency the search matches")
    ap.add_argument("--runtimes", default=None, help="runtimes every model is measured with (default: --runtime "
                    "and tflite)")
    ap.add_argument("--models", default="all", help=f"hand-picked models, comma separated ({', '.join(HANDPICKED)})")
    ap.add_argument("--epochs", type=float, default=5.0, help="training epochs of every model (default 5)")
    ap.add_argument("--seeds", default="0,1,2", type=seeds_arg)
    ap.add_argument("--multi-seed-below-ms", type=float, default=1.0,
                    help="models measured under this (ms, --runtime) get every seed, the others the first")
    ap.add_argument("--finetune-lr", type=float, default=None, help="peak rate of our fine-tuning "
                    "(default: the run's last phase's)")
    ap.add_argument("--fit-tries", type=int, default=4, help="searches per model to get under its measured latency")
    ap.add_argument("--generations", type=int, default=300, help="evolution generations per search")
    ap.add_argument("--device", default="local", help="the profiler device the latencies are measured on")
    ap.add_argument("--passes", type=int, default=2, help="measurements of every network (median of them)")
    ap.add_argument("--torch-device", default="auto", help="where the models train (auto|cpu|cuda)")
    ap.add_argument("--threads", type=threads_arg, default=None, help="torch threads (default: the run's)")
    ap.add_argument("--test-images", type=int, default=None, help="test images to evaluate (default: all)")
    ap.add_argument("--out", type=Path, default=None, help="output folder (default: RUN/vs_handpicked)")
    ap.add_argument("--resume", action="store_true", help="keep the rows and latencies already in OUT")
    ap.add_argument("--merge", type=Path, action="append", default=[], metavar="DIR",
                    help="fold in the rows of another OUT of the same comparison (same run, LUT and latency.json; "
                         "e.g. seeds or models split over processes), then go on as --resume does; repeatable")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)

    from profiler.costmodel import LatencyModel
    from profiler.devices import DEFAULT_DEVICES_FILE, DeviceConfigError, load_devices, select_devices
    from profiler.export import ArtifactCache, format_for_runtime
    from profiler.lut import LutError
    from profiler.validate import measure_networks, measure_paths
    from search.evolve import CostArrays, EvolutionParams, InfeasibleBudget, covered_choices, evolve
    from search.predictor import load_predictor
    from supernet.data import DataError, load_test
    from supernet.evaluation import CheckpointError, load_run
    from supernet.presets import TrainConfig
    from supernet.space import SubnetConfig
    from supernet.standalone import Recipe, split_top1, train_standalone

    try:
        models = list(HANDPICKED) if args.models == "all" else [m.strip() for m in args.models.split(",") if m.strip()]
        bad = [m for m in models if m not in HANDPICKED]
        if bad or not models:
            raise ValueError(f"unknown hand-picked model(s) {', '.join(bad) or args.models!r} "
                             f"(known: {', '.join(HANDPICKED)})")
        seeds = args.seeds
        if not seeds or args.epochs <= 0 or args.fit_tries < 1 or args.passes < 1:
            raise ValueError("--seeds needs one seed at least; --epochs, --fit-tries and --passes must be positive")
        runtimes = list(dict.fromkeys([args.runtime] + (args.runtimes.split(",") if args.runtimes
                                                          else [args.runtime, "tflite"])))
        device = select_devices(load_devices(DEFAULT_DEVICES_FILE), args.device, DEFAULT_DEVICES_FILE)[0]
        net, ev, ckpt = load_run(args.run, device=args.torch_device)
        rc = TrainConfig.from_dict(ckpt["config"])
        space = net.space
        pred = load_predictor(args.predictor or args.run)
        pred.check_space(space)
        latency = LatencyModel.from_lut(args.lut, space, args.runtime, calibration="auto")
        choices = covered_choices(latency, space, pred.supports)
        costs = CostArrays(latency, choices)
        try:
            test = load_test(rc.data, max(space.resolutions), channels=space.in_channels)
        except DataError as exc:
            test, test_note = None, str(exc)
        else:
            test_note = ""
    except (ValueError, DeviceConfigError, CheckpointError, LutError, OSError) as exc:
        ap.exit(2, f"error: {exc}\n")
    threads = args.threads or rc.threads
    if threads:
        torch.set_num_threads(threads)
    threads = torch.get_num_threads()  # what trains every row (recorded in each)
    out = args.out or args.run / "vs_handpicked"
    out.mkdir(parents=True, exist_ok=True)
    csv_path, lat_path = out / "vs_handpicked.csv", out / "latency.json"
    fields = FIELDS[:8] + [f"{rt}_ms" for rt in runtimes] + FIELDS[8:]
    rows = _read_rows(csv_path) if args.resume else []
    lat: dict[str, dict[str, float]] = json.loads(lat_path.read_text()) if args.resume and lat_path.is_file() else {}
    if args.merge:
        try:
            added = merge_tables(rows, lat, args.merge)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        _write_rows(csv_path, rows, fields)
        atomic_write_text(lat_path, json.dumps(lat, indent=2) + "\n")
        print(f"merged {added} rows from {', '.join(map(str, args.merge))} into {csv_path}", flush=True)
    done = {_row_key(r) for r in rows}
    progress = not args.no_progress
    r_hand = max(space.resolutions)
    stem = max(1, 2 * space_stride(space) // 32)
    recipe = Recipe.from_train_config(rc, epochs=args.epochs)
    ft_recipe = replace(recipe, lr=args.finetune_lr or rc.phases[-1].lr)
    cache = ArtifactCache(None)
    t_start = time.time()

    def keep(row: dict[str, Any]) -> None:
        rows.append(row)
        _write_rows(csv_path, rows, fields)
        done.add(_row_key(row))

    def test_top1(module: nn.Module, r: int) -> float | None:
        if test is None:
            return None
        return round(split_top1(module, test, r, ev.device, rc.channels_last, args.test_images), 3)

    def build(name: str, seed: int) -> nn.Module:
        torch.manual_seed(seed)
        return handpicked_model(name, space.in_channels, space.num_classes, stem)

    # 1. every hand-picked model measured on the device, all before any training
    todo = [m for m in models if m not in lat]
    if todo:
        example = torch.randn(1, space.in_channels, r_hand, r_hand)
        for rt in runtimes:
            fmt = format_for_runtime(rt)
            paths, errors = [], []
            for m in todo:
                p = out / "models" / f"{m}-r{r_hand}.{fmt}"
                errors.append(_export(build(m, 0), example, fmt, p))
                paths.append(None if errors[-1] else p)
            res = measure_paths(device, rt, paths, errors, progress, passes=args.passes, desc="hand-picked")
            if isinstance(res, str):
                print(f"error: {res}", file=sys.stderr)
                return 1
            meas = np.atleast_2d(res[0])
            for i, m in enumerate(todo):
                v = meas[:, i]
                lat.setdefault(m, {})[rt] = None if np.isnan(v).all() else round(float(np.nanmedian(v)), 4)
                if errors[i] or res[1][i]["error"]:
                    lat[m][f"{rt}_error"] = errors[i] or res[1][i]["error"]
        atomic_write_text(lat_path, json.dumps(lat, indent=2) + "\n")
    models.sort(key=lambda m: (lat[m].get(args.runtime) is None, lat[m].get(args.runtime) or 0.0))
    for m in models:
        print(f"{m:>22}: " + ", ".join(f"{rt} {lat[m].get(rt) or float('nan'):.3f} ms" for rt in runtimes), flush=True)

    def seeds_for(m: str) -> list[int]:
        ms = lat[m].get(args.runtime)
        return seeds if ms is not None and ms < args.multi_seed_below_ms else seeds[:1]

    # 2. seed by seed, model by model (cheapest first): the hand-picked model trained from
    # scratch, then ours (the subnet searched under its measured latency, extracted, then
    # fine-tuned), so that a run stopped early holds whole comparisons
    def train_theirs(m: str, s: int) -> None:
        fam, w = HANDPICKED[m]
        model = build(m, s)
        params, macs = count_params(model), count_macs(model, (1, space.in_channels, r_hand, r_hand))
        res = train_standalone(model, ev.data, r_hand, recipe, ev.device, seed=s, progress=progress,
                               desc=f"{m} seed {s}")
        ev.recalibrate(model, r_hand)
        row = {"side": "hand-picked", "model": m, "family": fam, "width": w, "r": r_hand, "seed": s,
               "params": params, "macs": macs, **{f"{rt}_ms": lat[m].get(rt) for rt in runtimes},
               "heldout_top1": round(ev.top1(model, r_hand), 3), "test_top1": test_top1(model, r_hand),
               "heldout_top1_running_bn": res["top1"], "epochs": res["epochs"],
               "train_seconds": res["seconds"], "images_per_s": res["images_per_s"], "threads": threads,
               "note": "; ".join(v for k, v in lat[m].items() if k.endswith("_error"))}
        keep(row)
        print(f"{m:>22} seed {s}: held-out {row['heldout_top1']:.2f}%, test {row['test_top1'] or float('nan'):.2f}% "
              f"({res['epochs']:.2f} epochs in {res['seconds']:.0f} s)", flush=True)

    params_ev = EvolutionParams(generations=args.generations)
    net_cache: dict[str, dict[str, float | None]] = {}

    def measure_subnet(cfg) -> dict[str, float | None]:
        key = cfg.to_json()
        if key not in net_cache:
            net_cache[key] = {}
            for rt in runtimes:
                fmt = format_for_runtime(rt)
                res = measure_networks(device, rt, space, [cfg], fmt, cache.root / "networks" / fmt / cache.version(fmt),
                                       progress=False, passes=args.passes)
                if isinstance(res, str):
                    raise SystemExit(f"error: {res}")
                v = np.atleast_2d(res[0])[:, 0]
                net_cache[key][rt] = None if np.isnan(v).all() else round(float(np.nanmedian(v)), 4)
        return net_cache[key]

    def search(budget: float):
        try:
            return evolve(budget, costs, lambda p: pred.predict_population(p, choices), params_ev,
                          np.random.default_rng([0, int(budget * 1e4)]), progress=False)
        except InfeasibleBudget:
            return None

    def extract_ours(m: str, target: float) -> None:
        found, ms, budget, tries = fit_to_latency(target, search, lambda res: measure_subnet(res.subnet)[args.runtime],
                                                  args.fit_tries)
        if found is None:
            keep({"side": "hwnas extracted", "model": m, "seed": "", "budget_ms": target,
                  "note": f"no subnet of {space.name} fits under {target:.3f} ms ({latency.where})"})
            print(f"{m:>22}: no subnet fits under {target:.3f} ms", flush=True)
            return
        cfg = found.subnet
        sub = ev.subnet(cfg)
        measured = measure_subnet(cfg)
        row = {"side": "hwnas extracted", "model": m, "family": "hwnas", "width": cfg.w, "r": cfg.r, "seed": "",
               "params": count_params(sub), "macs": count_macs(sub.cpu(), (1, space.in_channels, cfg.r, cfg.r)),
               **{f"{rt}_ms": measured.get(rt) for rt in runtimes},
               "heldout_top1": round(ev.evaluate(cfg), 3), "test_top1": None, "budget_ms": round(budget, 4),
               "predicted_ms": round(found.cost, 4), "predicted_top1": round(100 * found.accuracy, 3),
               "searches": tries, "subnet": cfg.to_json(),
               "note": "" if ms is not None and ms <= target else f"measured over {m}'s {target:.3f} ms"}
        row["test_top1"] = test_top1(ev.subnet(cfg), cfg.r)
        keep(row)
        print(f"{m:>22}: ours r{cfg.r} {row[f'{args.runtime}_ms']} ms (theirs {target:.3f}), extracted held-out "
              f"{row['heldout_top1']:.2f}%", flush=True)

    def finetune_ours(m: str, s: int, ours: dict[str, Any]) -> None:
        row = {k: ours.get(k) for k in fields if k in ("family", "width", "r", "params", "macs", "budget_ms",
                                                       "predicted_ms", "predicted_top1", "searches", "subnet",
                                                       "note") or k.endswith("_ms")}
        # the same subnet fine-tuned with the same seed for another model's budget: the same
        # training (same weights, recipe, data order), so it is trained once and its result kept
        twin = next((r for r in rows if r["side"] == "hwnas fine-tuned" and r.get("subnet") == ours["subnet"]
                     and r.get("seed") not in ("", None) and int(r["seed"]) == s and not r.get("trained_for")), None)
        if twin is not None:
            row.update({k: twin.get(k) for k in ("heldout_top1", "test_top1", "heldout_top1_running_bn", "epochs",
                                                 "train_seconds", "images_per_s", "threads")})
            row.update({"side": "hwnas fine-tuned", "model": m, "seed": s, "trained_for": twin["model"]})
            keep(row)
            print(f"{m:>22}: ours fine-tuned seed {s}: the subnet fine-tuned for {twin['model']} "
                  f"({float(row['heldout_top1']):.2f}%)", flush=True)
            return
        cfg = SubnetConfig.from_json(ours["subnet"])
        sub = ev.subnet(cfg)
        res = train_standalone(sub, ev.data, cfg.r, ft_recipe, ev.device, seed=s, progress=progress,
                               desc=f"ours@{m} seed {s}")
        ev.recalibrate(sub, cfg.r)
        row.update({"side": "hwnas fine-tuned", "model": m, "seed": s, "heldout_top1": round(ev.top1(sub, cfg.r), 3),
                    "test_top1": test_top1(sub, cfg.r), "heldout_top1_running_bn": res["top1"],
                    "epochs": res["epochs"], "train_seconds": res["seconds"],
                    "images_per_s": res["images_per_s"], "threads": threads, "trained_for": ""})
        keep(row)
        print(f"{m:>22}: ours fine-tuned seed {s}: held-out {row['heldout_top1']:.2f}%", flush=True)

    for s in seeds:
        for m in models:  # cheapest first, each model's pair complete before the next model
            if s in seeds_for(m) and ("hand-picked", m, s) not in done:
                train_theirs(m, s)
            target = lat[m].get(args.runtime)
            if target is None:
                continue
            if ("hwnas extracted", m, -1) not in done:
                extract_ours(m, target)
            ours = next(r for r in rows if r["side"] == "hwnas extracted" and r["model"] == m)
            if ours.get("subnet") and s in seeds_for(m) and ("hwnas fine-tuned", m, s) not in done:
                finetune_ours(m, s, ours)

    table = compare(rows, args.runtime)
    summary = {"run": str(args.run), "lut": str(args.lut), "device": device.name, "search_runtime": args.runtime,
               "runtimes": runtimes, "epochs": args.epochs, "seeds": seeds, "finetune_lr": ft_recipe.lr,
               "recipe": {k: getattr(recipe, k) for k in ("batch_size", "lr", "warmup_epochs", "momentum",
                                                           "weight_decay", "label_smoothing", "channels_last")},
               "hand_picked_resolution": r_hand, "stem_stride": stem, "space": space.name,
               "held_out_images": len(ev.data.valid), "test_images": None if test is None else
               min(len(test), args.test_images or len(test)), "test_note": test_note, "threads": threads,
               # the rows may come from several runs (--resume, --merge): trained rows per thread count
               # ("not recorded": rows written before rows recorded their threads)
               "trained_threads": dict(sorted(Counter(
                   "not recorded" if r.get("threads") in (None, "") else str(int(r["threads"]))
                   for r in rows if r["side"] != "hwnas extracted").items())),
               "load_avg_end": os.getloadavg()[0], "seconds": round(time.time() - t_start, 1),
               "comparison": table,
               "goal_met": bool(table) and all(t.get("at_least_theirs") for t in table), "rows": rows}
    atomic_write_text(out / "vs_handpicked.json", json.dumps(summary, indent=2, default=str) + "\n")
    fronts_png(out / "vs_handpicked.png", rows, runtimes)
    print(f"\n{'model':>22} {'theirs ms':>9} {'top-1':>6} {'std':>5} | {'ours ms':>8} {'extracted':>9} "
          f"{'fine-tuned':>10} {'std':>5} {'seeds ahead':>11}")
    for t in table:
        f = lambda v, spec: format(v, spec) if isinstance(v, (int, float)) else format("-", ">" + spec.split(".")[0])  # noqa: E731
        ahead = f"{t['finetuned_seeds_ahead']}/{t['paired_seeds']}" if t.get("paired_seeds") else "-"
        print(f"{t['model']:>22} {f(t.get(f'theirs_{args.runtime}_ms'), '9.3f')} {f(t['theirs_heldout_top1'], '6.2f')} "
              f"{f(t.get('theirs_heldout_std'), '5.2f')} | "
              f"{f(t.get(f'ours_{args.runtime}_ms'), '8.3f')} {f(t.get('extracted_heldout_top1'), '9.2f')} "
              f"{f(t.get('finetuned_heldout_top1'), '10.2f')} {f(t.get('finetuned_heldout_std'), '5.2f')} {ahead:>11}")
    print(f"wrote {csv_path}, {out / 'vs_handpicked.json'}, {out / 'vs_handpicked.png'}")
    print(json.dumps({k: v for k, v in summary.items() if k not in ("rows", "comparison")}))
    return 0


if __name__ == "__main__":
    run_main(main, "vs_handpicked.py", "the models finished so far are kept in OUT's table; the same command with --resume "
             "goes on from them")
