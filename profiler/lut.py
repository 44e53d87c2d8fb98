"""Latency lookup tables: one tidy CSV per device (and runtime), one row per (block key, runtime).

Columns (stable; scripts rely on them): ``COLUMNS`` below.  Statistics are in milliseconds.
``status`` is ``ok`` or ``error`` (a failure is a row with its ``error``, not a crash).

Writing is crash-safe.  Every measurement is first appended, as one JSON line with its raw
samples, to an append-only journal ``<lut>.raw.jsonl`` (flushed and fsynced); the CSV is
rewritten from all rows to a temporary file and renamed over the old one every few seconds
and at the end.  A run killed at any moment therefore loses at most the block it was
measuring (a half-written last journal line is ignored), and a rerun rebuilds the table from
CSV plus journal, keeping the newest row per (key, runtime): no row lost, none duplicated.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from supernet.atomic import Busy, ExclusiveLock, atomic_open, atomic_write_text, lock_path
from supernet.space import PROBE_KINDS, BlockSpec

COLUMNS = [
    "key", "kind", "runtime", "resolution", "status", "median_ms", "mean_ms", "std_ms", "p90_ms", "min_ms",
    "max_ms", "iqr_ms", "count", "noisy", "load_avg", "threads", "runtime_version", "provider", "device",
    "host", "host_cpu", "measured_at", "exporter", "attempts", "source", "error",
    # issue 16: the precision the block ran in (fp32 for rows of LUTs written before it) and,
    # for int8 rows, the quantized block's relative output error against its fp32 model, the
    # bound it had to meet (per block kind) and the inputs its activations were calibrated on
    "precision", "quant_error", "quant_bound", "quant_calibration",
    # issue 11: how the block was timed: "warm" (alone, again and again; rows of LUTs written
    # before read warm) or "round-robin" (in rotation with the others, profiler.run --context)
    "context",
    # how many sweeps over the table timed the block (profiler.measure: the row is the fastest
    # of them; empty in LUTs written before, and for imported rows) and how far apart they were
    # (slowest sweep's median / fastest's - 1)
    "sweeps", "sweep_spread",
    # the median of the timing's quietest stretch of samples (profiler.runner.quiet_median):
    # what the latency model prices (empty in LUTs written before, for imported rows and
    # benchmark_model summaries, which then price from median_ms)
    "quiet_ms",
]
CONTEXTS = ("warm", "round-robin")
# what LutTable.table prices a row by: the columns it reads, the first one a row has
STAT_COLUMNS = {"quiet": ("quiet_ms", "median_ms", "mean_ms"), "median": ("median_ms", "mean_ms"),
                "mean": ("mean_ms", "median_ms")}
STATS = tuple(STAT_COLUMNS)
FLOAT_COLUMNS = ("median_ms", "mean_ms", "std_ms", "p90_ms", "min_ms", "max_ms", "iqr_ms")
OTHER_FLOAT_COLUMNS = ("load_avg", "quant_error", "quant_bound", "sweep_spread", "quiet_ms")
PRECISIONS = ("fp32", "int8")
INT_COLUMNS = ("count", "threads", "attempts", "resolution", "sweeps")
REQUIRED = ("key", "runtime", "status")
TEXT_COLUMNS = tuple(c for c in COLUMNS if c not in FLOAT_COLUMNS + OTHER_FLOAT_COLUMNS + INT_COLUMNS + ("noisy",))
NOISY_IQR_RATIO = 0.10  # torch.utils.benchmark flags IQR/median above 10%


def row_ms(row: dict[str, Any], stat: str = "quiet") -> float:
    """An ``ok`` row's time by ``stat``: the first of ``STAT_COLUMNS[stat]`` the row has."""
    return float(next(row[c] for c in STAT_COLUMNS[stat] if row[c] not in ("", None)))


def finite(v: Any) -> bool:
    """A number that is finite as a float.  JSON and YAML allow integers of any size, which
    ``math.isfinite`` cannot convert (OverflowError): such a number is not finite here."""
    try:
        return math.isfinite(v)
    except OverflowError:
        return False


class LutError(ValueError):
    """A LUT file that cannot be read; the message names the file and line."""


MAX_MS = 1e7  # a block that takes longer than ~3 hours is not a latency


def _num(value: Any, cast, where: str, column: str, hi: float):
    """A non-negative finite number of ``column`` (a CSV string or a journal's JSON value), at
    most ``hi``; None for an empty cell.  Raises LutError."""
    if value == "" or value is None:
        return None
    if isinstance(value, bool):
        raise LutError(f"{where}: column {column} is not a number: {value!r}")
    try:
        x = cast(value) if isinstance(value, str) or cast is float else value
    except (TypeError, ValueError, OverflowError):
        raise LutError(f"{where}: column {column} is not a number: {str(value)[:40]!r}") from None
    if not isinstance(x, (int, float)) or not finite(x) or not 0 <= x <= hi:
        raise LutError(f"{where}: column {column} must be a finite number in [0, {hi:g}], got {str(value)[:40]!r}")
    if cast is int and x != int(x):
        raise LutError(f"{where}: column {column} is not an integer: {str(value)[:40]!r}")
    return cast(x)


def _normalise(row: dict[str, Any], where: str) -> dict[str, Any]:
    """Validate one row (from CSV text or the journal) and return it with typed values."""
    for col in REQUIRED:
        if not row.get(col):
            raise LutError(f"{where}: missing {col}")
    try:
        spec = BlockSpec.parse(str(row["key"]))
    except ValueError as exc:
        raise LutError(f"{where}: {exc}") from None
    out: dict[str, Any] = {c: row.get(c, "") for c in COLUMNS}
    for c in TEXT_COLUMNS:
        if not isinstance(out[c], str):
            raise LutError(f"{where}: column {c} is not text: {str(out[c])[:40]!r}")
    out["key"] = str(spec)
    out["kind"] = spec.kind
    for c in FLOAT_COLUMNS + OTHER_FLOAT_COLUMNS:
        out[c] = _num(row.get(c, ""), float, where, c, MAX_MS)
    for c in INT_COLUMNS:
        out[c] = _num(row.get(c, ""), int, where, c, 1e9)
    out["precision"] = out["precision"] or "fp32"
    if out["precision"] not in PRECISIONS:
        raise LutError(f"{where}: precision must be one of {', '.join(PRECISIONS)}, got {out['precision'][:40]!r}")
    out["context"] = out["context"] or "warm"
    if out["context"] not in CONTEXTS:
        raise LutError(f"{where}: context must be one of {', '.join(CONTEXTS)}, got {out['context'][:40]!r}")
    if out["status"] not in ("ok", "error"):
        raise LutError(f"{where}: status must be ok or error, got {out['status']!r}")
    if out["status"] == "ok" and out["median_ms"] is None and out["mean_ms"] is None:
        raise LutError(f"{where}: an ok row needs median_ms or mean_ms")
    noisy = row.get("noisy", "")
    out["noisy"] = noisy if isinstance(noisy, bool) else str(noisy).lower() in ("1", "true", "yes")
    for c in COLUMNS:
        if out[c] is None:
            out[c] = ""
    return out


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of a LUT CSV; raises LutError naming the file and line on anything malformed."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise LutError(f"{path}: no such LUT file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise LutError(f"{path}: cannot read LUT: {exc}") from None
    reader = csv.DictReader(io.StringIO(text))
    header = reader.fieldnames or []
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise LutError(f"{path}:1: not a LUT CSV (header lacks {', '.join(missing)})")
    rows, seen = [], {}
    try:
        for raw in reader:
            where = f"{path}:{reader.line_num}"
            if None in raw or any(v is None for v in raw.values()):
                raise LutError(f"{where}: wrong number of fields")
            row = _normalise(raw, where)
            first = seen.setdefault(row_id(row), reader.line_num)
            if first != reader.line_num:
                raise LutError(f"{where}: duplicate row for key {row['key']} ({row['runtime']}, {row['precision']}"
                               f"{', r=' + str(row['resolution']) if row['resolution'] != '' else ''}), "
                               f"first on line {first}")
            rows.append(row)
    except csv.Error as exc:
        raise LutError(f"{path}:{reader.line_num}: malformed CSV: {exc}") from None
    return rows


def _format(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return f"{value:.6g}"
    return "" if value is None else str(value)


def write_rows_atomic(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    """Write rows as CSV, atomically (``supernet.atomic``)."""
    with atomic_open(path, "w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(COLUMNS)
        for r in rows:
            w.writerow([_format(r.get(c, "")) for c in COLUMNS])


def lut_sibling(lut_path: Path, suffix: str) -> Path:
    """A file beside a LUT: ``luts/local.csv`` + ``.raw.jsonl`` -> ``luts/local.raw.jsonl``."""
    p = Path(lut_path)
    stem = p.name[: -len(".csv")] if p.name.endswith(".csv") else p.name
    return p.with_name(stem + suffix)


def journal_path(lut_path: Path) -> Path:
    return lut_sibling(lut_path, ".raw.jsonl")


def calibration_path(lut_path: Path) -> Path:
    return lut_sibling(lut_path, ".calibration.json")


def space_path(lut_path: Path) -> Path:
    """Where a LUT records the search space(s) its blocks belong to: ``<lut>.space.json``."""
    return lut_sibling(lut_path, ".space.json")


def lut_spaces(lut_path: Path) -> list[str]:
    """The spaces recorded beside a LUT (empty when nothing is recorded).  Raises LutError."""
    p = space_path(lut_path)
    if not p.is_file():
        return []
    try:
        spaces = json.loads(p.read_text())["spaces"]
        if not isinstance(spaces, list) or not all(isinstance(s, str) for s in spaces):
            raise TypeError("'spaces' is not a list of names")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise LutError(f"{p}: not a space record ({exc.__class__.__name__}: {exc})") from None
    return spaces


def record_space(lut_path: Path, space: str, keep: bool = True) -> None:
    """Add ``space`` to the spaces recorded beside a LUT (``keep=False``: replace them)."""
    spaces = lut_spaces(lut_path) if keep else []
    if space not in spaces:
        atomic_write_text(space_path(lut_path), json.dumps({"spaces": spaces + [space]}) + "\n")


def check_space(lut_path: Path, space: str) -> None:
    """Raise LutError (one line) when the LUT records spaces and ``space`` is not one of them."""
    spaces = lut_spaces(lut_path)
    if spaces and space not in spaces:
        raise LutError(f"{lut_path}: a LUT of space {', '.join(spaces)} (recorded in {space_path(lut_path)}), "
                       f"not of {space}: use --space {spaces[0]}, or a LUT measured for {space}")


def read_journal(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows of a journal and warnings.  Every record ends with a newline, so trailing text
    without one is a torn write (a kill mid-line): it is dropped with a warning and that
    block is measured again.  A malformed complete line is an error."""
    rows: list[dict[str, Any]] = []
    warnings: list[str] = []
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return rows, warnings
    except (OSError, UnicodeDecodeError) as exc:
        raise LutError(f"{path}: cannot read journal: {exc}") from None
    lines = text.split("\n")
    if lines[-1].strip():
        warnings.append(f"{path}:{len(lines)}: ignoring a torn last line (interrupted write); that block is measured again")
    for i, line in enumerate(lines[:-1]):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            if not isinstance(obj, dict):
                raise ValueError("not a JSON object")
            rows.append(_normalise(obj, f"{path}:{i + 1}"))
        except (ValueError, LutError) as exc:
            raise LutError(f"{path}:{i + 1}: malformed journal line: {exc}") from None
    return rows, warnings


def drop_torn_tail(path: Path) -> None:
    """Truncate an append-only file (a journal) after its last complete line."""
    with open(path, "rb+") as fh:
        data = fh.read()
        if data and not data.endswith(b"\n"):
            fh.truncate(data.rfind(b"\n") + 1)


def _newer(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return str(a.get("measured_at", "")) >= str(b.get("measured_at", ""))


def row_id(row: dict[str, Any]) -> tuple[str, str, Any, str]:
    """Rows are unique per (key, runtime, resolution, precision).  ``resolution`` is empty for
    measured rows (a block's cost does not depend on the network it sits in); imported
    per-resolution tables (OFA publishes one file per input size) tag each row with its
    table's size, since the same head block appears, measured separately, in every file.
    ``precision`` is fp32 or int8 (empty, in a LUT written before int8 tables, reads fp32)."""
    return row["key"], row["runtime"], row.get("resolution", ""), row.get("precision") or "fp32"


@dataclass
class LutTable:
    """A LUT in memory: rows by ``row_id`` (key, runtime, resolution, precision)."""

    path: Path | None = None
    rows: dict[tuple[str, str, Any, str], dict[str, Any]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, path: Path | str, with_journal: bool = True) -> "LutTable":
        """Read a LUT CSV (and its journal, if any).  Raises LutError naming file and line."""
        path = Path(path)
        table = cls(path=path)
        jp = journal_path(path)
        if not path.exists() and not (with_journal and jp.exists()):
            raise LutError(f"{path}: no such LUT file")
        if path.exists():
            for r in read_rows(path):
                table._merge(r)
        if with_journal and jp.exists():
            rows, warnings = read_journal(jp)
            table.warnings += warnings
            for r in rows:
                table._merge(r)
        return table

    def _merge(self, row: dict[str, Any]) -> None:
        rid = row_id(row)
        old = self.rows.get(rid)
        if old is None or _newer(row, old):
            self.rows[rid] = row

    # queries -------------------------------------------------------------------------
    @property
    def runtimes(self) -> list[str]:
        return sorted({rt for _, rt, _, _ in self.rows})

    def precisions(self, runtime: str | None = None) -> list[str]:
        """Precisions with rows (of ``runtime``, or of any), fp32 first."""
        have = {p for _, rt, _, p in self.rows if runtime is None or rt == runtime}
        return [p for p in PRECISIONS if p in have]

    def block_context(self, runtime: str, precision: str = "fp32") -> str:
        """How the ``ok`` block rows of ``runtime`` and ``precision`` were timed (probes aside):
        ``warm``, ``round-robin``, or ``mixed`` (a partial run in the other context)."""
        seen = {r["context"] for (_k, rt, _res, prec), r in self.rows.items()
                if rt == runtime and prec == precision and r["status"] == "ok"
                and r.get("kind") not in PROBE_KINDS}
        return seen.pop() if len(seen) == 1 else ("mixed" if seen else "warm")

    @property
    def devices(self) -> list[str]:
        return sorted({r["device"] for r in self.rows.values() if r.get("device")})

    def ok(self, key: str, runtime: str, precision: str = "fp32") -> bool:
        r = self.rows.get((key, runtime, "", precision))
        return r is not None and r["status"] == "ok"

    def get(self, key: str, runtime: str, precision: str = "fp32") -> dict[str, Any] | None:
        return self.rows.get((key, runtime, "", precision))

    def pick_runtime(self, runtime: str | None = None) -> str:
        rts = self.runtimes
        if runtime is None:
            if len(rts) == 1:
                return rts[0]
            where = self.path or "LUT"
            if not rts:
                raise LutError(f"{where}: the LUT has no rows")
            raise LutError(f"{where}: the LUT holds several runtimes ({', '.join(rts)}); choose one with --runtime")
        if runtime not in rts:
            raise LutError(f"{self.path or 'LUT'}: no rows for runtime {runtime!r} (has: {', '.join(rts) or 'none'})")
        return runtime

    def check_precision(self, runtime: str, precision: str) -> None:
        """Raise LutError (one line) when the LUT has no rows of ``precision`` for ``runtime``."""
        if precision not in PRECISIONS:
            raise LutError(f"unknown precision {precision!r} (known: {', '.join(PRECISIONS)})")
        have = self.precisions(runtime)
        if precision not in have:
            hint = (f"profile it with python -m profiler.run --runtime {runtime} --precision {precision}"
                    if precision == "int8" else "")
            raise LutError(f"{self.path or 'LUT'}: no {precision} rows for runtime {runtime} "
                           f"(has: {', '.join(have) or 'none'}){': ' + hint if hint else ''}")

    def table(self, runtime: str | None = None, stat: str = "quiet",
              resolution: int | None = None, precision: str = "fp32") -> dict[str, float]:
        """Latency in ms by block key, from the ``ok`` rows of one runtime and one precision
        (never another's: an int8 table prices from int8 rows only).

        ``stat``: ``quiet`` (the median of the timing's quietest stretch, ``quiet_ms``; the
        median for rows without one: LUTs written before it, benchmark_model summaries),
        ``median`` (falling back to the mean for rows without one, as in imported OFA
        tables) or ``mean``.  ``resolution``: for tables imported per input size, prefer rows
        of that size, then untagged rows, then the nearest size."""
        if stat not in STATS:
            raise LutError(f"unknown statistic {stat!r} (known: {', '.join(STATS)})")
        rt = self.pick_runtime(runtime)
        best: dict[str, tuple[tuple[int, int], float]] = {}
        for (key, r_rt, res, prec), row in self.rows.items():
            if r_rt != rt or prec != precision or row["status"] != "ok":
                continue
            if res == "":
                rank = (1, 0)
            elif resolution is not None and res == resolution:
                rank = (0, 0)
            else:
                rank = (2, abs(res - resolution) if resolution is not None else res)
            if key not in best or rank < best[key][0]:
                best[key] = (rank, row_ms(row, stat))
        return {k: v for k, (_, v) in best.items()}

    def sorted_rows(self) -> list[dict[str, Any]]:
        return [self.rows[k] for k in sorted(self.rows, key=lambda k: (k[1], k[3], k[0], str(k[2])))]


class LutWriter:
    """Crash-safe, resumable writer for one LUT file (see the module docstring)."""

    def __init__(self, path: Path | str, flush_every_s: float = 5.0):
        self.path = Path(path)
        self.journal = journal_path(self.path)
        self.flush_every_s = flush_every_s
        self._last_flush = time.monotonic()
        self._dirty = False
        parent = self.path.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise LutError(f"{parent}: cannot create the LUT folder: {exc.strerror}") from None
        if not os.access(parent, os.W_OK):
            raise LutError(f"{parent}: the LUT folder is not writable")
        if self.path.exists() and not os.access(self.path, os.W_OK):
            raise LutError(f"{self.path}: the LUT file is not writable")
        try:  # one writer at a time: two runs appending to one journal would lose rows
            self._lock = ExclusiveLock(lock_path(self.path), f"LUT {self.path}")
        except Busy as exc:
            raise LutError(str(exc)) from None
        try:
            if self.path.exists() or self.journal.exists():
                self.table = LutTable.load(self.path)
            else:
                self.table = LutTable(path=self.path)
            if self.journal.exists():
                drop_torn_tail(self.journal)
            self._fh = open(self.journal, "a", encoding="utf-8")
        except BaseException:
            self._lock.close()
            raise

    def add(self, row: dict[str, Any], samples: list[float] | None = None) -> dict[str, Any]:
        """Record one measurement (or failure).  Returns the normalised row."""
        norm = _normalise(row, f"{self.path} (new row)")
        record = dict(norm)
        if samples is not None:
            record["samples_ms"] = [round(s, 6) for s in samples]
        self._fh.write(json.dumps(record) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self.table._merge(norm)
        self._dirty = True
        if time.monotonic() - self._last_flush >= self.flush_every_s:
            self.flush()
        return norm

    def flush(self) -> None:
        if self._dirty:
            write_rows_atomic(self.path, self.table.sorted_rows())
            self._dirty = False
        self._last_flush = time.monotonic()

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self._fh.close()
            self._lock.close()

    def __enter__(self) -> "LutWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def stats_row(key: str, runtime: str, reply: dict[str, Any], context: dict[str, Any]) -> dict[str, Any]:
    """A LUT row from a validated runner reply and the run context."""
    row = {c: "" for c in COLUMNS}
    row.update(context)
    row.update({
        "key": key,
        "runtime": runtime,
        "status": "ok",
        "runtime_version": reply.get("runtime_version", ""),
        "provider": reply.get("provider", ""),
        "threads": reply.get("threads", context.get("threads", "")),
    })
    for c in FLOAT_COLUMNS + ("count",):
        row[c] = reply[c]
    row["quiet_ms"] = reply.get("quiet_ms", "")
    row["noisy"] = reply["median_ms"] > 0 and reply["iqr_ms"] / reply["median_ms"] > NOISY_IQR_RATIO
    if reply.get("load_avg") is not None:
        row["load_avg"] = reply["load_avg"]
    return row


def error_row(key: str, runtime: str, error: str, context: dict[str, Any]) -> dict[str, Any]:
    row = {c: "" for c in COLUMNS}
    row.update(context)
    row.update({"key": key, "runtime": runtime, "status": "error", "error": error.replace("\n", " ")[:1000]})
    return row
