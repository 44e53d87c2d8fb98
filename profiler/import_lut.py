"""Import published latency LUTs (OFA, ProxylessNAS YAML) into hwnas LUT CSV.

    python -m profiler.import_lut --format ofa tests/data/ofa/note10/*.yaml --out luts/note10.csv
    python -m profiler.import_lut --format proxyless tests/data/proxylessnas/mobile_trim.yaml \
        --out luts/proxyless_mobile.csv

The space the tables belong to is recorded beside the output (``<out>.space.json``; ``--space``,
by default ``ofa_mbv3`` for OFA's tables and ``proxyless_mobile`` for ProxylessNAS's).

Key formats (``luts/README.md``)::

    Conv-input:224x224x3-output:112x112x24
    expanded_conv-input:112x112x24-output:56x56x32-expand:144-kernel:3-stride:2-idskip:0-se:0-hs:0
    Conv_1-input:7x7x192-output:7x7x1152
    AvgPool2D-input:7x7x1152-output:1x1x1152
    Conv_2-input:1x1x1152-output:1x1x1536
    Logits-input:1x1x1536-output:1000

OFA: ``expand`` is the number of middle channels, ``idskip`` a residual, ``se``
squeeze-excite, ``hs`` h-swish (else ReLU); the stem and head are those of the OFA
MobileNetV3 space.  ProxylessNAS: ``expand`` is the ratio, activations are ReLU6, there is no
SE, and ``Logits-input:7x7x1280`` covers pooling and the classifier (imported as a classifier
row carrying the whole time and a pool row of 0 ms that says so).  OFA and ProxylessNAS
publish mean (and std or variance) over ``count`` runs: the rows have ``mean_ms``, ``std_ms``
and ``count``, no median, and the latency model falls back to the mean for them.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from supernet.safeyaml import load_unique, yaml_error_line
from supernet.space import BlockSpec

from .lut import COLUMNS, MAX_MS, LutError, finite, journal_path, record_space, write_rows_atomic

_SHAPE = r"(\d+)x(\d+)x(\d+)"
_CONV = re.compile(rf"^(Conv|Conv_1|Conv_2|AvgPool2D)-input:{_SHAPE}-output:{_SHAPE}$")
_LOGITS = re.compile(rf"^Logits-input:{_SHAPE}-output:(\d+)$")
_MB_OFA = re.compile(
    rf"^expanded_conv-input:{_SHAPE}-output:{_SHAPE}-expand:(\d+)-kernel:(\d+)-stride:(\d+)"
    r"-idskip:([01])-se:([01])-hs:([01])$"
)
_MB_PROXYLESS = re.compile(
    rf"^expanded_conv-input:{_SHAPE}-output:{_SHAPE}-expand:(\d+(?:\.\d+)?)-kernel:(\d+)-stride:(\d+)-idskip:([01])$"
)


SPACE_OF_FORMAT = {"ofa": "ofa_mbv3", "proxyless": "proxyless_mobile"}


def _spec(kind: str, i: tuple[str, ...], o: tuple[str, ...], **kw: Any) -> BlockSpec:
    ih, iw, ic = map(int, i)
    oh, ow, oc = map(int, o)
    return BlockSpec(kind, ih, iw, ic, oh, ow, oc, **kw)


def map_key(key: str, fmt: str) -> list[tuple[BlockSpec, float]]:
    """Our BlockSpecs for one published key, each with the share of the key's latency it
    carries (1.0, or 0.0 for ProxylessNAS's pool folded into Logits).  Raises ValueError."""
    act = "relu6" if fmt == "proxyless" else "hswish"
    m = _CONV.match(key)
    if m:
        name, i, o = m.group(1), m.groups()[1:4], m.groups()[4:7]
        if name == "Conv":
            return [(_spec("first_conv", i, o, kernel=3, stride=2, act=act), 1.0)]
        if name == "Conv_1":
            return [(_spec("final_expand", i, o, act=act), 1.0)]
        if name == "Conv_2":
            return [(_spec("feature_mix", i, o, act=act), 1.0)]
        return [(_spec("pool", i, o), 1.0)]
    m = _LOGITS.match(key)
    if m:
        ih, iw, ic, n = m.groups()
        classifier = _spec("classifier", ("1", "1", ic), ("1", "1", n))
        if fmt == "proxyless" or (ih, iw) != ("1", "1"):
            return [(_spec("pool", (ih, iw, ic), ("1", "1", ic)), 0.0), (classifier, 1.0)]
        return [(classifier, 1.0)]
    if fmt == "ofa":
        m = _MB_OFA.match(key)
        if m:
            g = m.groups()
            return [(_spec("mbconv", g[0:3], g[3:6], mid=int(g[6]), kernel=int(g[7]), stride=int(g[8]),
                           residual=g[9] == "1", se=g[10] == "1", act="hswish" if g[11] == "1" else "relu"), 1.0)]
    else:
        m = _MB_PROXYLESS.match(key)
        if m:
            g = m.groups()
            in_c = int(g[2])
            return [(_spec("mbconv", g[0:3], g[3:6], mid=round(in_c * float(g[6])), kernel=int(g[7]),
                           stride=int(g[8]), residual=g[9] == "1", act="relu6"), 1.0)]
    raise ValueError(f"unrecognised {fmt} LUT key {key!r}")


def read_published(path: Path, fmt: str) -> dict[str, dict[str, float]]:
    try:
        data = load_unique(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LutError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise LutError(f"{path}: not a readable YAML LUT: {exc}") from None
    except yaml.YAMLError as exc:
        line, problem = yaml_error_line(exc)
        raise LutError(f"{path}{line}: not a readable YAML LUT: {problem}") from None
    if not isinstance(data, dict) or not data:
        raise LutError(f"{path}: expected a mapping of block keys to statistics")
    return data


def import_files(files: list[Path], fmt: str, device: str, runtime: str) -> list[dict[str, Any]]:
    """Rows in our LUT format for every entry of ``files``."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    given: dict[tuple[str, str], str] = {}  # row id -> the published entry that gave its time
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    tagged = len(files) > 1
    for path in files:
        data = read_published(path, fmt)
        resolution = _table_resolution(path, data) if tagged else ""
        for key, stats in data.items():
            where = f"{path}: entry {key!r}"
            if not isinstance(stats, dict) or "mean" not in stats:
                raise LutError(f"{where}: expected count and mean statistics")
            mean = _stat(stats, "mean", where)
            count = int(_stat(stats, "count", where, integer=True) or 0)
            std = _stat(stats, "std", where)
            if std is None:
                var = _stat(stats, "var", where)
                std = math.sqrt(var) if var is not None else None
            try:
                mapped = map_key(str(key), fmt)
            except ValueError as exc:
                raise LutError(f"{path}: {exc}") from None
            for spec, share in mapped:
                row = {c: "" for c in COLUMNS}
                row.update({
                    "key": str(spec), "kind": spec.kind, "runtime": runtime, "status": "ok",
                    "resolution": resolution,
                    "mean_ms": mean * share, "std_ms": (std * share) if std is not None else "",
                    "count": count, "device": device, "measured_at": now, "noisy": False, "precision": "fp32",
                    "source": f"{fmt}:{Path(path).name}:{key}" + ("" if share else " (time in classifier row)"),
                })
                rid = (row["key"], runtime, resolution)
                if rid in rows and share == 0.0:
                    continue
                if rid in given:
                    raise LutError(f"{where}: a duplicate: maps onto block {row['key']}, which {given[rid]} "
                                   f"already gives")
                if share:
                    given[rid] = f"entry {key!r} of {path}"
                rows[rid] = row
    return [rows[k] for k in sorted(rows, key=lambda k: (k[0], str(k[2])))]


def _stat(stats: dict[str, Any], name: str, where: str, integer: bool = False) -> float | None:
    """A published statistic: a finite, non-negative number (None when absent)."""
    if name not in stats or (stats[name] is None and name != "mean"):
        return None
    v = stats[name]
    ok = isinstance(v, int) if integer else isinstance(v, (int, float))
    if not ok or isinstance(v, bool) or not finite(v) or v < 0 or v > MAX_MS:
        raise LutError(f"{where}: {name} must be a finite, non-negative {'integer' if integer else 'number'}, "
                       f"got {str(v)[:40]!r}")
    return float(v)


def _table_resolution(path: Path, data: dict[str, Any]) -> int:
    """The input size a published table was measured at: its first conv's input height."""
    for key in data:
        m = re.match(r"^Conv-input:(\d+)x\d+x\d+-", str(key))
        if m:
            return int(m.group(1))
    raise LutError(f"{path}: no Conv-input entry to tell the table's resolution (needed when importing several tables)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m profiler.import_lut", description=__doc__.split("\n\n")[0])
    ap.add_argument("--format", required=True, choices=["ofa", "proxyless"])
    ap.add_argument("files", nargs="+", type=Path, help="published YAML lookup tables")
    ap.add_argument("--out", required=True, type=Path, help="LUT CSV to write (e.g. luts/note10.csv)")
    ap.add_argument("--device", default=None, help="device name recorded in the rows (default: the output's stem)")
    ap.add_argument("--runtime", default="tflite", help="runtime the tables were measured with (default: tflite)")
    ap.add_argument("--force", action="store_true",
                    help="replace an existing --out LUT (and drop its measurement journal)")
    ap.add_argument("--space", default=None, help="search space the tables belong to (default: by --format)")
    args = ap.parse_args(argv)
    device = args.device or args.out.stem
    journal = journal_path(args.out)
    try:
        existing = [p for p in (args.out, journal) if p.exists()]
        if existing and not args.force:
            raise LutError(f"{existing[0]}: already exists; importing would replace it (use --force, or another --out)")
        rows = import_files(args.files, args.format, device, args.runtime)
        if not args.out.parent.is_dir():
            raise LutError(f"{args.out.parent}: no such folder")
        if journal.exists():
            journal.unlink()  # --force: the old measurements must not mix into the imported table
        write_rows_atomic(args.out, rows)
        record_space(args.out, args.space or SPACE_OF_FORMAT[args.format], keep=False)
    except (LutError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"imported {len(rows)} rows from {len(args.files)} file(s) into {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
