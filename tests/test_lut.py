"""The LUT file: tidy CSV, atomic writes, journal replay, torn lines, corrupt files
(issue 2, section 4), and the published-table import (section 6)."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest

from profiler.lut import (COLUMNS, LutError, LutTable, LutWriter, calibration_path, error_row,
                          journal_path, read_rows)
from supernet.space import TINY

KEYS = [str(b) for b in TINY.all_blocks([32])][:6]


def _ok(key, ms, runtime="onnxruntime", at="2026-01-01T00:00:00"):
    return {"key": key, "runtime": runtime, "status": "ok", "median_ms": ms, "mean_ms": ms, "std_ms": 0.01,
            "p90_ms": ms, "min_ms": ms, "max_ms": ms, "iqr_ms": 0.0, "count": 10, "threads": 1,
            "device": "local", "measured_at": at}


def test_writer_round_trip_and_tidy_csv(tmp_path):
    path = tmp_path / "l.csv"
    with LutWriter(path) as w:
        for i, k in enumerate(KEYS):
            w.add(_ok(k, 0.1 * (i + 1)), samples=[0.1, 0.2])
    with open(path) as fh:
        reader = csv.reader(fh)
        header = next(reader)
        rows = list(reader)
    assert header == COLUMNS
    assert len(rows) == len(KEYS)
    table = LutTable.load(path)
    assert table.runtimes == ["onnxruntime"]
    assert table.table()[KEYS[2]] == pytest.approx(0.3)
    # the journal keeps raw samples
    lines = journal_path(path).read_text().splitlines()
    assert len(lines) == len(KEYS) and json.loads(lines[0])["samples_ms"] == [0.1, 0.2]


def test_rows_are_priced_by_their_quietest_stretch_and_older_rows_by_their_median(tmp_path):
    path = tmp_path / "l.csv"
    with LutWriter(path) as w:
        w.add(dict(_ok(KEYS[0], 2.0), quiet_ms=1.5))
        w.add(_ok(KEYS[1], 3.0))  # no quiet_ms: a row of a LUT written before it, a benchmark_model summary
    t = LutTable.load(path)
    assert t.rows[(KEYS[0], "onnxruntime", "", "fp32")]["quiet_ms"] == 1.5
    assert t.table() == {KEYS[0]: 1.5, KEYS[1]: 3.0}
    assert t.table(stat="median") == {KEYS[0]: 2.0, KEYS[1]: 3.0}
    with pytest.raises(LutError, match="unknown statistic 'p99'"):
        t.table(stat="p99")


def test_journal_rows_survive_a_crash_before_the_csv_is_written(tmp_path):
    path = tmp_path / "l.csv"
    w = LutWriter(path, flush_every_s=3600)
    w.add(_ok(KEYS[0], 1.0))
    w.add(_ok(KEYS[1], 2.0))
    # simulate kill -9: no close(), no CSV rewrite; the kernel drops a dead process's lock
    w._lock.close()
    assert not path.exists()
    table = LutTable.load(path)
    assert set(table.table()) == {KEYS[0], KEYS[1]}
    w2 = LutWriter(path)
    w2.add(_ok(KEYS[2], 3.0))
    w2.close()
    rows = read_rows(path)
    assert sorted(r["key"] for r in rows) == sorted(KEYS[:3])


def test_torn_last_journal_line_is_dropped_and_truncated(tmp_path):
    path = tmp_path / "l.csv"
    with LutWriter(path) as w:
        w.add(_ok(KEYS[0], 1.0))
    jp = journal_path(path)
    with open(jp, "a") as fh:
        fh.write('{"key": "' + KEYS[1][:20])  # killed mid-write
    table = LutTable.load(path)
    assert set(table.table()) == {KEYS[0]}
    assert any("torn" in w for w in table.warnings)
    with LutWriter(path) as w:
        w.add(_ok(KEYS[1], 2.0))
    assert all(json.loads(ln) for ln in jp.read_text().splitlines())  # the torn tail is gone
    assert set(LutTable.load(path).table()) == {KEYS[0], KEYS[1]}


def test_newest_row_wins_and_no_duplicates(tmp_path):
    path = tmp_path / "l.csv"
    with LutWriter(path) as w:
        w.add(error_row(KEYS[0], "onnxruntime", "boom", {"measured_at": "2026-01-01T00:00:00", "attempts": 1}))
        w.add(_ok(KEYS[0], 1.5, at="2026-01-01T00:00:01"))
    rows = read_rows(path)
    assert len(rows) == 1 and rows[0]["status"] == "ok" and rows[0]["median_ms"] == 1.5


def test_rows_are_per_runtime(tmp_path):
    path = tmp_path / "l.csv"
    with LutWriter(path) as w:
        w.add(_ok(KEYS[0], 1.0, "onnxruntime"))
        w.add(_ok(KEYS[0], 3.0, "tflite"))
    t = LutTable.load(path)
    assert t.runtimes == ["onnxruntime", "tflite"]
    with pytest.raises(LutError, match="several runtimes"):
        t.table()
    assert t.table("tflite")[KEYS[0]] == 3.0


@pytest.mark.parametrize("content, message", [
    ("hello,world\n1,2\n", r"l.csv:1: not a LUT CSV"),
    (",".join(COLUMNS) + "\nnot-a-key" + ",x" * (len(COLUMNS) - 1) + "\n", r"l.csv:2: malformed block key"),
    (",".join(COLUMNS) + "\n" + KEYS[0] + ",mbconv,onnxruntime,,ok,abc" + "," * (len(COLUMNS) - 6) + "\n",
     r"l.csv:2: column median_ms is not a number"),
    (",".join(COLUMNS) + "\n" + KEYS[0] + ",mbconv,onnxruntime\n", r"l.csv:2: wrong number of fields"),
])
def test_corrupt_csv_names_file_and_line(tmp_path, content, message):
    path = tmp_path / "l.csv"
    path.write_text(content)
    with pytest.raises(LutError, match=message):
        LutTable.load(path)
    with pytest.raises(LutError):
        LutWriter(path)
    assert path.read_text() == content  # untouched


def test_unwritable_lut_folder_is_a_clear_error(tmp_path):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    with pytest.raises(LutError, match="cannot create the LUT folder"):
        LutWriter(blocker / "sub" / "l.csv")


def test_calibration_and_journal_paths():
    from pathlib import Path

    assert journal_path(Path("luts/local.csv")) == Path("luts/local.raw.jsonl")
    assert calibration_path(Path("luts/local.csv")) == Path("luts/local.calibration.json")


# ------------------------------------------------------------------ published tables

def test_ofa_note10_sanity_figures_through_the_cli(shared_data, tmp_path):
    """luts/README.md: 92.40 / 17.77 ms at 224 px, 47.77 / 9.89 ms at 160 px (w1.2)."""
    from conftest import run_cli

    out = tmp_path / "note10.csv"
    files = sorted((shared_data / "ofa" / "note10").glob("*_lookup_table.yaml"))
    p = run_cli("profiler.import_lut", "--format", "ofa", *files, "--out", out)
    assert p.returncode == 0, p.stderr
    expected = {(224, "max"): 92.40, (224, "min"): 17.77, (160, "max"): 47.77, (160, "min"): 9.89}
    for (r, which), ms in expected.items():
        p = run_cli("search.latency", "--lut", out, "--subnet", which, "--resolution", r, "--width", "1.2", "--json")
        assert p.returncode == 0, p.stderr
        assert round(json.loads(p.stdout)["latency_ms"], 2) == ms


def test_ofa_import_maps_every_key_onto_our_specs(shared_data):
    from profiler.import_lut import import_files
    from supernet.space import OFA_MBV3

    rows = import_files([shared_data / "ofa" / "note10" / "224_lookup_table.yaml"], "ofa", "note10", "tflite")
    assert len(rows) == 96
    assert {r["key"] for r in rows} == {str(b) for b in OFA_MBV3.all_blocks([224], widths=[1.2])}


def test_proxyless_import(shared_data, tmp_path):
    from profiler.import_lut import import_files

    rows = import_files([shared_data / "proxylessnas" / "mobile_trim.yaml"], "proxyless", "mobile", "tflite")
    kinds = {r["kind"] for r in rows}
    assert kinds == {"first_conv", "mbconv", "final_expand", "pool", "classifier"}
    pool = next(r for r in rows if r["kind"] == "pool")
    assert pool["mean_ms"] == 0.0 and "classifier" in pool["source"]
    assert all("relu6" in r["key"] or r["kind"] in ("pool", "classifier") for r in rows)


def test_missing_keys_error_lists_them(shared_data, tmp_path):
    from conftest import run_cli

    out = tmp_path / "note10.csv"
    run_cli("profiler.import_lut", "--format", "ofa", shared_data / "ofa/note10/224_lookup_table.yaml", "--out", out)
    p = run_cli("search.latency", "--lut", out, "--subnet", "max", "--width", "1.0")
    assert p.returncode == 2
    assert "lacks 16 block(s)" in p.stderr and "first_conv-input:224x224x3-output:112x112x16" in p.stderr
    assert "at r=224, w=1; it covers r 224 at w 1.2" in p.stderr  # why: the table is of the other width


def test_max_and_min_are_priced_where_the_shipped_table_is():
    """OFA's Note10 table holds width 1.2 only (160-224 px): max and min with no flags are
    its dearest and cheapest subnets (luts/README.md: 92.40 and 9.89 ms), not a width-1.0
    subnet it cannot price; a flag still fixes what it names."""
    from conftest import run_cli

    lut = Path(__file__).resolve().parents[1] / "luts" / "note10.csv"
    got = {}
    for args in (["max"], ["min"], ["min", "--resolution", "224"]):
        p = run_cli("search.latency", "--lut", lut, "--subnet", *args, "--json")
        assert p.returncode == 0, p.stderr
        out = json.loads(p.stdout)
        got[" ".join(args)] = (round(out["latency_ms"], 2), out["subnet"]["r"], out["subnet"]["w"])
    assert got == {"max": (92.40, 224, 1.2), "min": (9.89, 160, 1.2), "min --resolution 224": (17.77, 224, 1.2)}
    p = run_cli("search.latency", "--lut", lut, "--subnet", "max")
    assert p.returncode == 0 and "r=224 w=1.2" in p.stdout


def test_a_second_writer_of_one_lut_is_refused_naming_the_first(tmp_path):
    """Two runs appending to one journal would interleave and lose rows: the second is one
    error naming the LUT and the process that holds it; once that one is done, it may go."""
    path = tmp_path / "l.csv"
    with LutWriter(path) as w:
        w.add(_ok(KEYS[0], 1.0))
        with pytest.raises(LutError, match=rf"LUT {path} is in use by another process \(pid {os.getpid()}: "):
            LutWriter(path)
    with LutWriter(path) as w2:
        w2.add(_ok(KEYS[1], 2.0))
    assert sorted(r["key"] for r in read_rows(path)) == sorted(KEYS[:2])
