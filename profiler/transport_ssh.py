"""SSH transport (paramiko): one connection per run, sftp for files, the runner over exec.

- Authentication by key file or ssh-agent; never a password from a file.  An entry may name
  an environment variable holding a password (``password_env``).
- Host keys are checked against ``known_hosts`` (the entry's file, default
  ``~/.ssh/known_hosts``), read here line by line: a key under ``@revoked`` is refused even
  where another line lists it; ``@cert-authority`` lines are skipped (host certificates are
  not verified, so they trust no plain key), as are lines of key types paramiko lacks and
  malformed lines (they trust nothing).  An unknown host is refused unless the entry says
  ``insecure_accept_new_host_key: true``: then exactly one line is appended to that file,
  like OpenSSH's ``accept-new``, every other byte kept; a changed key is always refused.
- ``TCP_NODELAY`` on the socket: without it every small request/reply waits for Nagle and
  delayed ACKs (a command round trip measured 44 ms; with it about 2 ms).
- One connection and one sftp session serve the whole run; the runner
  (``profiler/runner.py``) is pushed once into a private run folder made by ``mktemp -d``
  (mode 0700): under ``$TMPDIR`` (else ``/tmp``) on the device, or under the entry's
  ``workdir``, which, with every folder above it (as written and as resolved), must be the
  user's (or root's) and writable by nobody else unless sticky (OpenSSH's rule for
  ``authorized_keys``), so no other user of the device can swap the runner.  It is driven
  in ``serve`` mode over one exec channel; models are pushed per block and removed after.
  ``close`` removes the run folder.
- Every remote command is built with ``shlex.quote``/``shlex.join``; nothing unquoted ever
  reaches the remote shell.  Remote commands have timeouts.

Errors that retrying cannot fix (unknown or changed host key, authentication refused, a
missing key file) are ``TransportError``s with ``permanent = True``; the measurement loop
reports them at once instead of reconnecting.
"""

from __future__ import annotations

import os
import queue
import re
import shlex
import socket
import time
from pathlib import Path
from typing import Any

import paramiko

from .transport import (MAX_OUTPUT_BYTES, RUNNER_PATH, RunnerChannel, Transport, TransportError, fatal, pump_lines,
                        register_transport, remote_serve_command)

DEFAULT_KNOWN_HOSTS = "~/.ssh/known_hosts"


# Checks a workdir on the device: prints the user's uid, then "uid mode path" of the folder
# and of every folder above it, both as written (symlinks followed: stat -L) and as resolved
# (pwd -P).  Arguments only ("$1"), nothing interpolated.
_CHECK_WORKDIR = r"""
mkdir -p -- "$1" || exit 1
id -u || exit 1
up() {
  d=$1
  while :; do
    stat -L -c "%u %a %n" -- "$d" || exit 1
    case $d in /|.) break;; esac
    d=$(dirname -- "$d")
  done
}
up "$1"
up "$(cd -- "$1" && pwd -P)"
"""


class _UnknownHostKey(paramiko.SSHException):
    pass


class _RevokedHostKey(paramiko.SSHException):
    pass


class _HostKeyPolicy(paramiko.MissingHostKeyPolicy):
    """A host key not in known_hosts: refused when revoked; appended as one line with
    ``accept_new``; refused otherwise."""

    def __init__(self, known_hosts: str, revoked: set[str], accept_new: bool, ca_lines: int,
                 patterns: list[tuple[list[str], paramiko.PKey]] | None = None):
        self.known_hosts, self.revoked, self.accept_new, self.ca_lines = known_hosts, revoked, accept_new, ca_lines
        self.patterns = patterns or []

    def missing_host_key(self, client, hostname, key):  # noqa: D401 - paramiko's interface
        what = f"{hostname} presents a {key.get_name()} host key (SHA256:{_fingerprint(key)})"
        if key.get_base64() in self.revoked:
            raise _RevokedHostKey(f"{what} that known_hosts marks @revoked")
        # lines with wildcard or negated patterns, which paramiko compares as plain names
        known = [k for pats, k in self.patterns if k.get_name() == key.get_name() and host_matches(pats, hostname)]
        if known:
            if any(k.get_base64() == key.get_base64() for k in known):
                return  # the key a matching pattern line lists
            raise paramiko.BadHostKeyException(hostname, key, known[0])
        if not self.accept_new:
            ca = (f"; its {self.ca_lines} @cert-authority line(s) are not used (hwnas does not verify host "
                  f"certificates)" if self.ca_lines else "")
            raise _UnknownHostKey(f"{what} that is not in known_hosts{ca}")
        if any(c.isspace() or not c.isprintable() for c in hostname):
            raise _UnknownHostKey(f"{what}; the host name {hostname!r} cannot be written to known_hosts")
        append_known_host(self.known_hosts, f"{hostname} {key.get_name()} {key.get_base64()}")


def host_matches(patterns: list[str], name: str) -> bool:
    """OpenSSH's known_hosts matching of one line's host patterns against ``name`` (``host``
    or ``[host]:port``), case-insensitively: ``*`` and ``?`` wildcards, and a matching
    ``!pattern`` excludes the line whatever else matches."""
    name, hit = name.lower(), False
    for pat in patterns:
        negated = pat.startswith("!")
        # only * and ? are special (``[host]:port`` brackets are literal, unlike fnmatch's)
        rx = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pat[negated:].lower())
        if re.fullmatch(rx, name, re.DOTALL):
            if negated:
                return False
            hit = True
    return hit


def read_known_hosts(path: str, keys: paramiko.HostKeys,
                     patterns: list[tuple[list[str], paramiko.PKey]] | None = None) -> tuple[set[str], int]:
    """Add the host keys of an OpenSSH known_hosts file to ``keys`` (see the module
    docstring), and lines with wildcard or negated host patterns to ``patterns`` (paramiko
    would compare those as plain names); return the base64 of its ``@revoked`` keys and its
    number of ``@cert-authority`` lines.  Raises OSError or UnicodeDecodeError."""
    entries, revoked, ca_lines = [], set(), 0
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        marker = ""
        if line.startswith("@"):
            marker, _, line = line.partition(" ")
            line = line.strip()
            if marker != "@revoked":
                ca_lines += marker == "@cert-authority"
                continue
        try:
            entry = paramiko.hostkeys.HostKeyEntry.from_line(line, n)
        except (paramiko.hostkeys.InvalidHostKey, paramiko.SSHException, ValueError, TypeError, IndexError):
            continue  # a malformed line trusts nothing, as in OpenSSH
        if entry is None:
            continue  # a key type paramiko does not know (sk-ssh-ed25519@openssh.com ...)
        if marker:
            revoked.add(entry.key.get_base64())
        else:
            entries.append(entry)
    for entry in entries:
        if entry.key.get_base64() not in revoked:
            if patterns is not None and any(c in name for name in entry.hostnames for c in "*?!"):
                patterns.append((list(entry.hostnames), entry.key))
                continue
            for name in entry.hostnames:
                keys.add(name.lower() if not name.startswith("|") else name, entry.key.get_name(), entry.key)
    return revoked, ca_lines


def append_known_host(path: str, line: str) -> None:
    """Append one line to known_hosts (created 0600 if missing), after a newline if the file
    does not end with one; nothing else in the file changes."""
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
    with os.fdopen(fd, "rb+") as fh:
        size = fh.seek(0, os.SEEK_END)
        fh.seek(max(0, size - 1))
        lead = b"\n" if size and fh.read(1) != b"\n" else b""
        fh.write(lead + line.encode() + b"\n")
        fh.flush()
        os.fsync(fh.fileno())


def _fingerprint(key: paramiko.PKey) -> str:
    import base64
    import hashlib

    return base64.b64encode(hashlib.sha256(key.asbytes()).digest()).decode().rstrip("=")


def remote_path(path: str) -> str:
    """A remote path as sshd's shell and sftp see it: ``~/x`` is relative to the login
    folder (both start there); anything else is used as written."""
    if path == "~":
        return "."
    if path.startswith("~/"):
        return path[2:] or "."
    return path


@register_transport
class SSHTransport(Transport):
    """A device reached over SSH (see the module docstring)."""

    name = "ssh"

    def __init__(self, device):
        super().__init__(device)
        self._client: paramiko.SSHClient | None = None
        self._sftp: paramiko.SFTPClient | None = None
        self.rundir = ""
        self._base = ""
        self.runner_path = ""
        self._channels: list[tuple[paramiko.Channel, int]] = []
        d = device
        self.where = f"{d.name} ({d.user}@{d.host}:{d.port})"

    # connection -------------------------------------------------------------------------
    def _connect_client(self) -> paramiko.SSHClient:
        d = self.device
        password = None
        if d.password_env:
            password = os.environ.get(d.password_env)
            if password is None:
                raise fatal(f"{self.where}: environment variable {d.password_env} named by field "
                            f"'password_env' is not set")
        key_file = d.expand(d.key_file)
        if key_file and not os.path.isfile(key_file):
            raise fatal(f"{self.where}: field 'key_file': no such file {key_file}")
        known_hosts = d.expand(d.known_hosts or DEFAULT_KNOWN_HOSTS)
        if not os.path.isfile(known_hosts) and not d.insecure_accept_new_host_key:
            raise fatal(f"{self.where}: field 'known_hosts': no such file {known_hosts} (host keys are "
                        f"verified; add the host's key there, e.g. ssh-keyscan -p {d.port} {d.host})")
        client = paramiko.SSHClient()
        revoked: set[str] = set()
        ca_lines = 0
        patterns: list[tuple[list[str], paramiko.PKey]] = []
        try:
            if os.path.isfile(known_hosts):
                revoked, ca_lines = read_known_hosts(known_hosts, client.get_host_keys(), patterns)
            else:
                Path(known_hosts).parent.mkdir(parents=True, exist_ok=True)
        except (OSError, UnicodeDecodeError) as exc:
            raise fatal(f"{self.where}: field 'known_hosts': cannot read {known_hosts}: {exc}") from None
        client.set_missing_host_key_policy(
            _HostKeyPolicy(known_hosts, revoked, d.insecure_accept_new_host_key, ca_lines, patterns))
        try:
            sock = socket.create_connection((d.host, d.port), timeout=d.connect_timeout_s)
        except OSError as exc:
            raise TransportError(f"{self.where}: cannot connect: {exc.strerror or exc}") from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            client.connect(  # known_hosts names are matched case-insensitively, as by OpenSSH
                d.host.lower(), port=d.port, username=d.user or None, sock=sock,
                key_filename=key_file or None, password=password,
                allow_agent=True, look_for_keys=False,
                timeout=d.connect_timeout_s, banner_timeout=d.connect_timeout_s,
                auth_timeout=d.connect_timeout_s, channel_timeout=d.connect_timeout_s,
            )
        except _RevokedHostKey as exc:
            sock.close()
            raise fatal(f"{self.where}: {exc} ({known_hosts}); refusing to connect") from None
        except _UnknownHostKey as exc:
            sock.close()
            raise fatal(f"{self.where}: {exc} ({known_hosts}); refusing to connect (set "
                        f"insecure_accept_new_host_key: true only if you trust this network)") from None
        except paramiko.BadHostKeyException as exc:
            sock.close()
            raise fatal(f"{self.where}: host key does not match {known_hosts} (expected "
                        f"SHA256:{_fingerprint(exc.expected_key)}, got SHA256:{_fingerprint(exc.key)}); "
                        f"refusing to connect") from None
        except paramiko.PasswordRequiredException:
            sock.close()
            raise fatal(f"{self.where}: field 'key_file': {key_file} is encrypted; load it into ssh-agent") from None
        except paramiko.AuthenticationException as exc:
            sock.close()
            raise fatal(f"{self.where}: authentication failed for user {d.user!r}: {exc}") from None
        except (paramiko.SSHException, OSError, EOFError) as exc:
            sock.close()
            raise TransportError(f"{self.where}: SSH handshake failed: {exc}") from None
        client.get_transport().set_keepalive(15)
        return client

    def open(self) -> None:
        self.close()
        self._client = self._connect_client()
        try:
            self._sftp = self._client.open_sftp()
            self._sftp.get_channel().settimeout(self.device.timeout_s)
            self.rundir = self._private_rundir()
            self.run(["mkdir", "--", f"{self.rundir}/models"], timeout=self.device.connect_timeout_s + 20)
            self.runner_path = f"{self.rundir}/runner.py"
            self._sftp.put(str(RUNNER_PATH), self.runner_path)
        except TransportError:
            self.close()
            raise
        except (OSError, paramiko.SSHException, EOFError) as exc:
            self.close()
            raise TransportError(f"{self.where}: cannot prepare {self.rundir or 'the work folder'}: {exc}") from None

    def _private_rundir(self) -> str:
        """Make this run's folder with ``mktemp -d`` (0700, a fresh name): under the device's
        temporary folder, or under ``workdir`` once that is shown to be ours and writable by
        nobody else (another user who could rename entries there could swap the runner)."""
        t = self.device.connect_timeout_s + 20
        if not self.device.workdir:
            self._base = ""
            return self._made(self.run(["sh", "-c", 'exec mktemp -d "${TMPDIR:-/tmp}/hwnas-run-XXXXXXXXXX"'], t)[1])
        self._base = remote_path(self.device.workdir).rstrip("/") or "/"
        out = self.run(["sh", "-c", _CHECK_WORKDIR, "sh", self._base], t)[1]
        lines = out.split("\n")
        try:
            me, folders = lines[0].strip(), []
            for line in lines[1:]:
                if line:
                    owner, mode, name = line.split(" ", 2)
                    folders.append((owner, int(mode, 8), name))
            if not me or not folders:
                raise ValueError(out)
        except ValueError:
            raise TransportError(f"{self.where}: cannot check field 'workdir' {self._base}: {out[:200]!r}") from None
        for owner, mode, name in folders:
            # the folder and every folder above it: one that another user owns or may write in
            # (without the sticky bit) lets them rename what is below and swap the runner
            if owner not in (me, "0") or (mode & 0o022 and not mode & 0o1000):
                what = self._base if name == self._base else f"{self._base} (through {name})"
                raise fatal(f"{self.where}: field 'workdir': {what} is owned by uid {owner} with mode {mode:o}; "
                            f"it and every folder above it must be yours or root's and writable by nobody else "
                            f"(or leave workdir out for a private folder under the device's /tmp)")
        return self._made(self.run(["mktemp", "-d", "--", f"{self._base}/run-XXXXXXXXXX"], t)[1])

    def _made(self, out: str) -> str:
        """The folder ``mktemp -d`` printed; anything else is refused (``close`` removes it)."""
        path = out.strip()
        if "\n" in path or not path.rsplit("/", 1)[-1].startswith(("hwnas-run-", "run-")):
            raise TransportError(f"{self.where}: mktemp -d printed {out[:200]!r}, not a run folder")
        return path

    @property
    def sock(self) -> socket.socket:
        """The TCP socket under the SSH connection (tests check TCP_NODELAY on it)."""
        return self._transport().sock

    def _transport(self) -> paramiko.Transport:
        t = self._client.get_transport() if self._client is not None else None
        if t is None or not t.is_active():
            raise TransportError(f"{self.where}: not connected")
        return t

    def run(self, argv: list[str], timeout: float, check: bool = True) -> tuple[int, str, str]:
        """Run one remote command (an argument list, quoted here); returns (rc, stdout, stderr).
        A non-zero exit raises TransportError when ``check``."""
        cmd = shlex.join(argv)
        deadline = time.monotonic() + timeout
        try:
            chan = self._transport().open_session(timeout=timeout)
            try:
                chan.exec_command(cmd)
                out, err = _drain(chan, deadline)
                if not chan.status_event.wait(max(0.0, deadline - time.monotonic())):
                    raise socket.timeout()
                rc = chan.recv_exit_status()
            finally:
                chan.close()
        except socket.timeout:
            raise TransportError(f"{self.where}: {cmd[:200]}: timed out after {timeout:g} s") from None
        except OverflowError:
            raise TransportError(f"{self.where}: {cmd[:200]}: printed more than {MAX_OUTPUT_BYTES} bytes") from None
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise TransportError(f"{self.where}: {cmd[:200]}: {exc}") from None
        out_s, err_s = out.decode("utf-8", "replace"), err.decode("utf-8", "replace")
        if check and rc != 0:
            raise TransportError(f"{self.where}: {cmd[:200]} exited with {rc}: {err_s.strip()[-300:]}")
        return rc, out_s, err_s

    def close(self) -> None:
        """Stop runners, remove the run folder, disconnect.  Best effort on a dead link."""
        client, self._client = self._client, None
        if client is None:
            return
        self._client = client
        try:
            alive = client.get_transport() is not None and client.get_transport().is_active()
            if alive:
                pids = [str(pid) for _, pid in self._channels if pid > 0]
                if pids:
                    self.run(["kill", "-9", *pids], timeout=10, check=False)
                if self.rundir:
                    self.run(["rm", "-rf", "--", self.rundir], timeout=30, check=False)
                    if self._base:
                        self.run(["rmdir", "--", self._base], timeout=10, check=False)  # only if empty
        except TransportError:
            pass
        finally:
            self._client = None
            for chan, _ in self._channels:
                chan.close()
            self._channels.clear()
            if self._sftp is not None:
                try:
                    self._sftp.close()
                except Exception:  # noqa: BLE001 - closing a dead session
                    pass
                self._sftp = None
            client.close()

    # files ------------------------------------------------------------------------------
    def stage(self, local_path: Path) -> str:
        if self._sftp is None:
            raise TransportError(f"{self.where}: not connected")
        remote = f"{self.rundir}/models/{Path(local_path).name}"
        try:
            self._sftp.put(str(local_path), remote)
        except (OSError, paramiko.SSHException, EOFError) as exc:
            raise TransportError(f"{self.where}: cannot push {Path(local_path).name}: {exc}") from None
        return remote

    def unstage(self, remote_path: str) -> None:
        if self._sftp is None:
            return
        try:
            self._sftp.remove(remote_path)
        except (OSError, paramiko.SSHException, EOFError) as exc:
            raise TransportError(f"{self.where}: cannot remove {remote_path}: {exc}") from None

    # runner -----------------------------------------------------------------------------
    def start_runner(self) -> RunnerChannel:
        d = self.device
        python = d.python or "python3"
        # The shell prints its pid, then becomes the runner: the pid lets a timed-out runner
        # be killed even though closing the channel alone would not stop a busy process.
        cmd = remote_serve_command(python, self.runner_path, self.device)
        try:
            chan = self._transport().open_session(timeout=d.connect_timeout_s)
            chan.settimeout(d.connect_timeout_s + 60)
            chan.exec_command(cmd)
            stdout = chan.makefile("rb")
            first = stdout.readline(64).decode("utf-8", "replace").strip()
            chan.settimeout(None)
        except socket.timeout:
            raise TransportError(f"{self.where}: runner did not start within {d.connect_timeout_s + 60:g} s") from None
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise TransportError(f"{self.where}: cannot start the runner: {exc}") from None
        pid = int(first[len("HWNAS_PID="):]) if first.startswith("HWNAS_PID=") and first[10:].isdigit() else -1
        if pid < 0:
            chan.settimeout(5)
            try:
                err = chan.makefile_stderr("rb").read(2000).decode("utf-8", "replace")
            except (socket.timeout, OSError, paramiko.SSHException):
                err = ""
            chan.close()
            raise TransportError(f"{self.where}: runner did not start: {first[:200]!r} {err.strip()[:300]}")
        self._channels.append((chan, pid))
        lines: "queue.Queue[str | None]" = queue.Queue()
        pump_lines(stdout, lines)

        def kill() -> None:
            chan.close()
            try:
                self._channels.remove((chan, pid))
            except ValueError:
                pass
            try:
                if self._client is not None and self._client.get_transport().is_active():
                    self.run(["kill", "-9", str(pid)], timeout=10, check=False)
            except (TransportError, AttributeError):
                pass

        ch = RunnerChannel(lambda s: chan.sendall(s.encode()), lines, kill,
                           describe=f"{self.device.name} runner on {d.host}")
        pump_lines(chan.makefile_stderr("rb"), lines, keep=ch.stderr_tail)
        ch.wait_ready(d.connect_timeout_s + 60)
        return ch

    def info(self, timeout: float = 60.0) -> dict[str, Any]:
        out = super().info(timeout)
        out.setdefault("transport", "ssh")
        return out


def _drain(chan: paramiko.Channel, deadline: float) -> tuple[bytes, bytes]:
    """Stdout and stderr of a remote command until EOF, by ``deadline`` (monotonic) however
    slowly the bytes trickle in, and at most MAX_OUTPUT_BYTES of each.  Raises socket.timeout
    or OverflowError."""
    out, err = bytearray(), bytearray()
    pause = 0.001
    while True:
        got = False
        while chan.recv_ready():
            out += chan.recv(1 << 16)
            got = True
        while chan.recv_stderr_ready():
            err += chan.recv_stderr(1 << 16)
            got = True
        if len(out) > MAX_OUTPUT_BYTES or len(err) > MAX_OUTPUT_BYTES:
            raise OverflowError
        if chan.eof_received and not chan.recv_ready() and not chan.recv_stderr_ready():
            return bytes(out), bytes(err)
        left = deadline - time.monotonic()
        if left <= 0:
            raise socket.timeout()
        # Poll, backing off to 20 ms.  Not select() on the channel: Channel.fileno() makes a
        # pipe that paramiko's transport thread writes to while data arrives, and closing
        # the channel then (as we do on a byte-cap overflow) races that write: EBADF in the
        # transport thread kills the whole connection (paramiko issues #692, #2271).
        pause = 0.001 if got else min(pause * 2, 0.02)
        time.sleep(min(left, pause))


def tcp_nodelay(sock: socket.socket) -> bool:
    return bool(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

