"""Where a supernet training step's time goes on a GPU at the presets' sizes: the first step
of each new subnet shape against its steady step, per memory format and precision, and the
steady step of the largest subnet at growing batch sizes.  ``best_variant`` is the one with the
least estimated time per subnet shape (its first step and ``REUSE`` steady ones), the variant a
GPU run of the presets should use (``bench/gpu_checks.sh`` trains with it).

    python3 bench/gpu_warmup.py                               # on a GPU: fmnist space, batch 64
    .venv/bin/python bench/gpu_warmup.py --device cpu --subnets 2 --steady 2 --batches 8,16  # smoke test

On an H200 the ``main`` preset paid seconds a step whenever new layer shapes appeared (README,
"On a GPU"); this script separates that first-call cost from the steady step for each of
``--variants`` (``cl``/``nchw`` x ``bf16``/``off``; ``-nocudnn``: PyTorch's own kernels
instead of cuDNN's, whose 9.10+ plans are reported to compile for seconds per new depthwise
shape, NVIDIA/cudnn-frontend#1066; ``-nodw``: PyTorch's own kernels for the depthwise
convolutions only, ``--cudnn no-depthwise``), each on a fresh supernet: for
``--subnets`` random subnets of the space at random resolutions (the same seeded list for
every variant), the first training step of the subnet (set-active, zero-grad, forward under
autocast, cross-entropy, backward, SGD) and then the median of ``--steady`` more.  The batch
sweep times the largest subnet at its largest resolution in the best variant, to say how
large a GPU preset's batch must be before the device, not the host, sets the pace.  Prints
one JSON object.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.emit import emit  # noqa: E402
from supernet.device import apply_cudnn, autocast, describe, resolve_amp, resolve_device  # noqa: E402
from supernet.ofa import OFASupernet  # noqa: E402
from supernet.space import get_space  # noqa: E402
from supernet.cliargs import seed_arg, threads_arg  # noqa: E402

VARIANTS = ("cl-bf16", "cl-bf16-nodw", "cl-bf16-nocudnn", "nchw-bf16", "cl-off", "nchw-off", "nchw-off-nocudnn")
REUSE = 20  # steady steps a subnet shape gets after its first in the estimate that picks the best variant
CUDNN_SUFFIX = {"": "on", "nodw": "no-depthwise", "nocudnn": "off"}  # supernet.device.apply_cudnn modes


def parse_variant(v: str, device: torch.device) -> tuple[bool, str, str]:
    """(channels-last, amp, cuDNN mode) of ``fmt-amp[-nodw|-nocudnn]``."""
    parts = v.split("-")
    ok = len(parts) in (2, 3) and parts[0] in ("cl", "nchw") and parts[1] in ("bf16", "off", "fp16") \
        and (len(parts) == 2 or parts[2] in CUDNN_SUFFIX)
    if not ok:
        raise ValueError(f"--variants: {v!r} is not one of {', '.join(VARIANTS)} (or fp16 with cl/nchw)")
    return parts[0] == "cl", resolve_amp(parts[1], device), CUDNN_SUFFIX[parts[2] if len(parts) == 3 else ""]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    ap.add_argument("--space", default="fmnist")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--subnets", type=int, default=20, help="random subnets per variant")
    ap.add_argument("--steady", type=int, default=10, help="steady steps per subnet after its first")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--batches", default="64,256,1024,4096", help="batch sweep of the largest subnet ('' for none)")
    ap.add_argument("--threads", type=threads_arg, default=None)
    ap.add_argument("--seed", type=seed_arg, default=0)
    ap.add_argument("--max-seconds", type=float, default=0.0,
                    help="per variant: no new subnet after this long (0: no limit); the variant says it was cut")
    ap.add_argument("--out", type=Path, help="also write the JSON here")
    args = ap.parse_args(argv)
    try:
        device = resolve_device(args.device)
        space = get_space(args.space)
        variants = [(v, *parse_variant(v, device)) for v in args.variants.split(",") if v]
        batches = [int(b) for b in args.batches.split(",") if b.strip()]
        if not variants or min(args.batch, args.subnets, args.steady, *batches, 1) < 1:
            raise ValueError("--batch, --subnets, --steady and --batches must be >= 1, --variants not empty")
    except ValueError as exc:
        ap.exit(2, f"gpu_warmup: error: {exc}\n")
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = device.type == "cuda"
    rng = random.Random(args.seed)
    subnets = [space.sample(rng) for _ in range(args.subnets)]
    classes = space.num_classes

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    def make(channels_last: bool):
        torch.manual_seed(args.seed)
        sup = OFASupernet(space).train().to(device)
        if channels_last:
            sup = sup.to(memory_format=torch.channels_last)
        return sup, torch.optim.SGD(sup.parameters(), lr=1e-3, momentum=0.9)

    def batch(n: int, r: int, channels_last: bool):
        x = torch.randn(n, space.in_channels, r, r, device=device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, torch.randint(0, classes, (n,), device=device)

    def timed_step(sup, opt, sub, x, y, amp) -> float:
        sync()
        t = time.perf_counter()
        sup.set_active(sub)
        opt.zero_grad(set_to_none=True)
        with autocast(device, amp):
            loss = F.cross_entropy(sup(x).float(), y)
        loss.backward()
        opt.step()
        sync()
        return time.perf_counter() - t

    out_variants = []
    for name, cl, amp, cudnn in variants:
        apply_cudnn(cudnn)
        sup, opt = make(cl)
        rows, t_variant = [], time.perf_counter()
        for sub in subnets:
            if args.max_seconds and time.perf_counter() - t_variant > args.max_seconds:
                break
            x, y = batch(args.batch, sub.r, cl)
            first = timed_step(sup, opt, sub, x, y, amp)
            steady = statistics.median(timed_step(sup, opt, sub, x, y, amp) for _ in range(args.steady))
            rows.append({"r": sub.r, "first_ms": round(1000 * first, 2), "steady_ms": round(1000 * steady, 2)})
        firsts = [r["first_ms"] for r in rows]
        steadies = [r["steady_ms"] for r in rows]
        v = {"variant": name, "channels_last": cl, "amp": amp, "cudnn": cudnn, "cut": len(rows) < len(subnets),
             "first_ms_median": round(statistics.median(firsts), 2),
             "steady_ms_median": round(statistics.median(steadies), 2),
             "first_call_overhead_s": round(sum(f - s for f, s in zip(firsts, steadies)) / 1000, 3),
             "steady_images_per_s": round(args.batch / (statistics.median(steadies) / 1000), 1),
             # a new shape is met once and then stepped again: first + REUSE steady steps, per subnet
             "est_s_per_subnet": round(sum(f + REUSE * s for f, s in zip(firsts, steadies)) / len(rows) / 1000, 4),
             "subnets": rows}
        out_variants.append(v)
        print(f"{name}: first step {v['first_ms_median']:.1f} ms, steady {v['steady_ms_median']:.1f} ms "
              f"(median of {len(rows)} subnets), first-call overhead {v['first_call_overhead_s']:.2f} s",
              file=sys.stderr)
        del sup, opt
    best = min(out_variants, key=lambda v: v["est_s_per_subnet"])["variant"]
    sweep = []
    if batches:
        name, cl, amp, cudnn = next(v for v in variants if v[0] == best)
        apply_cudnn(cudnn)
        sup, opt = make(cl)
        largest = space.max_subnet()
        for n in batches:
            x, y = batch(n, largest.r, cl)
            timed_step(sup, opt, largest, x, y, amp)
            steady = statistics.median(timed_step(sup, opt, largest, x, y, amp) for _ in range(args.steady))
            sweep.append({"batch": n, "steady_ms": round(1000 * steady, 2),
                          "images_per_s": round(n / steady, 1)})
            print(f"largest at batch {n} ({name}): {n / steady:.0f} images/s", file=sys.stderr)
    result = {
        "bench": "gpu_warmup", "device": describe(device), "space": space.name, "batch": args.batch,
        "subnets": args.subnets, "steady_steps": args.steady, "seed": args.seed,
        "torch": torch.__version__, "cudnn": torch.backends.cudnn.version() if cuda else None,
        "cudnn_benchmark": torch.backends.cudnn.benchmark, "host": platform.node(), "cpu_count": os.cpu_count(),
        "load_avg": os.getloadavg(), "variants": out_variants, "batch_sweep": sweep,
        "best_variant": best, "reuse_steps": REUSE, "batch_sweep_variant": best if batches else None,
    }
    apply_cudnn("on")
    return emit(result, args.out)


if __name__ == "__main__":
    sys.exit(main())
