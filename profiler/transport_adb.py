"""adb transport: an Android device through the real ``adb`` client (Debian package ``adb``).

Every call is ``run_capped([adb, "-s", serial, ...])`` (an argument list) with a timeout
and a byte cap on its output; shell command lines sent to the device are built with
``shlex.quote`` for every path and value.  Files are pushed into a fresh run folder under the device's ``workdir`` (default
``/data/local/tmp/hwnas``), which ``close`` removes.

Two ways to measure, chosen by the entry:

- ``benchmark_model: /data/local/tmp/benchmark_model`` (runtime ``tflite``): TFLite's
  benchmark tool runs once per block (optionally under ``taskset <cpu_mask>``), its output
  goes to a file on the device that is pulled and parsed on the host
  (``profiler.benchmark_model``).  Its channel is ``summary_only``: the tool prints
  statistics, not samples.
- ``python: python3`` (a device with Python, e.g. Termux): the runner is pushed and driven in
  ``serve`` mode over ``adb shell``, exactly as over SSH.

Errors of the client are turned into one clear line: adb missing, ``error: device 'X' not
found``, ``unauthorized`` (accept the prompt on the phone), ``offline``.  For a network
serial (``host:port``) ``adb connect`` runs first; it reports failure with exit code 0, so
its output is checked.
"""

from __future__ import annotations

import queue
import re
import shlex
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path
from typing import Any

from .benchmark_model import BenchmarkModelError, parse, summary_reply
from .transport import (MAX_OUTPUT_BYTES, RUNNER_PATH, RunnerChannel, RunnerTimeout, Transport, TransportError,
                        fatal, pump_lines, register_transport, run_capped, remote_serve_command)

DEFAULT_WORKDIR = "/data/local/tmp/hwnas"
_RC = re.compile(r"HWNAS_RC=(\d+)\s*$")


def client_error(device_name: str, serial: str, text: str) -> TransportError:
    """One clear TransportError for what the adb client printed."""
    text = text.strip()
    low = text.lower()
    if "unauthorized" in low:
        return fatal(f"{device_name}: adb device {serial!r} is unauthorized: unlock the phone and accept the "
                     f"'Allow USB debugging' prompt (then rerun)")
    if "not found" in low and "device" in low:
        return TransportError(f"{device_name}: adb: device {serial!r} not found (is it plugged in and listed by "
                              f"`adb devices`? field 'serial')")
    if "no devices/emulators found" in low:
        return TransportError(f"{device_name}: adb: no device connected")
    if "offline" in low:
        return TransportError(f"{device_name}: adb device {serial!r} is offline (replug it or restart adbd)")
    if "cannot connect to daemon" in low or "failed to start daemon" in low:
        return TransportError(f"{device_name}: adb server unavailable: {text.splitlines()[-1][:300]}")
    return TransportError(f"{device_name}: adb: {text[-400:] or 'failed without a message'}")


@register_transport
class AdbTransport(Transport):
    """A device reached through the adb client (see the module docstring)."""

    name = "adb"

    def __init__(self, device):
        super().__init__(device)
        self.adb = ""
        self.rundir = ""
        self.runner_path = ""
        self.bm_version = ""
        self._procs: list[tuple[subprocess.Popen, int]] = []
        self._n = 0

    # the client ---------------------------------------------------------------------------
    def _resolve_client(self) -> str:
        name = self.device.expand(self.device.adb or "adb")
        found = shutil.which(name)
        if not found:
            raise fatal(f"{self.device.name}: adb client {name!r} not found (install the Debian package adb, "
                        f"or set field 'adb' to its path)")
        return found

    def adb_run(self, args: list[str], timeout: float, check: bool = True,
                serial: bool = True) -> subprocess.CompletedProcess:
        """Run ``adb [-s serial] args`` with a timeout.  Raises TransportError."""
        argv = [self.adb or self._resolve_client(), *(["-s", self.device.serial] if serial else []), *args]
        try:
            proc = run_capped(argv, timeout)
        except FileNotFoundError:
            raise fatal(f"{self.device.name}: adb client {argv[0]!r} not found") from None
        except subprocess.TimeoutExpired:
            raise TransportError(f"{self.device.name}: adb {' '.join(args[:2])} timed out after {timeout:g} s") from None
        except OverflowError as exc:
            raise TransportError(f"{self.device.name}: adb {' '.join(args[:2])} {exc}") from None
        if check and proc.returncode != 0:
            raise client_error(self.device.name, self.device.serial,
                               (proc.stderr + proc.stdout).decode("utf-8", "replace"))
        return proc

    def shell(self, command: str, timeout: float, check: bool = True) -> tuple[int, str]:
        """Run a shell command line on the device; returns (exit code, output).  The exit
        code is echoed by the command itself, since old adbd versions do not pass it on."""
        proc = self.adb_run(["shell", f"{command}; echo HWNAS_RC=$?"], timeout)
        out = proc.stdout.decode("utf-8", "replace").replace("\r\n", "\n")
        m = _RC.search(out)
        if m is None:
            raise TransportError(f"{self.device.name}: adb shell gave no exit status: {out[-300:]!r}")
        rc, out = int(m.group(1)), out[: m.start()]
        if check and rc != 0:
            raise TransportError(f"{self.device.name}: `{command[:200]}` exited with {rc}: {out.strip()[-300:]}")
        return rc, out

    def push(self, local: Path | str, remote: str, timeout: float | None = None) -> None:
        self.adb_run(["push", str(local), remote], timeout or self.device.timeout_s)

    def pull(self, remote: str, local: Path | str, timeout: float | None = None) -> None:
        self.adb_run(["pull", remote, str(local)], timeout or self.device.timeout_s)

    # lifecycle --------------------------------------------------------------------------
    def open(self) -> None:
        d = self.device
        self.adb = self._resolve_client()
        t = d.connect_timeout_s + 20
        if re.fullmatch(r"[^\s:]+:\d+", d.serial):
            # `adb connect` exits 0 even when it fails: read what it says
            out = self.adb_run(["connect", d.serial], t, check=False, serial=False)
            text = (out.stdout + out.stderr).decode("utf-8", "replace").strip()
            if not re.search(r"\b(connected to|already connected to)\b", text) or "failed" in text.lower():
                raise TransportError(f"{d.name}: adb connect {d.serial}: {text[-300:] or 'no answer'}")
        state = self.adb_run(["get-state"], t).stdout.decode("utf-8", "replace").strip()
        if state != "device":
            raise client_error(d.name, d.serial, state)
        base = (d.workdir or DEFAULT_WORKDIR).rstrip("/") or "/"
        self.rundir = f"{base}/run-{uuid.uuid4().hex[:12]}"
        self.shell(f"mkdir -p {shlex.quote(self.rundir + '/models')}", t)
        if d.benchmark_model:
            bm = shlex.quote(d.benchmark_model)
            rc, _ = self.shell(f"test -x {bm}", t, check=False)
            if rc != 0:
                raise fatal(f"{d.name}: field 'benchmark_model': {d.benchmark_model} is not an executable file "
                            f"on the device (adb push benchmark_model there and chmod +x it)")
            rc, out = self.shell(f"md5sum {bm} 2>/dev/null", t, check=False)
            digest = out.split()[0][:12] if rc == 0 and out.split() else "unknown"
            self.bm_version = f"benchmark_model@{digest}"
        else:
            self.runner_path = f"{self.rundir}/runner.py"
            self.push(RUNNER_PATH, self.runner_path, t)

    def close(self) -> None:
        for proc, pid in list(self._procs):
            self._stop(proc, pid)
        if self.rundir and self.adb:
            try:
                self.shell(f"rm -rf {shlex.quote(self.rundir)}", 30, check=False)
                self.shell(f"rmdir {shlex.quote(self.rundir.rsplit('/', 1)[0])} 2>/dev/null", 10, check=False)
            except TransportError:
                pass
        self.rundir = ""

    # files ------------------------------------------------------------------------------
    def stage(self, local_path: Path) -> str:
        remote = f"{self.rundir}/models/{Path(local_path).name}"
        self.push(local_path, remote)
        return remote

    def unstage(self, remote_path: str) -> None:
        self.shell(f"rm -f {shlex.quote(remote_path)}", self.device.connect_timeout_s + 20, check=False)

    # measuring --------------------------------------------------------------------------
    def start_runner(self):
        if self.device.benchmark_model:
            return BenchmarkModelChannel(self)
        d = self.device
        python = d.python or "python3"
        cmd = remote_serve_command(python, self.runner_path, self.device)
        try:
            proc = subprocess.Popen([self.adb, "-s", d.serial, "shell", cmd], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        except OSError as exc:
            raise TransportError(f"{d.name}: cannot start adb shell: {exc.strerror}") from None
        lines: "queue.Queue[str | None]" = queue.Queue()
        pump_lines(proc.stdout, lines)
        holder: dict[str, int] = {"pid": -1}

        def kill() -> None:
            self._stop(proc, holder["pid"])

        ch = RunnerChannel(lambda s: (proc.stdin.write(s.encode()), proc.stdin.flush()), lines, kill,
                           describe=f"{d.name} runner on {d.serial}")
        pump_lines(proc.stderr, lines, keep=ch.stderr_tail)
        try:
            first = lines.get(timeout=d.connect_timeout_s + 60)
        except queue.Empty:
            first = None
        if not first or not first.strip().startswith("HWNAS_PID="):
            kill()
            raise client_error(d.name, d.serial, " ".join(ch.stderr_tail[-5:]) or str(first))
        holder["pid"] = int(first.strip()[10:]) if first.strip()[10:].isdigit() else -1
        self._procs.append((proc, holder["pid"]))
        ch.wait_ready(d.connect_timeout_s + 60)
        return ch

    def _stop(self, proc: subprocess.Popen, pid: int) -> None:
        if pid > 0 and proc.poll() is None:
            try:
                self.shell(f"kill -9 {pid}", 10, check=False)
            except TransportError:
                pass
        proc.kill()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        self._procs = [(p, q) for p, q in self._procs if p is not proc]

    def benchmark(self, req: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Run benchmark_model on one staged model; a summary reply (or an error reply)."""
        d = self.device
        self._n += 1
        out_file = f"{self.rundir}/bm-{self._n}.txt"
        pid_file = f"{self.rundir}/bm-{self._n}.pid"
        argv = ([] if not d.cpu_mask else ["taskset", d.cpu_mask]) + [
            d.benchmark_model,
            f"--graph={req['model']}",
            f"--num_threads={int(req.get('threads', d.threads))}",
            f"--warmup_runs={int(req.get('warmup', d.warmup))}",
            "--warmup_min_secs=0",
            f"--num_runs={int(req.get('repeats', d.repeats))}",
            f"--min_secs={float(req.get('min_time_s', d.min_time_s)):g}",
            f"--max_secs={float(req.get('max_time_s', d.max_time_s)):g}",
        ]
        # the inner shell records its pid and then becomes benchmark_model (exec), so a
        # timed-out run can be killed by that pid
        inner = f"echo $$ > {shlex.quote(pid_file)}; exec {shlex.join(argv)} > {shlex.quote(out_file)} 2>&1"
        cmd = f"sh -c {shlex.quote(inner)}"
        try:
            rc, _ = self.shell(cmd, timeout, check=False)
        except TransportError as exc:
            if "timed out" not in str(exc):
                raise
            self.shell(f"kill -9 \"$(cat {shlex.quote(pid_file)})\" 2>/dev/null", 10, check=False)
            raise RunnerTimeout(f"{d.name}: benchmark_model gave no result within {timeout:g} s") from None
        # its size first: a tool that printed gigabytes must not fill this host's disk when pulled
        _, size = self.shell(f"wc -c < {shlex.quote(out_file)}", 10, check=False)
        words = size.split()
        if words and words[0].isdigit() and int(words[0]) > MAX_OUTPUT_BYTES:
            self.shell(f"rm -f {shlex.quote(out_file)} {shlex.quote(pid_file)}", 10, check=False)
            return {"ok": False, "error": f"benchmark_model printed more than {MAX_OUTPUT_BYTES} bytes"}
        with tempfile.TemporaryDirectory(prefix="hwnas-adb-") as tmp:
            local = Path(tmp) / "out.txt"
            self.pull(out_file, local)
            if local.stat().st_size > MAX_OUTPUT_BYTES:
                return {"ok": False, "error": f"benchmark_model printed more than {MAX_OUTPUT_BYTES} bytes"}
            text = local.read_text(errors="replace")
        self.shell(f"rm -f {shlex.quote(out_file)} {shlex.quote(pid_file)}", 10, check=False)
        try:
            summary = parse(text)
        except BenchmarkModelError as exc:
            return {"ok": False, "error": f"{exc} (exit code {rc})"}
        if rc != 0:
            return {"ok": False, "error": f"benchmark_model exited with {rc}: {text.strip()[-300:]}"}
        return summary_reply(summary, int(req.get("threads", d.threads)), self.bm_version)

    def device_info(self) -> dict[str, Any]:
        props = {}
        for prop in ("ro.product.model", "ro.soc.model", "ro.board.platform", "ro.product.cpu.abi"):
            try:
                _, out = self.shell(f"getprop {prop}", 10, check=False)
                props[prop] = out.strip()
            except TransportError:
                props[prop] = ""
        return {
            "ok": True, "transport": "adb", "host": props["ro.product.model"] or self.device.serial,
            "cpu": props["ro.soc.model"] or props["ro.board.platform"] or props["ro.product.cpu.abi"],
            "runtimes": {"tflite": {"module": "benchmark_model", "version": self.bm_version}},
        }


class BenchmarkModelChannel:
    """The runner-channel interface over ``benchmark_model`` runs: one request, one run.

    ``summary_only``: replies carry statistics printed by the tool, not samples, and are
    validated by ``benchmark_model.validate_summary`` (``measure`` decides that from the
    channel, never from the reply)."""

    summary_only = True

    def __init__(self, transport: AdbTransport):
        self.transport = transport
        self.alive = True
        self.describe = f"{transport.device.name} benchmark_model"
        self.stderr_tail: list[str] = []

    def wait_ready(self, timeout: float) -> dict[str, Any]:
        return {"ok": True, "ready": True}

    def request(self, req: dict[str, Any], timeout: float) -> dict[str, Any]:
        if not self.alive:
            raise TransportError(f"{self.describe}: channel closed")
        if req.get("op") == "info":
            return self.transport.device_info()
        if req.get("runtime", "tflite") != "tflite":
            return {"ok": False, "error": f"benchmark_model runs TFLite models only, not {req.get('runtime')}"}
        try:
            return self.transport.benchmark(req, timeout)
        except RunnerTimeout:
            self.alive = False
            raise

    def close(self) -> None:
        self.alive = False


def adb_devices(adb: str = "adb", timeout: float = 20.0) -> dict[str, str]:
    """``adb devices`` as {serial: state}.  Raises TransportError."""
    path = shutil.which(adb)
    if not path:
        raise fatal(f"adb client {adb!r} not found (install the Debian package adb)")
    try:
        proc = run_capped([path, "devices"], timeout)
    except subprocess.TimeoutExpired:
        raise TransportError(f"adb devices timed out after {timeout:g} s") from None
    except OverflowError as exc:
        raise TransportError(f"adb devices {exc}") from None
    if proc.returncode != 0:
        raise client_error("adb", "", (proc.stderr + proc.stdout).decode("utf-8", "replace"))
    out = {}
    for line in proc.stdout.decode("utf-8", "replace").splitlines()[1:]:
        parts = line.split()
        if len(parts) >= 2:
            out[parts[0]] = parts[1]
    return out


