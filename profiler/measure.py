"""Profile one device: export what is missing, then measure every block not yet in the LUT.

Build and run are separate steps (TVM's builder/runner split).  Export happens on the host
through the artifact cache; for the local device every export finishes before the first
measurement, so conversion never disturbs a timing.  Measurement goes through the device's
transport and one long-lived runner.  Every outcome is a LUT row: a timeout or a runtime
error is a failure row with its message; a broken connection is retried after reconnecting
(``device.retries`` times), and a device that stays unreachable ends its run with
``device_lost`` set, everything measured so far kept.
"""

from __future__ import annotations

import platform
import socket
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

from supernet.space import BlockSpec

from .devices import Device
from .export import ArtifactCache, format_for_runtime
from .lut import LutWriter, error_row, stats_row
from .transport import (RunnerChannel, RunnerError, RunnerTimeout, Transport, TransportError,
                        make_transport, validate_reply)


@dataclass
class ProfileResult:
    device: str
    runtime: str
    lut: str
    todo: int = 0
    measured: int = 0
    failed: int = 0
    skipped: int = 0
    exported: int = 0
    export_s: float = 0.0
    measure_s: float = 0.0
    timed_s: float = 0.0
    wall_s: float = 0.0
    device_lost: str = ""
    host: str = ""
    host_cpu: str = ""
    runtime_version: str = ""
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        d = dict(vars(self))
        d["errors"] = self.errors[:20]
        return d


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def default_lut_path(device: Device, runtime: str, folder: Path = Path("luts")) -> Path:
    """``luts/<device>.csv`` for the device's own runtime, ``luts/<device>-<runtime>.csv``
    for another."""
    return folder / (f"{device.name}.csv" if runtime == device.runtime else f"{device.name}-{runtime}.csv")


def pending(writer: LutWriter, specs: Sequence[BlockSpec], runtime: str, max_attempts: int) -> tuple[list[BlockSpec], int]:
    """Blocks still to measure: not ``ok`` and not failed ``max_attempts`` times already."""
    todo, skipped = [], 0
    for s in specs:
        row = writer.table.get(str(s), runtime)
        if row is None:
            todo.append(s)
        elif row["status"] == "ok":
            skipped += 1
        elif (row.get("attempts") or 1) >= max_attempts:
            skipped += 1
        else:
            todo.append(s)
    return todo, skipped


def check_threads(writer: LutWriter, runtime: str, threads: int) -> None:
    """A LUT holds one thread count per runtime: mixing them would make a meaningless table."""
    other = {r["threads"] for (k, rt, res), r in writer.table.rows.items()
             if rt == runtime and r["status"] == "ok" and r.get("threads") not in ("", None)}
    other.discard(threads)
    if other:
        raise ValueError(
            f"{writer.path}: already holds {runtime} rows measured with threads={sorted(other)[0]}; "
            f"this run uses threads={threads} (use --lut for another file, or the same --threads)"
        )


class Session:
    """A transport plus a runner channel, restarted on demand."""

    def __init__(self, transport: Transport):
        self.transport = transport
        self.channel: RunnerChannel | None = None

    def open(self) -> None:
        self.transport.open()
        self.channel = self.transport.start_runner()

    def ensure(self) -> RunnerChannel:
        if self.channel is None or not self.channel.alive:
            self.channel = self.transport.start_runner()
        return self.channel

    def reconnect(self) -> None:
        self.close()
        self.open()

    def close(self) -> None:
        if self.channel is not None:
            self.channel.close()
            self.channel = None
        try:
            self.transport.close()
        except TransportError:
            pass


def profile_device(
    device: Device,
    specs: Sequence[BlockSpec],
    runtime: str,
    lut_path: Path,
    cache: ArtifactCache,
    *,
    export_workers: int = 1,
    progress: bool = True,
    position: int = 0,
    transport: Transport | None = None,
) -> ProfileResult:
    """Measure every block of ``specs`` on ``device`` with ``runtime`` into ``lut_path``."""
    from tqdm import tqdm

    t_start = time.perf_counter()
    fmt = format_for_runtime(runtime)
    res = ProfileResult(device.name, runtime, str(lut_path))
    writer = LutWriter(lut_path)
    try:
        check_threads(writer, runtime, device.threads)
        todo, res.skipped = pending(writer, specs, runtime, device.max_attempts)
        res.todo = len(todo)
        if not todo:
            return res
        context = {
            "device": device.name, "threads": device.threads, "exporter": cache.version(fmt),
        }

        def attempts(spec: BlockSpec) -> int:
            row = writer.table.get(str(spec), runtime)
            return (row.get("attempts") or 1) + 1 if row is not None and row["status"] == "error" else 1

        def fail(spec: BlockSpec, message: str) -> None:
            writer.add(error_row(str(spec), runtime, message,
                                 dict(context, measured_at=_now(), attempts=attempts(spec),
                                      host=res.host, host_cpu=res.host_cpu)))
            res.failed += 1
            res.errors.append(f"{spec}: {message}"[:300])

        # build -----------------------------------------------------------------------------
        t0 = time.perf_counter()
        built = cache.ensure([(str(s), fmt) for s in todo], workers=export_workers, progress=progress,
                             desc=f"{device.name} export {fmt}")
        res.export_s = time.perf_counter() - t0
        res.exported = sum(1 for r in built.values() if r.exported)
        ready = []
        for s in todo:
            r = built[(str(s), fmt)]
            if r.path is None:
                fail(s, f"export: {r.error}")
            else:
                ready.append((s, r.path))

        # run -------------------------------------------------------------------------------
        t0 = time.perf_counter()
        session = Session(transport or make_transport(device))
        bar = tqdm(total=len(ready), desc=f"{device.name} {runtime}", unit="block", position=position,
                   disable=not progress, dynamic_ncols=True, leave=True)
        try:
            _connect(session, device)
            info = session.transport.info(timeout=device.timeout_s) if ready else {}
            res.host = str(info.get("host", ""))[:100]
            res.host_cpu = str(info.get("cpu", ""))[:200]
            rt_info = info.get("runtimes", {}).get(runtime) if isinstance(info.get("runtimes"), dict) else None
            if ready and not rt_info:
                raise TransportError(f"{device.name}: runtime {runtime} is not installed on the device "
                                     f"(found: {', '.join(info.get('runtimes', {})) or 'none'})")
            res.runtime_version = str((rt_info or {}).get("version", ""))
            context.update(host=res.host, host_cpu=res.host_cpu)
            req_base = {
                "runtime": runtime, "threads": device.threads, "warmup": device.warmup,
                "repeats": device.repeats, "min_time_s": device.min_time_s, "max_time_s": device.max_time_s,
            }
            if device.providers:
                req_base["providers"] = list(device.providers)
            for spec, path in ready:
                outcome = _measure_one(session, device, spec, path, req_base)
                if isinstance(outcome, str):
                    fail(spec, outcome)
                else:
                    reply = outcome
                    row = stats_row(str(spec), runtime, reply,
                                    dict(context, measured_at=_now(), attempts=attempts(spec)))
                    writer.add(row, samples=reply["samples_ms"])
                    res.measured += 1
                    res.timed_s += float(reply.get("timed_s", 0.0))
                    bar.set_postfix(ms=f"{reply['median_ms']:.3f}", failed=res.failed, refresh=False)
                bar.update(1)
        except TransportError as exc:
            res.device_lost = str(exc)
        finally:
            bar.close()
            session.close()
            res.measure_s = time.perf_counter() - t0
        return res
    finally:
        writer.close()
        res.wall_s = time.perf_counter() - t_start


def _connect(session: Session, device: Device, reconnect: bool = False) -> None:
    """(Re)connect with back-off; raises TransportError when every attempt fails."""
    last: Exception | None = None
    for attempt in range(device.retries + 1):
        try:
            if reconnect or attempt:
                session.close()
            session.open()
            return
        except TransportError as exc:
            last = exc
            if attempt < device.retries:
                time.sleep(min(1.0 * 2**attempt, 10.0))
    raise TransportError(f"{device.name}: unreachable after {device.retries + 1} attempts: {last}")


def _measure_one(session: Session, device: Device, spec: BlockSpec, path: Path,
                 req_base: dict[str, Any]) -> dict[str, Any] | str:
    """A validated reply, or an error message for a failure row.

    A broken connection or a dead runner is retried after reconnecting.  When the device
    answers again but the runner keeps dying on this block, that is the block's failure (a
    row); only a device that cannot be reconnected raises TransportError."""
    last = ""
    for _ in range(device.retries + 1):
        try:
            ch = session.ensure()
            remote = session.transport.stage(path)
            try:
                reply = ch.request(dict(req_base, model=remote), timeout=device.timeout_s)
            finally:
                session.transport.unstage(remote)
            out = validate_reply(reply)
            t = reply.get("timed_s")
            out["timed_s"] = float(t) if isinstance(t, (int, float)) and not isinstance(t, bool) else 0.0
            return out
        except RunnerTimeout as exc:
            return f"timeout: {exc}"
        except RunnerError as exc:
            return f"runtime: {exc}"
        except TransportError as exc:
            last = str(exc)
            _connect(session, device, reconnect=True)
    return f"runner died {device.retries + 1} times on this block: {last}"


def host_context() -> dict[str, str]:
    return {"host": socket.gethostname(), "host_platform": platform.platform()}
