"""The depthwise weight gradient on the CPU: PyTorch's own kernel (oneDNN) against
``supernet.dynamic.depthwise_weight_grad`` (one depthwise convolution forward over the
batch), per shape, alternating; and the input gradient for scale.  Prints one JSON object.

    .venv/bin/python bench/depthwise_grad.py [--threads 2] [--reps 7] [--out FILE]

Shapes: the depthwise layers of the Fashion-MNIST space's training (batch 64, 48 px: maps
24, 12, 6, 3) and of OFA MobileNetV3 at 128 px, batch 16 (bench/train_throughput.py's
setting: maps 64 to 4), kernels 3, 5 and 7, strides 1 and 2; channels-last, as hwnas
trains.  ``chosen`` is what ``supernet.dynamic.wgrad_choice`` picks for the shape in this
process (it times both once per shape; 3x3 kernels always take PyTorch's own).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.emit import emit  # noqa: E402
from supernet.cliargs import threads_arg  # noqa: E402
from supernet.dynamic import FAST_WGRAD_MIN_KERNEL, depthwise_weight_grad, wgrad_choice  # noqa: E402

# (batch, channels, input size, kernel, stride)
SHAPES = [
    (64, 96, 24, 7, 2), (64, 144, 12, 7, 1), (64, 144, 12, 3, 1), (64, 144, 12, 7, 2), (64, 192, 6, 7, 1),
    (64, 192, 6, 5, 1), (64, 288, 3, 5, 1), (64, 384, 3, 3, 1), (64, 240, 12, 5, 1),
    (16, 96, 64, 7, 2), (16, 144, 32, 7, 1), (16, 144, 32, 3, 1), (16, 240, 16, 7, 1), (16, 240, 16, 5, 2),
    (16, 480, 8, 7, 1), (16, 672, 8, 5, 1), (16, 672, 8, 7, 2), (16, 960, 4, 7, 1), (16, 960, 4, 3, 1),
]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=threads_arg, default=2)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = []
    for b, c, hw, k, s in SHAPES:
        p = k // 2
        cl = torch.channels_last
        x = torch.randn(b, c, hw, hw).contiguous(memory_format=cl)
        w = torch.randn(c, 1, k, k).contiguous(memory_format=cl)
        gy = torch.randn_like(F.conv2d(x, w, None, s, p, 1, c))

        def own(mask):
            return torch.ops.aten.convolution_backward(gy, x, w, None, [s, s], [p, p], [1, 1], False, [0, 0], c, mask)

        fns = {"own_wgrad": lambda: own([False, True, False]),
               "fast_wgrad": lambda: depthwise_weight_grad(x, gy, k, s, p),
               "own_igrad": lambda: own([True, False, False])}
        times = {name: [] for name in fns}
        for fn in fns.values():
            fn()
        for rep in range(args.reps):
            order = list(fns.items())
            for name, fn in (order if rep % 2 == 0 else order[::-1]):
                t = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t)
        ref, mine = own([False, True, False])[1], depthwise_weight_grad(x, gy, k, s, p)
        med = {name: statistics.median(ts) * 1000 for name, ts in times.items()}
        pixels = gy.shape[-2] * gy.shape[-1]
        rows.append({"batch": b, "channels": c, "input": hw, "kernel": k, "stride": s, "output_pixels": pixels,
                     "own_wgrad_ms": round(med["own_wgrad"], 3), "fast_wgrad_ms": round(med["fast_wgrad"], 3),
                     "own_igrad_ms": round(med["own_igrad"], 3),
                     "speedup": round(med["own_wgrad"] / med["fast_wgrad"], 2),
                     "chosen": wgrad_choice(x, gy, w, s, p) if k >= FAST_WGRAD_MIN_KERNEL else "own (3x3: always)",
                     "max_rel_diff": float((ref - mine).abs().max() / ref.abs().max())})
        r = rows[-1]
        print(f"b{b} c{c} {hw}x{hw} k{k} s{s}: own {r['own_wgrad_ms']:.2f} ms, fast {r['fast_wgrad_ms']:.2f} ms "
              f"({r['speedup']:.2f}x), chosen: {r['chosen']}; input grad {r['own_igrad_ms']:.2f} ms",
              file=sys.stderr)
    out = {"bench": "depthwise_grad", "threads": args.threads, "reps": args.reps, "torch": torch.__version__,
           "fast_wgrad_min_kernel": FAST_WGRAD_MIN_KERNEL, "cpu_count": os.cpu_count(), "load_avg": os.getloadavg(),
           "rows": rows}
    return emit(out, args.out)


if __name__ == "__main__":
    sys.exit(main())
