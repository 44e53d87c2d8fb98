"""Price a subnet from a LUT: the latency model of ``profiler.costmodel`` (re-exported here
for the search code), as a command.

The model sums the subnet's blocks' LUT rows; with the LUT's overhead probes (measured by
``profiler.run``) each block's row loses one runtime invocation and the network pays one, and
``--calibrated`` applies ``profiler.validate``'s fit.

CLI::

    python -m search.latency --lut luts/local.csv --subnet max|min|<json>|FILE|budget_*ms.json [--runtime R]
                             [--precision fp32|int8] [--space NAME] [--calibrated] [--no-overhead] [--per-block]
                             [--stat quiet|median|mean] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from profiler.costmodel import (CalibrationMismatch, CostModel, LatencyModel, MacsModel,  # noqa: F401 - re-exported
                                MissingKeysError, ParamsModel, read_calibration)
from profiler.lut import STATS
from supernet.space import OFA_MBV3, get_space, parse_subnet


def _unwrap_result(text: str) -> str:
    """A search result file (``search.evolve``'s ``budget_*ms.json``) stands for its subnet."""
    try:
        obj = json.loads(Path(text).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return text
    return json.dumps(obj["subnet"]) if isinstance(obj, dict) and "subnet" in obj else text


def coverage_text(covered: list[tuple[int, float]]) -> str:
    """What a model's ``covered()`` pairs say, in words."""
    if not covered:
        return "it covers no resolution and width of the space completely"
    by_w: dict[float, list[int]] = {}
    for r, w in covered:
        by_w.setdefault(w, []).append(r)
    return "it covers " + "; ".join(f"r {', '.join(map(str, rs)) if len(rs) <= 6 else f'{rs[0]} to {rs[-1]} ({len(rs)} resolutions)'}"
                                    f" at w {w:g}" for w, rs in sorted(by_w.items())) + " (--resolution, --width)"


def main(argv: list[str] | None = None) -> int:
    from profiler.lut import PRECISIONS, LutError

    ap = argparse.ArgumentParser(prog="python -m search.latency", description=__doc__.split("\n\n")[0])
    ap.add_argument("--lut", required=True, help="LUT CSV")
    ap.add_argument("--subnet", required=True, help="max, min, a JSON object, a JSON file, or a search result "
                    "(budget_*ms.json)")
    ap.add_argument("--space", default=None, help="search space name (default: the one the LUT's .space.json "
                    "records, else ofa_mbv3)")
    ap.add_argument("--runtime", default=None, help="runtime to use when the LUT holds several")
    ap.add_argument("--precision", default="fp32", choices=PRECISIONS,
                    help="price from the LUT's rows of this precision (int8: profiler.run --precision int8)")
    ap.add_argument("--resolution", type=int, default=None, help="override the subnet's resolution")
    ap.add_argument("--width", type=float, default=None, help="override the subnet's width multiplier")
    ap.add_argument("--calibrated", action="store_true", help="apply <lut>.calibration.json (a*sum+b)")
    ap.add_argument("--no-overhead", action="store_true", help="sum the LUT rows as they are, without "
                    "subtracting each block's invocation overhead or layout boundary (the LUT's probes)")
    ap.add_argument("--stat", choices=list(STATS), default="quiet",
                    help="the row statistic to price by (quiet: the median of each timing's quietest stretch, "
                         "the median for rows without one)")
    ap.add_argument("--per-block", action="store_true", help="also list every block's latency")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)
    covered: list[tuple[int, float]] = []
    try:
        from profiler.lut import lut_spaces

        recorded = lut_spaces(Path(args.lut))
        space = get_space(args.space) if args.space else (get_space(recorded[0]) if len(recorded) == 1 else OFA_MBV3)
        cfg = parse_subnet(_unwrap_result(args.subnet), space, r=args.resolution, w=args.width)
        model = LatencyModel.from_lut(args.lut, space, args.runtime,
                                      calibration="auto" if args.calibrated else None, stat=args.stat,
                                      overhead=not args.no_overhead, precision=args.precision)
        if args.calibrated and model.calibration is None:
            raise ValueError(f"{args.lut}: --calibrated given but no calibration file beside it (run profiler.validate)")
        try:
            per_block = model.block_costs(cfg)
        except MissingKeysError:
            # max/min: the largest (smallest) subnet the table can price, at its largest
            # (smallest) resolution and then width, where no flag fixes them
            covered = model.covered()
            pairs = [(r, w) for r, w in covered if args.resolution in (None, r) and args.width in (None, w)]
            name = args.subnet.strip()
            if name not in ("max", "min") or not pairs or (cfg.r, cfg.w) in covered:
                raise
            r, w = (max if name == "max" else min)(pairs)
            cfg = parse_subnet(name, space, r=r, w=w)
            per_block = model.block_costs(cfg)
        raw = model.sum_of(per_block, cfg.r)
    except MissingKeysError as exc:
        hint = "" if not covered or (cfg.r, cfg.w) in covered else f"\n  at r={cfg.r}, w={cfg.w:g}; {coverage_text(covered)}"
        print(f"error: {exc}{hint}", file=sys.stderr)
        return 2
    except (ValueError, LutError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    total = float(model.calibrate(raw))
    overhead = model.uses_overhead(cfg.r)
    weights = model.network_weight_cost([b for b, _ in per_block], cfg.r)
    out = {
        "lut": str(args.lut), "runtime": model.runtime, "precision": model.precision, "device": model.device,
        "subnet": cfg.to_dict(), "latency_ms": round(total, 4), "lut_sum_ms": round(raw, 4),
        "calibration": list(model.calibration) if model.calibration else None,
        "blocks": len(per_block), "overhead_model": overhead, "boundary_model": model.uses_boundary(cfg.r),
        "network_overhead_ms": round(float(raw - weights - sum(c for _, c in per_block)), 4),
        "weight_streaming_ms": round(weights, 4),
    }
    if args.per_block:
        out["per_block"] = [{"key": str(b), "ms": round(c, 4)} for b, c in per_block]
    if args.json:
        print(json.dumps(out))
    else:
        if args.per_block:
            for b, c in per_block:
                print(f"{c:10.4f} ms  {b}")
        cal = f" (calibrated from {raw:.2f} ms LUT sum)" if model.calibration else ""
        edge = "layout boundary" if out["boundary_model"] else "invocation overhead"
        ovh = (f", blocks less their {edge} + {out['network_overhead_ms']:.3f} ms once" if overhead else "")
        if model.has_weight_cost(cfg.r):
            ovh += f", + {weights:.3f} ms weight streaming"
        print(f"{total:.2f} ms{cal}  [{out['runtime']} {out['precision']}, r={cfg.r} w={cfg.w:g}, {len(per_block)} blocks{ovh}, "
              f"{args.lut}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
