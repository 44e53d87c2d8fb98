"""Does an int8 block's latency depend on what it was calibrated on?  Random against real-image
calibration (issue 16, ``profiler.run --data``), timed alternately in one process.

Both int8 artifacts of each block must be in the cache: run ``profiler.run --precision int8``
once without and once with ``--data`` into the same ``--cache``.  For every int8 block of
``--runtime`` in ``--lut``, three sessions are timed in rotation, ``--inner`` invocations a
turn for ``--rounds`` rounds, each with one fixed input: the randomly calibrated model, the
really calibrated one, and a second session of the random one (the control: what two
sessions of the same file differ by here).  Prints one JSON object: per block the three
medians, and the median and spread of real/random against control/random.

    .venv/bin/python bench/calib_effect.py --lut L.csv --cache DIR --runtime tflite [--rounds 20] [--inner 20]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from bench.emit import emit  # noqa: E402
from profiler.export import _file_stem, format_for_runtime  # noqa: E402
from profiler.lut import read_rows  # noqa: E402
from profiler.quantize import quantize_input  # noqa: E402
from supernet.space import BlockSpec  # noqa: E402


def invoker(path: Path, runtime: str, x_nchw: np.ndarray):
    """A no-argument callable running the model once on ``x`` (one thread; int8 TFLite
    inputs quantized with the model's own parameters, as the profiler's runner feeds them)."""
    if runtime == "tflite":
        from ai_edge_litert.interpreter import Interpreter

        it = Interpreter(model_path=str(path), num_threads=1)
        it.allocate_tensors()
        d = it.get_input_details()[0]
        it.set_tensor(d["index"], quantize_input(np.ascontiguousarray(x_nchw.transpose(0, 2, 3, 1)), d))
        return it.invoke
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = 1
    so.log_severity_level = 3
    s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    name = s.get_inputs()[0].name
    x = np.ascontiguousarray(x_nchw, dtype=np.float32)
    return lambda: s.run(None, {name: x})


def versions(cache: Path, fmt: str) -> tuple[Path, Path]:
    """(random-calibration version dir, real-calibration version dir) of ``fmt``."""
    dirs = sorted(p for p in (cache / fmt).iterdir() if p.is_dir()) if (cache / fmt).is_dir() else []
    plain = [p for p in dirs if "-cal" not in p.name]
    real = [p for p in dirs if "-cal" in p.name]
    if len(plain) != 1 or len(real) != 1:
        raise SystemExit(f"calib_effect: error: {cache / fmt} needs one random- and one real-calibrated version "
                         f"(found {[p.name for p in dirs]})")
    return plain[0], real[0]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lut", type=Path, required=True)
    ap.add_argument("--cache", type=Path, required=True)
    ap.add_argument("--runtime", default="tflite", choices=("tflite", "onnxruntime"))
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--inner", type=int, default=20)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    fmt = format_for_runtime(args.runtime, "int8")
    plain, real = versions(args.cache, fmt)
    keys = [r["key"] for r in read_rows(args.lut)
            if r["runtime"] == args.runtime and r["precision"] == "int8" and r["kind"] != "overhead"
            and r["status"] == "ok"]
    ext = "tflite" if args.runtime == "tflite" else "onnx"
    rows = []
    for key in dict.fromkeys(keys):
        a, b = plain / f"{_file_stem(key)}.{ext}", real / f"{_file_stem(key)}.{ext}"
        if not (a.is_file() and b.is_file()):
            continue
        spec = BlockSpec.parse(key)
        x = np.random.default_rng(0).standard_normal(spec.input_shape).astype(np.float32)
        fns = {"random": invoker(a, args.runtime, x), "real": invoker(b, args.runtime, x),
               "control": invoker(a, args.runtime, x)}
        times: dict[str, list[float]] = {k: [] for k in fns}
        names = list(fns)
        for fn in fns.values():
            for _ in range(5):
                fn()
        for rnd in range(args.rounds):
            k = rnd % len(names)
            for name in names[k:] + names[:k]:
                fn = fns[name]
                t = time.perf_counter()
                for _ in range(args.inner):
                    fn()
                times[name].append((time.perf_counter() - t) / args.inner * 1e3)
        med = {k: statistics.median(v) for k, v in times.items()}
        rows.append({"key": key, **{f"{k}_ms": round(v, 5) for k, v in med.items()},
                     "real_over_random": round(med["real"] / med["random"], 4),
                     "control_over_random": round(med["control"] / med["random"], 4)})
        print(f"{key[:70]}: real/random {rows[-1]['real_over_random']:.3f}, "
              f"control/random {rows[-1]['control_over_random']:.3f}", file=sys.stderr)
    if not rows:
        raise SystemExit(f"calib_effect: error: no int8 {args.runtime} block of {args.lut} has both artifacts "
                         f"in {args.cache}")

    def summary(col: str) -> dict:
        v = [r[col] for r in rows]
        return {"median": round(statistics.median(v), 4), "min": min(v), "max": max(v),
                "within_5pct": round(sum(abs(x - 1) <= 0.05 for x in v) / len(v), 3)}

    return emit({
        "bench": "calib_effect", "runtime": args.runtime, "blocks": len(rows), "rounds": args.rounds,
        "inner": args.inner, "random_version": plain.name, "real_version": real.name,
        "real_over_random": summary("real_over_random"), "control_over_random": summary("control_over_random"),
        "sum_real_over_random": round(sum(r["real_ms"] for r in rows) / sum(r["random_ms"] for r in rows), 4),
        "host": platform.node(), "cpu_count": os.cpu_count(), "load_avg": os.getloadavg(), "rows": rows,
    }, args.out)


if __name__ == "__main__":
    sys.exit(main())
