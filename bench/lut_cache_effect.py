"""Why a block sum under-predicts a whole network: warm caches (issue 11).

A LUT row times one block invoked again and again, so its weights and activations stay in
the CPU's caches; inside a network every block runs after the others have evicted them.
For a few random subnets this times, with the same runtime and one thread:

- ``warm``: each block alone, invoked repeatedly (what a LUT row measures), summed;
- ``round_robin``: every block of the subnet invoked once in network order, round after
  round (each block finds the caches as the others left them, as inside the network),
  each block's median summed;
- ``warm_model`` and ``round_robin_model``: the latency model's sums (``profiler.costmodel``:
  each block less the overhead probe of its input shape, plus the network input's probe
  once), with the probes timed the same way as the blocks: alone and repeatedly, or in the
  rotation (each probe invoked just before its block), so that the probe takes off the
  invocation cost the block paid in that mode;
- ``network``: the whole network exported as one model;
- ``flushed`` (``--flush-mb``): each block invoked after a buffer larger than the last-level
  cache is written, so its weights and input come from memory, summed;
- ``cold_weights``: the same, with the block's input touched after the flush: inside a
  network a block's input was just written by the block before it, while its weights were
  last used a whole network ago.

It prints one JSON object: per subnet the three times and the ratios to the network.

    .venv/bin/python bench/lut_cache_effect.py [--runtime tflite|onnxruntime] [--resolution 224]
        [--subnets 4] [--rounds 60] [--space ofa_mbv3]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from profiler.export import export_block, export_network, format_for_runtime  # noqa: E402
from supernet.space import get_space, overhead_probe  # noqa: E402
from supernet.cliargs import seed_arg  # noqa: E402


class _Session:
    """A model file loaded for timing: ``run()`` invokes it on a fixed random input (one
    thread); ``touch_input()`` brings that input into the caches (after a flush: the state
    a block meets inside a network, its input just written by the block before it)."""

    def __init__(self, path: Path, runtime: str):
        if runtime == "tflite":
            from ai_edge_litert.interpreter import Interpreter

            it = Interpreter(str(path), num_threads=1)
            it.allocate_tensors()
            d = it.get_input_details()[0]
            x = np.random.default_rng(0).standard_normal(d["shape"]).astype(np.float32)
            it.set_tensor(d["index"], x)
            self.run = it.invoke
            self.touch_input = lambda: it.set_tensor(d["index"], x)  # rewrites the interpreter's input
            return
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = so.inter_op_num_threads = 1
        s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        i = s.get_inputs()[0]
        x = np.random.default_rng(0).standard_normal(i.shape).astype(np.float32)
        self.run = lambda: s.run(None, {i.name: x})
        self.touch_input = lambda: x.sum()  # onnxruntime reads the caller's array in place

    def __call__(self):
        return self.run()


def _flushed_ms(sess: _Session, rounds: int, buf: np.ndarray, touch_input: bool) -> float:
    """Median of ``rounds`` invocations, each after writing ``buf`` (larger than the last-level
    cache: weights and activations evicted), the input re-touched first when asked; only the
    invocation is timed."""
    sess.run()
    ts = []
    for k in range(rounds):
        buf.fill(k & 0xFF)
        if touch_input:
            sess.touch_input()
        t = time.perf_counter()
        sess.run()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts) * 1e3


def _median_ms(fn, rounds: int) -> float:
    for _ in range(5):
        fn()
    ts = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts) * 1e3


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runtime", default="tflite", choices=("tflite", "onnxruntime"))
    ap.add_argument("--space", default="ofa_mbv3")
    ap.add_argument("--resolution", type=int, default=224)
    ap.add_argument("--subnets", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=60)
    ap.add_argument("--seed", type=seed_arg, default=0)
    ap.add_argument("--flush-mb", type=int, default=64,
                    help="buffer written before each flushed invocation (above the last-level cache; 0: no flushed sums)")
    args = ap.parse_args()
    space = get_space(args.space)
    fmt = format_for_runtime(args.runtime)
    rng = random.Random(args.seed)
    out = {"bench": "lut_cache_effect", "runtime": args.runtime, "space": space.name, "resolution": args.resolution,
           "rounds": args.rounds, "load_avg_1m_start": round(os.getloadavg()[0], 2), "subnets": []}
    with tempfile.TemporaryDirectory(prefix="hwnas-cache-") as tmp:
        for n in range(args.subnets):
            cfg = space.sample(rng, resolutions=[args.resolution])
            blocks = space.blocks(cfg)
            fns, probes = [], []
            for i, b in enumerate(blocks):
                for spec, into, tag in ((b, fns, ""), (overhead_probe(b), probes, "-probe")):
                    p = Path(tmp) / f"{n}-{i}{tag}.{fmt}"
                    export_block(spec, fmt, p)
                    into.append(_Session(p, args.runtime))
            net = Path(tmp) / f"{n}-net.{fmt}"
            export_network(space, cfg, fmt, net)
            net_fn = _Session(net, args.runtime)
            warm = sum(_median_ms(f, args.rounds) for f in fns)
            warm_p = [_median_ms(f, args.rounds) for f in probes]
            for f, q in zip(fns, probes):
                q(), f()
            per, per_p = [[] for _ in fns], [[] for _ in fns]
            for _ in range(args.rounds):
                for i, (f, q) in enumerate(zip(fns, probes)):
                    for fn, acc in ((q, per_p[i]), (f, per[i])):
                        t = time.perf_counter()
                        fn()
                        acc.append(time.perf_counter() - t)
            rr = sum(statistics.median(p) for p in per) * 1e3
            rr_p = sum(statistics.median(p) for p in per_p) * 1e3
            network = _median_ms(net_fn, args.rounds)
            warm_model, rr_model = warm - sum(warm_p) + warm_p[0], rr - rr_p + warm_p[0]
            row = {"subnet": cfg.to_dict(), "blocks": len(blocks), "warm_sum_ms": round(warm, 3),
                   "round_robin_sum_ms": round(rr, 3), "network_ms": round(network, 3),
                   "warm_model_ms": round(warm_model, 3), "round_robin_model_ms": round(rr_model, 3),
                   "warm_over_network": round(warm / network, 3),
                   "round_robin_over_network": round(rr / network, 3),
                   "warm_model_over_network": round(warm_model / network, 3),
                   "round_robin_model_over_network": round(rr_model / network, 3)}
            if args.flush_mb:
                buf = np.empty(args.flush_mb * 2**20 // 8, dtype=np.float64)
                cold = sum(_flushed_ms(f, args.rounds, buf, False) for f in fns)
                cold_w = sum(_flushed_ms(f, args.rounds, buf, True) for f in fns)
                row.update(flushed_sum_ms=round(cold, 3), cold_weights_sum_ms=round(cold_w, 3),
                           flushed_over_network=round(cold / network, 3),
                           cold_weights_over_network=round(cold_w / network, 3))
            out["subnets"].append(row)
            print(json.dumps(out["subnets"][-1]), file=sys.stderr)
    for k in ("warm_over_network", "round_robin_over_network", "warm_model_over_network",
              "round_robin_model_over_network", "flushed_over_network", "cold_weights_over_network"):
        if all(k in s for s in out["subnets"]):
            out[f"median_{k}"] = round(float(np.median([s[k] for s in out["subnets"]])), 3)
    out["load_avg_1m_end"] = round(os.getloadavg()[0], 2)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
