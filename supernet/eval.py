"""Top-1 of one subnet of a trained run on the held-out split, after BN recalibration:
``python -m supernet.eval --run DIR --subnet max|min|JSON|FILE [--json]``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .data import DataError
from .device import AMP_MODES, DEVICES_HELP
from .evaluation import CheckpointError, load_run, standard_error
from .space import parse_subnet


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m supernet.eval", description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, required=True, help="run folder written by supernet.train")
    p.add_argument("--subnet", required=True, help="max, min, a JSON object or a JSON file")
    p.add_argument("--data", help="override the run's dataset location")
    p.add_argument("--eval-images", type=int, help="held-out images to use (default: all)")
    p.add_argument("--device", default="auto", help=f"{DEVICES_HELP} (default auto: CUDA when available)")
    p.add_argument("--amp", default="auto", choices=AMP_MODES, help="mixed precision (auto: bf16 on CUDA, off on the CPU)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)

    try:
        net, evaluator, ckpt = load_run(args.run, args.data, args.device, args.amp)
        cfg = parse_subnet(args.subnet, net.space)
    except (CheckpointError, DataError, ValueError) as exc:
        p.exit(2, f"{p.prog}: error: {exc}\n")
    if args.eval_images:
        evaluator.eval_images = args.eval_images
    acc = evaluator.evaluate(cfg)
    n = len(evaluator.data.valid) if evaluator.eval_images is None else min(evaluator.eval_images, len(evaluator.data.valid))
    se = standard_error(acc, n)
    if args.json:
        print(json.dumps({"run": str(args.run), "space": net.space.name, "subnet": cfg.to_dict(),
                          "top1": round(acc, 3), "held_out_images": n, "standard_error_pp": round(se, 3),
                          "recal_images": evaluator.recal_images, "device": str(evaluator.device),
                          "amp": evaluator.amp}))
    else:
        print(f"top-1 {acc:.2f}% +- {se:.2f} (standard error) on {n} held-out images "
              f"({net.space.name}, r={cfg.r}, w={cfg.w}; {evaluator.device}, amp {evaluator.amp})")


if __name__ == "__main__":
    main()
