"""A real OpenSSH ``sshd`` for tests, started from a throwaway config in a temporary folder.

``SshServer`` writes its own host key and an authorized client key, a config with
``PasswordAuthentication no``, ``UsePAM no``, ``StrictModes no`` (the folder may be world
writable) and ``Subsystem sftp internal-sftp``, and runs ``sshd -D -e`` listening on one
address (127.0.0.1 by default).  ``known_hosts`` holds the server's real host key, so tests
connect with host-key verification on.  ``stop``/``kill`` end it (``kill`` takes every
sshd process of this server with it: the listener and the per-connection children, like a
device losing power); ``start`` again brings it back on the same port with the same key.

As root, sshd needs its privilege-separation folder ``/run/sshd``; it is created when
missing.  ``netns`` runs the server inside a network namespace (see ``NetnsPair``).

Tests skip (with the reason) when ``/usr/sbin/sshd`` or ``ssh-keygen`` is missing.
"""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

SSHD = os.environ.get("HWNAS_TEST_SSHD", "/usr/sbin/sshd")
KEYGEN = shutil.which("ssh-keygen") or "/usr/bin/ssh-keygen"
IP = shutil.which("ip") or "/usr/sbin/ip"


def sshd_missing() -> str:
    """Why sshd tests cannot run here, or '' when they can."""
    if not os.access(SSHD, os.X_OK):
        return f"OpenSSH server not installed ({SSHD} missing)"
    if not os.access(KEYGEN, os.X_OK):
        return "ssh-keygen not installed"
    return ""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def keygen(path: Path) -> Path:
    subprocess.run([KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", "hwnas-test", "-f", str(path)],
                   check=True, timeout=30, capture_output=True)
    return path


class SshServer:
    """One sshd from a config under ``root``; see the module docstring."""

    def __init__(self, root: Path, host: str = "127.0.0.1", port: int | None = None,
                 netns: str | None = None, client_key: Path | None = None):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.host = host
        self.port = port or free_port(host if netns is None else "127.0.0.1")
        self.netns = netns
        self.user = getpass.getuser()
        self.host_key = keygen(self.root / "ssh_host_ed25519_key")
        self.client_key = client_key or keygen(self.root / "id_ed25519")
        self.authorized_keys = self.root / "authorized_keys"
        self.authorized_keys.write_text(Path(str(self.client_key) + ".pub").read_text())
        self.known_hosts = self.root / "known_hosts"
        pub = Path(str(self.host_key) + ".pub").read_text().split()
        name = self.host if self.port == 22 else f"[{self.host}]:{self.port}"
        self.known_hosts.write_text(f"{name} {pub[0]} {pub[1]}\n")
        self.config = self.root / "sshd_config"
        self.log = self.root / "sshd.log"
        self.config.write_text("\n".join([
            f"Port {self.port}",
            f"ListenAddress {self.host}",
            f"HostKey {self.host_key}",
            f"PidFile {self.root / 'sshd.pid'}",
            f"AuthorizedKeysFile {self.authorized_keys}",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            "StrictModes no",
            "PermitRootLogin prohibit-password",
            "AllowTcpForwarding no",
            "X11Forwarding no",
            "PrintMotd no",
            "MaxStartups 50",
            "MaxSessions 50",
            "LogLevel ERROR",
            "Subsystem sftp internal-sftp",
            "",
        ]))
        self.proc: subprocess.Popen | None = None

    def _argv(self) -> list[str]:
        argv = [SSHD, "-D", "-e", "-f", str(self.config)]
        if self.netns:
            argv = [IP, "netns", "exec", self.netns, *argv]
        return argv

    def start(self, timeout: float = 20.0) -> "SshServer":
        if os.geteuid() == 0:
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        subprocess.run([SSHD, "-t", "-f", str(self.config)], check=True, timeout=30, capture_output=True)
        logf = open(self.log, "ab")
        try:
            self.proc = subprocess.Popen(self._argv(), stdin=subprocess.DEVNULL, stdout=logf, stderr=logf,
                                         start_new_session=True)
        finally:
            logf.close()
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sshd exited with {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            if self._banner():
                return self
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"sshd did not answer on {self.host}:{self.port} within {timeout} s")
            time.sleep(0.05)

    def _banner(self) -> bool:
        if self.netns:
            probe = [IP, "netns", "exec", self.netns, sys.executable, "-c",
                     "import socket,sys; s=socket.create_connection((sys.argv[1], int(sys.argv[2])), 1);"
                     "sys.exit(0 if s.recv(8).startswith(b'SSH-') else 1)", self.host, str(self.port)]
            return subprocess.run(probe, capture_output=True, timeout=10).returncode == 0
        try:
            with socket.create_connection((self.host, self.port), timeout=1) as s:
                return s.recv(8).startswith(b"SSH-")
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL the server, every connection it serves and everything they started (sshd
        puts each connection in its own session, so the process tree is walked)."""
        if self.proc is None:
            return
        for pid in [self.proc.pid, *_descendants(self.proc.pid)]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        self.proc = None

    stop = kill

    def device_entry(self, **extra) -> dict:
        """A devices.yaml entry (as a dict) reaching this server with host-key checking on."""
        entry = {
            "transport": "ssh", "runtime": "onnxruntime", "host": self.host, "port": self.port,
            "user": self.user, "key_file": str(self.client_key), "known_hosts": str(self.known_hosts),
            "python": sys.executable, "workdir": str(self.root / "remote"), "threads": 1,
            "warmup": 1, "repeats": 5, "min_time_s": 0, "max_time_s": 5, "timeout_s": 60,
            "connect_timeout_s": 5, "retries": 1,
        }
        entry.update(extra)
        return entry


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


class NetnsPair:
    """A network namespace joined to this one by a veth pair with a /30 between them.

    Only the two addresses of the pair are configured (e.g. 10.231.7.1 here, 10.231.7.2 in
    the namespace); nothing is routed anywhere else.  Root only."""

    def __init__(self, name: str, subnet: int = 7):
        self.name = name
        self.host_if = f"hw{os.getpid() % 10000}h"
        self.ns_if = f"hw{os.getpid() % 10000}n"
        self.host_addr = f"10.231.{subnet}.1"
        self.ns_addr = f"10.231.{subnet}.2"

    def _ip(self, *args: str) -> None:
        subprocess.run([IP, *args], check=True, timeout=30, capture_output=True)

    def create(self) -> "NetnsPair":
        self._ip("netns", "add", self.name)
        try:
            self._ip("link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if)
            self._ip("link", "set", self.ns_if, "netns", self.name)
            self._ip("addr", "add", f"{self.host_addr}/30", "dev", self.host_if)
            self._ip("link", "set", self.host_if, "up")
            self._ip("netns", "exec", self.name, IP, "addr", "add", f"{self.ns_addr}/30", "dev", self.ns_if)
            self._ip("netns", "exec", self.name, IP, "link", "set", self.ns_if, "up")
            self._ip("netns", "exec", self.name, IP, "link", "set", "lo", "up")
        except BaseException:
            self.delete()
            raise
        return self

    def delete(self) -> None:
        subprocess.run([IP, "link", "del", self.host_if], capture_output=True, timeout=30)
        subprocess.run([IP, "netns", "del", self.name], capture_output=True, timeout=30)


def netns_missing() -> str:
    """Why the network-namespace test cannot run here, or '' when it can."""
    if os.geteuid() != 0:
        return "needs root to create a network namespace and a veth pair"
    if not os.access(IP, os.X_OK):
        return "iproute2 (ip) not installed"
    r = subprocess.run([IP, "netns", "list"], capture_output=True, timeout=10)
    if r.returncode != 0:
        return f"ip netns unavailable: {r.stderr.decode(errors='replace').strip()}"
    return ""


def shared_artifact_cache(specs, runtime: str = "onnxruntime"):
    """An ``ArtifactCache`` holding ``specs`` for ``runtime``, shared by every test module of
    this suite (and by later runs: artifacts are keyed by exporter version and written
    atomically).  Exports what is missing once, in this process."""
    import tempfile

    from profiler.export import ArtifactCache, format_for_runtime

    root = Path(os.environ.get("HWNAS_TEST_CACHE", Path(tempfile.gettempdir()) / f"hwnas-test-artifacts-{os.getuid()}"))
    cache = ArtifactCache(root)
    fmt = format_for_runtime(runtime)
    built = cache.ensure([(str(s), fmt) for s in specs], workers=1, progress=False)
    bad = [r.error for r in built.values() if r.path is None]
    if bad:
        raise RuntimeError(f"export failed: {bad[0]}")
    return cache


def write_devices(path: Path, entries: dict) -> Path:
    import yaml

    path.write_text(yaml.safe_dump({"devices": entries}, sort_keys=False))
    return path
