"""The fp32 -> int8 accuracy drop of subnets of a trained supernet (issue 16): the measured
drop model ``search.evolve --precision fp32,int8`` ranks int8 candidates with.

    python -m search.int8_drop --run RUN [--subnets 20] [--runtime tflite,onnxruntime]
        [--resolutions 32,48] [--width W] [--seed 0] [--eval-images N] [--calib-images 128] [--out DIR]
        [--workers 2]

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

``--workers N`` (default: 2, or the cores this process may use if fewer) evaluates N subnets
at a time in processes of their own: converting a network to TFLite (litert-torch) and running it image
by image use one core each, so one process left the other core of a 2-core machine idle for
most of the stage.  Every evaluation runs PyTorch on one thread, whatever N is, so that the
rows do not depend on N: BN recalibration on 2 threads sums in another order, and the int8
models amplify those last-bit differences into a few flipped images (0.05-0.3 points a
subnet, measured on the main job's run against 1 thread).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path

from supernet.cliargs import run_main, seed_arg

FIELDS = ["index", "subnet", "r", "runtime", "torch_top1", "fp32_top1", "int8_top1", "drop_pp", "seconds"]


class SubnetError(RuntimeError):
    """One subnet's int8 evaluation failed (the message names the subnet and the runtime)."""


def subnet_rows(evaluator, i: int, cfg, runtimes: list[str], calib_images: int) -> list[dict]:
    """The rows of subnet ``i`` (``cfg``), one per runtime.  Raises SubnetError."""
    try:
        got = evaluator.int8_top1_runtimes(cfg, runtimes, calib_images)
    except (RuntimeError, ValueError) as exc:
        raise SubnetError(f"int8 evaluation of subnet {i} ({cfg.to_json()}) with {', '.join(runtimes)}: {exc}") from None
    rows = []
    for rt in runtimes:
        q = got[rt]
        rows.append({"index": i, "subnet": cfg.to_json(), "r": cfg.r, "runtime": rt,
                     "torch_top1": round(q["torch_top1"], 3), "fp32_top1": round(q["fp32_top1"], 3),
                     "int8_top1": round(q["int8_top1"], 3), "drop_pp": round(q["drop_pp"], 3),
                     "seconds": round(q["seconds"], 1)})
    return rows


def _worker_task(i: int, cfg_json: str, runtimes: list[str], calib_images: int) -> list[dict]:
    from search.workers import evaluator
    from supernet.space import SubnetConfig

    return subnet_rows(evaluator(), i, SubnetConfig.from_json(cfg_json), runtimes, calib_images)


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
    from supernet.errors import CheckpointError

    ap = argparse.ArgumentParser(prog="python -m search.int8_drop", description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--subnets", type=int, default=20, help="subnets (the largest and smallest among them)")
    ap.add_argument("--runtime", default="tflite,onnxruntime")
    ap.add_argument("--resolutions", default=None, help="default: the space's")
    ap.add_argument("--width", type=float, default=None, help="width multiplier of every subnet (default: the space's)")
    ap.add_argument("--seed", type=seed_arg, default=0)
    ap.add_argument("--eval-images", type=int, default=None, help="held-out images (default: all)")
    ap.add_argument("--calib-images", type=int, default=128)
    ap.add_argument("--out", type=Path, default=None, help="folder for int8_drop.csv/json (default: the run folder)")
    ap.add_argument("--workers", type=int, default=None,
                    help="subnets evaluated at a time, each in a process of its own (default: 2, or the cores there "
                         "are if fewer)")
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
        if args.workers is not None and args.workers < 1:
            raise ValueError("--workers must be at least 1")
        if args.eval_images is not None and args.eval_images < 1:
            raise ValueError("--eval-images must be at least 1 (leave it out for all held-out images)")
        from supernet.evaluation import load_run  # torch: after the flags are checked

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
        space.require_width(width, flag="--width")
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

    from profiler.export import default_export_workers

    held_out = min(evaluator.eval_images or len(evaluator.data.valid), len(evaluator.data.valid))
    workers = min(args.workers or default_export_workers(), len(cfgs))
    bar = tqdm(total=len(cfgs), desc="int8 drop", unit="subnet", disable=args.no_progress)
    by_subnet: dict[int, list[dict]] = {}

    def done(i: int, got: list[dict]) -> None:
        by_subnet[i] = got
        bar.set_postfix({r["runtime"]: f"{r['torch_top1']:.2f}->{r['int8_top1']:.2f}" for r in got}, refresh=False)
        bar.update(1)

    try:
        if workers == 1:
            import torch

            torch.set_num_threads(1)  # as in a worker: the rows must not depend on --workers
            for i, cfg in enumerate(cfgs):
                done(i, subnet_rows(evaluator, i, cfg, runtimes, args.calib_images))
        else:
            from search.workers import WorkerDied, evaluator_pool, finished

            with evaluator_pool(workers, args.run, eval_images=args.eval_images) as pool:
                jobs = {i: (i, cfg.to_json(), runtimes, args.calib_images) for i, cfg in enumerate(cfgs)}
                try:
                    for i, got in finished(pool, _worker_task, jobs):
                        done(i, got)
                except WorkerDied:
                    raise SubnetError("an int8 evaluation worker died (out of memory?); rerun with --workers 1") from None
    except SubnetError as exc:
        bar.close()
        print(f"error: {exc}", file=sys.stderr)
        return 1
    bar.close()
    rows = [r for i in sorted(by_subnet) for r in by_subnet[i]]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=FIELDS, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(out_dir / "int8_drop.csv", buf.getvalue())
    summary = {"what": "int8_drop", "run": str(args.run), "subnets": len(cfgs), "seed": args.seed,
               "resolutions": res, "width": width,
               "held_out_images": held_out, "workers": workers,
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
    run_main(main, "search.int8_drop",
             "nothing is written until every subnet is done; the same command starts again")
