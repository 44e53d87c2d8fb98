"""Benchmark: how much of building a LUT is spent inside timed inference?

Builds the LUT of the local device for each runtime (onnxruntime and LiteRT by default) at 5
resolutions (160 to 224, step 16) twice: cold (a fresh artifact cache of its own: every block
exported) and warm (artifacts cached, a fresh LUT: what a second device sharing the format, or
a re-measurement, costs).  Prints one JSON object with, per runtime, wall time, export time,
measurement time, time inside timed inference and wall / timed of both passes.  Issue 11's
targets for a cold build of 60 OFA blocks at 224 px (``--resolutions 224 --limit 60``): wall
/ timed <= 2 for onnxruntime and <= 3 for LiteRT.

    .venv/bin/python bench/profile_overhead.py [--resolutions 160,176,192,208,224] [--limit N]
        [--runtime onnxruntime,tflite] [--export-workers 2] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.emit import emit  # noqa: E402

from profiler.devices import load_devices  # noqa: E402
from profiler.export import ArtifactCache, default_export_workers  # noqa: E402
from profiler.measure import profile_device  # noqa: E402
from profiler.run import with_overhead_probes  # noqa: E402
from supernet.space import get_space  # noqa: E402

TARGETS = {"onnxruntime": 2.0, "tflite": 3.0}  # issue 11: cold wall / timed inference


def one_pass(device, specs, runtime, cache_dir: Path, lut: Path, workers: int) -> dict:
    t0 = time.perf_counter()
    res = profile_device(device, specs, runtime, lut, ArtifactCache(cache_dir), export_workers=workers,
                         progress=sys.stderr.isatty())
    wall = time.perf_counter() - t0
    return {
        "blocks": res.todo, "measured": res.measured, "failed": res.failed, "exported": res.exported,
        "wall_s": round(wall, 2), "export_s": round(res.export_s, 2), "measure_s": round(res.measure_s, 2),
        "timed_inference_s": round(res.timed_s, 2),
        "wall_over_timed": round(wall / res.timed_s, 3) if res.timed_s else None,
        "measure_over_timed": round(res.measure_s / res.timed_s, 3) if res.timed_s else None,
        "host_cpu": res.host_cpu,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--resolutions", default="160,176,192,208,224")
    ap.add_argument("--space", default="ofa_mbv3")
    ap.add_argument("--runtime", default="onnxruntime,tflite", help="comma-separated runtimes, each timed in turn")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--export-workers", type=int, default=default_export_workers())
    ap.add_argument("--devices", type=Path, default=Path(__file__).resolve().parents[1] / "devices.yaml")
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    ap.add_argument("--workdir", type=Path, default=None,
                    help="keep the cache and both LUTs here (default: a temporary folder, removed)")
    args = ap.parse_args()
    space = get_space(args.space)
    specs = space.all_blocks([int(r) for r in args.resolutions.split(",")])
    if args.limit:
        specs = specs[: args.limit]
    specs = with_overhead_probes(specs)  # as profiler.run measures them
    device = load_devices(args.devices)["local"]
    runtimes = [r.strip() for r in args.runtime.split(",") if r.strip()]
    bad = [r for r in runtimes if r not in TARGETS]
    if bad or not runtimes:
        sys.exit(f"error: --runtime {args.runtime!r}: known runtimes are {', '.join(TARGETS)}")
    runs = {}
    with tempfile.TemporaryDirectory(prefix="hwnas-bench-") as tmp:
        tmp = args.workdir or Path(tmp)
        tmp.mkdir(parents=True, exist_ok=True)
        for rt in runtimes:
            if (tmp / rt / "cache").exists():
                sys.exit(f"error: {tmp / rt}/cache exists; the cold pass needs an empty cache")
        for rt in runtimes:
            work = tmp / rt
            work.mkdir(exist_ok=True)
            cold = one_pass(device, specs, rt, work / "cache", work / "cold.csv", args.export_workers)
            warm = one_pass(device, specs, rt, work / "cache", work / "warm.csv", args.export_workers)
            runs[rt] = {"cold": cold, "warm": warm, "target_cold_wall_over_timed": TARGETS[rt],
                        "cold_target_met": cold["wall_over_timed"] is not None
                        and cold["wall_over_timed"] <= TARGETS[rt]}
    out = {
        "bench": "profile_overhead", "space": space.name, "runtimes": runtimes,
        "resolutions": args.resolutions, "blocks": len(specs), "threads": device.threads,
        "min_time_s": device.min_time_s, "repeats": device.repeats, "export_workers": args.export_workers,
        "machine": platform.machine(), "cpus": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2),
        "runs": runs,
    }
    return emit(out, args.out)


if __name__ == "__main__":
    sys.exit(main())
