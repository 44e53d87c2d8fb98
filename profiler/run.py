"""Build latency lookup tables: every block of the search space, measured on a device.

    python -m profiler.run --device local [--runtime onnxruntime|tflite|onnxruntime,tflite]
        [--precision fp32|int8|fp32,int8] [--data fmnist [--calib-run RUN]] [--resolutions 160,224] [--widths 1.0] [--threads N] [--limit N] [--lut PATH]
        [--space ofa_mbv3] [--devices devices.yaml] [--cache DIR] [--export-workers N]
        [--no-overhead-probes] [--stream-probes auto|on|off] [--json]

Several devices (``--device a,b`` or ``--device all``) are measured concurrently, one worker
and one progress bar per device (``profiler.farm``).  Writes ``luts/<device>.csv`` (every runtime of the device's entry in
that one file, ``luts/<device>-<runtime>.csv`` for a runtime the entry does not list), its raw-sample journal, and a run summary ``<lut>.run.json`` (one entry per runtime).  A rerun skips
what is measured; a killed run resumes where it stopped.  Beside the blocks it measures an
``overhead`` probe at each input shape (the runtime's fixed cost of one invocation, which the
latency model takes off every block and charges a network once; ``profiler.costmodel``),
and, when the whole space is timed warm, ``stream`` probes (``--stream-probes``): chains of matrix-vector products of 0.25
MiB of weights up to what the space's largest network touches in a run (``supernet.space.stream_layers``), whose time per weight byte tells how much more a network pays for
weights that no longer fit the device's caches than its blocks paid one at a time
(``supernet.space.stream_probes``).
``--precision int8`` (or ``fp32,int8``) measures post-training-quantized blocks too
(``profiler.quantize``), and the same probes quantized (an int8 weight is one byte): their rows
sit in the same LUT with ``precision`` int8, and their summary goes to ``<lut>.run-int8.json``.
int8 blocks are calibrated on seeded random inputs, or with ``--data`` on real images carried
to each block's input (``profiler.calibrate``; stream probes keep random inputs).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

from supernet.atomic import atomic_write_text
from supernet.cliargs import run_main
from supernet.space import (PROBE_KINDS, BlockSpec, boundary_probes, get_space, overhead_probe, space_names,
                            stream_layers, stream_probes)

from .calibrate import CalibrationError, block_activations, calibration_id, stored, write_calibration
from .costmodel import BYTES_PER_PARAM, solo_bytes
from .devices import DEFAULT_DEVICES_FILE, RUNTIMES, DeviceConfigError, load_devices, select_devices
from .export import ArtifactCache, default_cache_dir, default_export_workers
from .farm import run_farm
from .lut import PRECISIONS, lut_sibling, record_space
from .measure import ProfileResult
from .quantize import CALIB_SAMPLES


def _int_list(text: str, what: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what} must be a comma list of integers, got {text!r}") from None


def _float_list(text: str, what: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what} must be a comma list of numbers, got {text!r}") from None


def with_overhead_probes(specs: list[BlockSpec]) -> list[BlockSpec]:
    """``specs`` with, before the first block of each input shape, the overhead probe and the
    two boundary probes of that shape (``supernet.space.overhead_probe``,
    ``boundary_probes``): measured among the blocks they correct, under the same conditions
    (boundary probes only for the runtimes that convert layouts at a model's edges:
    ``profiler.measure.probes_for``)."""
    out: list[BlockSpec] = []
    for s in specs:
        if s.kind != "overhead":  # a stream probe too: its time less its input's overhead probe
            out.append(overhead_probe(s))
        if s.kind not in PROBE_KINDS:
            out += boundary_probes(s)
        out.append(s)
    return list(dict.fromkeys(out))  # each probe stays where its shape first appears


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m profiler.run", description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="local", help="device name from devices.yaml, a comma list, or all (default: local)")
    ap.add_argument("--devices", type=Path, default=DEFAULT_DEVICES_FILE, help="device inventory (default: ./devices.yaml)")
    ap.add_argument("--runtime", default=None, help="onnxruntime, tflite, or both comma-separated (default: the device's runtimes)")
    ap.add_argument("--precision", default="fp32",
                    help="fp32, int8, or both comma-separated (int8: blocks quantized from their fp32 models; "
                         "default fp32)")
    ap.add_argument("--data", default=None,
                    help="calibrate int8 blocks on real images of this dataset (fmnist, fmnist:PATH, cifar10:PATH, "
                         "imagefolder:PATH), carried to each block's input by the largest subnet "
                         "(profiler.calibrate; default: seeded random inputs)")
    ap.add_argument("--calib-run", type=Path, default=None,
                    help="with --data (or alone: the run's dataset): the trained supernet run folder whose largest "
                         "subnet carries the images (default: an untrained supernet, BN set on the images)")
    ap.add_argument("--calib-images", type=int, default=None,
                    help="real calibration images per int8 block (default 8)")
    ap.add_argument("--space", default="ofa_mbv3", help=f"search space ({', '.join(space_names())})")
    ap.add_argument("--resolutions", type=lambda t: _int_list(t, "--resolutions"), default=None,
                    help="input resolutions to cover (default: all of the space)")
    ap.add_argument("--widths", type=lambda t: _float_list(t, "--widths"), default=None,
                    help="width multipliers to cover (default: the space's first)")
    ap.add_argument("--threads", type=int, default=None, help="runtime threads (default: the device's)")
    ap.add_argument("--repeats", type=int, default=None, help="minimum timed runs per block (default: the device's)")
    ap.add_argument("--min-time", type=float, default=None, help="minimum timed seconds per block (default: the device's)")
    ap.add_argument("--sweeps", type=int, default=None,
                    help="time every block this often, in turn, each time for 1/N of --repeats and --min-time; "
                         "a row is its block's fastest sweep (default: the device's, 2)")
    ap.add_argument("--limit", type=int, default=None, help="only the first N blocks of the space")
    ap.add_argument("--no-overhead-probes", action="store_true",
                    help="do not measure the runtime's per-invocation overhead at each input shape (the latency "
                         "model then sums the blocks' rows as they are)")
    ap.add_argument("--stream-probes", default="auto", choices=("auto", "on", "off"),
                    help="measure the weight-streaming probes (auto: in a warm run of the whole space, not with "
                         "--limit or --context round-robin; off: the latency model then prices no weight streaming)")
    ap.add_argument("--context", default="warm", choices=("warm", "round-robin"),
                    help="warm: each block timed alone, again and again (default); round-robin: the blocks timed in "
                         "rotation, in the space's order, each invocation finding the caches and the runtime's "
                         "dispatch path as the others left them, as inside a network (needs the hwnas runner; "
                         "rows of the other context are measured again)")
    ap.add_argument("--lut", type=Path, default=None, help="LUT CSV to write (default: luts/<device>.csv)")
    ap.add_argument("--cache", type=Path, default=None, help=f"artifact cache (default: {default_cache_dir()})")
    ap.add_argument("--export-workers", type=int, default=default_export_workers(),
                    help="parallel export processes (exports finish before local measurement starts)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bars")
    ap.add_argument("--json", action="store_true", help="print the run summary as one JSON object")
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    try:
        space = get_space(args.space)
        devices = select_devices(load_devices(args.devices), args.device, args.devices)
        runtimes = None
        if args.runtime:
            runtimes = [r.strip() for r in args.runtime.split(",") if r.strip()]
            bad = [r for r in runtimes if r not in RUNTIMES]
            if bad:
                raise ValueError(f"unknown runtime {', '.join(map(repr, bad))} (known: {', '.join(RUNTIMES)})")
        precisions = [p.strip() for p in args.precision.split(",") if p.strip()]
        bad = [p for p in precisions if p not in PRECISIONS]
        if bad or not precisions:
            raise ValueError(f"unknown precision {', '.join(map(repr, bad)) or repr(args.precision)} "
                             f"(known: {', '.join(PRECISIONS)})")
        precisions = [p for p in PRECISIONS if p in precisions]  # fp32 first: int8 is quantized from it
        specs = space.all_blocks(args.resolutions, args.widths, by_network=args.context == "round-robin")
        if args.limit is not None:
            if args.limit < 1:
                raise ValueError("--limit must be at least 1")
            specs = specs[: args.limit]
        if args.stream_probes == "on" and args.context != "warm":
            raise ValueError("--stream-probes on needs --context warm (a probe timed in rotation measures the "
                             "rotation, not the device's caches)")
        if args.stream_probes == "on" or (args.stream_probes == "auto" and args.limit is None
                                          and args.context == "warm"):
            largest = max(sum(solo_bytes(b, BYTES_PER_PARAM["fp32"]) for b in space.blocks(space.max_subnet(r, w)))
                          for r in (args.resolutions or space.resolutions)
                          for w in (args.widths or (space.default_width,)))
            specs = specs + stream_probes(layers=stream_layers(largest))
        if not args.no_overhead_probes:
            specs = with_overhead_probes(specs)
        for name, value in (("--threads", args.threads), ("--repeats", args.repeats), ("--sweeps", args.sweeps)):
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1")
        if args.export_workers < 0:
            raise ValueError(f"--export-workers must be at least 0 (0: convert in the profiler's own process), "
                             f"got {args.export_workers}")
        if args.min_time is not None and not 0 <= args.min_time < 1e6:  # also refuses nan and inf
            raise ValueError(f"--min-time must be a number of seconds >= 0, got {args.min_time:g}")
        if args.lut is not None and len(devices) > 1:
            raise ValueError("--lut names one file; with several devices each gets luts/<device>.csv")
        real = args.data is not None or args.calib_run is not None
        if (real or args.calib_images is not None) and "int8" not in precisions:
            raise ValueError("--data, --calib-run and --calib-images calibrate int8 blocks: add --precision int8 "
                             "(or fp32,int8)")
        if args.calib_images is not None and not real:
            raise ValueError("--calib-images needs --data or --calib-run (random calibration uses "
                             f"{CALIB_SAMPLES} inputs)")
        if args.calib_images is not None and args.calib_images < 1:
            raise ValueError("--calib-images must be at least 1")
    except (DeviceConfigError, ValueError) as exc:
        ap.exit(2, f"error: {exc}\n")
    missing = _missing_phone(devices[0], args.devices) if len(devices) == 1 and devices[0].transport == "adb" else ""
    if missing:
        print(f"error: {missing}", file=sys.stderr)
        return 1
    cache = ArtifactCache(args.cache)
    if real:
        try:
            cache = _real_calibration(space, specs, args, cache.root)
        except CalibrationError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    overrides = {k: v for k, v in (("threads", args.threads), ("repeats", args.repeats),
                                    ("min_time_s", args.min_time), ("sweeps", args.sweeps)) if v is not None}
    devices = [replace(d, **overrides) for d in devices]
    farm = run_farm(devices, specs, cache, runtimes=runtimes, lut=args.lut, export_workers=args.export_workers,
                    progress=not args.no_progress, on_result=lambda res: _write_summary(res, space.name),
                    precisions=precisions, context=args.context)
    for err in farm.errors:
        print(f"error: {err}", file=sys.stderr)
    for res in farm.results:
        if res.device_lost:
            print(f"error: {res.device_lost} (measured rows kept in {res.lut}; rerun to resume)", file=sys.stderr)
    _print(farm.results, args.json)
    return farm.exit_code


def _real_calibration(space, specs: list[BlockSpec], args, root: Path) -> ArtifactCache:
    """Compute and store the real inputs of the blocks (``profiler.calibrate``); the cache
    whose int8 artifacts are quantized with them."""
    n = args.calib_images or CALIB_SAMPLES
    cal_id = calibration_id(args.data, args.calib_run, n, 0)
    keys = [str(s) for s in specs]
    have = stored(root, cal_id)
    if have is not None and set(keys) <= have[0]:  # computed by an earlier run: reuse
        matched, label = have[1] & set(keys), have[2]
    else:
        acts, label = block_activations(space, specs, args.data, args.calib_run, n)
        write_calibration(root, cal_id, acts, label, asked=keys)
        matched = set(acts)
    missing = [k for k in keys if k not in matched]
    print(f"int8 calibration: {len(matched)} of {len(specs)} blocks on {label}"
          + (f"; {len(missing)} matched no block of the largest subnet and keep random inputs" if missing else ""),
          file=sys.stderr)
    return ArtifactCache(root, calibration=cal_id)


def _write_summary(res: ProfileResult, space: str) -> None:
    """The run's summary beside the LUT, one entry per runtime (``{"runtimes": {rt: ...}}``):
    a device's runtimes share one LUT, and one runtime's run keeps the others' summaries."""
    suffix = ".run.json" if res.precision == "fp32" else f".run-{res.precision}.json"
    path = lut_sibling(Path(res.lut), suffix)
    entries: dict = {}
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(old, dict) and isinstance(old.get("runtimes"), dict):
            entries = {k: v for k, v in old["runtimes"].items() if isinstance(v, dict)}
    except (OSError, ValueError):
        pass  # none yet, or one of the one-runtime form before: replaced
    entries[res.runtime] = res.as_dict()
    atomic_write_text(path, json.dumps({"runtimes": entries}, indent=2) + "\n")
    record_space(Path(res.lut), space)


def _missing_phone(device, devices_file: Path) -> str:
    """Checked before any work: what is missing (one line) when adb is not installed or
    ``adb devices`` does not list the device's phone as ready; "" when it does.  Network
    serials (host:port) are left to the transport, which connects first."""
    from .transport import TransportError
    from .transport_adb import adb_devices

    if ":" in device.serial:
        return ""
    try:
        listed = adb_devices(device.expand(device.adb or "adb"))
    except TransportError as exc:
        return f"{device.name}: {exc}, or set field 'adb' of {device.name!r} in {devices_file}"
    state = listed.get(device.serial)
    if state == "device":
        return ""
    seen = ", ".join(f"{k} ({v})" for k, v in listed.items()) or "none"
    return (f"{device.name}: adb device {device.serial!r} {'not found' if state is None else 'is ' + state} "
            f"(adb devices lists: {seen}): plug the phone in with USB debugging on (accept its prompt) and set "
            f"its serial (field 'serial' of {device.name!r} in {devices_file})")


def _print(results: list[ProfileResult], as_json: bool) -> None:
    if as_json:
        print(json.dumps({"runs": [r.as_dict() for r in results]}))
        return
    print(f"{'device':<10} {'runtime':<12} {'precision':<9} {'measured':>8} {'failed':>6} {'skipped':>7} "
          f"{'export s':>8} {'measure s':>9} {'timed s':>7} {'cpus':>5}  lut")
    for r in results:
        print(f"{r.device:<10} {r.runtime:<12} {r.precision:<9} {r.measured:>8} {r.failed:>6} {r.skipped:>7} {r.export_s:>8.1f} "
              f"{r.measure_s:>9.1f} {r.timed_s:>7.1f} {r.cpus or '-':>5}  {r.lut}")
        for e in r.errors[:5]:
            print(f"  failed: {e}")
        if r.device_lost:
            print(f"  device lost: {r.device_lost}")


if __name__ == "__main__":
    run_main(main, "profiler.run",
             "the blocks measured so far are kept in the LUT and its journal; the same command continues from them")
