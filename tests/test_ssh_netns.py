"""A second SSH host in its own network namespace, joined by a veth pair (root only): profile
it as a separate host, and together with the loopback host as a two-device farm.  Traffic
goes only to the two addresses of the pair created here."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pytest

from profiler.devices import parse_device
from profiler.lut import read_rows
from supernet.space import TINY

from sshd import NetnsPair, SshServer, netns_missing, shared_artifact_cache, sshd_missing, write_devices

pytestmark = [pytest.mark.ssh, pytest.mark.netns,
              pytest.mark.skipif(bool(sshd_missing() or netns_missing()),
                                 reason=sshd_missing() or netns_missing() or "ok")]

SPECS = TINY.all_blocks()[:4]


@pytest.fixture(scope="module")
def netns_host(tmp_path_factory):
    pair = NetnsPair(f"hwnas-{uuid.uuid4().hex[:8]}", subnet=100 + os.getpid() % 150).create()
    try:
        srv = SshServer(tmp_path_factory.mktemp("sshd-netns"), host=pair.ns_addr, port=2222, netns=pair.name).start()
        try:
            yield srv
        finally:
            srv.kill()
    finally:
        pair.delete()


def test_profile_a_host_in_another_network_namespace(tmp_path, netns_host):
    from profiler.transport_ssh import SSHTransport

    cache = shared_artifact_cache(SPECS)
    dev = parse_device(Path("d.yaml"), "netpi", netns_host.device_entry())
    t = SSHTransport(dev)
    t.open()
    try:
        # sshd sees us coming from our end of the pair, on its end of it
        _, out, _ = t.run(["sh", "-c", 'echo "$SSH_CONNECTION"'], timeout=10)
    finally:
        t.close()
    client, _, server, port = out.split()
    assert server == netns_host.host and port == "2222" and client.startswith(netns_host.host.rsplit(".", 1)[0])

    lo = SshServer(tmp_path / "sshd-lo").start()
    try:
        from profiler.run import main
        import contextlib
        import io

        devices = write_devices(tmp_path / "devices.yaml", {"lo": lo.device_entry(), "netpi": netns_host.device_entry()})
        out = io.StringIO()
        cwd = os.getcwd()
        os.chdir(tmp_path)
        try:
            with contextlib.redirect_stdout(out):
                code = main(["--device", "lo,netpi", "--devices", str(devices), "--space", "tiny", "--limit", "4", "--no-overhead-probes",
                             "--cache", str(cache.root), "--no-progress", "--json"])
        finally:
            os.chdir(cwd)
    finally:
        lo.kill()
    assert code == 0
    runs = {r["device"]: r for r in json.loads(out.getvalue().strip().splitlines()[-1])["runs"]}
    assert runs["lo"]["measured"] == 4 and runs["netpi"]["measured"] == 4
    for name in ("lo", "netpi"):
        rows = read_rows(tmp_path / "luts" / f"{name}.csv")
        assert len(rows) == 4 and all(r["status"] == "ok" and r["device"] == name for r in rows)
