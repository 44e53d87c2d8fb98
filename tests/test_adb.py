"""adb transport against a fake ``adb`` on PATH (tests/doubles/fake_adb, a test double that
emulates a device folder, the client's messages and exit codes) and the real ``adb`` client
for the no-device path.  No Android device, adbd or emulator is involved."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from profiler.devices import parse_device
from profiler.lut import LutTable
from profiler.measure import profile_device
from profiler.transport import RunnerTimeout, TransportError, make_transport
from supernet.space import TINY

from sshd import free_port, shared_artifact_cache, write_devices

pytestmark = [pytest.mark.adb]

HERE = Path(__file__).parent
DOUBLES = HERE / "doubles"
FIXTURES = HERE / "fixtures" / "benchmark_model"
SERIAL = "emulator-5554"


def _wrapper(path: Path, script: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\nexec {sys.executable} {script} \"$@\"\n")
    path.chmod(0o755)
    return path


@pytest.fixture
def phone(tmp_path, monkeypatch):
    """A fake adb server with one healthy phone, one unauthorized, one offline."""
    root = tmp_path / "phone"
    bm = _wrapper(root / "data" / "local" / "tmp" / "benchmark_model", DOUBLES / "fake_benchmark_model")
    bin_dir = tmp_path / "bin"
    _wrapper(bin_dir / "adb", DOUBLES / "fake_adb")
    state = tmp_path / "adb_state.json"
    state.write_text(json.dumps({"devices": {
        SERIAL: {"state": "device", "root": str(root)},
        "10.0.0.9:5555": {"state": "device", "root": str(root)},
        "UNAUTH01": {"state": "unauthorized", "root": str(root)},
        "OFF01": {"state": "offline", "root": str(root)},
    }}))
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_ADB_STATE", str(state))
    monkeypatch.setenv("FAKE_ADB_LOG", str(tmp_path / "adb.log"))
    monkeypatch.setenv("FAKE_BM_OUTPUT", str(FIXTURES / "android_mi11_tf24.txt"))
    monkeypatch.setenv("FAKE_BM_LOG", str(tmp_path / "bm.log"))
    assert bm.exists()
    return tmp_path


def pixel(**extra):
    entry = {"transport": "adb", "runtime": "tflite", "serial": SERIAL,
             "benchmark_model": "/data/local/tmp/benchmark_model", "threads": 2, "warmup": 1, "repeats": 5,
             "min_time_s": 0, "max_time_s": 5, "timeout_s": 30, "retries": 1, "connect_timeout_s": 5}
    entry.update(extra)
    return entry


def _log(path: Path) -> list:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_profile_a_phone_with_benchmark_model(phone, tmp_path):
    specs = TINY.all_blocks()[:1]
    cache = shared_artifact_cache(specs, "tflite")
    dev = parse_device(Path("d.yaml"), "pixel1", pixel(cpu_mask="1"))
    lut = tmp_path / "pixel1.csv"
    res = profile_device(dev, specs, "tflite", lut, cache, progress=False)
    assert res.measured == 1 and res.failed == 0 and not res.device_lost, res
    row = LutTable.load(lut).get(str(specs[0]), "tflite")
    # the fixture's regular run: count=50 avg=249684 us std=1442 min=247067 max=254474
    assert row["status"] == "ok" and row["count"] == 50
    assert row["mean_ms"] == pytest.approx(249.684) and row["std_ms"] == pytest.approx(1.442)
    assert row["min_ms"] == pytest.approx(247.067) and row["max_ms"] == pytest.approx(254.474)
    assert row["median_ms"] == ""  # the tool printed none; never invented
    assert row["source"] == "benchmark_model" and row["runtime_version"].startswith("benchmark_model@")
    assert row["threads"] == 2 and row["sweeps"] == 2
    calls = _log(tmp_path / "bm.log")  # the device's two sweeps, repeats 5 shared between them
    assert len(calls) == 2
    for call in calls:
        assert "--num_threads=2" in call["argv"] and "--num_runs=3" in call["argv"] and "--warmup_runs=1" in call["argv"]
        assert call["affinity"] == [0]  # taskset 1
        graph = next(a for a in call["argv"] if a.startswith("--graph="))
        assert "/data/local/tmp/hwnas/run-" in graph and graph.endswith(".tflite")
    # every client call names the device; push, shell and pull were used; the run folder is gone
    calls = _log(tmp_path / "adb.log")
    assert all(c[:2] == ["-s", SERIAL] for c in calls)
    assert {c[2] for c in calls} >= {"get-state", "push", "shell", "pull"}
    assert not (tmp_path / "phone" / "data" / "local" / "tmp" / "hwnas").exists()


def test_round_robin_on_benchmark_model_is_an_error_row_per_block(phone, tmp_path):
    """benchmark_model takes one model per call: --context round-robin there is an error row
    naming why for every block, nothing is run on the phone, and no row pretends to be timed."""
    specs = TINY.all_blocks()[:2]
    cache = shared_artifact_cache(specs, "tflite")
    dev = parse_device(Path("d.yaml"), "pixel1", pixel())
    lut = tmp_path / "pixel1.csv"
    res = profile_device(dev, specs, "tflite", lut, cache, progress=False, context="round-robin")
    assert res.measured == 0 and res.failed == 2 and not res.device_lost, res
    table = LutTable.load(lut)
    for s in specs:
        row = table.get(str(s), "tflite")
        assert row["status"] == "error" and "needs the hwnas runner" in row["error"], row
    assert not _log(tmp_path / "bm.log")


def test_benchmark_model_failures_are_replies_not_crashes(phone, tmp_path, monkeypatch):
    dev = parse_device(Path("d.yaml"), "pixel1", pixel())
    t = make_transport(dev)
    t.open()
    try:
        ch = t.start_runner()
        assert ch.summary_only
        reply = ch.request({"model": "/data/local/tmp/hwnas/nope.tflite", "runtime": "tflite"}, 30)
        assert reply["ok"] is False and "Failed to mmap model" in reply["error"]
        model = tmp_path / "m.tflite"
        model.write_bytes(b"x")
        remote = t.stage(model)
        monkeypatch.setenv("FAKE_BM_MODE", "garbage")
        reply = ch.request({"model": remote, "runtime": "tflite"}, 30)
        assert reply["ok"] is False and "no statistics" in reply["error"]
        monkeypatch.setenv("FAKE_BM_MODE", "flood")  # refused by its size on the device, never pulled
        pulls = len([ln for ln in (tmp_path / "adb.log").read_text().splitlines() if '"pull"' in ln])
        reply = ch.request({"model": remote, "runtime": "tflite"}, 30)
        assert reply["ok"] is False and "printed more than 1048576 bytes" in reply["error"]
        assert len([ln for ln in (tmp_path / "adb.log").read_text().splitlines() if '"pull"' in ln]) == pulls
        monkeypatch.setenv("FAKE_BM_MODE", "hang")
        with pytest.raises(RunnerTimeout):
            ch.request({"model": remote, "runtime": "tflite"}, 1.5)
        assert not ch.alive
    finally:
        t.close()
    # the hung benchmark_model was killed on the "device"
    mine = str(tmp_path / "phone")
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        assert not ("fake_benchmark_model" in cmd and mine in cmd), cmd


@pytest.mark.parametrize("serial, needle", [
    ("nope", "device 'nope' not found"),
    ("UNAUTH01", "unauthorized"),
    ("OFF01", "offline"),
    ("10.9.9.9:5555", "failed to connect"),  # adb connect fails with exit code 0
])
def test_client_errors_are_one_clear_line(phone, tmp_path, capsys, serial, needle):
    from profiler.run import main

    devices = write_devices(tmp_path / "devices.yaml", {"pixel1": pixel(serial=serial, retries=0)})
    code = main(["--device", "pixel1", "--devices", str(devices), "--space", "tiny", "--limit", "1",
                 "--no-progress", "--lut", str(tmp_path / "p.csv"), "--cache", str(tmp_path / "nocache")])
    errors = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    assert code == 1 and len(errors) == 1
    assert needle in errors[0] and "pixel1" in errors[0]
    assert not (tmp_path / "nocache").exists()  # nothing exported for a device that is not there


def test_network_serial_connects_first(phone, tmp_path):
    dev = parse_device(Path("d.yaml"), "pixel1", pixel(serial="10.0.0.9:5555"))
    t = make_transport(dev)
    t.open()
    t.close()
    calls = _log(tmp_path / "adb.log")
    assert calls[0] == ["connect", "10.0.0.9:5555"]


def test_adb_client_missing(tmp_path):
    dev = parse_device(Path("d.yaml"), "pixel1", pixel(adb=str(tmp_path / "no" / "adb")))
    with pytest.raises(TransportError, match="adb client .* not found") as err:
        make_transport(dev).open()
    assert getattr(err.value, "permanent", False)


def test_pushed_runner_works_where_the_device_has_python(phone, tmp_path):
    specs = TINY.all_blocks()[:2]
    cache = shared_artifact_cache(specs, "onnxruntime")
    # The fake maps /data/ paths only on command lines; the runner reads model paths from its
    # JSON requests, so this device's work folder is one the fake leaves as it is.
    work = tmp_path / "tab-work"
    last = max(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    dev = parse_device(Path("d.yaml"), "tab", pixel(runtime="onnxruntime", benchmark_model="", python=sys.executable,
                                                     workdir=str(work),
                                                     **({} if last is None else {"cpu_mask": format(1 << last, "x")})))
    res = profile_device(dev, specs, "onnxruntime", tmp_path / "tab.csv", cache, progress=False)
    assert res.measured == 2 and not res.device_lost, res
    assert last is None or res.cpus == str(last)  # the pushed runner pinned itself to the cpu_mask
    table = LutTable.load(tmp_path / "tab.csv")
    # raw samples, validated: the faster of two sweeps of ceil(5 / 2) runs or more
    assert all(table.get(str(s), "onnxruntime")["count"] >= 3 and table.get(str(s), "onnxruntime")["sweeps"] == 2
               for s in specs)
    assert not work.exists()
    assert any(c[2] == "push" and c[3].endswith("runner.py") for c in _log(tmp_path / "adb.log"))


@pytest.mark.skipif(not os.access("/usr/bin/adb", os.X_OK), reason="the adb client (Debian package adb) is not installed")
def test_real_adb_client_reports_a_missing_device(tmp_path, monkeypatch):
    # A private adb server on a free loopback port, stopped at the end.
    monkeypatch.setenv("ANDROID_ADB_SERVER_PORT", str(free_port()))
    monkeypatch.setenv("HOME", str(tmp_path))  # keep adb's key files out of the real home
    dev = parse_device(Path("d.yaml"), "pixel1", pixel(serial="hwnas-no-such-phone", adb="/usr/bin/adb"))
    try:
        with pytest.raises(TransportError, match="device 'hwnas-no-such-phone' not found"):
            make_transport(dev).open()
    finally:
        subprocess.run(["/usr/bin/adb", "kill-server"], capture_output=True, timeout=30)
