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
import os
import queue
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Callable, IO

from .devices import Device
from .lut import finite
from .runner import _stats

RUNNER_PATH = Path(__file__).with_name("runner.py")


class TransportError(RuntimeError):
    """The device could not be reached or the connection broke: reconnect and retry."""


def fatal(message: str) -> TransportError:
    """A TransportError that reconnecting cannot fix (``permanent``: not retried)."""
    exc = TransportError(message)
    exc.permanent = True  # type: ignore[attr-defined]
    return exc


class RunnerTimeout(TimeoutError):
    """The runner did not answer within the block's timeout."""


class RunnerError(RuntimeError):
    """The runner answered, but with an error or a malformed reply (a failure row)."""


# Limits on what a device may send: a reply outside them is a failure row, never stored.
MAX_LINE_BYTES = 1 << 20      # one reply line; a longer line is cut off and refused
MAX_OUTPUT_BYTES = 1 << 20    # stdout or stderr of one command run on or for the device
MAX_STRING = 200              # runtime, runtime_version, provider, host, cpu ...
MAX_SAMPLE_MS = 3.6e6         # one hour per run of one block
MAX_THREADS = 1024
MAX_LOAD = 1e4
MAX_TIMED_S = 1e6
OVERSIZE = "\x00hwnas: line over MAX_LINE_BYTES"  # what pump_lines queues for such a line


def reply_number(reply: dict[str, Any], name: str, what: str, hi: float, lo: float = 0.0,
                 optional: bool = False, integer: bool = False) -> float | int | None:
    """Field ``name`` of a reply: a finite number (an integer with ``integer``) in [lo, hi];
    None when absent and ``optional``.  Raises RunnerError naming ``what`` and the field."""
    v = reply.get(name)
    if v is None and optional:
        return None
    kinds = (int,) if integer else (int, float)
    if not isinstance(v, kinds) or isinstance(v, bool) or not finite(v) or not lo <= v <= hi:
        raise RunnerError(f"{what} reply field {name} is invalid: {str(v)[:80]!r} "
                          f"(expected {'an integer' if integer else 'a number'} in [{lo:g}, {hi:g}])")
    return v if integer else float(v)


def reply_string(reply: dict[str, Any], name: str, what: str, optional: bool = False) -> str:
    """Field ``name`` of a reply: a string of at most MAX_STRING characters ('' when absent
    and ``optional``).  Raises RunnerError."""
    v = reply.get(name)
    if v is None and optional:
        return ""
    if not isinstance(v, str):
        raise RunnerError(f"{what} reply field {name} is missing or not a string")
    if len(v) > MAX_STRING or any(c in v for c in "\r\n\x00"):
        raise RunnerError(f"{what} reply field {name} is longer than {MAX_STRING} characters or holds "
                          f"line breaks: {v[:60]!r}...")
    return v


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
        if not isinstance(s, (int, float)) or isinstance(s, bool) or not finite(s) or not 0 <= s <= MAX_SAMPLE_MS:
            raise RunnerError(f"runner reply has an invalid sample {str(s)[:80]!r}")
        clean.append(float(s))
    out: dict[str, Any] = {k: reply_string(reply, k, "runner") for k in ("runtime", "runtime_version")}
    out["threads"] = reply_number(reply, "threads", "runner", MAX_THREADS, lo=1, integer=True)
    for k in ("provider", "module"):
        out[k] = reply_string(reply, k, "runner", optional=True)
    out["load_avg"] = reply_number(reply, "load_avg", "runner", MAX_LOAD, optional=True)
    out["timed_s"] = reply_number(reply, "timed_s", "runner", MAX_TIMED_S, optional=True) or 0.0
    out["samples_ms"] = clean
    out.update(_stats(clean))
    return out


def cpu_list(affinity: Any) -> str:
    """The CPUs a runner reported it may run on (``affinity``), as ``"0-3,6"``; "" when it
    did not say (an older runner, or a system without affinity) or said nonsense."""
    if (not isinstance(affinity, list) or not affinity or len(affinity) > 4096
            or not all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c < 1 << 16 for c in affinity)):
        return ""
    cpus, spans = sorted(set(affinity)), []
    for c in cpus:
        if spans and c == spans[-1][1] + 1:
            spans[-1][1] = c
        else:
            spans.append([c, c])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


def validate_info(info: Any, where: str) -> dict[str, Any]:
    """Check the runner's ``info`` reply: ``host`` and ``cpu`` strings, ``runtimes`` a mapping
    of runtime name to ``{version: str, providers: [str]}``, ``affinity`` (the CPUs it may
    run on, returned as ``cpus``: ``cpu_list``).  Returns the checked fields;
    raises TransportError (the device cannot be used) naming ``where``."""
    try:
        if not isinstance(info, dict) or info.get("ok") is not True:
            raise RunnerError(f"runner info failed: {str(info)[:300]}")
        # descriptive only: cut to length, not refused
        out: dict[str, Any] = {k: info[k][:MAX_STRING] if isinstance(info.get(k), str) else "" for k in ("host", "cpu")}
        runtimes = info.get("runtimes")
        if not isinstance(runtimes, dict) or len(runtimes) > 16:
            raise RunnerError("runner info field runtimes is not a mapping of runtime names")
        out["runtimes"] = {}
        for name, entry in runtimes.items():
            if not isinstance(entry, dict) or len(name) > MAX_STRING:
                raise RunnerError(f"runner info field runtimes: entry {name[:60]!r} is not a mapping")
            providers = entry.get("providers", [])
            if (not isinstance(providers, list) or len(providers) > 64
                    or not all(isinstance(p, str) and len(p) <= MAX_STRING for p in providers)):
                raise RunnerError(f"runner info field runtimes.{name[:60]}.providers is not a list of names")
            out["runtimes"][name] = {"version": reply_string(entry, "version", f"runner info {name[:60]}",
                                                             optional=True),
                                     "providers": list(providers)}
        out["cpus"] = cpu_list(info.get("affinity"))
        return out
    except RunnerError as exc:
        raise TransportError(f"{where}: {exc}") from None


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _without_lone_surrogates(v: Any) -> Any:
    """``v`` with every string's lone UTF-16 surrogates (legal in JSON escapes, not in UTF-8:
    a LUT file could no longer be written) replaced by '?'."""
    if isinstance(v, str):
        return v.encode("utf-8", "replace").decode("utf-8")
    if isinstance(v, list):
        return [_without_lone_surrogates(x) for x in v]
    if isinstance(v, dict):
        return {_without_lone_surrogates(k): _without_lone_surrogates(x) for k, x in v.items()}
    return v


def parse_line(line: str) -> Any:
    """A JSON value from one line, or None when the line is not JSON (a runtime's log line)
    or nests too deeply to parse.  Strings come back encodable as UTF-8."""
    try:
        value = json.loads(line)
    except (ValueError, RecursionError):
        return None
    return _without_lone_surrogates(value) if _SURROGATE_ESCAPE.search(line) else value


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
        hello = parse_line(line)
        if hello is None:
            self.close()
            raise TransportError(f"{self.describe}: runner did not start: {line[:300]!r}")
        if isinstance(hello, dict) and hello.get("ok") is False and isinstance(hello.get("error"), str):
            self.close()  # e.g. a cpu_mask the device cannot apply: the same answer on every retry
            raise fatal(f"{self.describe}: runner refused to start: {hello['error'][:300]}")
        if not isinstance(hello, dict) or hello.get("ready") is not True:
            self.close()
            raise TransportError(f"{self.describe}: unexpected runner greeting {line[:300]!r}")
        return hello

    def _read(self, timeout: float, what: str, deadline: float | None = None) -> str:
        """The next line; ``deadline`` (monotonic) bounds the wait instead of ``timeout``
        when given, so a device that keeps printing cannot stretch it."""
        wait = timeout if deadline is None else deadline - time.monotonic()
        try:
            if wait <= 0:  # past the deadline, even with lines waiting: a device printing fast enough
                raise queue.Empty  # would otherwise never let the request time out
            line = self._lines.get(timeout=wait)
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
        deadline = time.monotonic() + timeout  # one deadline, whatever the device prints meanwhile
        what = f"{req.get('op', 'measuring')} {Path(str(req.get('model', ''))).name}".strip()
        while True:
            line = self._read(timeout, what, deadline)
            if line == OVERSIZE:
                self.close()
                raise RunnerError(f"{self.describe}: sent a line longer than {MAX_LINE_BYTES} bytes")
            reply = parse_line(line)  # None: stray output (a runtime's log line on stdout)
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
    """Feed decoded lines of ``stream`` into ``out`` (``None`` at EOF) from a daemon thread;
    a line longer than MAX_LINE_BYTES is read no further than that and queued as OVERSIZE.
    With ``keep``, lines are kept there instead (bounded; for stderr)."""

    def run() -> None:
        try:
            for raw in iter(lambda: stream.readline(MAX_LINE_BYTES + 1), b""):
                if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
                    while raw and not raw.endswith(b"\n"):  # drop the rest of the line unread
                        raw = stream.readline(1 << 16)
                    line = OVERSIZE
                else:
                    line = raw.decode("utf-8", "replace").rstrip("\n")
                if keep is not None:
                    keep.append(line[:500])
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


def runner_pin_args(device: Device) -> list[str]:
    """The runner's ``serve`` arguments that pin it to the device's ``cpu_mask`` (none
    without one; ``last``: as many of the highest-numbered CPUs as the device's threads)."""
    if not device.cpu_mask:
        return []
    return ["--cpus", f"last:{device.threads}" if device.cpu_mask == "last" else device.cpu_mask]


def remote_serve_command(python: str, runner_path: str, device: Device) -> str:
    """The shell command line that starts the pushed runner in serve mode on a remote device
    (every value quoted): it prints ``HWNAS_PID=<pid>`` first, so the host can stop it."""
    argv = [python, "-u", runner_path, "serve", *runner_pin_args(device)]
    return "echo HWNAS_PID=$$; exec " + " ".join(shlex.quote(a) for a in argv)


def run_capped(argv: list[str], timeout: float, cap: int = MAX_OUTPUT_BYTES) -> subprocess.CompletedProcess:
    """Run ``argv`` (stdin closed) to completion by one deadline, keeping at most ``cap``
    bytes of stdout and of stderr: a command that prints more is killed (with everything it
    started) and OverflowError raised.  Raises subprocess.TimeoutExpired and OSError too."""
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    bufs = (bytearray(), bytearray())
    over = threading.Event()

    def kill() -> None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass

    def drain(stream: IO[bytes], buf: bytearray) -> None:
        for chunk in iter(lambda: stream.read1(1 << 16), b""):
            buf += chunk
            if len(buf) > cap:
                over.set()
                kill()
                return

    readers = [threading.Thread(target=drain, args=pair, daemon=True) for pair in zip((proc.stdout, proc.stderr), bufs)]
    for t in readers:
        t.start()
    deadline = time.monotonic() + timeout
    try:
        proc.wait(timeout)
        for t in readers:
            t.join(max(0.0, deadline - time.monotonic()))
        if any(t.is_alive() for t in readers):  # something it started still holds the pipes
            raise subprocess.TimeoutExpired(argv, timeout)
    except subprocess.TimeoutExpired:
        kill()
        proc.wait()
        raise
    finally:
        proc.stdout.close()
        proc.stderr.close()
    if over.is_set():
        raise OverflowError(f"printed more than {cap} bytes")
    return subprocess.CompletedProcess(argv, proc.returncode, bytes(bufs[0]), bytes(bufs[1]))


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
        validate_info(reply, self.device.name)
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
                [python, "-u", str(RUNNER_PATH), "serve", *runner_pin_args(self.device)],
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
