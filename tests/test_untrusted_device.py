"""A device that misbehaves: spams, lies, sends huge or non-finite fields.  Each gives a
failure row or the lost-device error, never a traceback, a hang or a poisoned LUT.

The misbehaving device is a test double built here: an executable named as the device's
``python``, so the real local transport starts it instead of the runner and talks to it over
real pipes."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from conftest import run_cli
from profiler.devices import parse_device
from profiler.lut import LutTable, read_rows
from sshd import shared_artifact_cache, write_devices
from test_adb import phone  # noqa: F401 - the fake adb fixture
from supernet.space import TINY

SPECS = TINY.all_blocks()[:1]

FAKE_RUNNER = r'''#!{python}
"""Test double for profiler/runner.py serve: behaves as MODE says."""
import json, sys, time
MODE = {mode!r}
print(json.dumps({{"ok": True, "ready": True, "protocol": 1}}), flush=True)
for line in sys.stdin:
    req = json.loads(line)
    if req.get("op") == "info":
        info = {{"ok": True, "id": req["id"], "host": "fake", "cpu": "fake",
                "runtimes": {{"onnxruntime": {{"version": "1.0", "providers": ["CPUExecutionProvider"]}}}}}}
        if MODE == "runtimes_not_a_dict":
            info["runtimes"] = ["onnxruntime"]
        if MODE == "runtime_entry_not_a_dict":
            info["runtimes"] = {{"onnxruntime": "1.0"}}
        print(json.dumps(info), flush=True)
        continue
    reply = {{"ok": True, "id": req["id"], "runtime": "onnxruntime", "runtime_version": "1.0", "threads": 1,
             "provider": "CPUExecutionProvider", "module": "onnxruntime", "timed_s": 0.01,
             "samples_ms": [1.0, 1.1, 0.9]}}
    if MODE == "spam":
        while True:
            print("a log line", flush=True)
            time.sleep(0.01)
    if MODE == "wrong_id":
        while True:
            print(json.dumps(dict(reply, id=-1)), flush=True)
            time.sleep(0.01)
    if MODE == "flood":  # wrong-id replies faster than the host can parse them
        big = json.dumps(dict(reply, id=-1, samples_ms=[1.0] * 20000))
        while True:
            print(big, flush=True)
    if MODE == "huge_line":
        sys.stdout.write("x" * (3 << 20) + "\n")
        sys.stdout.flush()
        continue
    if MODE == "deep":
        print("[" * 200000 + "]" * 200000, flush=True)
        time.sleep(30)
    if MODE == "huge_version":
        reply["runtime_version"] = "x" * 300000
    if MODE == "nan_timed":
        reply["timed_s"] = float("nan")
    if MODE == "huge_threads":
        reply["threads"] = 10 ** 30
    if MODE == "huge_samples":
        reply["samples_ms"] = [1e300, 1e300, 1e300]
    if MODE == "inf_load":
        reply["load_avg"] = float("inf")
    if MODE == "giant_int":  # JSON allows integers no float can hold
        reply["samples_ms"] = [10 ** 400]
    if MODE == "lone_surrogate":  # legal as a JSON escape, not encodable as UTF-8
        reply["runtime_version"] = "1.0\ud800"
    print(json.dumps(reply), flush=True)
'''


@pytest.fixture(scope="module")
def cache():
    return shared_artifact_cache(SPECS)


def fake_device(tmp_path: Path, mode: str, **extra) -> dict:
    script = tmp_path / f"fake_runner_{mode}"
    script.write_text(FAKE_RUNNER.format(python=sys.executable, mode=mode))
    script.chmod(0o755)
    entry = {"transport": "local", "runtime": "onnxruntime", "python": str(script), "timeout_s": 2,
             "connect_timeout_s": 2, "retries": 0, "max_attempts": 1, "warmup": 0, "repeats": 3, "min_time_s": 0}
    entry.update(extra)
    return entry


def profile(tmp_path: Path, mode: str, cache):
    from profiler.measure import profile_device

    dev = parse_device(Path("devices.yaml"), "fake", fake_device(tmp_path, mode))
    lut = tmp_path / "fake.csv"
    t0 = time.monotonic()
    res = profile_device(dev, SPECS, "onnxruntime", lut, cache, progress=False, export_workers=0)
    return res, lut, time.monotonic() - t0


@pytest.mark.parametrize("mode", ["spam", "wrong_id", "flood"])
def test_a_device_that_keeps_printing_still_times_out(tmp_path, cache, mode):
    res, lut, took = profile(tmp_path, mode, cache)
    assert took < 10, f"timeout_s 2 took {took:.1f} s"
    assert res.failed == 1 and res.measured == 0
    assert "timeout" in res.errors[0]
    assert [r["status"] for r in read_rows(lut)] == ["error"]


@pytest.mark.parametrize("mode, message", [
    ("huge_version", "runtime_version is longer than"),
    ("nan_timed", "timed_s is invalid"),
    ("huge_threads", "threads is invalid"),
    ("huge_samples", "invalid sample"),
    ("inf_load", "load_avg is invalid"),
    ("giant_int", "invalid sample"),
    ("huge_line", "longer than 1048576 bytes"),
])
def test_lying_replies_are_failure_rows_and_the_lut_stays_readable(tmp_path, cache, mode, message):
    res, lut, took = profile(tmp_path, mode, cache)
    assert res.failed == 1 and res.measured == 0, res
    assert message in res.errors[0]
    rows = read_rows(lut)
    assert [r["status"] for r in rows] == ["error"] and len(rows[0]["error"]) <= 1000
    assert LutTable.load(lut).rows  # the resume path reads it back
    json.dumps(res.as_dict(), allow_nan=False)


def test_a_lone_surrogate_in_a_reply_cannot_make_the_lut_unwritable(tmp_path, cache):
    res, lut, _ = profile(tmp_path, "lone_surrogate", cache)
    assert res.measured == 1 and res.failed == 0, res
    (row,) = read_rows(lut)
    assert row["runtime_version"] == "1.0?" and LutTable.load(lut).rows


def test_devices_yaml_numbers_beyond_what_a_wait_accepts_are_one_error(tmp_path):
    from profiler.devices import DeviceConfigError

    for field, value in (("timeout_s", 10 ** 10), ("timeout_s", 10 ** 400), ("repeats", 10 ** 400)):
        entry = fake_device(tmp_path, "ok", **{field: value})
        with pytest.raises(DeviceConfigError, match=f"field '{field}'"):
            parse_device(Path("devices.yaml"), "fake", entry)


def test_too_deeply_nested_reply_is_a_timeout_not_a_recursion_error(tmp_path, cache):
    res, lut, took = profile(tmp_path, "deep", cache)
    assert res.failed == 1 and "timeout" in res.errors[0] and took < 10


@pytest.mark.parametrize("mode", ["runtimes_not_a_dict", "runtime_entry_not_a_dict"])
def test_malformed_info_is_the_lost_device_error(tmp_path, cache, mode):
    res, lut, _ = profile(tmp_path, mode, cache)
    assert "runtimes" in res.device_lost and res.measured == 0
    assert "\n" not in res.device_lost


def test_nan_timed_s_never_reaches_run_json_or_json_output(tmp_path, cache):
    devices = write_devices(tmp_path / "devices.yaml", {"fake": fake_device(tmp_path, "nan_timed")})
    lut = tmp_path / "fake.csv"
    p = run_cli("profiler.run", "--device", "fake", "--devices", devices, "--space", "tiny", "--limit", "1", "--no-overhead-probes",
                "--lut", lut, "--cache", cache.root, "--no-progress", "--json")
    assert "Traceback" not in p.stderr

    def strict(text):
        return json.loads(text, parse_constant=lambda c: pytest.fail(f"non-finite {c} in JSON output"))

    run = strict(p.stdout)["runs"][0]
    assert run["failed"] == 1 and run["timed_s"] == 0
    summary = strict((tmp_path / "fake.run.json").read_text())["runtimes"]
    assert summary[run["runtime"]]["failed"] == 1


def test_run_summary_keeps_one_entry_per_runtime(tmp_path):
    """A device's runtimes share one LUT: each run's summary is kept beside the others'."""
    from profiler.measure import ProfileResult
    from profiler.run import _write_summary

    lut = tmp_path / "local.csv"
    for rt, n in (("onnxruntime", 3), ("tflite", 5), ("onnxruntime", 4)):
        res = ProfileResult("local", rt, str(lut))
        res.measured = n
        _write_summary(res, "tiny")
    runs = json.loads((tmp_path / "local.run.json").read_text())["runtimes"]
    assert {rt: r["measured"] for rt, r in runs.items()} == {"onnxruntime": 4, "tflite": 5}


def test_adb_output_has_a_byte_cap_and_one_deadline(phone):
    """The adb client double (tests/doubles/fake_adb) runs shell lines on this machine."""
    from profiler.transport import TransportError, make_transport
    from test_adb import pixel

    t = make_transport(parse_device(Path("devices.yaml"), "pixel1", pixel()))
    with pytest.raises(TransportError, match="printed more than 1048576 bytes"):
        t.adb_run(["shell", "head -c 3000000 /dev/zero"], timeout=30)
    t0 = time.monotonic()
    with pytest.raises(TransportError, match="timed out after 2 s"):
        t.adb_run(["shell", "while :; do echo x; sleep 0.2; done"], timeout=2)
    assert time.monotonic() - t0 < 6
    assert t.shell("echo fine", timeout=10) == (0, "fine\n")
