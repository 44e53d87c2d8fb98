"""Training-step throughput (images/s) of our supernet against OFA's reference
implementation (PyPI ``ofa``), on the same active subnets, batch and resolution, alternating
the two in one process.  Prints one JSON object.  Targets (issue 13): ours/reference >= 1.5
with each tool in its default configuration (``--memory-format default``: ours trains
channels-last, OFA's NCHW) and >= 1.2 with both in the same format (``nchw``,
``channels-last``).

    bash bench/make_ref_env.sh                       # bench-only env with `ofa` (gitignored)
    bench/.venv-ref/bin/python bench/train_throughput.py [--batch 16 --res 128 --reps 5] [--memory-format default]

Both supernets are OFA MobileNetV3 (kernels 3/5/7, expands 3/4/6, depths 2/3/4, 1000
classes, width 1.0).  A step is set-active, zero-grad, forward, cross-entropy, backward and
an SGD step: with ``--optimizer own`` (default) each tool's training optimizer (ours
``supernet.trainer.make_optimizer``: Nesterov SGD, no decay on BN and biases, PyTorch's fused
kernel; OFA's: Nesterov SGD with the same groups, as its ``run_manager`` builds it),
with ``--optimizer plain`` both a plain ``torch.optim.SGD(momentum=0.9)``.  Subnets: largest, smallest and 3 random (seed 0).  Each measurement is the
median over ``--reps`` alternating rounds of ``--steps`` steps after a warm-up.
"""

from __future__ import annotations

import argparse
import json
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
from supernet.cliargs import threads_arg  # noqa: E402
from supernet.device import apply_allocator, resolve_allocator  # noqa: E402
from supernet.ofa import OFASupernet  # noqa: E402
from supernet.presets import TrainConfig  # noqa: E402
from supernet.trainer import make_optimizer  # noqa: E402
from supernet.space import OFA_MBV3  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--res", type=int, default=128)
    p.add_argument("--steps", type=int, default=3, help="steps per timed round")
    p.add_argument("--reps", type=int, default=5, help="alternating rounds per subnet")
    p.add_argument("--threads", type=threads_arg, default=None)
    p.add_argument("--elastic-width", action="store_true",
                   help="our supernet also holds width 1.2 (the registered ofa_mbv3 space)")
    p.add_argument("--memory-format", default="default", choices=("default", "nchw", "channels-last"),
                   help="default: each tool as it ships (ours channels-last, OFA's NCHW); nchw / channels-last: "
                        "both in that format")
    p.add_argument("--allocator", default="auto", choices=("auto", "keep", "system"),
                   help="glibc's handling of freed memory for the whole process, both tools alike (auto: keep, as "
                        "supernet.train does on the CPU; system: glibc's defaults); see supernet.device")
    p.add_argument("--optimizer", default="own", choices=("own", "plain"),
                   help="own: each tool's training optimizer (ours fused); plain: both torch.optim.SGD(momentum=0.9)")
    p.add_argument("--out", type=Path, help="also write the JSON here")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    allocator = apply_allocator(resolve_allocator(args.allocator, torch.device("cpu")))
    try:
        from ofa.imagenet_classification.elastic_nn.networks import OFAMobileNetV3
    except ImportError:
        sys.exit("train_throughput: error: PyPI `ofa` is not importable; run bash bench/make_ref_env.sh "
                 "and use bench/.venv-ref/bin/python")

    space = OFA_MBV3 if args.elastic_width else replace(OFA_MBV3, name="ofa_mbv3_w1", width_mults=(1.0,))
    torch.manual_seed(0)
    ours = OFASupernet(space).train()
    ref = OFAMobileNetV3(n_classes=1000, dropout_rate=0.1, width_mult=1.0, ks_list=[3, 5, 7],
                         expand_ratio_list=[3, 4, 6], depth_list=[2, 3, 4]).train()
    rng = random.Random(0)
    subnets = {"max": space.max_subnet(r=args.res), "min": space.min_subnet(r=args.res)}
    for i in range(3):
        subnets[f"random{i}"] = replace(space.sample(rng), r=args.res)

    x = torch.randn(args.batch, 3, args.res, args.res)
    y = torch.randint(0, 1000, (args.batch,))
    ours_cl = args.memory_format in ("default", "channels-last")
    ref_cl = args.memory_format == "channels-last"
    cl = torch.channels_last
    if ours_cl:
        ours = ours.to(memory_format=cl)
    if ref_cl:
        ref = ref.to(memory_format=cl)
    x_ours = x.contiguous(memory_format=cl) if ours_cl else x
    x_ref = x.contiguous(memory_format=cl) if ref_cl else x
    if args.optimizer == "own":
        tc = TrainConfig()
        opt_ours = make_optimizer(ours, tc, 1e-4)
        decay = [p for n, p in ref.named_parameters() if p.dim() > 1 and "bn" not in n]
        no_decay = [p for n, p in ref.named_parameters() if p.dim() <= 1 or "bn" in n]
        opt_ref = torch.optim.SGD([{"params": decay, "weight_decay": tc.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=1e-4, momentum=0.9, nesterov=True)
    else:
        opt_ours = torch.optim.SGD(ours.parameters(), lr=1e-4, momentum=0.9)
        opt_ref = torch.optim.SGD(ref.parameters(), lr=1e-4, momentum=0.9)

    def step_ours(cfg):
        ours.set_active(cfg)
        opt_ours.zero_grad(set_to_none=True)
        F.cross_entropy(ours(x_ours), y).backward()
        opt_ours.step()

    def step_ref(cfg):
        ref.set_active_subnet(ks=list(cfg.ks), e=list(cfg.e), d=list(cfg.d))
        opt_ref.zero_grad(set_to_none=True)
        F.cross_entropy(ref(x_ref), y).backward()
        opt_ref.step()

    def timed(fn, cfg) -> float:
        t = time.perf_counter()
        for _ in range(args.steps):
            fn(cfg)
        return (time.perf_counter() - t) / args.steps

    results = {}
    for name, cfg in subnets.items():
        step_ours(cfg), step_ref(cfg)  # warm-up
        t_ours, t_ref = [], []
        for rep in range(args.reps):
            pair = [(step_ours, t_ours), (step_ref, t_ref)]
            for fn, acc in (pair if rep % 2 == 0 else pair[::-1]):  # alternate the order too
                acc.append(timed(fn, cfg))
        ours_ips = args.batch / statistics.median(t_ours)
        ref_ips = args.batch / statistics.median(t_ref)
        spread = lambda ts: (max(ts) - min(ts)) / statistics.median(ts)  # noqa: E731
        results[name] = {
            "subnet": cfg.to_dict(), "ours_images_per_s": round(ours_ips, 2), "ref_images_per_s": round(ref_ips, 2),
            "ratio": round(ours_ips / ref_ips, 3),
            "ours_spread": round(spread(t_ours), 3), "ref_spread": round(spread(t_ref), 3),
        }
        print(f"{name}: ours {ours_ips:.1f} img/s, ofa {ref_ips:.1f} img/s, ratio {ours_ips / ref_ips:.3f}",
              file=sys.stderr)
    out = {
        "bench": "train_throughput", "memory_format": {"ours": "channels-last" if ours_cl else "nchw",
                                                       "ofa": "channels-last" if ref_cl else "nchw"},
        "optimizer": {"ours": "fused" if args.optimizer == "own" else "plain", "ofa": args.optimizer},
        "batch": args.batch, "resolution": args.res, "steps": args.steps,
        "reps": args.reps, "threads": torch.get_num_threads(), "allocator": allocator, "torch": torch.__version__,
        "space": space.name, "host": platform.node(), "cpu_count": os.cpu_count(),
        "load_avg": os.getloadavg(), "subnets": results,
        "min_ratio": min(r["ratio"] for r in results.values()),
    }
    text = json.dumps(out, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
