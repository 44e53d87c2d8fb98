"""Profile one device: export what is missing, then measure every block not yet in the LUT.

Build and run are separate steps (TVM's builder/runner split).  Export happens on the host
through the artifact cache and an ``ExportBroker`` that converts each (block, format) once
per run, whichever devices need it.  For the local device every export finishes before the
first measurement, so conversion never disturbs a timing on the same CPU; for a remote
device the conversion of the next blocks overlaps with the measurement of the current one.
Measurement goes through the device's transport and one long-lived runner (or, on an
Android phone, TFLite's ``benchmark_model``, whose summary is parsed on the host).  Every outcome is a LUT row: a timeout or a runtime
error is a failure row with its message; a broken connection is retried after reconnecting
(``device.retries`` times), and a device that stays unreachable ends its run with
``device_lost`` set, everything measured so far kept.
"""

from __future__ import annotations

import math
import platform
import socket
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

from supernet.space import PROBE_KINDS, BlockSpec

from .costmodel import prices_boundary
from .devices import Device
from .export import ArtifactCache, ExportResult, format_for_runtime
from .lut import COLUMNS, CONTEXTS, FLOAT_COLUMNS, STAT_COLUMNS, LutWriter, error_row, stats_row
from .transport import (RunnerChannel, RunnerError, RunnerTimeout, Transport, TransportError, fatal,
                        make_transport, validate_info, validate_reply)


GROUP_SIZE = 160  # models loaded and rotated at once in round-robin measurement


def probes_for(specs: Sequence[BlockSpec], runtime: str, precision: str = "fp32") -> list[BlockSpec]:
    """``specs`` less the boundary probes where the latency model does not price a layout
    boundary (``profiler.costmodel.prices_boundary``)."""
    return list(specs) if prices_boundary(runtime, precision) else [s for s in specs if s.kind != "boundary"]


class ProfileCancelled(Exception):
    """The run was interrupted (``ExportBroker.abort``): a device stops before its next block."""


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
    cpus: str = ""  # the CPUs the runner was allowed to run on ("1", "2-3"; device field cpu_mask)
    runtime_version: str = ""
    precision: str = "fp32"
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        d = dict(vars(self))
        d["errors"] = self.errors[:20]
        return d


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def default_lut_path(device: Device, runtime: str, folder: Path = Path("luts")) -> Path:
    """``luts/<device>.csv`` for the device's own runtimes (all of them in that one file),
    ``luts/<device>-<runtime>.csv`` for another."""
    return folder / (f"{device.name}.csv" if runtime in device.all_runtimes else f"{device.name}-{runtime}.csv")


def pending(writer: LutWriter, specs: Sequence[BlockSpec], runtime: str, max_attempts: int,
            precision: str = "fp32", context: str = "warm") -> tuple[list[BlockSpec], int]:
    """Blocks still to measure: not ``ok`` in ``context`` and not failed ``max_attempts``
    times already."""
    todo, skipped = [], 0
    for s in specs:
        row = writer.table.get(str(s), runtime, precision)
        if row is None or (row["status"] == "ok" and row["context"] != context):  # rows are normalised
            todo.append(s)
        elif row["status"] == "ok":
            skipped += 1
        elif (row.get("attempts") or 1) >= max_attempts:
            skipped += 1
        else:
            todo.append(s)
    return todo, skipped


def with_their_probes(todo: Sequence[BlockSpec], specs: Sequence[BlockSpec]) -> list[BlockSpec]:
    """``todo`` and, from ``specs``, the overhead probe of every block in it, measured or
    not, in the order of ``specs``: in a rotation a block's probe is timed just before it
    and takes off the cold invocation that block paid (a rerun that times some blocks
    again, after a kill or a failure, times their probes with them)."""
    from supernet.space import overhead_probe

    keys = {str(s) for s in todo}
    keys |= {str(overhead_probe(s)) for s in todo if s.kind not in PROBE_KINDS}
    return [s for s in specs if str(s) in keys]


def check_threads(writer: LutWriter, runtime: str, threads: int) -> None:
    """A LUT holds one thread count per runtime: mixing them would make a meaningless table."""
    other = {r["threads"] for (k, rt, res, _prec), r in writer.table.rows.items()
             if rt == runtime and r["status"] == "ok" and r.get("threads") not in ("", None)}
    other.discard(threads)
    if other:
        raise ValueError(
            f"{writer.path}: already holds {runtime} rows measured with threads={sorted(other)[0]}; "
            f"this run uses threads={threads} (use --lut for another file, or the same --threads)"
        )


class ExportBroker:
    """Converts each (key, format) at most once per run, on the host, for every device.

    ``submit`` returns a future of an ``ExportResult``; a key already in the cache is done at
    once, a key another device already asked for shares that device's future.  Conversions
    run in a pool of ``workers`` spawned processes, started on first need (a run whose
    artifacts are all cached starts none); ``workers=0`` converts in the calling thread,
    synchronously (tests).  Thread-safe: the device farm shares one broker."""

    def __init__(self, cache: ArtifactCache, workers: int = 1):
        self.cache = cache
        self.workers = workers
        self._lock = threading.RLock()
        self._futures: dict[tuple[str, str], Future] = {}
        self._pool: ProcessPoolExecutor | None = None
        self.exported = 0
        self.cancelled = threading.Event()  # set by abort(): devices stop at their next block

    def submit(self, key: str, fmt: str) -> "Future[ExportResult]":
        return self.submit_many([(key, fmt)])[(key, fmt)]

    def submit_many(self, items: Sequence[tuple[str, str]]) -> "dict[tuple[str, str], Future[ExportResult]]":
        """A future per item; what is neither cached nor already asked for is converted in
        the tasks of ``export.plan_tasks`` (TFLite blocks in chunks, one litert-torch call
        each)."""
        from .export import _export_tasks, plan_tasks

        out: dict[tuple[str, str], Future] = {}
        new: list[tuple[str, str]] = []
        with self._lock:
            for key, fmt in dict.fromkeys(items):
                fut = self._futures.get((key, fmt))
                if fut is None:
                    path = self.cache.path(key, fmt)
                    fut = self._futures[(key, fmt)] = Future()
                    if path.is_file() and path.stat().st_size > 0:
                        fut.set_result(ExportResult(key, fmt, path))
                    else:
                        path.parent.mkdir(parents=True, exist_ok=True)
                        new.append((key, fmt))
                out[(key, fmt)] = fut
            tasks = [[(k, f, str(self.cache.path(k, f))) for k, f in task]
                     for task in plan_tasks(new, self.workers)]
            for task in tasks:
                if self.workers <= 0:
                    self._finish_task(task, _export_tasks(task))
                else:
                    self._submit_task(task)
        return out

    def _live_pool(self) -> ProcessPoolExecutor:
        """The worker pool, started (again, after a worker died) on need.  Holds the lock."""
        if self._pool is None:
            from .export import export_pool

            self._pool = export_pool(self.workers)
        return self._pool

    def _drop_pool(self, pool: ProcessPoolExecutor) -> None:
        """Forget ``pool`` (broken: a worker died) so that the next task starts a new one."""
        with self._lock:
            if self._pool is pool:
                self._pool = None
        pool.shutdown(wait=False, cancel_futures=True)

    def _submit_task(self, task: list[tuple[str, str, str]], tries: int = 0) -> None:
        """Convert ``task`` in a worker.  A worker that dies (killed, out of memory, a crash in
        a converter) breaks the whole pool and fails every task queued in it: each such task
        is given once more to a new pool, then its blocks become error rows."""
        from concurrent.futures.process import BrokenProcessPool

        from .export import _export_tasks

        for _ in range(2):
            if self.cancelled.is_set():  # after abort(): no new pool, the blocks are only cancelled
                self._finish_task(task, [(k, fmt, "cancelled") for k, fmt, _ in task])
                return
            with self._lock:
                pool = self._live_pool()
            try:
                inner = pool.submit(_export_tasks, task)
            except BrokenProcessPool:
                self._drop_pool(pool)
                continue
            inner.add_done_callback(lambda f, task=task, pool=pool: self._task_done(f, task, pool, tries))
            return
        self._finish_task(task, [(k, fmt, "export worker pool could not be started again") for k, fmt, _ in task])

    def _task_done(self, f: Future, task: list[tuple[str, str, str]], pool: ProcessPoolExecutor,
                   tries: int) -> None:
        from concurrent.futures.process import BrokenProcessPool

        try:
            results = f.result()
        except BrokenProcessPool as exc:
            if tries == 0 and not self.cancelled.is_set():  # from a thread of its own: this callback runs in the dying pool's
                threading.Thread(target=self._retry, args=(task, pool), daemon=True).start()
                return
            results = [(k, fmt, f"export worker died (twice, in new pools): {exc}") for k, fmt, _ in task]
        except BaseException as exc:  # noqa: BLE001 - a failed task is each of its blocks' failure
            results = [(k, fmt, f"export worker failed: {exc.__class__.__name__}: {exc}") for k, fmt, _ in task]
        self._finish_task(task, results)

    def _retry(self, task: list[tuple[str, str, str]], pool: ProcessPoolExecutor) -> None:
        self._drop_pool(pool)
        self._submit_task(task, 1)

    def _finish_task(self, task: list[tuple[str, str, str]], results: list[tuple[str, str, str]]) -> None:
        errors = {(k, fmt): err for k, fmt, err in results}
        for key, fmt, path in task:
            err = errors.get((key, fmt), "export worker returned no result for this block")
            self._finish(self._futures[(key, fmt)], key, fmt, Path(path), err)

    def _finish(self, out: Future, key: str, fmt: str, path: Path, err: str) -> None:
        if err:
            out.set_result(ExportResult(key, fmt, None, error=err))
        else:
            with self._lock:
                self.exported += 1
            out.set_result(ExportResult(key, fmt, path, exported=True))

    def ensure(self, items: Sequence[tuple[str, str]], progress: bool = False,
               desc: str = "export") -> dict[tuple[str, str], ExportResult]:
        """Submit every item and wait for all of them."""
        from tqdm import tqdm

        futures = self.submit_many(items)
        pending_n = sum(1 for f in futures.values() if not f.done())
        bar = tqdm(total=pending_n, desc=desc, unit="block", disable=not progress or not pending_n,
                   dynamic_ncols=True)
        out = {}
        try:
            for it, f in futures.items():
                was_done = f.done()
                out[it] = f.result()
                if not was_done:
                    bar.update(1)
        finally:
            bar.close()
        return out

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)

    def stop_if_cancelled(self, device: str) -> None:
        """Raise ``ProfileCancelled`` once ``abort()`` was called (checked before each block)."""
        if self.cancelled.is_set():
            raise ProfileCancelled(device)

    def abort(self) -> None:
        """Ctrl-C: stop converting now (queued tasks cancelled, running workers terminated,
        not waited for) and tell every device to stop at its next block
        (``ProfileCancelled``), so that nothing cancelled is recorded as a failure row."""
        self.cancelled.set()
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            procs = list(getattr(pool, "_processes", {}).values())  # no public terminate before Python 3.14
            pool.shutdown(wait=False, cancel_futures=True)
            for proc in procs:
                if proc.is_alive():
                    proc.terminate()


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


def summary_row(key: str, runtime: str, reply: dict[str, Any], context: dict[str, Any]) -> dict[str, Any]:
    """A LUT row from a validated summary reply (``benchmark_model``: no raw samples, so
    the median, p90 and IQR are whatever the tool printed, often nothing).  Noisy when the
    coefficient of variation exceeds 10%."""
    row = {c: "" for c in COLUMNS}
    row.update(context)
    row.update({"key": key, "runtime": runtime, "status": "ok",
                "runtime_version": reply.get("runtime_version", ""), "provider": reply.get("provider", ""),
                "threads": reply.get("threads", context.get("threads", "")), "count": reply["count"],
                "source": reply.get("source", "")})
    for c in FLOAT_COLUMNS:
        v = reply.get(c)
        row[c] = "" if v is None else v
    row["noisy"] = reply["mean_ms"] > 0 and reply["std_ms"] / reply["mean_ms"] > 0.10
    return row


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
    broker: ExportBroker | None = None,
    precision: str = "fp32",
    context: str = "warm",
) -> ProfileResult:
    """Measure every block of ``specs`` on ``device`` with ``runtime`` into ``lut_path``.

    Args:
        device: the inventory entry.
        specs: blocks to cover; those already ``ok`` in the LUT (or failed
            ``device.max_attempts`` times) are skipped.
        runtime: ``onnxruntime`` or ``tflite``.
        lut_path: the LUT CSV (its journal sits beside it).
        cache: the artifact cache.
        export_workers: conversion processes (when no ``broker`` is given).
        progress: show progress bars; ``position`` is this device's bar line.
        transport: use this transport instead of ``make_transport(device)``.
        broker: a shared ``ExportBroker`` (the device farm passes one for all devices).
        precision: ``fp32`` or ``int8`` (blocks quantized by ``profiler.quantize``; their
            rows carry the precision, the int8 output error, its bound and the calibration).
        context: ``warm`` (each block timed alone, again and again) or ``round-robin``
            (the blocks timed in rotation, in the order of ``specs``, up to ``GROUP_SIZE``
            at a time: ``runner.measure_group``); rows measured in the other context are
            measured again.  The row's ``context`` column says which.

    Returns:
        A ``ProfileResult``; ``device_lost`` is set when the device could not be reached
        again (every row measured before that is kept; a rerun resumes).
    """
    from tqdm import tqdm

    t_start = time.perf_counter()
    fmt = format_for_runtime(runtime, precision)
    res = ProfileResult(device.name, runtime, str(lut_path), precision=precision)
    writer = LutWriter(lut_path)
    own_broker = broker is None
    broker = broker or ExportBroker(cache, export_workers)
    try:
        check_threads(writer, runtime, device.threads)
        if context not in CONTEXTS:
            raise ValueError(f"unknown measurement context {context!r} (known: {', '.join(CONTEXTS)})")
        specs = probes_for(specs, runtime, precision)
        todo, res.skipped = pending(writer, specs, runtime, device.max_attempts, precision, context)
        if context == "round-robin":
            todo = with_their_probes(todo, specs)
            res.skipped = len(specs) - len(todo)
        res.todo = len(todo)
        if not todo:
            return res
        row_ctx = {
            "device": device.name, "threads": device.threads, "exporter": cache.version(fmt),
            "precision": precision, "context": context,
        }

        def attempts(spec: BlockSpec) -> int:
            row = writer.table.get(str(spec), runtime, precision)
            return (row.get("attempts") or 1) + 1 if row is not None and row["status"] == "error" else 1

        def fail(spec: BlockSpec, message: str) -> None:
            writer.add(error_row(str(spec), runtime, message,
                                 dict(row_ctx, measured_at=_now(), attempts=attempts(spec),
                                      host=res.host, host_cpu=res.host_cpu)))
            res.failed += 1
            res.errors.append(f"{spec}: {message}"[:300])

        # build -----------------------------------------------------------------------------
        # Local: everything converted before the first timing.  Remote: submitted once the
        # device answered, converted in the background while earlier blocks are measured.
        t0 = time.perf_counter()
        exported_before = broker.exported
        futures: list[tuple[BlockSpec, Future]] = []
        if device.transport == "local":
            broker.ensure([(str(s), fmt) for s in todo], progress=progress, desc=f"{device.name} export {fmt}")
            submitted = broker.submit_many([(str(s), fmt) for s in todo])
            futures = [(s, submitted[(str(s), fmt)]) for s in todo]
            res.export_s = time.perf_counter() - t0

        # run -------------------------------------------------------------------------------
        t0 = time.perf_counter()
        session = Session(transport or make_transport(device))
        bar = tqdm(total=len(todo) * (max(1, device.sweeps) if context == "warm" else 1),
                   desc=f"{device.name} {runtime}", unit="block", position=position,
                   disable=not progress, dynamic_ncols=True, leave=True)
        try:
            connect(session, device)
            # the session's own runner answers ``info``: no second runner start per run
            try:
                info = session.ensure().request({"op": "info"},
                                                timeout=max(device.timeout_s, device.connect_timeout_s + 60))
            except (RunnerTimeout, RunnerError) as exc:
                raise TransportError(str(exc)) from None
            info = validate_info(info, device.name)
            res.host, res.host_cpu, res.cpus = info["host"], info["cpu"], info["cpus"]
            rt_info = info["runtimes"].get(runtime)
            if rt_info is None:
                raise TransportError(f"{device.name}: runtime {runtime} is not installed on the device "
                                     f"(found: {', '.join(info['runtimes']) or 'none'})")
            res.runtime_version = rt_info["version"]
            if device.providers and runtime == "onnxruntime":
                have = rt_info["providers"]
                missing = [p for p in device.providers if p not in have]
                if missing:
                    # onnxruntime would silently fall back to the CPU: a LUT of the wrong device
                    raise fatal(f"{device.name}: field 'providers': {', '.join(missing)} not available on "
                                f"the device (onnxruntime there has: {', '.join(map(str, have)) or 'none'})")
            row_ctx.update(host=res.host, host_cpu=res.host_cpu)
            req_base = request_base(device, runtime)
            if not futures:
                submitted = broker.submit_many([(str(s), fmt) for s in todo])
                futures = [(s, submitted[(str(s), fmt)]) for s in todo]

            def record(spec: BlockSpec, path: Path, outcome: dict[str, Any] | str, sweep: int = 1,
                       timings: Sequence[dict[str, Any]] = ()) -> None:
                """The block's row: ``outcome`` (an error message: a failure row), or with
                ``timings`` (its sweeps so far, ``sweep`` of them) the fastest of them."""
                if isinstance(outcome, str):
                    if sweep > 1:  # it was counted as measured after its first sweep
                        res.measured -= 1
                    fail(spec, outcome if sweep == 1 else f"sweep {sweep}: {outcome}")
                    return
                reply = fastest(timings) if timings else outcome
                ctx = dict(row_ctx, measured_at=_now(), attempts=attempts(spec), sweeps=max(1, len(timings)),
                           sweep_spread=sweep_spread(timings) if len(timings) > 1 else "")
                if precision == "int8":
                    ctx.update(quant_record(path))
                if "samples_ms" in reply:
                    writer.add(stats_row(str(spec), runtime, reply, ctx), samples=reply["samples_ms"])
                else:
                    writer.add(summary_row(str(spec), runtime, reply, ctx))
                if sweep == 1:
                    res.measured += 1
                res.timed_s += outcome["timed_s"]
                bar.set_postfix(ms=f"{reply_ms(reply):.3f}", failed=res.failed, refresh=False)

            def built_path(spec: BlockSpec, fut: Future) -> Path | None:
                """The block's artifact once converted, or None after its export error row."""
                t_wait = time.perf_counter()
                built = fut.result()
                broker.stop_if_cancelled(device.name)  # an export cancelled by Ctrl-C is not the block's failure
                if device.transport != "local":
                    res.export_s += time.perf_counter() - t_wait  # time spent waiting for conversion
                if built.path is None:
                    fail(spec, f"export: {built.error}")
                    bar.update(1)
                return built.path

            if context == "round-robin":
                built_all = [(spec, path) for spec, fut in futures if (path := built_path(spec, fut)) is not None]
                groups = rotation_groups(built_all)
                # a probe timed in several groups is recorded once, its samples from all of them
                # pooled, after the last group that times it
                last = {str(s): gi for gi, group in enumerate(groups) for s, _ in group if s.kind == "overhead"}
                held: dict[str, tuple[BlockSpec, Path, dict[str, Any] | str]] = {}
                for gi, group in enumerate(groups):
                    broker.stop_if_cancelled(device.name)
                    outcomes = measure_group_artifacts(session, device, [pth for _, pth in group], req_base)
                    for spec, pth, outcome in pool_outcomes(group, outcomes):
                        if spec.kind == "overhead":
                            have = held.get(str(spec))
                            held[str(spec)] = (spec, pth, outcome if have is None else _pooled(have[2], outcome))
                            if last[str(spec)] != gi:
                                continue
                            spec, pth, outcome = held.pop(str(spec))
                        record(spec, pth, outcome)
                        bar.update(1)
            else:
                # sweeps: every block timed, then every block again, ...; a row is the fastest
                # of its block's sweeps (a noisy moment on a shared CPU only adds time), written
                # after each sweep so that a run stopped in a later sweep keeps the earlier one
                sweeps = max(1, device.sweeps)
                req = sweep_request(req_base, sweeps)
                timed: dict[str, list[dict[str, Any]]] = {}  # blocks not failed yet: their timings

                def time_once(spec: BlockSpec, path: Path, sweep: int) -> None:
                    outcome = measure_artifact(session, device, path, req)
                    if isinstance(outcome, str):
                        timed.pop(str(spec), None)
                    else:
                        timed.setdefault(str(spec), []).append(outcome)
                    record(spec, path, outcome, sweep, timed.get(str(spec), ()))
                    bar.update(1)

                built: list[tuple[BlockSpec, Path]] = []
                for spec, fut in futures:  # the first sweep waits for each block's conversion
                    broker.stop_if_cancelled(device.name)
                    path = built_path(spec, fut)
                    if path is not None:
                        time_once(spec, path, 1)
                        built.append((spec, path))
                bar.total = len(todo) + (sweeps - 1) * len(timed)
                for sweep in range(2, sweeps + 1):
                    bar.set_description(f"{device.name} {runtime} sweep {sweep}/{sweeps}")
                    for spec, path in built:
                        broker.stop_if_cancelled(device.name)
                        if str(spec) in timed:  # not failed in an earlier sweep
                            time_once(spec, path, sweep)
        except TransportError as exc:
            res.device_lost = str(exc)
        finally:
            bar.close()
            session.close()
            res.measure_s = time.perf_counter() - t0
            res.exported = broker.exported - exported_before
        return res
    finally:
        if own_broker:
            broker.close()
        writer.close()
        res.wall_s = time.perf_counter() - t_start


def quant_record(artifact: Path) -> dict[str, Any]:
    """The LUT columns of an int8 artifact's record (``profiler.quantize``)."""
    from .quantize import read_meta

    meta = read_meta(artifact)
    return {"quant_error": meta.get("error", ""), "quant_bound": meta.get("bound", "") or "",
            "quant_calibration": str(meta.get("calibration", ""))}


def connect(session: Session, device: Device, reconnect: bool = False) -> None:
    """(Re)connect with back-off; raises TransportError when every attempt fails, at once
    when the error is permanent (host key, authentication, missing adb client...)."""
    last: Exception | None = None
    for attempt in range(device.retries + 1):
        try:
            if reconnect or attempt:
                session.close()
            session.open()
            return
        except TransportError as exc:
            if getattr(exc, "permanent", False):
                raise
            last = exc
            if attempt < device.retries:
                time.sleep(min(0.5 * 2**attempt, 10.0))
    raise TransportError(f"{device.name}: unreachable after {device.retries + 1} attempts: {last}")


def request_base(device: Device, runtime: str) -> dict[str, Any]:
    """The runner request for ``device`` and ``runtime``, less the model path."""
    req = {
        "runtime": runtime, "threads": device.threads, "warmup": device.warmup,
        "repeats": device.repeats, "min_time_s": device.min_time_s, "max_time_s": device.max_time_s,
    }
    if device.providers:
        req["providers"] = list(device.providers)
    return req


def sweep_request(req_base: dict[str, Any], sweeps: int) -> dict[str, Any]:
    """The runner request of one of ``sweeps`` sweeps: the device's ``repeats``,
    ``min_time_s`` and ``max_time_s`` divided among them, so that the sweeps together time a
    block about as long as one timing did (warm-up is not divided: every sweep loads the
    model again)."""
    if sweeps <= 1:
        return req_base
    return dict(req_base, repeats=max(1, math.ceil(req_base["repeats"] / sweeps)),
                min_time_s=req_base["min_time_s"] / sweeps, max_time_s=req_base["max_time_s"] / sweeps)


def reply_ms(reply: dict[str, Any]) -> float:
    """A timing's typical time: the median of its quietest stretch (``runner.quiet_median``),
    its median where it has no samples (a ``benchmark_model`` summary), or its mean where a
    summary has no median either.  LUT rows are priced with the same statistic
    (``LutTable.table``), so a network measured here is compared like with like."""
    return next((reply[c] for c in STAT_COLUMNS["quiet"] if reply.get(c)), 0.0)


def fastest(timings: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The fastest of one block's sweeps: on a CPU that other work shares (a VM's, a phone's
    background apps, thermal throttling) a disturbance only ever adds time, and one that
    covers a whole timing moves its median as well as its minimum (measured: 26 of 151 rows
    of two consecutive builds 20% to 2.2x apart, each time the slower one in a disturbed
    timing with a normal minimum or quartiles twice the block's usual; README, "Profiling
    real devices")."""
    return min(timings, key=reply_ms)


def sweep_spread(timings: Sequence[dict[str, Any]]) -> float:
    """How far one block's sweeps were apart: slowest / fastest - 1 (0.0 for one sweep)."""
    ms = [reply_ms(t) for t in timings]
    return max(ms) / min(ms) - 1.0 if ms and min(ms) > 0 else 0.0


def _staged_request(session: Session, device: Device, paths: Sequence[Path], request: Callable[[list[str]], dict],
                    timeout_s: float, handle: Callable[[Any, Any], Any], what: str,
                    refuse: Callable[[Any], str | None] | None = None) -> Any:
    """Stage ``paths`` on the device (a path listed twice, once), send ``request(remote
    paths)``, unstage them, and return ``handle(channel, reply)``, or an error message for a
    failure row (``refuse(channel)``'s, when it names one, before anything is staged).  A
    broken connection or a dead runner is retried after reconnecting; when the device
    answers again but the runner keeps dying on this ``what``, that is its failure; only a
    device that cannot be reconnected raises TransportError."""
    last = ""
    for _ in range(device.retries + 1):
        try:
            ch = session.ensure()
            refused = refuse(ch) if refuse is not None else None
            if refused:
                return refused
            staged = {p: session.transport.stage(p) for p in dict.fromkeys(paths)}
            try:
                reply = ch.request(request([staged[p] for p in paths]), timeout=timeout_s)
            finally:
                if ch.alive:
                    for remote in staged.values():
                        session.transport.unstage(remote)
            return handle(ch, reply)
        except RunnerTimeout as exc:
            return f"timeout: {exc}"
        except RunnerError as exc:
            return f"runtime: {exc}"
        except TransportError as exc:
            last = str(exc)
            connect(session, device, reconnect=True)
    return f"runner died {device.retries + 1} times on this {what}: {last}"


def measure_artifact(session: Session, device: Device, path: Path, req_base: dict[str, Any],
                     timeout_s: float | None = None) -> dict[str, Any] | str:
    """A validated reply, or an error message for a failure row (``_staged_request``: a
    runner that keeps dying on this block is the block's failure).

    Replies are validated by what the host knows about the channel, never by what the
    reply claims: a runner's reply must carry raw samples (statistics are recomputed here);
    only a channel that declares ``summary_only`` (``benchmark_model``, parsed on the host)
    yields summary statistics, checked by ``benchmark_model.validate_summary``."""

    def handle(ch, reply) -> dict[str, Any]:
        if getattr(ch, "summary_only", False):
            from .benchmark_model import validate_summary

            return validate_summary(reply)
        return validate_reply(reply)

    return _staged_request(session, device, [path], lambda remote: dict(req_base, model=remote[0]),
                           timeout_s or device.timeout_s, handle, "block")


def rotation_groups(built: Sequence[tuple[BlockSpec, Path]],
                    size: int | None = None) -> list[list[tuple[BlockSpec, Path]]]:
    """The round-robin rotation of ``built`` (blocks and overhead probes in profiling order),
    cut into groups of at most ``size`` models (default ``GROUP_SIZE``): each block preceded
    by the probe of its input shape, so that a probe is timed where a block's invocation
    starts, as cold as the block's own (a probe is then in the rotation once per block of
    its shape; ``pool_outcomes`` joins its samples).  A probe no block uses is kept once."""
    from supernet.space import overhead_probe

    size = size or GROUP_SIZE
    probes = {str(spec): (spec, path) for spec, path in built if spec.kind == "overhead"}
    used: set[str] = set()
    units: list[list[tuple[BlockSpec, Path]]] = []
    for spec, path in built:
        if spec.kind == "overhead":
            continue
        probe = probes.get(str(overhead_probe(spec)))
        units.append(([probe] if probe else []) + [(spec, path)])
        if probe:
            used.add(str(probe[0]))
    units += [[item] for key, item in probes.items() if key not in used]
    groups: list[list[tuple[BlockSpec, Path]]] = [[]]
    for unit in units:
        if groups[-1] and len(groups[-1]) + len(unit) > size:
            groups.append([])
        groups[-1].extend(unit)
    return [g for g in groups if g]


def pool_outcomes(group: Sequence[tuple[BlockSpec, Path]], outcomes: Sequence[dict[str, Any] | str]
                  ) -> list[tuple[BlockSpec, Path, dict[str, Any] | str]]:
    """One outcome per distinct block of a rotation group, in first-seen order: a model timed
    at several places of the rotation (a probe before each block of its shape) gets all its
    samples pooled, statistics recomputed; an error at any place is its outcome."""
    merged: dict[str, tuple[BlockSpec, Path, dict[str, Any] | str]] = {}
    for (spec, path), out in zip(group, outcomes):
        have = merged.get(str(spec))
        merged[str(spec)] = (spec, path, out if have is None else _pooled(have[2], out))
    return list(merged.values())


def _pooled(have: dict[str, Any] | str, out: dict[str, Any] | str) -> dict[str, Any] | str:
    """Two outcomes of one model timed at two places of a rotation as one: the samples
    joined and the statistics recomputed; an error at either place is the outcome."""
    from .runner import _stats

    if isinstance(have, str):
        return have
    if isinstance(out, str):
        return out
    reply = dict(have)
    reply["samples_ms"] = reply["samples_ms"] + out["samples_ms"]
    reply["timed_s"] = reply.get("timed_s", 0.0) + out.get("timed_s", 0.0)
    reply.update(_stats(reply["samples_ms"]))
    return reply


def measure_group_artifacts(session: Session, device: Device, paths: Sequence[Path],
                            req_base: dict[str, Any]) -> list[dict[str, Any] | str]:
    """Time ``paths`` in rotation on the device (``runner.measure_group``): one validated
    reply or error message per model, as ``measure_artifact`` gives for one.  The whole group
    is one request (timeout: the device's per-block timeout times the group's size); a
    channel that only returns summaries (``benchmark_model``) cannot rotate models, and every
    model then gets that error."""
    def refuse(ch) -> str | None:
        if getattr(ch, "summary_only", False):
            return "round-robin measurement needs the hwnas runner on the device " \
                   "(this channel runs benchmark_model, one model per call)"
        return None

    def handle(_ch, reply) -> list[dict[str, Any] | str]:
        results = reply.get("results") if isinstance(reply, dict) and reply.get("ok") is True else None
        if not isinstance(results, list) or len(results) != len(paths):
            err = reply.get("error") if isinstance(reply, dict) else None
            raise RunnerError(str(err)[:500] if err else "malformed group reply")
        out: list[dict[str, Any] | str] = []
        for r in results:
            try:
                out.append(validate_reply(r))
            except RunnerError as exc:
                out.append(f"runtime: {exc}")
        return out

    out = _staged_request(session, device, paths, lambda remote: dict(req_base, op="measure_group", models=remote),
                          device.timeout_s * max(1, len(paths)), handle, "group", refuse)
    return [out] * len(paths) if isinstance(out, str) else out


def host_context() -> dict[str, str]:
    return {"host": socket.gethostname(), "host_platform": platform.platform()}
