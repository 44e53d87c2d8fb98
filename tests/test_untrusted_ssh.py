"""SSH against a real OpenSSH sshd on 127.0.0.1 (tests/sshd.py): known_hosts markers and
comments, accept-new appending exactly one line, a private remote run folder, and remote
commands bounded by one deadline and a byte cap however the device answers."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest

from profiler.devices import parse_device
from profiler.transport import TransportError
from sshd import SshServer, keygen, sshd_missing

pytestmark = [pytest.mark.ssh, pytest.mark.skipif(bool(sshd_missing()), reason=sshd_missing() or "ok")]

SK_LINE = ("sk.example.com sk-ssh-ed25519@openssh.com AAAAGnNrLXNzaC1lZDI1NTE5QG9wZW5zc2guY29tAAAAIIs7"
           "8WSnDf9Qm9rhsWJ3ChCAwfNtBdyf1uW4R7MH5Zs6AAAABHNzaDo= a security key\n")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = SshServer(tmp_path_factory.mktemp("sshd")).start()
    yield srv
    srv.kill()


def _pub(path: Path) -> str:
    return " ".join(Path(str(path) + ".pub").read_text().split()[:2])


def transport(server, **extra):
    from profiler.transport_ssh import SSHTransport

    return SSHTransport(parse_device(Path("devices.yaml"), "lo", server.device_entry(**extra)))


def connect_error(server, **extra) -> str:
    t = transport(server, **extra)
    with pytest.raises(TransportError) as exc:
        t.open()
    assert getattr(exc.value, "permanent", False) and "\n" not in str(exc.value)
    return str(exc.value)


def known_hosts_with_noise(tmp_path, server, *lines: str) -> Path:
    other = keygen(tmp_path / "other_key")
    kh = tmp_path / "known_hosts"
    kh.write_text("# my hosts\n"
                  f"@cert-authority *.example.com {_pub(other)} the company CA\n"
                  f"@revoked revoked.example.com {_pub(other)}\n"
                  + SK_LINE
                  + f"box.example.com {_pub(other)}\n"
                  + "".join(lines))
    return kh


def test_markers_and_comments_in_known_hosts_do_not_break_verification(tmp_path, server):
    real = server.known_hosts.read_text()
    kh = known_hosts_with_noise(tmp_path, server, real)
    t = transport(server, known_hosts=str(kh))
    t.open()
    try:
        assert t.run(["true"], timeout=10)[0] == 0
    finally:
        t.close()


def test_a_revoked_host_key_is_refused_even_when_listed(tmp_path, server):
    real = server.known_hosts.read_text()
    name, kind, b64 = real.split()
    kh = known_hosts_with_noise(tmp_path, server, real, f"@revoked * {kind} {b64}\n")
    msg = connect_error(server, known_hosts=str(kh))
    assert "@revoked" in msg and "refusing" in msg
    msg = connect_error(server, known_hosts=str(kh), insecure_accept_new_host_key=True)
    assert "@revoked" in msg


def test_a_host_trusted_only_by_a_cert_authority_is_refused_with_the_reason(tmp_path, server):
    kh = known_hosts_with_noise(tmp_path, server)
    msg = connect_error(server, known_hosts=str(kh))
    assert "not in known_hosts" in msg and "@cert-authority" in msg


@pytest.mark.parametrize("trailing_newline", [True, False])
def test_accept_new_appends_one_line_and_keeps_every_other_byte(tmp_path, server, trailing_newline):
    other = keygen(tmp_path / "second_key")
    kh = known_hosts_with_noise(tmp_path, server, f"box.example.com {_pub(other)}  # second key of a host")
    if trailing_newline:
        kh.write_text(kh.read_text() + "\n")
    before = kh.read_bytes()
    t = transport(server, known_hosts=str(kh), insecure_accept_new_host_key=True)
    t.open()
    t.close()
    after = kh.read_bytes()
    assert after.startswith(before)
    added = after[len(before):].decode()
    name, kind, b64 = server.known_hosts.read_text().split()
    assert added == ("" if trailing_newline else "\n") + f"{name} {kind} {b64}\n"
    t = transport(server, known_hosts=str(kh))  # remembered: verified without accept-new now
    t.open()
    t.close()
    assert kh.read_bytes() == after


def test_the_run_folder_is_private_and_fresh(tmp_path, server):
    t = transport(server, workdir="")
    t.open()
    try:
        first = Path(t.rundir)
        st = first.stat()
        assert st.st_uid == os.getuid() and stat.S_IMODE(st.st_mode) == 0o700
        assert first.parent == Path(os.environ.get("TMPDIR", "/tmp")) and first.name.startswith("hwnas-run-")
    finally:
        t.close()
    assert not first.exists()


@pytest.mark.parametrize("owner, mode", [(None, 0o777), (65534, 0o755)])
def test_a_workdir_others_can_write_or_own_is_refused(tmp_path, server, owner, mode):
    base = tmp_path / "shared"
    base.mkdir()
    base.chmod(mode)
    if owner is not None:
        if os.geteuid() != 0:
            pytest.skip("needs root to give the folder to another user")
        os.chown(base, owner, -1)
    msg = connect_error(server, workdir=str(base))
    assert f"field 'workdir': {base}" in msg and "writable by nobody else" in msg
    assert list(base.iterdir()) == []


def test_a_workdir_under_a_folder_others_can_write_is_refused(tmp_path, server):
    """The workdir itself may be private: a folder above it that another user may write in
    (no sticky bit) lets them rename it and put their own in its place."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    mine = shared / "mine"
    mine.mkdir(mode=0o700)
    msg = connect_error(server, workdir=str(mine))
    assert f"field 'workdir': {mine} (through {shared}) is owned by uid" in msg and "mode 777" in msg
    assert list(mine.iterdir()) == []
    # through a symlink, the folder it resolves to is checked too
    link = tmp_path / "link"
    link.symlink_to(mine)
    msg = connect_error(server, workdir=str(link))
    assert f"(through {shared})" in msg
    # a sticky folder (as /tmp) above it is fine: others cannot rename what is ours
    shared.chmod(0o1777)
    t = transport(server, workdir=str(mine))
    t.open()
    try:
        assert Path(t.rundir).parent == mine
    finally:
        t.close()


def test_remote_commands_have_one_deadline_and_a_byte_cap(server):
    t = transport(server)
    t.open()
    try:
        t0 = time.monotonic()
        with pytest.raises(TransportError, match="timed out after 2 s"):
            t.run(["sh", "-c", "while :; do echo x; sleep 0.2; done"], timeout=2)
        assert time.monotonic() - t0 < 6
        with pytest.raises(TransportError, match="printed more than"):
            t.run(["head", "-c", "5000000", "/dev/zero"], timeout=30)
        assert t.run(["echo", "still here"], timeout=10)[1] == "still here\n"
    finally:
        t.close()


def test_pattern_lines_and_case_are_matched_as_openssh_does(tmp_path, server):
    """A known_hosts line with a wildcard pattern vouches for the hosts it matches (paramiko
    alone compares it as a plain name, so accept-new would have appended any key), a negated
    pattern excludes, and host names compare case-insensitively."""
    from profiler.transport_ssh import host_matches

    assert host_matches(["*.lab"], "RPi4.Lab") and not host_matches(["*.lab", "!rpi4.lab"], "rpi4.lab")
    assert host_matches(["[127.0.0.?]:2222"], "[127.0.0.1]:2222") and not host_matches(["*.lab"], "rpi4.lan")
    name, kind, b64 = server.known_hosts.read_text().split()
    pattern = name.replace("127.0.0.1", "127.0.0.*")
    other = keygen(tmp_path / "other_key")
    kh = tmp_path / "known_hosts"
    kh.write_text(f"{pattern} {_pub(other)}\n")  # the pattern vouches for another key: a changed key
    before = kh.read_bytes()
    msg = connect_error(server, known_hosts=str(kh), insecure_accept_new_host_key=True)
    assert "does not match" in msg and kh.read_bytes() == before
    kh.write_text(f"{pattern} {kind} {b64}\n")  # the right key under a pattern: verified, nothing added
    before = kh.read_bytes()
    t = transport(server, known_hosts=str(kh))
    t.open()
    t.close()
    assert kh.read_bytes() == before
    kh.write_text(f"{name.upper()} {kind} {b64}\n")  # as written by hand; OpenSSH ignores the case
    t = transport(server, known_hosts=str(kh))
    t.open()
    t.close()
