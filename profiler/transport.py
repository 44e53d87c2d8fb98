"""Transports: how artifacts reach a device and how the runner is driven there.

A transport stages files on the device and starts the runner (``profiler/runner.py``) in its
``serve`` mode, talking JSON lines over the process's stdin/stdout: one connection and one
runner process serve a whole run.  Transports register by name; ``make_transport(device)``
picks the one the device's entry names.

``RunnerChannel`` does the talking: ``request`` writes one JSON line and waits, with a
timeout, for the reply; the reply is parsed as JSON (never evaluated) and checked field by
field by ``validate_reply``; statistics are recomputed on the host from the raw samples.
"""

from __future__ import annotations

import json
import math
import queue
import subprocess
import sys
import threading
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Callable, IO

from .devices import Device
from .runner import _stats

RUNNER_PATH = Path(__file__).with_name("runner.py")


class TransportError(RuntimeError):
    """The device could not be reached or the connection broke: reconnect and retry."""


class RunnerTimeout(TimeoutError):
    """The runner did not answer within the block's timeout."""


class RunnerError(RuntimeError):
    """The runner answered, but with an error or a malformed reply (a failure row)."""


def validate_reply(reply: Any) -> dict[str, Any]:
    """Check a runner reply field by field; return it with statistics recomputed from the
    samples.  Raises RunnerError."""
    if not isinstance(reply, dict):
        raise RunnerError(f"runner reply is not a JSON object: {str(reply)[:200]}")
    if reply.get("ok") is not True:
        err = reply.get("error")
        raise RunnerError(str(err)[:2000] if isinstance(err, str) and err else "runner reported failure without a message")
    samples = reply.get("samples_ms")
    if not isinstance(samples, list) or not samples:
        raise RunnerError("runner reply has no samples_ms list")
    clean = []
    for s in samples:
        if not isinstance(s, (int, float)) or isinstance(s, bool) or not math.isfinite(s) or s < 0:
            raise RunnerError(f"runner reply has an invalid sample {s!r}")
        clean.append(float(s))
    for name in ("runtime", "runtime_version"):
        if not isinstance(reply.get(name), str):
            raise RunnerError(f"runner reply field {name} is missing or not a string")
    threads = reply.get("threads")
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
        raise RunnerError(f"runner reply field threads is invalid: {threads!r}")
    out = {k: reply[k] for k in ("runtime", "runtime_version", "threads") if k in reply}
    for k in ("provider", "module"):
        out[k] = str(reply.get(k, ""))[:200]
    load = reply.get("load_avg")
    if load is not None and (not isinstance(load, (int, float)) or isinstance(load, bool)
                             or not math.isfinite(load) or load < 0):
        raise RunnerError(f"runner reply field load_avg is invalid: {load!r}")
    out["load_avg"] = float(load) if load is not None else None
    out["samples_ms"] = clean
    out.update(_stats(clean))
    return out


class RunnerChannel:
    """JSON-lines conversation with one runner process.

    ``write`` sends a line; lines arrive through ``lines`` (a queue fed by a reader thread, or
    by the transport); ``kill`` ends the process.  A channel that timed out or broke is dead:
    the caller starts a new one.
    """

    def __init__(self, write: Callable[[str], None], lines: "queue.Queue[str | None]",
                 kill: Callable[[], None], describe: str = "runner"):
        self._write = write
        self._lines = lines
        self._kill = kill
        self._next_id = 0
        self.describe = describe
        self.alive = True
        self.stderr_tail: list[str] = []

    def wait_ready(self, timeout: float) -> dict[str, Any]:
        line = self._read(timeout, "starting")
        try:
            hello = json.loads(line)
        except json.JSONDecodeError:
            self.close()
            raise TransportError(f"{self.describe}: runner did not start: {line[:300]!r}") from None
        if not isinstance(hello, dict) or hello.get("ready") is not True:
            self.close()
            raise TransportError(f"{self.describe}: unexpected runner greeting {line[:300]!r}")
        return hello

    def _read(self, timeout: float, what: str) -> str:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            self.close()
            raise RunnerTimeout(f"{self.describe}: no answer within {timeout:g} s while {what}") from None
        if line is None:
            self.close()
            tail = " | ".join(self.stderr_tail[-5:])
            raise TransportError(f"{self.describe}: runner exited{': ' + tail if tail else ''}")
        return line

    def request(self, req: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Send one request and return the raw reply object (not yet validated)."""
        if not self.alive:
            raise TransportError(f"{self.describe}: runner is not running")
        self._next_id += 1
        req = dict(req, id=self._next_id)
        try:
            self._write(json.dumps(req) + "\n")
        except (OSError, ValueError) as exc:
            self.close()
            raise TransportError(f"{self.describe}: cannot send to runner: {exc}") from None
        while True:
            line = self._read(timeout, f"measuring {Path(str(req.get('model', ''))).name}")
            try:
                reply = json.loads(line)
            except json.JSONDecodeError:
                continue  # stray output (a runtime's log line on stdout); keep waiting
            if isinstance(reply, dict) and reply.get("id") == req["id"]:
                return reply

    def close(self) -> None:
        if self.alive:
            self.alive = False
            try:
                self._kill()
            except Exception:  # noqa: BLE001 - best effort
                pass


def pump_lines(stream: IO[bytes], out: "queue.Queue[str | None]", keep: list[str] | None = None,
               limit: int = 50) -> threading.Thread:
    """Feed decoded lines of ``stream`` into ``out`` (``None`` at EOF) from a daemon thread.
    With ``keep``, lines are kept there instead (bounded; for stderr)."""

    def run() -> None:
        try:
            for raw in iter(stream.readline, b""):
                line = raw.decode("utf-8", "replace").rstrip("\n")
                if keep is not None:
                    keep.append(line)
                    del keep[:-limit]
                else:
                    out.put(line)
        except (OSError, ValueError):
            pass
        finally:
            if keep is None:
                out.put(None)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


class Transport(ABC):
    """How one device is reached.  Use as a context manager: ``open`` ... ``close``."""

    name = ""

    def __init__(self, device: Device):
        self.device = device

    def open(self) -> None:
        """Connect (and push the runner).  Raises TransportError."""

    def close(self) -> None:
        """Clean up the device's work directory and disconnect."""

    @abstractmethod
    def stage(self, local_path: Path) -> str:
        """Make an artifact available on the device; return its path there."""

    def unstage(self, remote_path: str) -> None:
        """Remove a staged artifact (no-op where staging copies nothing)."""

    @abstractmethod
    def start_runner(self) -> RunnerChannel:
        """Start the runner in serve mode and return its channel (ready)."""

    def info(self, timeout: float = 60.0) -> dict[str, Any]:
        """The runner's ``info`` (platform, CPU, runtimes) through a fresh channel."""
        ch = self.start_runner()
        try:
            reply = ch.request({"op": "info"}, timeout)
        finally:
            ch.close()
        if not isinstance(reply, dict) or reply.get("ok") is not True:
            raise TransportError(f"{self.device.name}: runner info failed: {str(reply)[:300]}")
        return reply

    def __enter__(self) -> "Transport":
        self.open()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


_TRANSPORTS: dict[str, type[Transport]] = {}


def register_transport(cls: type[Transport]) -> type[Transport]:
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    if cls.name in _TRANSPORTS:
        raise ValueError(f"transport {cls.name!r} is already registered")
    _TRANSPORTS[cls.name] = cls
    return cls


def make_transport(device: Device) -> Transport:
    if device.transport not in _TRANSPORTS:
        # Importing the module registers it; heavy dependencies (paramiko) stay there.
        import importlib

        try:
            importlib.import_module(f"profiler.transport_{device.transport}")
        except ModuleNotFoundError as exc:
            if exc.name != f"profiler.transport_{device.transport}":
                raise
    try:
        cls = _TRANSPORTS[device.transport]
    except KeyError:
        raise ValueError(
            f"device {device.name!r}: no transport {device.transport!r} (known: {', '.join(sorted(_TRANSPORTS))})"
        ) from None
    return cls(device)


@register_transport
class LocalTransport(Transport):
    """This machine: artifacts are used in place; the runner is a child process."""

    name = "local"

    def stage(self, local_path: Path) -> str:
        return str(Path(local_path).resolve())

    def start_runner(self) -> RunnerChannel:
        python = self.device.expand(self.device.python) or sys.executable
        try:
            proc = subprocess.Popen(
                [python, "-u", str(RUNNER_PATH), "serve"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            )
        except OSError as exc:
            raise TransportError(f"{self.device.name}: cannot start runner with {python}: {exc.strerror}") from None
        lines: "queue.Queue[str | None]" = queue.Queue()
        pump_lines(proc.stdout, lines)
        ch = RunnerChannel(lambda s: (proc.stdin.write(s.encode()), proc.stdin.flush()), lines,
                           lambda: (proc.kill(), proc.wait(timeout=10)), describe=f"{self.device.name} runner")
        pump_lines(proc.stderr, lines, keep=ch.stderr_tail)
        ch.wait_ready(self.device.connect_timeout_s + 60)
        return ch
