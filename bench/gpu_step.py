"""Training-step throughput (images/s) and peak memory: the dynamic supernet at its largest
and at random subnets, the largest subnet extracted as a plain model, and timm's
``mobilenetv3_large_100`` (a bench-only dependency), in one run, alternating.

    .venv/bin/python bench/gpu_step.py                         # as written: CUDA, 224 px, batch 256, bf16
    .venv/bin/python bench/gpu_step.py --device cpu --batch 4 --res 64 --amp off --steps 1 --reps 1   # smoke test
    bench/.venv-ref/bin/python bench/gpu_step.py ...            # with timm (bash bench/make_ref_env.sh)

A step is set-active (supernet rows), zero-grad, forward under autocast, cross-entropy,
backward and an SGD step (momentum 0.9), on synthetic data already on the device,
channels-last.  Every row runs ``--steps`` steps per round and ``--reps`` rounds, the rows in
a rotated order each round; images/s is the batch over the median step.  Peak memory is
``torch.cuda.max_memory_allocated`` over a row's steps (on the CPU: not measured, said so).
The space is OFA MobileNetV3 at width 1.0 (kernels 3/5/7, expands 3/4/6, depths 2/3/4, 1000
classes), the same network family as timm's model; ``--res`` may be outside its 128-224 px for a smoke test.  Without timm its row is skipped with a
reason.  Prints one JSON object.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.emit import emit  # noqa: E402
from supernet.cliargs import threads_arg  # noqa: E402
from supernet.device import autocast, describe, grad_scaler, resolve_amp, resolve_device  # noqa: E402
from supernet.ofa import OFASupernet  # noqa: E402
from supernet.space import OFA_MBV3  # noqa: E402


def build_rows(args, device: torch.device) -> tuple[list[dict], list[dict]]:
    """The models to time (name, module, subnet to activate) and the skipped ones."""
    # the space's resolutions (128-224 px) and the one asked for (a smoke test runs smaller)
    space = replace(OFA_MBV3, name="ofa_mbv3_w1", width_mults=(1.0,),
                    resolutions=tuple(sorted({*OFA_MBV3.resolutions, args.res})))
    torch.manual_seed(0)
    sup = OFASupernet(space).train().to(device).to(memory_format=torch.channels_last)
    rng = random.Random(0)
    largest = space.max_subnet(r=args.res)
    rows = [{"name": "supernet largest", "model": sup, "subnet": largest}]
    for i in range(args.random):
        rows.append({"name": f"supernet random {i}", "model": sup, "subnet": replace(space.sample(rng), r=args.res)})
    sup.set_active(largest)
    ext = sup.extract(largest).train().to(device).to(memory_format=torch.channels_last)
    rows.append({"name": "extracted largest", "model": ext, "subnet": None})
    skipped = []
    if args.no_timm:
        skipped.append({"name": "timm mobilenetv3_large_100", "reason": "--no-timm"})
    else:
        try:
            import timm
        except ImportError:
            skipped.append({"name": "timm mobilenetv3_large_100",
                            "reason": "timm is not installed here (bench-only: bash bench/make_ref_env.sh, "
                                      "then bench/.venv-ref/bin/python)"})
        else:
            m = timm.create_model("mobilenetv3_large_100", pretrained=False, num_classes=1000)
            rows.append({"name": f"timm mobilenetv3_large_100 ({timm.__version__})",
                         "model": m.train().to(device).to(memory_format=torch.channels_last), "subnet": None})
    for r in rows:
        r["params_m"] = round(sum(p.numel() for p in (r["model"].parameters() if r["subnet"] is None
                                                      else sup.extract(r["subnet"]).parameters())) / 1e6, 3)
    return rows, skipped


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--res", type=int, default=224)
    ap.add_argument("--amp", default="bf16", help="bf16 | fp16 | off | auto (default bf16)")
    ap.add_argument("--steps", type=int, default=10, help="timed steps per row per round")
    ap.add_argument("--reps", type=int, default=3, help="rounds (rows alternate within each)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps per row first")
    ap.add_argument("--random", type=int, default=2, help="random subnets of the supernet")
    ap.add_argument("--threads", type=threads_arg, default=None)
    ap.add_argument("--no-timm", action="store_true")
    ap.add_argument("--out", type=Path, help="also write the JSON here")
    args = ap.parse_args(argv)
    try:
        device = resolve_device(args.device)
        amp = resolve_amp(args.amp, device)
        if min(args.batch, args.res, args.steps, args.reps) < 1 or args.warmup < 0 or args.random < 0:
            raise ValueError("--batch, --res, --steps and --reps must be >= 1, --warmup and --random >= 0")
    except ValueError as exc:
        ap.exit(2, f"gpu_step: error: {exc}\n")
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = device.type == "cuda"
    rows, skipped = build_rows(args, device)
    x = torch.randn(args.batch, 3, args.res, args.res, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (args.batch,), device=device)
    for r in rows:
        r["opt"] = torch.optim.SGD(r["model"].parameters(), lr=1e-4, momentum=0.9)
        r["scaler"] = grad_scaler(device, amp)
        r["times"], r["peak"] = [], 0

    def step(r) -> None:
        m = r["model"]
        if r["subnet"] is not None:
            m.set_active(r["subnet"])
        r["opt"].zero_grad(set_to_none=True)
        with autocast(device, amp):
            loss = F.cross_entropy(m(x), y)
        if r["scaler"] is not None:
            r["scaler"].scale(loss).backward()
            r["scaler"].step(r["opt"])
            r["scaler"].update()
        else:
            loss.backward()
            r["opt"].step()

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    for r in rows:
        for _ in range(args.warmup):
            step(r)
    sync()
    for rep in range(args.reps):
        k = rep % len(rows)
        for r in rows[k:] + rows[:k]:
            if cuda:
                torch.cuda.reset_peak_memory_stats(device)
            sync()
            t = time.perf_counter()
            for _ in range(args.steps):
                step(r)
            sync()
            r["times"].append((time.perf_counter() - t) / args.steps)
            if cuda:
                r["peak"] = max(r["peak"], torch.cuda.max_memory_allocated(device))
    out_rows = []
    for r in rows:
        med = statistics.median(r["times"])
        out_rows.append({
            "name": r["name"], "subnet": r["subnet"].to_dict() if r["subnet"] is not None else None,
            "params_m": r["params_m"], "images_per_s": round(args.batch / med, 2), "step_ms": round(1000 * med, 3),
            "spread": round((max(r["times"]) - min(r["times"])) / med, 3),
            "peak_memory_mb": round(r["peak"] / 2**20, 1) if cuda else None,
        })
        print(f"{r['name']}: {args.batch / med:.1f} images/s"
              + (f", peak {r['peak'] / 2**20:.0f} MiB" if cuda else ""), file=sys.stderr)
    for s in skipped:
        print(f"{s['name']}: skipped ({s['reason']})", file=sys.stderr)
    result = {
        "bench": "gpu_step", "device": describe(device), "amp": amp, "channels_last": True,
        "batch": args.batch, "resolution": args.res, "steps": args.steps, "reps": args.reps,
        "torch": torch.__version__, "host": platform.node(), "cpu_count": os.cpu_count(),
        "load_avg": os.getloadavg(), "rows": out_rows, "skipped": skipped,
        "peak_memory_note": None if cuda else "peak memory is measured on CUDA devices only",
    }
    return emit(result, args.out)


if __name__ == "__main__":
    sys.exit(main())
