"""The fp32 -> int8 accuracy drop of subnets of a trained supernet (issue 16): the measured
drop model ``search.evolve --precision fp32,int8`` ranks int8 candidates with.

    python -m search.int8_drop --run RUN [--subnets 20] [--runtime tflite,onnxruntime]
        [--resolutions 32,48] [--width W] [--seed 0] [--eval-images N] [--calib-images 128] [--out DIR]

Subnet ``i`` is ``search.collect``'s subnet ``i`` of the same seed (plus the largest and the
smallest at the largest of ``--resolutions`` first; every subnet at width ``--width``, by
default the space's), extracted, BN recalibrated, evaluated in
PyTorch fp32, then post-training quantized per runtime the way the profiler quantizes blocks
for a device (``profiler.quantize``: LiteRT's ``static_wi8_ai8`` all-int8 graph, onnxruntime's
QDQ u8/s8 per channel; calibrated on real training images) and run image by image on the same
held-out images.  Writes ``DIR/int8_drop.csv`` (one row per subnet and runtime) and
``DIR/int8_drop.json`` (default DIR: the run folder; per runtime: mean, median, min and max
drop, its standard error, and the Kendall tau between the fp32 and int8 accuracies: whether
int8 preserves the fp32 ranking the predictor is trained on) and prints that JSON.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
import time
from pathlib import Path

FIELDS = ["index", "subnet", "r", "runtime", "torch_top1", "fp32_top1", "int8_top1", "drop_pp", "seconds"]


def kendall_tau(a: list[float], b: list[float]) -> float | None:
    from scipy.stats import kendalltau

    if len(a) < 3:
        return None
    tau = kendalltau(a, b).statistic
    return None if tau != tau else float(tau)


def main(argv: list[str] | None = None) -> int:
    import numpy as np

    from search.collect import subnet_at
    from supernet.atomic import atomic_write_text
    from supernet.evaluation import CheckpointError, load_run

    ap = argparse.ArgumentParser(prog="python -m search.int8_drop", description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--subnets", type=int, default=20, help="subnets (the largest and smallest among them)")
    ap.add_argument("--runtime", default="tflite,onnxruntime")
    ap.add_argument("--resolutions", default=None, help="default: the space's")
    ap.add_argument("--width", type=float, default=None, help="width multiplier of every subnet (default: the space's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-images", type=int, default=None, help="held-out images (default: all)")
    ap.add_argument("--calib-images", type=int, default=128)
    ap.add_argument("--out", type=Path, default=None, help="folder for int8_drop.csv/json (default: the run folder)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
    runtimes = [r.strip() for r in args.runtime.split(",") if r.strip()]
    try:
        bad = [r for r in runtimes if r not in ("tflite", "onnxruntime")]
        if bad or not runtimes:
            raise ValueError(f"--runtime: tflite and/or onnxruntime, got {args.runtime!r}")
        if args.subnets < 2:
            raise ValueError("--subnets must be at least 2 (the largest and the smallest)")
        if args.calib_images < 1:
            raise ValueError("--calib-images must be at least 1")
        net, evaluator, _ = load_run(args.run, device="cpu", amp="off")
        space = net.space
        try:
            res = [int(x) for x in args.resolutions.split(",")] if args.resolutions else list(space.resolutions)
        except ValueError:
            raise ValueError(f"--resolutions must be a comma list of integers, got {args.resolutions!r}") from None
        bad_r = [r for r in res if r not in space.resolutions]
        if bad_r or not res:
            raise ValueError(f"--resolutions: {bad_r[0] if bad_r else '(none)'} is not a resolution of space "
                             f"{space.name!r} ({', '.join(map(str, space.resolutions))})")
        width = space.default_width if args.width is None else args.width
        if width not in space.width_mults:
            raise ValueError(f"--width: {width:g} is not a width multiplier of space {space.name!r} "
                             f"({', '.join(f'{w:g}' for w in space.width_mults)})")
    except (CheckpointError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.eval_images:
        evaluator.eval_images = args.eval_images
    r_max = max(res)
    cfgs = [space.max_subnet(r_max, width), space.min_subnet(r_max, width)]
    cfgs += [subnet_at(space, args.seed, i, res, [width]) for i in range(args.subnets - 2)]
    out_dir = args.out or args.run
    out_dir.mkdir(parents=True, exist_ok=True)
    from tqdm import tqdm

    rows = []
    bar = tqdm(total=len(cfgs) * len(runtimes), desc="int8 drop", unit="eval", disable=args.no_progress)
    for i, cfg in enumerate(cfgs):
        for rt in runtimes:
            t0 = time.perf_counter()
            try:
                q = evaluator.int8_top1(cfg, rt, args.calib_images)
            except (RuntimeError, ValueError) as exc:
                bar.close()
                print(f"error: int8 evaluation of subnet {i} ({cfg.to_json()}) with {rt}: {exc}", file=sys.stderr)
                return 1
            rows.append({"index": i, "subnet": cfg.to_json(), "r": cfg.r, "runtime": rt,
                         "torch_top1": round(q["torch_top1"], 3), "fp32_top1": round(q["fp32_top1"], 3),
                         "int8_top1": round(q["int8_top1"], 3), "drop_pp": round(q["drop_pp"], 3),
                         "seconds": round(time.perf_counter() - t0, 1)})
            bar.set_postfix(rt=rt, fp32=f"{q['torch_top1']:.2f}", int8=f"{q['int8_top1']:.2f}", refresh=False)
            bar.update(1)
    bar.close()
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=FIELDS, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(out_dir / "int8_drop.csv", buf.getvalue())
    summary = {"what": "int8_drop", "run": str(args.run), "subnets": len(cfgs), "seed": args.seed,
               "resolutions": res, "width": width,
               "held_out_images": min(evaluator.eval_images or len(evaluator.data.valid), len(evaluator.data.valid)),
               "calib_images": args.calib_images, "runtimes": {}}
    for rt in runtimes:
        rs = [r for r in rows if r["runtime"] == rt]
        drops = np.array([r["drop_pp"] for r in rs])
        summary["runtimes"][rt] = {
            "subnets": len(rs), "mean_drop_pp": round(float(drops.mean()), 3), "median_drop_pp": round(float(np.median(drops)), 3),
            "min_drop_pp": round(float(drops.min()), 3), "max_drop_pp": round(float(drops.max()), 3),
            "std_drop_pp": round(float(drops.std(ddof=1)), 3) if len(drops) > 1 else None,
            "standard_error_pp": round(float(drops.std(ddof=1) / np.sqrt(len(drops))), 3) if len(drops) > 1 else None,
            "fp32_runtime_vs_torch_max_abs_pp": round(max(abs(r["fp32_top1"] - r["torch_top1"]) for r in rs), 3),
            "kendall_tau_fp32_vs_int8": kendall_tau([r["torch_top1"] for r in rs], [r["int8_top1"] for r in rs])}
    atomic_write_text(out_dir / "int8_drop.json", json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
