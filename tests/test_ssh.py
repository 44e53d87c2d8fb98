"""SSH transport against a real OpenSSH sshd on 127.0.0.1 (started by the test), host-key
verification on: end-to-end profiling through the CLI, TCP_NODELAY and one connection per
run, host-key refusal, quoting of hostile remote paths, unreachable devices, timeouts."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from profiler.devices import parse_device
from profiler.lut import LutTable, read_rows
from supernet.space import TINY

from sshd import SshServer, free_port, keygen, shared_artifact_cache, sshd_missing, write_devices

pytestmark = [pytest.mark.ssh, pytest.mark.skipif(bool(sshd_missing()), reason=sshd_missing() or "ok")]

SPECS = TINY.all_blocks()[:4]


@pytest.fixture(scope="module")
def cache():
    return shared_artifact_cache(SPECS)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = SshServer(tmp_path_factory.mktemp("sshd")).start()
    yield srv
    srv.kill()


def run_cli(tmp_path: Path, entries: dict, device: str, cache, *extra: str) -> tuple[int, dict]:
    from profiler.run import main

    devices = write_devices(tmp_path / "devices.yaml", entries)
    argv = ["--device", device, "--devices", str(devices), "--space", "tiny", "--limit", "4", "--no-overhead-probes",
            "--cache", str(cache.root), "--no-progress", "--json", *extra]
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code
    text = out.getvalue().strip()
    return code, (json.loads(text.splitlines()[-1]) if text else {})


def test_profile_end_to_end_with_host_key_verification(tmp_path, server, cache):
    lut = tmp_path / "lo.csv"
    code, summary = run_cli(tmp_path, {"lo": server.device_entry()}, "lo", cache, "--lut", str(lut))
    assert code == 0, summary
    run = summary["runs"][0]
    assert run["measured"] == 4 and run["failed"] == 0 and not run["device_lost"]
    rows = read_rows(lut)
    assert sorted(r["key"] for r in rows) == sorted(str(s) for s in SPECS)
    assert all(r["status"] == "ok" and r["device"] == "lo" and r["median_ms"] > 0 for r in rows)
    assert all(r["host"] and r["runtime_version"] for r in rows)
    # the run folder is gone and the (then empty) work folder with it
    assert not (server.root / "remote").exists()
    # a rerun measures nothing and connects to nobody
    code, summary = run_cli(tmp_path, {"lo": server.device_entry()}, "lo", cache, "--lut", str(lut))
    assert code == 0 and summary["runs"][0]["skipped"] == 4 and summary["runs"][0]["measured"] == 0


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity on this system")
def test_the_remote_runner_is_pinned_to_the_cpu_mask(tmp_path, server, cache):
    last = max(os.sched_getaffinity(0))  # the sshd's sessions run on this machine
    code, summary = run_cli(tmp_path, {"lo": server.device_entry(cpu_mask=format(1 << last, "x"))}, "lo", cache,
                            "--lut", str(tmp_path / "lo.csv"))
    assert code == 0, summary
    assert summary["runs"][0]["measured"] == 4 and summary["runs"][0]["cpus"] == str(last)


def test_round_robin_measures_a_group_over_ssh(tmp_path, server, cache):
    """--context round-robin over SSH: every model of the group staged, timed in one request
    in rotation, unstaged; the rows say round-robin."""
    lut = tmp_path / "rr.csv"
    code, summary = run_cli(tmp_path, {"lo": server.device_entry()}, "lo", cache, "--lut", str(lut),
                            "--context", "round-robin")
    assert code == 0, summary
    run = summary["runs"][0]
    assert run["measured"] == 4 and run["failed"] == 0 and not run["device_lost"]
    rows = read_rows(lut)
    # --limit takes the first blocks in network-by-network order (consecutive blocks are neighbours)
    assert [r["key"] for r in rows] == [str(s) for s in TINY.all_blocks(by_network=True)[:4]]
    assert all(r["status"] == "ok" and r["context"] == "round-robin" and r["median_ms"] > 0 for r in rows)
    assert not (server.root / "remote").exists()


def test_one_connection_per_run_with_tcp_nodelay(tmp_path, server, cache):
    from profiler.measure import profile_device
    from profiler.transport_ssh import SSHTransport, tcp_nodelay

    dev = parse_device(Path("t.yaml"), "lo", server.device_entry())
    seen = []

    class Counting(SSHTransport):
        def _connect_client(self):
            client = super()._connect_client()
            seen.append(tcp_nodelay(client.get_transport().sock))
            return client

    res = profile_device(dev, SPECS, "onnxruntime", tmp_path / "lo.csv", cache, progress=False,
                         transport=Counting(dev))
    assert res.measured == 4 and not res.device_lost
    assert seen == [True]


def test_unknown_host_key_is_refused_and_accept_new_is_explicit(tmp_path, server, cache):
    other = tmp_path / "known_hosts"
    other.write_text("")
    code, summary = run_cli(tmp_path, {"lo": server.device_entry(known_hosts=str(other), retries=3)}, "lo", cache,
                            "--lut", str(tmp_path / "a.csv"))
    assert code == 1
    lost = summary["runs"][0]["device_lost"]
    assert "not in known_hosts" in lost and "refusing" in lost
    assert "unreachable after" not in lost  # permanent: not retried
    assert not (tmp_path / "a.csv").exists() or not read_rows(tmp_path / "a.csv")

    fresh = tmp_path / "sub" / "known_hosts"
    code, summary = run_cli(tmp_path, {"lo": server.device_entry(known_hosts=str(fresh),
                                                                 insecure_accept_new_host_key=True)},
                            "lo", cache, "--lut", str(tmp_path / "b.csv"), "--limit", "1", "--no-overhead-probes")
    assert code == 0 and summary["runs"][0]["measured"] == 1
    assert f"[127.0.0.1]:{server.port}" in fresh.read_text()  # remembered, like accept-new


def test_changed_host_key_is_refused(tmp_path, server, cache):
    wrong = keygen(tmp_path / "other_host_key")
    pub = Path(str(wrong) + ".pub").read_text().split()
    kh = tmp_path / "known_hosts"
    kh.write_text(f"[127.0.0.1]:{server.port} {pub[0]} {pub[1]}\n")
    code, summary = run_cli(tmp_path, {"lo": server.device_entry(known_hosts=str(kh),
                                                                 insecure_accept_new_host_key=True)},
                            "lo", cache, "--lut", str(tmp_path / "a.csv"))
    assert code == 1
    assert "host key does not match" in summary["runs"][0]["device_lost"]


def test_password_env_must_be_set(tmp_path, server, cache, monkeypatch):
    monkeypatch.delenv("HWNAS_TEST_NO_SUCH_PASSWORD", raising=False)
    code, summary = run_cli(tmp_path, {"lo": server.device_entry(password_env="HWNAS_TEST_NO_SUCH_PASSWORD")},
                            "lo", cache, "--lut", str(tmp_path / "a.csv"))
    assert code == 1
    assert "HWNAS_TEST_NO_SUCH_PASSWORD" in summary["runs"][0]["device_lost"]


def test_hostile_remote_paths_are_quoted(tmp_path, server, cache):
    canary = tmp_path / "pwned"
    workdir = str(tmp_path / "work dir; touch $(echo") + f" {canary}) 'q'"
    code, summary = run_cli(tmp_path, {"lo": server.device_entry(workdir=workdir)}, "lo", cache,
                            "--lut", str(tmp_path / "q.csv"), "--limit", "2", "--no-overhead-probes")
    assert code == 0, summary
    assert summary["runs"][0]["measured"] == 2
    assert not canary.exists()
    assert not Path(workdir).exists()  # cleaned up, even with that name


def test_unreachable_device_is_one_clear_error(tmp_path, server, cache, capsys):
    from profiler.run import main

    entry = server.device_entry(port=free_port(), retries=1, connect_timeout_s=2)
    devices = write_devices(tmp_path / "devices.yaml", {"gone": entry})
    lut = tmp_path / "gone.csv"
    code = main(["--device", "gone", "--devices", str(devices), "--space", "tiny", "--limit", "2", "--no-overhead-probes",
                 "--cache", str(cache.root), "--no-progress", "--lut", str(lut)])
    err = capsys.readouterr().err
    assert code == 1
    line = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(line) == 1 and "gone" in line[0] and "unreachable" in line[0] and "rerun to resume" in line[0]


def test_timeouts_are_failure_rows_and_are_not_retried_forever(tmp_path, server, cache):
    from profiler.measure import profile_device

    # min_time 30 s cannot finish within a 1.5 s block timeout
    dev = parse_device(Path("t.yaml"), "slow", server.device_entry(min_time_s=30, max_time_s=60, timeout_s=1.5,
                                                                   max_attempts=1))
    lut = tmp_path / "slow.csv"
    res = profile_device(dev, SPECS[:1], "onnxruntime", lut, cache, progress=False)
    assert res.failed == 1 and res.measured == 0 and not res.device_lost
    row = LutTable.load(lut).get(str(SPECS[0]), "onnxruntime")
    assert row["status"] == "error" and row["error"].startswith("timeout") and row["attempts"] == 1
    res = profile_device(dev, SPECS[:1], "onnxruntime", lut, cache, progress=False)
    assert res.todo == 0 and res.skipped == 1  # gave up after max_attempts
    # the timed-out runners were killed, not left spinning on the device
    mine = str(server.root / "remote")
    assert not any(mine in _cmdline(p) for p in os.listdir("/proc") if p.isdigit())


def _cmdline(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def test_unavailable_execution_provider_is_refused_not_silently_replaced(tmp_path, server, cache):
    code, summary = run_cli(tmp_path, {"gpu": server.device_entry(providers=["TensorrtExecutionProvider",
                                                                              "CPUExecutionProvider"])},
                            "gpu", cache, "--lut", str(tmp_path / "g.csv"))
    assert code == 1
    lost = summary["runs"][0]["device_lost"]
    assert "field 'providers'" in lost and "TensorrtExecutionProvider" in lost and "CPUExecutionProvider" in lost
