"""Benchmark: does a lookup table repeat?  The same table built several times in two ways,
alternating, and every block compared between builds: the local runner pinned to one CPU and
unpinned (``--compare pinning``), or pinned with two sweeps a block and with one
(``--compare sweeps``).

A first build fills the artifact cache (not counted), so that no conversion overlaps a timed
block; then ``--builds`` builds of each kind, alternating (pinned, unpinned, pinned, ...).
For every runtime and kind, each pair of builds gives the median over blocks of
``|t_a / t_b - 1|`` and the number of blocks 20% or more apart (a few bad rows move whole
networks in a latency model of differences); the JSON has every pair's figures and their
median.  Measured on the 2-core AVX2 EPYC VM (README, "Profiling real devices"): 2.2% pinned
against 32.8% unpinned for onnxruntime, 1.2% against 9.8% for LiteRT, which is why the
shipped ``local`` entry is pinned; with one timing a block 26 of 151 onnxruntime rows 20%
apart between two builds, with two sweeps none, which is why the default is two sweeps.

    .venv/bin/python bench/lut_repeat.py [--compare pinning|sweeps] [--space fmnist --resolutions 32,48]
        [--builds 4] [--runtime onnxruntime,tflite] [--cpu-mask last] [--limit N] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import statistics
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.emit import emit  # noqa: E402

from profiler.devices import load_devices  # noqa: E402
from profiler.export import ArtifactCache  # noqa: E402
from profiler.lut import LutTable, row_ms  # noqa: E402
from profiler.measure import profile_device  # noqa: E402
from profiler.run import with_overhead_probes  # noqa: E402
from supernet.space import get_space  # noqa: E402

RUNTIMES = ("onnxruntime", "tflite")


def block_times(lut: Path, runtime: str) -> dict[tuple[str, str], float]:
    """The time the latency model prices every measured row of ``runtime`` in ``lut`` by
    (``quiet_ms``, the median where a row has none), by (key, resolution)."""
    rows = LutTable.load(lut).rows.values()
    return {(r["key"], str(r.get("resolution", ""))): row_ms(r) for r in rows
            if r["runtime"] == runtime and r["status"] == "ok"}


APART = 1.2  # two timings of a block this far apart (either way) count as a bad row


def pair_differences(builds: list[dict]) -> list[tuple[float, int]]:
    """Per pair of builds, the median over their common blocks of ``|t_a / t_b - 1|`` in %,
    and how many of those blocks are ``APART`` or more apart."""
    out = []
    for a, b in itertools.combinations(builds, 2):
        common = sorted(set(a) & set(b))
        if common:
            ratios = [a[k] / b[k] for k in common]
            out.append((100 * statistics.median(abs(r - 1) for r in ratios),
                        sum(1 for r in ratios if max(r, 1 / r) >= APART)))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--compare", choices=("pinning", "sweeps"), default="pinning",
                    help="pinning: pinned against unpinned builds; sweeps: two sweeps a block against one, both pinned")
    ap.add_argument("--space", default="fmnist")
    ap.add_argument("--resolutions", default="32,48")
    ap.add_argument("--runtime", default="onnxruntime,tflite", help="comma-separated runtimes, each built in turn")
    ap.add_argument("--builds", type=int, default=4, help="builds of each kind (at least 2)")
    ap.add_argument("--cpu-mask", default="last", help="the pinned builds' cpu_mask (default last)")
    ap.add_argument("--limit", type=int, default=None, help="the first N blocks only")
    ap.add_argument("--repeats", type=int, default=None, help="timed runs per block (default: the device's)")
    ap.add_argument("--min-time", type=float, default=None, help="timed seconds per block (default: the device's)")
    ap.add_argument("--devices", type=Path, default=Path(__file__).resolve().parents[1] / "devices.yaml")
    ap.add_argument("--workdir", type=Path, default=None, help="keep the cache and every LUT here")
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = ap.parse_args()
    runtimes = [r.strip() for r in args.runtime.split(",") if r.strip()]
    if not runtimes or any(r not in RUNTIMES for r in runtimes):
        sys.exit(f"error: --runtime {args.runtime!r}: known runtimes are {', '.join(RUNTIMES)}")
    if args.builds < 2:
        sys.exit(f"error: --builds must be at least 2 (a pair to compare), got {args.builds}")
    space = get_space(args.space)
    specs = space.all_blocks([int(r) for r in args.resolutions.split(",")])
    specs = with_overhead_probes(specs[: args.limit] if args.limit else specs)  # as profiler.run measures them
    local = load_devices(args.devices)["local"]
    overrides = {k: v for k, v in (("repeats", args.repeats), ("min_time_s", args.min_time)) if v is not None}
    if args.compare == "pinning":
        kinds = {"pinned": replace(local, cpu_mask=args.cpu_mask, **overrides),
                 "unpinned": replace(local, cpu_mask="", **overrides)}
    else:
        kinds = {"two sweeps": replace(local, cpu_mask=args.cpu_mask, sweeps=2, **overrides),
                 "one sweep": replace(local, cpu_mask=args.cpu_mask, sweeps=1, **overrides)}
    first, second = kinds
    times: dict[str, dict[str, list[dict]]] = {rt: {k: [] for k in kinds} for rt in runtimes}
    cpus: dict[str, set[str]] = {k: set() for k in kinds}
    loads = []
    with tempfile.TemporaryDirectory(prefix="hwnas-bench-") as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        cache = ArtifactCache(work / "cache")
        for rt in runtimes:
            profile_device(kinds[second], specs, rt, work / f"warm-up-{rt}.csv", cache, progress=False)
            for i in range(args.builds):
                for kind in ((first, second) if i % 2 == 0 else (second, first)):
                    lut = work / f"{rt}-{kind.replace(' ', '_')}-{i}.csv"
                    res = profile_device(kinds[kind], specs, rt, lut, cache, progress=sys.stderr.isatty())
                    if res.failed or res.device_lost:
                        sys.exit(f"error: {kind} build {i} of {rt}: {res.device_lost or res.errors[:1]}")
                    cpus[kind].add(res.cpus)
                    loads.append(os.getloadavg()[0])
                    times[rt][kind].append(block_times(lut, rt))
    runs = {}
    for rt in runtimes:
        runs[rt] = {}
        for kind in kinds:
            pairs = pair_differences(times[rt][kind])
            runs[rt][kind] = {"pairs_median_abs_diff_pct": [round(d, 2) for d, _ in pairs],
                              "median_abs_diff_pct": round(statistics.median(d for d, _ in pairs), 2),
                              "pairs_rows_apart": [n for _, n in pairs], "rows_apart_max": max(n for _, n in pairs)}
    out = {
        "bench": "lut_repeat", "compare": args.compare, "rows_apart_ratio": APART, "space": space.name, "resolutions": args.resolutions, "runtimes": runtimes,
        "blocks": len(specs), "builds": args.builds, "cpu_mask": args.cpu_mask,
        "cpus": {k: sorted(v) for k, v in cpus.items()}, "threads": local.threads,
        "min_time_s": overrides.get("min_time_s", local.min_time_s), "machine": platform.machine(),
        "cpu_count": os.cpu_count(), "load_avg_1m": {"min": round(min(loads), 2), "max": round(max(loads), 2)},
        "runs": runs,
    }
    return emit(out, args.out)


if __name__ == "__main__":
    sys.exit(main())
