"""Where int8 pays on a device: the int8 / fp32 latency ratio of every block the LUT holds in
both precisions, grouped by block kind (mbconv by kernel, activation and squeeze-excite).

    python -m profiler.int8_report --lut luts/local.csv [--runtime R] [--json]

A ratio above 1 is a block that runs slower quantized than in fp32 on this device and runtime
(on this x86 host LiteRT leaves int8 HARD_SWISH on a slow kernel, for one).  Overhead probes
are left out (they are no block of a network).  Writes ``<lut>.int8.csv`` (one row per block)
and ``<lut>.int8.json`` (the groups, per runtime) beside the LUT.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from supernet.atomic import atomic_write_text
from supernet.space import PROBE_KINDS, BlockSpec

from .lut import LutError, LutTable, lut_sibling


def group_of(spec: BlockSpec) -> str:
    """``mbconv k7 hswish se``, ``first_conv hswish``, ``pool``..."""
    if spec.kind == "mbconv":
        return f"mbconv k{spec.kernel} {spec.act}{' se' if spec.se else ''}"
    return spec.kind if spec.act == "none" else f"{spec.kind} {spec.act}"


def block_ratios(table: LutTable, runtime: str) -> list[dict[str, Any]]:
    """Per block measured ok in both precisions: fp32 ms, int8 ms, their ratio."""
    fp32 = table.table(runtime, precision="fp32")
    int8 = table.table(runtime, precision="int8")
    out = []
    for key in sorted(set(fp32) & set(int8)):
        spec = BlockSpec.parse(key)
        if spec.kind in PROBE_KINDS or fp32[key] <= 0:  # probes, in no network
            continue
        out.append({"runtime": runtime, "key": key, "group": group_of(spec), "fp32_ms": fp32[key],
                    "int8_ms": int8[key], "ratio": int8[key] / fp32[key]})
    return out


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Groups (median ratio, range, share slower) and the overall figures of one runtime."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(r["group"], []).append(r)
    out_groups = []
    for name, rs in sorted(groups.items()):
        ratios = np.array([r["ratio"] for r in rs])
        out_groups.append({"group": name, "blocks": len(rs), "median_ratio": float(np.median(ratios)),
                           "min_ratio": float(ratios.min()), "max_ratio": float(ratios.max()),
                           "slower_share": float(np.mean(ratios > 1.0)),
                           "fp32_ms_total": float(sum(r["fp32_ms"] for r in rs)),
                           "int8_ms_total": float(sum(r["int8_ms"] for r in rs))})
    ratios = np.array([r["ratio"] for r in rows]) if rows else np.array([])
    return {"blocks": len(rows), "slower": int((ratios > 1.0).sum()),
            "median_ratio": float(np.median(ratios)) if len(ratios) else None,
            "groups": out_groups,
            "slower_groups": [g["group"] for g in sorted(out_groups, key=lambda g: -g["median_ratio"])
                              if g["median_ratio"] > 1.0]}


def verdict(runtime: str, s: dict[str, Any]) -> str:
    """One line: where int8 is slower than fp32 and which blocks cause it."""
    if not s["blocks"]:
        return f"{runtime}: no block measured in both precisions"
    line = (f"{runtime}: int8 / fp32 median {s['median_ratio']:.2f}x over {s['blocks']} blocks; "
            f"int8 slower for {s['slower']} of them")
    worst = [g for g in s["groups"] if g["group"] in s["slower_groups"]]
    if worst:
        line += "; slower in the median: " + ", ".join(
            f"{g['group']} ({g['median_ratio']:.2f}x)" for g in sorted(worst, key=lambda g: -g["median_ratio"])[:5])
    return line


def report(lut: Path, runtimes: list[str] | None = None) -> dict[str, Any]:
    """Rows and summaries for every runtime with both precisions; raises LutError."""
    table = LutTable.load(lut)
    rts = runtimes or [rt for rt in table.runtimes if table.precisions(rt) == ["fp32", "int8"]]
    if not rts:
        raise LutError(f"{lut}: no runtime has both fp32 and int8 rows (profile with --precision fp32,int8)")
    for rt in rts:
        table.pick_runtime(rt)
        table.check_precision(rt, "fp32")
        table.check_precision(rt, "int8")
    rows = {rt: block_ratios(table, rt) for rt in rts}
    return {"lut": str(lut), "rows": rows, "runtimes": {rt: summarise(rs) for rt, rs in rows.items()}}


def write(lut: Path, rep: dict[str, Any]) -> tuple[Path, Path]:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["runtime", "group", "key", "fp32_ms", "int8_ms", "ratio"], lineterminator="\n")
    w.writeheader()
    for rs in rep["rows"].values():
        for r in rs:
            w.writerow({**r, "fp32_ms": f"{r['fp32_ms']:.6g}", "int8_ms": f"{r['int8_ms']:.6g}",
                        "ratio": f"{r['ratio']:.4f}"})
    csv_path, json_path = lut_sibling(lut, ".int8.csv"), lut_sibling(lut, ".int8.json")
    atomic_write_text(csv_path, buf.getvalue())
    atomic_write_text(json_path, json.dumps({"lut": rep["lut"], "runtimes": rep["runtimes"]}, indent=2) + "\n")
    return csv_path, json_path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m profiler.int8_report", description=__doc__.split("\n\n")[0])
    ap.add_argument("--lut", type=Path, required=True)
    ap.add_argument("--runtime", default=None, help="runtime(s), comma separated (default: every one with both)")
    ap.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    args = ap.parse_args(argv)
    try:
        rep = report(args.lut, [r.strip() for r in args.runtime.split(",")] if args.runtime else None)
        csv_path, json_path = write(args.lut, rep)
    except (LutError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"lut": rep["lut"], "runtimes": rep["runtimes"]}))
        return 0
    for rt, s in rep["runtimes"].items():
        print(f"{rt}: {'group':<24} {'blocks':>6} {'int8/fp32 median':>16} {'range':>13} {'slower':>7}")
        for g in s["groups"]:
            print(f"{'':{len(rt) + 2}}{g['group']:<24} {g['blocks']:>6} {g['median_ratio']:>15.2f}x "
                  f"{g['min_ratio']:>5.2f}-{g['max_ratio']:<6.2f} {g['slower_share'] * 100:>6.0f}%")
        print(verdict(rt, s) + "\n")
    print(f"wrote {csv_path} and {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
