"""Device farm: several devices measured at once, one worker thread per device.

``--device pixel1,rpi4`` or ``--device all``: every device gets its own worker, its own
progress bar (one line each) and its own LUT; a device that fails or is lost does not stop
the others.  Conversion is shared: one ``ExportBroker`` converts each (block, format) once
for all devices that use that format.

The local device is special: its timings share the CPU with everything the host does.  When
it is part of a farm, every artifact any device needs is converted *before* any worker
starts (so no conversion overlaps a local timing), and local devices measure one at a time.
Remote devices measure concurrently, each overlapping its own conversion queue.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from supernet.space import BlockSpec

from .devices import Device
from .export import ArtifactCache, format_for_runtime
from .lut import LutError
from .measure import ExportBroker, ProfileResult, default_lut_path, profile_device
from .transport import Transport


@dataclass
class FarmResult:
    results: list[ProfileResult] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # per-device problems that are not device losses

    @property
    def exit_code(self) -> int:
        if self.errors:
            return 2
        return 1 if any(r.device_lost for r in self.results) else 0


def run_farm(
    devices: Sequence[Device],
    specs: Sequence[BlockSpec],
    cache: ArtifactCache,
    *,
    runtimes: Sequence[str] | None = None,
    lut: Path | None = None,
    lut_folder: Path = Path("luts"),
    export_workers: int = 1,
    progress: bool = True,
    transport_factory: Callable[[Device], Transport] | None = None,
    on_result: Callable[[ProfileResult], None] | None = None,
    precisions: Sequence[str] = ("fp32",),
    context: str = "warm",
) -> FarmResult:
    """Profile every device (each with ``runtimes`` or its own runtime) concurrently.

    Args:
        devices: the devices, in the order of their progress bars.
        specs: blocks to measure.
        cache: the artifact cache.
        runtimes: runtimes to measure on every device (default: each device's own, ``all_runtimes``).
        lut: one LUT path (only with a single device); otherwise ``luts/<device>.csv``.
        export_workers: conversion processes, shared by all devices.
        progress: progress bars, one line per device.
        transport_factory: builds each device's transport (default: from its entry).
        on_result: called (from the worker thread) with each finished ``ProfileResult``.
        precisions: ``fp32`` and/or ``int8``, each measured for every runtime into the same
            LUT (rows differ by precision), fp32 first; each precision gets every block and
            probe of ``specs`` (an int8 table's stream probes are the same chains quantized).
        context: ``warm`` or ``round-robin`` (``profile_device``).

    Returns:
        A ``FarmResult``: results in device order, and per-device errors.
    """
    if lut is not None and len(devices) > 1:
        raise ValueError("--lut names one file; with several devices each gets luts/<device>.csv")
    broker = ExportBroker(cache, export_workers)
    farm = FarmResult()
    lock = threading.Lock()
    local_lock = threading.Lock()
    per_device: dict[int, list[ProfileResult]] = {}

    def work(i: int, device: Device) -> None:
        out: list[ProfileResult] = []
        for runtime, precision in [(rt, p) for rt in runtimes or device.all_runtimes for p in precisions]:
            lut_path = lut or default_lut_path(device, runtime, lut_folder)
            guard = local_lock if device.transport == "local" and len(devices) > 1 else _NoLock()
            try:
                with guard:
                    res = profile_device(device, specs, runtime, lut_path, cache, progress=progress, position=i,
                                         broker=broker, precision=precision, context=context,
                                         transport=transport_factory(device) if transport_factory else None)
            except (LutError, ValueError, OSError) as exc:
                with lock:
                    farm.errors.append(f"{device.name}: {exc}")
                break
            out.append(res)
            if on_result is not None:
                on_result(res)
        with lock:
            per_device[i] = out

    pool: ThreadPoolExecutor | None = None
    try:
        if len(devices) > 1 and any(d.transport == "local" for d in devices):
            items = [(str(s), format_for_runtime(rt, p)) for d in devices for rt in (runtimes or d.all_runtimes)
                     for p in precisions for s in specs]
            broker.ensure(items, progress=progress, desc="export (before local timing)")
        if len(devices) == 1:
            work(0, devices[0])
        else:
            pool = ThreadPoolExecutor(max_workers=len(devices), thread_name_prefix="hwnas-device")
            for f in [pool.submit(work, i, d) for i, d in enumerate(devices)]:
                f.result()
    except KeyboardInterrupt:
        broker.abort()  # no waiting for conversions nobody will measure; devices stop at their next block
        raise
    finally:
        if pool is not None:  # after abort(), when interrupted: the devices' threads end at once
            pool.shutdown(wait=True)
        broker.close()
    for i in range(len(devices)):
        farm.results.extend(per_device.get(i, []))
    return farm


class _NoLock:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None
