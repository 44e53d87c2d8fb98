"""Cost models over ``space.blocks(subnet)``: LUT latency (optionally calibrated), MACs, params.

A subnet's cost is the sum of its blocks' costs.  Every elastic block slot's shape depends
only on the resolution, the width multiplier and its own (kernel, expand), so the cost of a
whole population is ``base(r, w) + sum over active slots of slot[slot, kernel, expand]``:
``tables(r, w)`` gives those arrays and ``cost`` evaluates a population with array sums.

CLI::

    python -m search.latency --lut luts/local.csv --subnet max|min|<json>|FILE|budget_*ms.json [--runtime R]
                             [--space NAME] [--calibrated] [--json]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from supernet.space import OFA_MBV3, BlockSpec, SearchSpace, SubnetConfig, get_space, parse_subnet


class MissingKeysError(KeyError):
    """Blocks a subnet needs that the LUT lacks; ``keys`` lists them."""

    def __init__(self, keys: Sequence[str], where: str = "LUT"):
        self.keys = list(dict.fromkeys(keys))
        self.where = where
        super().__init__(self.message())

    def message(self, limit: int = 10) -> str:
        shown = "\n  ".join(self.keys[:limit])
        more = f"\n  ... and {len(self.keys) - limit} more" if len(self.keys) > limit else ""
        return f"{self.where} lacks {len(self.keys)} block(s) the subnet needs:\n  {shown}{more}"

    def __str__(self) -> str:
        return self.message()


class CostModel:
    """Sum of a per-block cost over a subnet's blocks, vectorised over populations."""

    unit = ""
    name = "cost"

    def __init__(self, space: SearchSpace, block_cost: Callable[[BlockSpec, int], float],
                 calibration: tuple[float, float] | None = None, where: str = ""):
        self.space = space
        self._block_cost = block_cost
        self.calibration = calibration
        self.where = where or self.name
        self._tables: dict[tuple[int, float], tuple[float, np.ndarray]] = {}

    # per-block ----------------------------------------------------------------------
    def block_costs(self, cfg: SubnetConfig) -> list[tuple[BlockSpec, float]]:
        """(block, cost) for every block of ``cfg``; raises MissingKeysError."""
        blocks = self.space.blocks(cfg)
        costs, missing = [], []
        for b in blocks:
            try:
                costs.append(self._block_cost(b, cfg.r))
            except KeyError:
                missing.append(str(b))
        if missing:
            raise MissingKeysError(missing, self.where)
        return list(zip(blocks, costs))

    def raw_sum(self, cfg: SubnetConfig) -> float:
        return float(sum(c for _, c in self.block_costs(cfg)))

    def calibrate(self, raw: np.ndarray | float):
        if self.calibration is None:
            return raw
        a, b = self.calibration
        return a * raw + b

    # tables -------------------------------------------------------------------------
    def tables(self, r: int, w: float) -> tuple[float, np.ndarray]:
        """(base, slot) for resolution ``r`` and width ``w``: ``base`` is the cost of the
        fixed blocks, ``slot[i, ki, ei]`` the cost of block slot ``i`` with kernel
        ``space.kernels[ki]`` and expand ``space.expands[ei]`` (uncalibrated)."""
        hit = self._tables.get((r, w))
        if hit is not None:
            return hit
        sp = self.space
        nb, nk, ne = sp.num_blocks, len(sp.kernels), len(sp.expands)
        slot = np.zeros((nb, nk, ne))
        base = 0.0
        missing: list[str] = []
        full_d = (sp.max_depth,) * len(sp.stages)
        for ki, k in enumerate(sp.kernels):
            for ei, x in enumerate(sp.expands):
                blocks = sp._blocks(r, w, (k,) * nb, (x,) * nb, full_d)
                # blocks: first_conv, first block, nb elastic blocks, 4 head blocks
                for i, b in enumerate(blocks):
                    try:
                        c = self._block_cost(b, r)
                    except KeyError:
                        missing.append(str(b))
                        continue
                    if 2 <= i < 2 + nb:
                        slot[i - 2, ki, ei] = c
                    elif ki == 0 and ei == 0:
                        base += c
        if missing:
            raise MissingKeysError(missing, f"{self.where} (r={r}, w={w:g})")
        self._tables[(r, w)] = (base, slot)
        return base, slot

    def cost(self, subnets: Sequence[SubnetConfig], calibrated: bool = True) -> np.ndarray:
        """Cost of every subnet (array), by table sums."""
        sp = self.space
        kidx = {k: i for i, k in enumerate(sp.kernels)}
        eidx = {x: i for i, x in enumerate(sp.expands)}
        out = np.empty(len(subnets))
        groups: dict[tuple[int, float], list[int]] = {}
        for n, cfg in enumerate(subnets):
            groups.setdefault((cfg.r, cfg.w), []).append(n)
        slots = np.arange(sp.num_blocks)
        pos_in_stage = slots % sp.max_depth
        stage_of = slots // sp.max_depth
        for (r, w), idx in groups.items():
            base, slot = self.tables(r, w)
            ks = np.array([[kidx[k] for k in subnets[n].ks] for n in idx])
            es = np.array([[eidx[x] for x in subnets[n].e] for n in idx])
            ds = np.array([subnets[n].d for n in idx])
            active = pos_in_stage[None, :] < ds[:, stage_of]
            per_slot = slot[slots[None, :], ks, es]
            out[idx] = base + (per_slot * active).sum(axis=1)
        return self.calibrate(out) if calibrated else out

    # the name the search uses -----------------------------------------------------------
    def __call__(self, subnets: Sequence[SubnetConfig]) -> np.ndarray:
        return self.cost(subnets)


class LatencyModel(CostModel):
    """LUT latency in ms: sum of LUT rows, optionally calibrated as ``a * sum + b``."""

    unit = "ms"
    name = "latency"

    def __init__(self, space: SearchSpace, table: dict[str, float] | Callable[[int], dict[str, float]],
                 calibration: tuple[float, float] | None = None, where: str = "LUT",
                 runtime: str = "", device: str = ""):
        """``table``: latency by key, or a function of the resolution returning one (for
        LUTs imported per input size)."""
        self._table_for = table if callable(table) else (lambda _r, t=dict(table): t)
        self._by_r: dict[int, dict[str, float]] = {}
        self.runtime = runtime
        self.device = device
        super().__init__(space, self._lookup, calibration, where)

    def _lookup(self, block: BlockSpec, r: int) -> float:
        if r not in self._by_r:
            self._by_r[r] = self._table_for(r)
        return self._by_r[r][str(block)]

    @classmethod
    def from_lut(cls, path: Path | str, space: SearchSpace | None = None, runtime: str | None = None,
                 calibration: tuple[float, float] | str | Path | None = None,
                 stat: str = "median") -> "LatencyModel":
        """Load a LUT CSV.  ``calibration``: (a, b), a calibration JSON path, ``"auto"`` (use
        ``<lut>.calibration.json`` when present and fitted for this runtime), or None."""
        from profiler.lut import LutTable, calibration_path, check_space

        lut = LutTable.load(path)
        check_space(path, (space or OFA_MBV3).name)
        rt = lut.pick_runtime(runtime)
        if calibration == "auto":
            cp = calibration_path(Path(path))
            calibration = None
            if cp.exists():
                try:
                    calibration = read_calibration(cp, rt)
                except ValueError as exc:
                    if "is for runtime" not in str(exc):
                        raise  # a corrupt file is an error; another runtime's is not ours

        elif isinstance(calibration, (str, Path)):
            calibration = read_calibration(Path(calibration), rt)
        return cls(space or OFA_MBV3, lambda r: lut.table(rt, stat, resolution=r), calibration, where=str(path),
                   runtime=rt, device=",".join(lut.devices))

    def latency(self, subnets: Sequence[SubnetConfig]) -> np.ndarray:
        return self.cost(subnets)


def read_calibration(path: Path, runtime: str | None = None) -> tuple[float, float]:
    """(a, b) from a calibration JSON written by ``profiler.validate``."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        a, b = float(data["a"]), float(data["b"])
    except FileNotFoundError:
        raise ValueError(f"{path}: no such calibration file") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: not a calibration file ({exc.__class__.__name__}: {exc})") from None
    if runtime and data.get("runtime") not in (None, runtime):
        raise ValueError(f"{path}: calibration is for runtime {data.get('runtime')!r}, not {runtime!r}")
    if not (math.isfinite(a) and math.isfinite(b)) or not 0 < a <= 1e3 or abs(b) > 1e6:
        raise ValueError(f"{path}: calibration a={a:g}, b={b:g} is not usable (a must be a finite positive "
                         f"slope, b a finite offset in ms)")
    return a, b


class MacsModel(CostModel):
    """Multiply-accumulates in millions (OFA's counting)."""

    unit = "M MACs"
    name = "macs"

    def __init__(self, space: SearchSpace):
        super().__init__(space, lambda b, _r: b.macs() / 1e6, where="MACs")


class ParamsModel(CostModel):
    """Parameters in millions."""

    unit = "M params"
    name = "params"

    def __init__(self, space: SearchSpace):
        super().__init__(space, lambda b, _r: b.params() / 1e6, where="params")


def _unwrap_result(text: str) -> str:
    """A search result file (``search.evolve``'s ``budget_*ms.json``) stands for its subnet."""
    try:
        obj = json.loads(Path(text).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return text
    return json.dumps(obj["subnet"]) if isinstance(obj, dict) and "subnet" in obj else text


def main(argv: list[str] | None = None) -> int:
    from profiler.lut import LutError

    ap = argparse.ArgumentParser(prog="python -m search.latency", description=__doc__.split("\n\n")[0])
    ap.add_argument("--lut", required=True, help="LUT CSV")
    ap.add_argument("--subnet", required=True, help="max, min, a JSON object, a JSON file, or a search result "
                    "(budget_*ms.json)")
    ap.add_argument("--space", default=None, help="search space name (default: ofa_mbv3)")
    ap.add_argument("--runtime", default=None, help="runtime to use when the LUT holds several")
    ap.add_argument("--resolution", type=int, default=None, help="override the subnet's resolution")
    ap.add_argument("--width", type=float, default=None, help="override the subnet's width multiplier")
    ap.add_argument("--calibrated", action="store_true", help="apply <lut>.calibration.json (a*sum+b)")
    ap.add_argument("--stat", choices=["median", "mean"], default="median")
    ap.add_argument("--per-block", action="store_true", help="also list every block's latency")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)
    try:
        space = get_space(args.space) if args.space else OFA_MBV3
        cfg = parse_subnet(_unwrap_result(args.subnet), space, r=args.resolution, w=args.width)
        model = LatencyModel.from_lut(args.lut, space, args.runtime,
                                      calibration="auto" if args.calibrated else None, stat=args.stat)
        if args.calibrated and model.calibration is None:
            raise ValueError(f"{args.lut}: --calibrated given but no calibration file beside it (run profiler.validate)")
        per_block = model.block_costs(cfg)
    except MissingKeysError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (ValueError, LutError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    raw = float(sum(c for _, c in per_block))
    total = float(model.calibrate(raw))
    out = {
        "lut": str(args.lut), "runtime": model.runtime, "device": model.device,
        "subnet": cfg.to_dict(), "latency_ms": round(total, 4), "lut_sum_ms": round(raw, 4),
        "calibration": list(model.calibration) if model.calibration else None,
        "blocks": len(per_block),
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
        print(f"{total:.2f} ms{cal}  [{out['runtime']}, {len(per_block)} blocks, {args.lut}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
