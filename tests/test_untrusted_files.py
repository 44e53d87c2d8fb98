"""Files a user may receive from others: every number read is finite and in range, a
duplicate is an error naming file and line, and a bad file is one line (no traceback) with
no byte of an existing file changed.  The malicious inputs are built here."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import yaml

from conftest import REPO, last_error_line, run_cli
from profiler.devices import DeviceConfigError, load_devices
from profiler.lut import COLUMNS, LutError, LutTable, LutWriter, journal_path, read_rows
from supernet.space import TINY

KEY = str(TINY.all_blocks()[0])
OFA_CONV = "Conv-input:224x224x3-output:112x112x24"


def lut_csv(*cells: dict) -> str:
    lines = [",".join(COLUMNS)]
    for c in cells:
        row = {"key": KEY, "runtime": "onnxruntime", "status": "ok", "median_ms": "1.0", **c}
        lines.append(",".join(str(row.get(col, "")) for col in COLUMNS))
    return "\n".join(lines) + "\n"


# LUT ------------------------------------------------------------------------------------
@pytest.mark.parametrize("cells, message", [
    (({"median_ms": "-0.5"},), r"l.csv:2: column median_ms must be a finite number in \[0"),
    (({"mean_ms": "nan"},), r"l.csv:2: column mean_ms must be a finite number"),
    (({"count": "-3"},), r"l.csv:2: column count must be"),
    (({"median_ms": "1.0"}, {"median_ms": "999"}), r"l.csv:3: duplicate row for key .* first on line 2"),
    (({"runtime_version": "x" * 300_000},), r"l.csv:\d+: malformed CSV"),
])
def test_bad_lut_rows_are_refused_naming_the_line(tmp_path, cells, message):
    path = tmp_path / "l.csv"
    path.write_text(lut_csv(*cells))
    before = path.read_bytes()
    with pytest.raises(LutError, match=message) as exc:
        LutTable.load(path)
    assert "\n" not in str(exc.value)
    with pytest.raises(LutError):
        LutWriter(path)
    assert path.read_bytes() == before


@pytest.mark.parametrize("change, message", [
    ({"median_ms": float("nan")}, "median_ms must be a finite number"),  # json writes NaN
    ({"median_ms": [1.0]}, "median_ms is not a number"),
    ({"count": float("inf")}, "count must be a finite number"),
    ({"runtime": ["onnxruntime"]}, "runtime is not text"),
])
def test_nan_in_the_journal_is_not_counted_as_measured(tmp_path, change, message):
    path = tmp_path / "l.csv"
    record = {"key": KEY, "runtime": "onnxruntime", "status": "ok", "median_ms": 1.0, **change}
    journal_path(path).write_text(json.dumps(record) + "\n")
    before = journal_path(path).read_bytes()
    with pytest.raises(LutError, match=rf"l.raw.jsonl:1: .*{message}"):
        LutTable.load(path)
    with pytest.raises(LutError):
        LutWriter(path)
    assert journal_path(path).read_bytes() == before and not path.exists()


# import_lut ----------------------------------------------------------------------------
def _import(tmp_path, text: str, *extra: str):
    src = tmp_path / "224_lookup_table.yaml"
    src.write_text(text)
    return run_cli("profiler.import_lut", "--format", "ofa", src, "--out", tmp_path / "out.csv", *extra)


@pytest.mark.parametrize("mean", [".nan", ".inf", "-0.5", "1" + "0" * 400])
def test_import_refuses_non_finite_and_negative_means(tmp_path, mean):
    p = _import(tmp_path, f"{OFA_CONV}:\n  count: 10\n  mean: {mean}\n  std: 0.01\n")
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert "mean must be a finite, non-negative number" in last_error_line(p)
    assert not (tmp_path / "out.csv").exists()


def test_import_an_empty_var_is_no_spread_not_a_traceback(tmp_path):
    p = _import(tmp_path, f"{OFA_CONV}:\n  count: 10\n  mean: 1.5\n  var:\n")
    assert p.returncode == 0, p.stderr
    (row,) = read_rows(tmp_path / "out.csv")
    assert row["mean_ms"] == 1.5 and row["std_ms"] == ""


def test_import_refuses_duplicate_yaml_keys_and_duplicate_lut_keys(tmp_path):
    stats = "  count: 10\n  mean: {}\n  std: 0.01\n"
    p = _import(tmp_path, f"{OFA_CONV}:\n" + stats.format(0.28) + f"{OFA_CONV}:\n" + stats.format(999))
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert "224_lookup_table.yaml:5" in last_error_line(p) and "duplicate key" in last_error_line(p)
    # two spellings of one block: 3 and 03 input channels
    p = _import(tmp_path, f"{OFA_CONV}:\n" + stats.format(0.28)
                + "Conv-input:224x224x03-output:112x112x24:\n" + stats.format(999))
    assert p.returncode == 2 and "a duplicate: maps onto block" in last_error_line(p)
    assert not (tmp_path / "out.csv").exists()


def test_import_does_not_overwrite_an_existing_lut_without_force(tmp_path):
    out, journal = tmp_path / "out.csv", journal_path(tmp_path / "out.csv")
    out.write_text(lut_csv({}))
    journal.write_text(json.dumps({"key": KEY, "runtime": "tflite", "status": "ok", "median_ms": 5.0}) + "\n")
    before = out.read_bytes(), journal.read_bytes()
    good = f"{OFA_CONV}:\n  count: 10\n  mean: 0.28\n  std: 0.01\n"
    p = _import(tmp_path, good)
    assert p.returncode == 2 and "already exists" in last_error_line(p) and "--force" in last_error_line(p)
    assert (out.read_bytes(), journal.read_bytes()) == before
    p = _import(tmp_path, good, "--force")
    assert p.returncode == 0, p.stderr
    assert not journal.exists()  # the old measurements no longer mix into the imported table
    assert [r["mean_ms"] for r in LutTable.load(out).rows.values()] == [0.28]


# devices.yaml ----------------------------------------------------------------------------
LOCAL = "    transport: local\n    runtime: onnxruntime\n"


@pytest.mark.parametrize("text, message", [
    ("devices:\n  a:\n" + LOCAL + "  a:\n" + LOCAL, r"devices.yaml:5: malformed YAML: duplicate key 'a'"),
    ("devices:\n  a:\n" + LOCAL + "    timeout_s: .nan\n", r"field 'timeout_s': must be a finite number"),
    ("devices:\n  ../x:\n" + LOCAL, r"device name '../x' is not allowed"),
    ("devices:\n  /abs/x:\n" + LOCAL, r"device name '/abs/x' is not allowed"),
    ("devices:\n  .hidden:\n" + LOCAL, r"device name '.hidden' is not allowed"),
])
def test_bad_device_inventories_are_one_line(tmp_path, text, message):
    path = tmp_path / "devices.yaml"
    path.write_text(text)
    with pytest.raises(DeviceConfigError, match=message) as exc:
        load_devices(path)
    assert "\n" not in str(exc.value) and str(path) in str(exc.value)


def test_non_utf8_devices_file_names_the_file(tmp_path):
    path = tmp_path / "devices.yaml"
    path.write_bytes(b"devices:\n  a:\n    description: caf\xe9\n" + LOCAL.encode())
    with pytest.raises(DeviceConfigError, match=rf"{path}: not UTF-8"):
        load_devices(path)


def test_a_device_name_cannot_write_outside_luts(tmp_path):
    path = tmp_path / "devices.yaml"
    path.write_text("devices:\n  ../escape:\n" + LOCAL)
    work = tmp_path / "work"
    work.mkdir()
    p = run_cli("profiler.run", "--device", "../escape", "--devices", path, "--space", "tiny", "--limit", "1",
                "--no-progress", cwd=work, env={"PYTHONPATH": str(REPO)})
    assert p.returncode == 2 and "is not allowed" in last_error_line(p) and "Traceback" not in p.stderr
    assert sorted(x.name for x in tmp_path.iterdir()) == ["devices.yaml", "work"] and not any(work.iterdir())


# calibration -------------------------------------------------------------------------------
@pytest.mark.parametrize("a, b", [("NaN", 0.0), (-1.0, 0.0), (1.0, "Infinity")])
def test_unusable_calibrations_are_refused(tmp_path, a, b):
    from search.latency import read_calibration

    path = tmp_path / "l.calibration.json"
    path.write_text(f'{{"a": {a}, "b": {b}, "runtime": "onnxruntime"}}')
    with pytest.raises(ValueError, match="is not usable") as exc:
        read_calibration(path, "onnxruntime")
    assert str(path) in str(exc.value)


# predictor files -----------------------------------------------------------------------------
def _saved_predictor(tmp_path):
    from search.encoding import Encoder
    from search.predictor import AccuracyPredictor

    enc = Encoder.for_space(TINY)
    rng = np.random.default_rng(0)
    sizes = (enc.n_dim, 8, 1)
    state = {}
    for i in range(2):
        state[f"{2 * i}.weight"] = rng.standard_normal((sizes[i + 1], sizes[i])).astype(np.float32)
        state[f"{2 * i}.bias"] = np.zeros(sizes[i + 1], np.float32)
    return AccuracyPredictor(enc, (8,), state, 0.5, space_name="tiny").save(tmp_path / "predictor.pt")


@pytest.mark.parametrize("tamper, message", [
    (lambda b: b["state_dict"].update({"0.weight": b["state_dict"]["0.weight"][:, :3]}), "has shape"),
    (lambda b: b.update(hidden=[16]), "has shape"),
    (lambda b: b.update(hidden=[8, 8]), "weights do not fit"),
    (lambda b: b["state_dict"].update({"2.weight": b["state_dict"]["2.weight"].long()}), "not a floating-point"),
    (lambda b: b["state_dict"]["2.bias"].fill_(float("nan")), "NaN or infinite"),
    (lambda b: b.update(offset=float("nan")), "must be finite"),
])
def test_bad_predictor_files_are_one_line_at_load(tmp_path, tamper, message):
    import torch

    from search.predictor import load_predictor

    path = _saved_predictor(tmp_path)
    blob = torch.load(path, weights_only=True)
    tamper(blob)
    torch.save(blob, path)
    with pytest.raises(ValueError, match=message) as exc:
        load_predictor(path, TINY)
    assert str(path) in str(exc.value) and "\n" not in str(exc.value)


# accuracy rows and subnet JSON ------------------------------------------------------------------
def _acc_csv(tmp_path, acc: str, subnet: str | None = None):
    cfg = TINY.sample(random.Random(0))
    path = tmp_path / "accuracy.csv"
    path.write_text('index,subnet,acc,status\n0,"{}",0.5,ok\n1,"{}",{},ok\n'.format(
        cfg.to_json().replace('"', '""'), (subnet or cfg.to_json()).replace('"', '""'), acc))
    return path


@pytest.mark.parametrize("acc", ["nan", "inf", "-0.1", "1.5"])
def test_accuracy_rows_must_be_fractions(tmp_path, acc):
    from search.predictor import read_accuracy_csv

    with pytest.raises(ValueError, match=r"accuracy.csv:3: acc must be a fraction"):
        read_accuracy_csv(_acc_csv(tmp_path, acc), TINY)


def test_non_utf8_and_deeply_nested_accuracy_rows_are_one_line(tmp_path):
    from search.predictor import read_accuracy_csv

    path = _acc_csv(tmp_path, "0.5")
    path.write_bytes(path.read_bytes() + b"2,\xff,0.5,ok\n")
    with pytest.raises(ValueError, match="not UTF-8"):
        read_accuracy_csv(path, TINY)
    deep = '{"ks": ' + "[" * 60_000 + "]" * 60_000 + "}"  # under the CSV field limit
    with pytest.raises(ValueError, match=r"accuracy.csv:3: subnet JSON (is )?nested too deeply"):
        read_accuracy_csv(_acc_csv(tmp_path, "0.5", deep), TINY)


def test_deeply_nested_subnet_file_is_one_line(tmp_path):
    lut = tmp_path / "l.csv"
    lut.write_text(lut_csv({}))
    sub = tmp_path / "subnet.json"
    sub.write_text('{"ks": ' + "[" * 200_000 + "]" * 200_000 + "}")
    p = run_cli("search.latency", "--lut", lut, "--space", "tiny", "--subnet", sub)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert "nested too deeply" in last_error_line(p)


def test_yaml_loader_refuses_duplicates_but_keeps_merges():
    from supernet.safeyaml import load_unique

    assert load_unique("a: &x {b: 1}\nc: {<<: *x, b: 2}\n") == {"a": {"b": 1}, "c": {"b": 2}}
    with pytest.raises(yaml.YAMLError, match="duplicate key"):
        load_unique("x:\n  k: 1\n  k: 2\n")
