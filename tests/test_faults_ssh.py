"""Faults over a real sshd: the device dies in the middle of a run (sshd and every session
killed), comes back, and a rerun resumes with no row lost or duplicated; a runner killed on
a live device is restarted and the block retried."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from profiler.devices import parse_device
from profiler.lut import journal_path, read_rows
from profiler.measure import profile_device
from profiler.transport_ssh import SSHTransport
from supernet.space import TINY

from sshd import SshServer, shared_artifact_cache, sshd_missing, write_devices

pytestmark = [pytest.mark.ssh, pytest.mark.skipif(bool(sshd_missing()), reason=sshd_missing() or "ok")]

SPECS = TINY.all_blocks()[:4]


@pytest.fixture(scope="module")
def cache():
    return shared_artifact_cache(SPECS)


class FaultAt(SSHTransport):
    """Runs ``action(self)`` right after pushing the ``at``-th model, i.e. while that block
    is about to be measured."""

    def __init__(self, device, at: int, action):
        super().__init__(device)
        self.at, self.action, self.staged, self.connects = at, action, 0, 0

    def _connect_client(self):
        self.connects += 1
        return super()._connect_client()

    def stage(self, local_path):
        remote = super().stage(local_path)
        self.staged += 1
        if self.staged == self.at:
            self.action(self)
        return remote


def test_device_dies_mid_run_then_resume_loses_and_duplicates_nothing(tmp_path, cache):
    from profiler.run import main

    server = SshServer(tmp_path / "sshd").start()
    try:
        entry = server.device_entry(retries=1, connect_timeout_s=2)
        dev = parse_device(Path("t.yaml"), "pi", entry)
        lut = tmp_path / "pi.csv"
        res = profile_device(dev, SPECS, "onnxruntime", lut, cache, progress=False,
                             transport=FaultAt(dev, 3, lambda t: server.kill()))
        # the failure is reported, what was measured is kept, the lost block is not a row
        assert res.device_lost and "unreachable" in res.device_lost and "pi" in res.device_lost
        assert res.measured == 2 and res.failed == 0
        rows = read_rows(lut)
        assert sorted(r["key"] for r in rows) == sorted(str(s) for s in SPECS[:2])

        server.start()
        devices = write_devices(tmp_path / "devices.yaml", {"pi": entry})
        import contextlib
        import io

        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = main(["--device", "pi", "--devices", str(devices), "--space", "tiny", "--limit", "4", "--no-overhead-probes",
                         "--cache", str(cache.root), "--no-progress", "--json", "--lut", str(lut)])
        assert code == 0
        run = json.loads(out.getvalue().strip().splitlines()[-1])["runs"][0]
        assert run["measured"] == 2 and run["skipped"] == 2 and not run["device_lost"]
    finally:
        server.kill()

    rows = read_rows(lut)
    keys = [r["key"] for r in rows]
    assert sorted(keys) == sorted(str(s) for s in SPECS)          # nothing lost
    assert len(keys) == len(set(keys))                              # nothing duplicated
    assert all(r["status"] == "ok" for r in rows)
    journal = [json.loads(line) for line in journal_path(lut).read_text().splitlines()]
    # the first run died in its first sweep: its two blocks were timed once; the resumed run
    # timed the other two in both sweeps (a row written after each)
    assert sorted(j["key"] for j in journal) == sorted([str(s) for s in SPECS[:2]] + [str(s) for s in SPECS[2:]] * 2)
    assert [r["sweeps"] for r in rows] == [1 if r["key"] in {str(s) for s in SPECS[:2]} else 2 for r in rows]


def test_runner_killed_on_a_live_device_is_restarted_and_the_block_retried(tmp_path, cache):
    server = SshServer(tmp_path / "sshd").start()
    try:
        dev = parse_device(Path("t.yaml"), "pi", server.device_entry(retries=2, connect_timeout_s=5))

        def kill_runner(t: SSHTransport) -> None:
            pids = [str(pid) for _, pid in t._channels]
            t.run(["kill", "-9", *pids], timeout=10)

        transport = FaultAt(dev, 2, kill_runner)
        res = profile_device(dev, SPECS, "onnxruntime", tmp_path / "pi.csv", cache, progress=False,
                             transport=transport)
        assert res.measured == 4 and res.failed == 0 and not res.device_lost
        assert transport.connects == 2  # reconnected once
    finally:
        server.kill()
