"""What each block really costs inside a network, against what its LUT row says (issue 11).

For a few random subnets, with one runtime thread, this exports every prefix of the
subnet's block list (blocks 1..k as one model, the same weights as the LUT's blocks) and
times, in interleaved rounds:

- ``prefix_us[k]``: the prefix network 1..k; its step ``marginal_us = prefix_us[k] -
  prefix_us[k-1]`` is what block k adds to a network at that point;
- ``alone_us``: block k alone, invoked again and again (what a LUT row measures);
- ``probe_us``: the overhead probe of block k's input shape (what the latency model takes
  off each block, ``profiler.costmodel``).

``extra_us = marginal_us - (alone_us - probe_us)`` is what the network pays for the block
beyond the latency model's price; the summary relates it to the block's parameter count
(weights a block timed alone keeps in the core's caches and a network streams again each
run when all its weights do not fit).  Prints one JSON object (last line); the table goes
to stderr.

``--precision int8`` (onnxruntime; issue 16): every prefix, block and probe is quantized as
``profiler.quantize`` quantizes LUT blocks and validated networks (QDQ, uint8 activations,
int8 per-channel weights; the probe is its QuantizeLinear/DequantizeLinear pair), each
calibrated on the same ``--calib`` seeded random network inputs carried through the blocks
before it, so a block alone sees the inputs it sees inside the prefix.

``--junctions``: every pair of neighbouring blocks is also timed as one model, and each
junction's saving ``t(A) + t(B) - t(AB)`` is set beside what the whole network saves over
its blocks alone (``alone_sum_us - network_us``): at 224 px in fp32 on an AVX2-only EPYC
neighbours saved a median 24 us each while the whole network cost 719 us more than its
blocks alone (README, "Weight streaming at a network's reuse distance").

    .venv/bin/python bench/block_marginal.py [--runtime onnxruntime|tflite] [--space fmnist]
        [--resolution 48] [--subnets 3] [--rounds 5] [--reps 200] [--big-params 50000]
        [--precision fp32|int8] [--calib 8] [--junctions]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from lut_cache_effect import _median_ms, _Session  # noqa: E402

from profiler.export import block_module, export_block, export_onnx, export_tflite, format_for_runtime  # noqa: E402
from supernet.space import get_space, overhead_probe  # noqa: E402
from supernet.cliargs import seed_arg  # noqa: E402


def _float_matmuls(path: Path) -> list[str]:
    """The convolutions and matrix products onnxruntime still runs in float in the model at
    ``path`` once it has fused the quantized ones into integer kernels (its optimized graph):
    e.g. two convolutions sharing one quantized weight, whose DequantizeLinear then has two
    consumers and fuses with neither."""
    import onnx
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.optimized_model_filepath = str(path.with_suffix(".opt.onnx"))
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return [n.name or n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node
            if n.op_type in ("Conv", "FusedConv", "NchwcConv", "Gemm", "MatMul", "FusedMatMul")]


def _subnet(args, space, fmt: str, rng: random.Random, si: int, tmp: Path, checked: list[str]) -> dict:
    """Subnet ``si``: its prefixes, blocks and probes exported under ``tmp``, timed, and its
    table printed to stderr; returns its JSON record."""
    import torch

    cfg = space.sample(rng, resolutions=[args.resolution])
    specs = list(space.blocks(cfg))
    mods = [block_module(s) for s in specs]
    if args.precision == "int8":
        # Two blocks of one shape get the same weights (block_module seeds by the key), the
        # exporter then shares their initializers, and onnxruntime's quantizer leaves a
        # convolution with a shared weight in float: nudge each position's weights apart
        # (1e-4 relative; an int8 kernel's time does not depend on the values).
        gen = torch.Generator().manual_seed(args.seed * 1000 + si + 1)
        with torch.no_grad():
            for m in mods:
                for t in list(m.parameters()) + list(m.buffers()):
                    if t.is_floating_point():
                        t.mul_(1 + 1e-4 * torch.randn(t.shape, generator=gen))
    def carry(x0: "torch.Tensor") -> list:
        """``x0`` and every block's output on it."""
        acts = [x0]
        with torch.no_grad():
            for m in mods:
                acts.append(m(acts[-1]))
        return acts

    x = torch.randn(1, space.in_channels, args.resolution, args.resolution)
    acts = carry(x)
    calib = []  # int8: per calibration input, every block's input
    if args.precision == "int8":
        gen = torch.Generator().manual_seed(args.seed * 1000 + si)
        calib = [[t.numpy() for t in carry(torch.randn(x.shape, generator=gen))] for _ in range(args.calib)]
    n = len(specs)
    while n > 0 and acts[n].dim() != 4:  # prefixes end at the last 4-D output (before the classifier)
        n -= 1
    sessions = []
    for k in range(1, n + 1):
        prefix = tmp / f"s{si}-p{k}.{fmt}"
        net = torch.nn.Sequential(*mods[:k]).eval()
        (export_onnx if fmt == "onnx" else export_tflite)(net, x, prefix)
        alone = export_block(specs[k - 1], fmt, tmp / f"s{si}-a{k}.{fmt}")
        probe = export_block(overhead_probe(specs[k - 1]), fmt, tmp / f"s{si}-r{k}.{fmt}")
        if calib:
            from profiler.quantize import qdq_probe_onnx, quantize_onnx

            ins = [c[k - 1] for c in calib]
            prefix, alone, probe = (_quantized(src, cal, fn, checked) for src, cal, fn in (
                (prefix, [c[0] for c in calib], quantize_onnx), (alone, ins, quantize_onnx),
                (probe, ins, qdq_probe_onnx)))
        sessions.append(tuple(_Session(p, args.runtime) for p in (prefix, alone, probe)))
    pairs = [_Session(_pair_model(fmt, mods, k, acts[k - 1], tmp / f"s{si}-j{k}.{fmt}", [c[k - 1] for c in calib],
                                  checked), args.runtime)
             for k in range(1, n)] if args.junctions else []
    times: list[list[list[float]]] = [[[], [], []] for _ in sessions]
    pair_times: list[list[float]] = [[] for _ in pairs]
    for _ in range(args.rounds):
        for k, trio in enumerate(sessions):
            for j, sess in enumerate(trio):
                times[k][j].append(_median_ms(sess, args.reps) * 1e3)
        for k, sess in enumerate(pairs):
            pair_times[k].append(_median_ms(sess, args.reps) * 1e3)
    med = [[statistics.median(t) for t in per] for per in times]
    blocks, prev = [], 0.0
    for k, (p_us, a_us, r_us) in enumerate(med):
        params = int(sum(t.numel() for t in mods[k].parameters()))
        row = {"block": str(specs[k]), "params": params, "marginal_us": round(p_us - prev, 2),
               "alone_us": round(a_us, 2), "probe_us": round(r_us, 2),
               "extra_us": round(p_us - prev - (a_us - r_us), 2)}
        blocks.append(row)
        prev = p_us
    model = sum(a - r for _, a, r in med) + med[0][2]
    print(f"subnet {si}: network (blocks 1..{n}) {med[-1][0]:.1f} us, latency model {model:.1f} us "
          f"({model / med[-1][0]:.3f})", file=sys.stderr)
    print(f"{'block':44s} {'params':>7s} {'marginal':>9s} {'alone':>7s} {'probe':>6s} {'extra':>7s}", file=sys.stderr)
    for b in blocks:
        print(f"{b['block'][:44]:44s} {b['params']:7d} {b['marginal_us']:9.1f} {b['alone_us']:7.1f} "
              f"{b['probe_us']:6.1f} {b['extra_us']:7.1f}", file=sys.stderr)
    out = {"subnet": cfg.to_json(), "blocks_timed": n, "network_us": round(med[-1][0], 2),
           "alone_sum_us": round(sum(a for _, a, _ in med), 2),
           "model_us": round(model, 2), "model_over_network": round(model / med[-1][0], 3), "blocks": blocks}
    if pairs:  # what two neighbours save together: t(A) + t(B) - t(AB)
        out["junctions"] = [{"a": str(specs[k]), "b": str(specs[k + 1]), "pair_us": round(statistics.median(t), 2),
                             "saving_us": round(med[k][1] + med[k + 1][1] - statistics.median(t), 2)}
                            for k, t in enumerate(pair_times)]
        saving = [j["saving_us"] for j in out["junctions"]]
        print(f"junctions: median saving {statistics.median(saving):.1f} us, sum {sum(saving):.1f} us; the whole "
              f"network against its blocks alone: {out['alone_sum_us'] - out['network_us']:.1f} us",
              file=sys.stderr)
    return out


def _pair_model(fmt: str, mods: list, k: int, x0, path: Path, calib_in: list, checked: list[str]) -> Path:
    """Blocks ``k`` and ``k + 1`` (1-based) of the subnet as one model, exported (and, in int8,
    quantized on the first block's carried inputs) like the prefixes."""
    import torch

    net = torch.nn.Sequential(mods[k - 1], mods[k]).eval()
    (export_onnx if fmt == "onnx" else export_tflite)(net, x0, path)
    if not calib_in:
        return path
    from profiler.quantize import quantize_onnx

    return _quantized(path, calib_in, quantize_onnx, checked)


def _quantized(src: Path, calib_in: list, quantize, checked: list[str]) -> Path:
    """``src`` quantized by ``quantize`` on ``calib_in`` beside it (``.int8.onnx``), refused
    when onnxruntime still runs a convolution of it in float (it would time fp32)."""
    q = src.with_suffix(".int8.onnx")
    quantize(src, q, calib_in)
    floats = _float_matmuls(q)
    if floats:
        raise SystemExit(f"block_marginal: error: {q.name}: onnxruntime runs {', '.join(floats)} in float after "
                         "quantization")
    checked.append(q.name)
    return q


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runtime", default="onnxruntime", choices=("onnxruntime", "tflite"))
    ap.add_argument("--space", default="fmnist")
    ap.add_argument("--resolution", type=int, default=48)
    ap.add_argument("--subnets", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds (the median is kept)")
    ap.add_argument("--reps", type=int, default=200, help="timed invocations per model per round (median)")
    ap.add_argument("--seed", type=seed_arg, default=1)
    ap.add_argument("--big-params", type=int, default=50000, help="the summary's split between small and large blocks")
    ap.add_argument("--precision", default="fp32", choices=("fp32", "int8"),
                    help="int8: every model quantized as profiler.quantize does (onnxruntime only)")
    ap.add_argument("--calib", type=int, default=8, help="int8: calibration inputs per model")
    ap.add_argument("--junctions", action="store_true",
                    help="also time every pair of neighbouring blocks as one model: what each junction saves, "
                         "t(A) + t(B) - t(AB), against what the whole network saves over its blocks alone")
    args = ap.parse_args()
    if args.precision == "int8" and args.runtime != "onnxruntime":
        ap.error("--precision int8 is implemented for --runtime onnxruntime only")
    import torch

    torch.set_num_threads(1)
    space = get_space(args.space)
    if args.resolution not in space.resolutions:
        ap.error(f"--resolution {args.resolution} is not one of space {space.name}'s {list(space.resolutions)}")
    fmt = format_for_runtime(args.runtime)
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="hwnas-block-marginal-") as tmp:
        checked: list[str] = []
        out_subnets = [_subnet(args, space, fmt, rng, si, Path(tmp), checked) for si in range(args.subnets)]
    rows = [b for sub in out_subnets for b in sub["blocks"]]
    params = np.array([r["params"] for r in rows], dtype=float)
    extra = np.array([r["extra_us"] for r in rows], dtype=float)
    big = params > args.big_params
    summary = {
        "bench": "block_marginal", "runtime": args.runtime, "precision": args.precision, "space": space.name,
        "resolution": args.resolution, "int8_models_checked": len(checked),
        "rounds": args.rounds, "reps": args.reps, "blocks": len(rows),
        "corr_params_extra": round(float(np.corrcoef(params, extra)[0, 1]), 3) if len(rows) > 2 and params.std() > 0 else None,
        "extra_us_per_100k_params": round(float(np.polyfit(params, extra, 1)[0] * 1e5), 2) if len(rows) > 2 and params.std() > 0 else None,
        "big_params": args.big_params, "big_blocks": int(big.sum()),
        "median_extra_us_big": round(float(np.median(extra[big])), 2) if big.any() else None,
        "median_extra_us_small": round(float(np.median(extra[~big])), 2) if (~big).any() else None,
        "median_model_over_network": round(statistics.median(s["model_over_network"] for s in out_subnets), 3),
        **({"median_junction_saving_us": round(statistics.median(j["saving_us"] for s in out_subnets
                                                                  for j in s["junctions"]), 2),
            "network_saving_us": [round(s["alone_sum_us"] - s["network_us"], 2) for s in out_subnets],
            "junction_saving_sum_us": [round(sum(j["saving_us"] for j in s["junctions"]), 2) for s in out_subnets]}
           if args.junctions else {}),
        "subnets": out_subnets,
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
