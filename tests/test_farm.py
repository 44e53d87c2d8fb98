"""Device farm: devices measured concurrently (one worker, one bar and one LUT per device),
conversion shared between devices and never overlapping a local timing."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import pytest

import profiler.export as export_mod
from profiler.devices import parse_device
from profiler.export import ArtifactCache
from profiler.farm import run_farm
from profiler.lut import read_rows
from profiler.measure import ExportBroker
from profiler.transport import LocalTransport
from supernet.space import TINY

from sshd import SshServer, shared_artifact_cache, sshd_missing, write_devices

SPECS = TINY.all_blocks()[:4]
needs_sshd = pytest.mark.skipif(bool(sshd_missing()), reason=sshd_missing() or "ok")


@pytest.fixture(scope="module")
def cache():
    return shared_artifact_cache(SPECS)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if sshd_missing():
        pytest.skip(sshd_missing())
    srv = SshServer(tmp_path_factory.mktemp("sshd")).start()
    yield srv
    srv.kill()


def copying_export(source: ArtifactCache, calls: list, events: list):
    """An exporter that copies the artifact from an already filled cache (recording calls)."""

    def task(key, fmt, path):
        calls.append(key)
        events.append(("export", key))
        shutil.copyfile(source.path(key, fmt), path)
        return key, fmt, ""

    return task


def test_broker_converts_each_artifact_once_across_threads(tmp_path, cache, monkeypatch):
    calls: list = []
    monkeypatch.setattr(export_mod, "_export_task", copying_export(cache, calls, []))
    broker = ExportBroker(ArtifactCache(tmp_path / "c"), workers=0)
    keys = [str(s) for s in SPECS]
    barrier = threading.Barrier(3)

    def device():
        barrier.wait(timeout=30)
        return broker.ensure([(k, "onnx") for k in keys])

    threads = [threading.Thread(target=device) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(calls) == sorted(keys)  # once each, not three times
    assert broker.exported == len(keys)
    assert all(r.path.is_file() for r in broker.ensure([(k, "onnx") for k in keys]).values())
    broker.close()


@pytest.mark.ssh
@needs_sshd
def test_devices_run_concurrently_one_lut_each(tmp_path, server, cache):
    from profiler.transport_ssh import SSHTransport

    both_connected = threading.Barrier(2, timeout=60)

    class Rendezvous(SSHTransport):
        """Each device waits, once connected, for the other: sequential runs would time out."""

        met = False

        def open(self):
            super().open()
            if not self.met:
                self.met = True
                both_connected.wait()

    devices = [parse_device(Path("d.yaml"), name, server.device_entry()) for name in ("rpi_a", "rpi_b")]
    farm = run_farm(devices, SPECS, cache, lut_folder=tmp_path, progress=False, transport_factory=Rendezvous)
    assert farm.exit_code == 0 and not farm.errors
    assert [r.device for r in farm.results] == ["rpi_a", "rpi_b"]
    for name in ("rpi_a", "rpi_b"):
        rows = read_rows(tmp_path / f"{name}.csv")
        assert sorted(r["key"] for r in rows) == sorted(str(s) for s in SPECS)
        assert {r["device"] for r in rows} == {name} and all(r["status"] == "ok" for r in rows)


@pytest.mark.ssh
@needs_sshd
def test_conversion_never_overlaps_local_timing(tmp_path, server, cache, monkeypatch):
    events: list = []
    calls: list = []
    monkeypatch.setattr(export_mod, "_export_task", copying_export(cache, calls, events))

    class Recording(LocalTransport):
        def start_runner(self):
            events.append(("measure", self.device.name))
            return super().start_runner()

    def factory(device):
        if device.transport == "local":
            return Recording(device)
        from profiler.transport_ssh import SSHTransport

        class RecordingSSH(SSHTransport):
            def open(self):
                events.append(("measure", device.name))
                super().open()

        return RecordingSSH(device)

    local = parse_device(Path("d.yaml"), "local", {"transport": "local", "runtime": "onnxruntime", "warmup": 1,
                                                   "repeats": 5, "min_time_s": 0})
    remote = parse_device(Path("d.yaml"), "rpi", server.device_entry())
    fresh = ArtifactCache(tmp_path / "fresh")
    farm = run_farm([local, remote], SPECS, fresh, lut_folder=tmp_path, progress=False, export_workers=0,
                    transport_factory=factory)
    assert farm.exit_code == 0, farm
    kinds = [k for k, _ in events]
    assert kinds.count("export") == len(SPECS)  # shared by both devices: converted once
    assert max(i for i, k in enumerate(kinds) if k == "export") < kinds.index("measure")
    assert sum(r.measured for r in farm.results) == 2 * len(SPECS)


@pytest.mark.ssh
@needs_sshd
def test_cli_device_all_and_a_lost_device_does_not_stop_the_others(tmp_path, server, cache, capsys):
    import os

    from profiler.run import main

    from sshd import free_port

    devices = write_devices(tmp_path / "devices.yaml", {
        "rpi4": server.device_entry(),
        "gpubox": server.device_entry(port=free_port(), retries=0, connect_timeout_s=2),
    })
    cwd = os.getcwd()
    os.chdir(tmp_path)  # default LUT folder: ./luts
    try:
        code = main(["--device", "all", "--devices", str(devices), "--space", "tiny", "--limit", "4", "--no-overhead-probes",
                     "--cache", str(cache.root), "--no-progress", "--json"])
    finally:
        os.chdir(cwd)
    captured = capsys.readouterr()
    assert code == 1
    runs = {r["device"]: r for r in json.loads(captured.out.strip().splitlines()[-1])["runs"]}
    assert runs["rpi4"]["measured"] == 4 and not runs["rpi4"]["device_lost"]
    assert "gpubox" in runs["gpubox"]["device_lost"]
    assert len(read_rows(tmp_path / "luts" / "rpi4.csv")) == 4
    assert (tmp_path / "luts" / "rpi4.run.json").exists()
    assert [ln for ln in captured.err.splitlines() if ln.startswith("error:")][0].startswith("error: gpubox")


def test_ctrl_c_stops_conversions_at_once_and_records_no_failure_for_them(tmp_path):
    """profiler.run's Ctrl-C path (run_farm calls ExportBroker.abort): conversions still
    under way stop at once, their workers terminated rather than waited for and no new pool
    started, and a device waiting for them stops before its next block without recording the
    cancelled export as that block's failure (which would count against its attempts)."""
    import time

    from profiler.measure import ProfileCancelled, profile_device

    local = parse_device(Path("d.yaml"), "local", {"transport": "local", "runtime": "onnxruntime", "warmup": 1,
                                                   "repeats": 5, "min_time_s": 0})
    cache = ArtifactCache(tmp_path / "fresh")  # nothing converted yet
    broker = ExportBroker(cache, workers=1)
    lut = tmp_path / "l.csv"
    stopped: list[BaseException] = []

    def device() -> None:
        try:
            profile_device(local, SPECS, "onnxruntime", lut, cache, progress=False, broker=broker)
        except ProfileCancelled as exc:
            stopped.append(exc)

    thread = threading.Thread(target=device)
    thread.start()
    time.sleep(1.0)  # the spawned worker is still importing its converters
    t0 = time.monotonic()
    broker.abort()
    thread.join(timeout=60)
    assert not thread.is_alive() and stopped and time.monotonic() - t0 < 15
    assert broker._pool is None  # no pool started again for the cancelled task
    assert not lut.exists() or all(r["status"] == "ok" for r in read_rows(lut))
    broker.close()
