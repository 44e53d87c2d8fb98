"""Cost models over ``space.blocks(subnet)``: LUT latency (optionally calibrated), MACs, params.

The one latency model of hwnas: ``profiler.validate`` checks it against whole networks,
``search.latency`` prints it, ``search.evolve`` and ``search.proxyless`` search with it.  It
lives here, below both, so that nothing in ``profiler/`` imports ``search/``.

A subnet's cost is the sum of its blocks' costs.  Every elastic block slot's shape depends
only on the resolution, the width multiplier and its own (kernel, expand), so the cost of a
whole population is ``base(r, w) + sum over active slots of slot[slot, kernel, expand]``:
``tables(r, w)`` gives those arrays and ``cost`` evaluates a population with array sums.

**Invocation overhead.**  Each LUT row is one block run on its own, so it carries one
runtime invocation (the call, the input copy in, the output fetch) that a whole network pays
once.  At 32 px a block costs tens of microseconds and that share is large.  The profiler
measures, beside the blocks, an ``overhead`` probe at every input shape
(``supernet.space.overhead_probe``: one ReLU from the shape to itself); when the LUT has
probe rows for its runtime the latency model prices a block as ``LUT(block) -
LUT(probe(block's input))`` and adds the network input's probe once.  LUTs without probe rows
(imported tables, older LUTs) are summed as they are; ``overhead=False`` forces that.

**Calibration** (``profiler.validate`` fits it): ``measured ~ a * sum + b`` per runtime (and
precision: an int8 fit is recorded as ``<runtime>-int8``), in ``<lut>.calibration.json``,
recorded with whether the sums it was fitted on used the overhead model (a calibration only
applies to the same kind of sum).

**Precision** (issue 16): a model prices one precision from that precision's rows only
(``precision="int8"``: the LUT's int8 rows and int8 overhead probes; a block without an int8
row is a missing key, never priced from its fp32 row).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from supernet.space import OFA_MBV3, BlockSpec, SearchSpace, SubnetConfig, overhead_probe


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


def _missing_key(exc: KeyError, block: BlockSpec) -> str:
    """The key a lookup missed (a block's or its overhead probe's)."""
    return exc.args[0] if exc.args and isinstance(exc.args[0], str) else str(block)


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

    def network_cost(self, first: BlockSpec, r: int) -> float:
        """What a whole network pays once beyond its blocks (``first``: its first block)."""
        return 0.0

    # per-block ----------------------------------------------------------------------
    def block_costs(self, cfg: SubnetConfig) -> list[tuple[BlockSpec, float]]:
        """(block, cost) for every block of ``cfg``; raises MissingKeysError."""
        blocks = self.space.blocks(cfg)
        costs, missing = [], []
        for b in blocks:
            try:
                costs.append(self._block_cost(b, cfg.r))
            except KeyError as exc:
                missing.append(_missing_key(exc, b))
        if missing:
            raise MissingKeysError(missing, self.where)
        return list(zip(blocks, costs))

    def raw_sum(self, cfg: SubnetConfig) -> float:
        """The uncalibrated cost: the blocks' costs and the once-per-network part."""
        return self.sum_of(self.block_costs(cfg), cfg.r)

    def sum_of(self, per_block: list[tuple[BlockSpec, float]], r: int) -> float:
        """The uncalibrated cost of a network from its ``block_costs``: their sum and the
        once-per-network part; raises MissingKeysError."""
        try:
            extra = self.network_cost(per_block[0][0], r)
        except KeyError as exc:
            raise MissingKeysError([_missing_key(exc, per_block[0][0])], self.where) from None
        return float(sum(c for _, c in per_block) + extra)

    def calibrate(self, raw: np.ndarray | float):
        if self.calibration is None:
            return raw
        a, b = self.calibration
        return a * raw + b

    # tables -------------------------------------------------------------------------
    def tables(self, r: int, w: float) -> tuple[float, np.ndarray]:
        """(base, slot) for resolution ``r`` and width ``w``: ``base`` is the cost of the
        fixed blocks and of the network's once-only part, ``slot[i, ki, ei]`` the cost of
        block slot ``i`` with kernel ``space.kernels[ki]`` and expand ``space.expands[ei]``
        (uncalibrated)."""
        hit = self._tables.get((r, w))
        if hit is not None:
            return hit
        sp = self.space
        nb, nk, ne = sp.num_blocks, len(sp.kernels), len(sp.expands)
        slot = np.zeros((nb, nk, ne))
        base = 0.0
        missing: list[str] = []
        full_d = sp.full_depths  # slots a stage can never reach stay at cost 0
        for ki, k in enumerate(sp.kernels):
            for ei, x in enumerate(sp.expands):
                blocks = sp._blocks(r, w, (k,) * nb, (x,) * nb, full_d)
                # blocks: first_conv, first block, the reachable elastic slots, the head
                slots = [i * sp.max_depth + j for i, d in enumerate(full_d) for j in range(d)]
                for i, b in enumerate(blocks):
                    try:
                        c = self._block_cost(b, r)
                    except KeyError as exc:
                        missing.append(_missing_key(exc, b))
                        continue
                    if 2 <= i < 2 + len(slots):
                        slot[slots[i - 2], ki, ei] = c
                    elif ki == 0 and ei == 0:
                        base += c
                if ki == 0 and ei == 0:
                    try:
                        base += self.network_cost(blocks[0], r)
                    except KeyError as exc:
                        missing.append(_missing_key(exc, blocks[0]))
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


def has_overhead_rows(table: dict[str, float]) -> bool:
    return any(k.startswith("overhead-") for k in table)


class LatencyModel(CostModel):
    """LUT latency in ms: the sum of the blocks' LUT rows, less one invocation overhead per
    block plus one per network when the LUT has overhead probes (``overhead``), optionally
    calibrated as ``a * sum + b``."""

    unit = "ms"
    name = "latency"

    def __init__(self, space: SearchSpace, table: dict[str, float] | Callable[[int], dict[str, float]],
                 calibration: tuple[float, float] | None = None, where: str = "LUT",
                 runtime: str = "", device: str = "", overhead: bool = True, precision: str = "fp32"):
        """``table``: latency by key, or a function of the resolution returning one (for
        LUTs imported per input size).  ``overhead``: use the LUT's overhead probes when it
        has them (False: sum the rows as they are)."""
        self._table_for = table if callable(table) else (lambda _r, t=dict(table): t)
        self._by_r: dict[int, tuple[dict[str, float], bool]] = {}
        self.runtime = runtime
        self.device = device
        self.precision = precision
        self.overhead_requested = overhead
        self.calibration_skipped = ""  # from_lut(calibration="auto"): why the file beside the LUT was not applied
        super().__init__(space, self._lookup, calibration, where)

    def _table(self, r: int) -> tuple[dict[str, float], bool]:
        hit = self._by_r.get(r)
        if hit is None:
            t = self._table_for(r)
            hit = self._by_r[r] = (t, self.overhead_requested and has_overhead_rows(t))
        return hit

    def uses_overhead(self, r: int | None = None) -> bool:
        """Whether sums at resolution ``r`` (default: the space's largest) subtract the
        per-block invocation overhead."""
        return self._table(self.space.resolutions[-1] if r is None else r)[1]

    def _lookup(self, block: BlockSpec, r: int) -> float:
        t, use = self._table(r)
        value = t[str(block)]
        return value - t[str(overhead_probe(block))] if use else value

    def network_cost(self, first: BlockSpec, r: int) -> float:
        t, use = self._table(r)
        return t[str(overhead_probe(first))] if use else 0.0

    @classmethod
    def from_lut(cls, path: Path | str, space: SearchSpace | None = None, runtime: str | None = None,
                 calibration: tuple[float, float] | str | Path | None = None,
                 stat: str = "median", overhead: bool = True, precision: str = "fp32") -> "LatencyModel":
        """Load a LUT CSV.  ``calibration``: (a, b), a calibration JSON path, ``"auto"`` (use
        ``<lut>.calibration.json`` when present and fitted for this runtime, precision and
        kind of sum; why one was not applied is then in ``calibration_skipped``), or None.
        ``precision``: price from the LUT's rows of that precision only (LutError when it
        has none for the runtime)."""
        from .lut import LutTable, calibration_path, check_space

        lut = LutTable.load(path)
        check_space(path, (space or OFA_MBV3).name)
        rt = lut.pick_runtime(runtime)
        lut.check_precision(rt, precision)
        model = cls(space or OFA_MBV3, lambda r: lut.table(rt, stat, resolution=r, precision=precision), None,
                    where=str(path) if precision == "fp32" else f"{path} ({precision} rows)",
                    runtime=rt, device=",".join(lut.devices), overhead=overhead, precision=precision)
        use = model.uses_overhead()
        key = calibration_key(rt, precision)
        if calibration == "auto":
            cp = calibration_path(Path(path))
            if cp.exists():
                try:
                    model.calibration = read_calibration(cp, key, overhead=use)
                except CalibrationMismatch as exc:  # another runtime's, or the other kind of sum
                    model.calibration_skipped = str(exc)
        elif isinstance(calibration, (str, Path)):
            model.calibration = read_calibration(Path(calibration), key, overhead=use)
        else:
            model.calibration = calibration
        return model

    def latency(self, subnets: Sequence[SubnetConfig]) -> np.ndarray:
        return self.cost(subnets)


def calibration_key(runtime: str, precision: str = "fp32") -> str:
    """The entry of a calibration file for ``runtime`` in ``precision``: the runtime's name
    for fp32 (as files written before int8 tables have it), ``<runtime>-int8`` for int8."""
    return runtime if precision == "fp32" else f"{runtime}-{precision}"


class CalibrationMismatch(ValueError):
    """A calibration file fitted for another runtime or another kind of sum."""


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
    except FileNotFoundError:
        raise ValueError(f"{path}: no such calibration file") from None
    except (OSError, ValueError, RecursionError) as exc:
        raise ValueError(f"{path}: not a calibration file ({exc.__class__.__name__}: {exc})") from None
    return data


def calibration_entries(path: Path) -> dict[str, dict[str, Any]]:
    """Calibrations by runtime from a calibration JSON: ``{"runtimes": {rt: {a, b, ...}}}``,
    or the one-runtime form ``{a, b, runtime}`` of earlier versions."""
    data = _read_json(path)
    if "runtimes" in data:
        entries = data["runtimes"]
        if not isinstance(entries, dict) or not all(isinstance(v, dict) for v in entries.values()):
            raise ValueError(f"{path}: not a calibration file ('runtimes' is not a mapping of runtimes)")
        return dict(entries)
    return {str(data.get("runtime") or ""): data}


def read_calibration(path: Path, runtime: str | None = None, overhead: bool | None = None) -> tuple[float, float]:
    """(a, b) from a calibration JSON written by ``profiler.validate``.  Raises
    CalibrationMismatch when it holds nothing for ``runtime`` or was fitted on sums with (or
    without) the overhead model where ``overhead`` says otherwise; ValueError when corrupt."""
    entries = calibration_entries(path)
    if runtime and runtime in entries:
        data = entries[runtime]
    elif "" in entries and len(entries) == 1 and not (runtime or "").endswith("-int8"):  # an old file that names no runtime
        data = entries[""]
    elif not runtime and len(entries) == 1:
        data = next(iter(entries.values()))
    else:
        raise CalibrationMismatch(f"{path}: calibration is for runtime {', '.join(map(repr, entries))}, "
                                  f"not {runtime!r}")
    try:
        a, b = float(data["a"]), float(data["b"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path}: not a calibration file ({exc.__class__.__name__}: {exc})") from None
    if not (math.isfinite(a) and math.isfinite(b)) or not 0 < a <= 1e3 or abs(b) > 1e6:
        raise ValueError(f"{path}: calibration a={a:g}, b={b:g} is not usable (a must be a finite positive "
                         f"slope, b a finite offset in ms)")
    fitted = bool(data.get("overhead", False))
    if overhead is not None and fitted != overhead:
        raise CalibrationMismatch(
            f"{path}: calibration for {runtime or 'this runtime'} was fitted on LUT sums "
            f"{'with' if fitted else 'without'} the overhead model, and these sums are "
            f"{'with' if overhead else 'without'} it: run profiler.validate again")
    return a, b


def write_calibration(path: Path, runtime: str, entry: dict[str, Any]) -> None:
    """Record ``runtime``'s calibration in ``path``, keeping the other runtimes' entries
    (atomically)."""
    from supernet.atomic import atomic_write_text

    entries: dict[str, dict[str, Any]] = {}
    if Path(path).is_file():
        try:
            entries = {k: v for k, v in calibration_entries(path).items() if k}
        except ValueError:
            entries = {}  # a corrupt file is replaced by the fit just made
    entries[runtime] = dict(entry, runtime=runtime)
    atomic_write_text(path, json.dumps({"runtimes": entries}, indent=2) + "\n")


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


__all__ = ["CalibrationMismatch", "CostModel", "LatencyModel", "MacsModel", "MissingKeysError", "ParamsModel",
           "calibration_entries", "calibration_key", "has_overhead_rows", "read_calibration", "write_calibration"]
