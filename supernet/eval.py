"""Top-1 of one subnet of a trained run on the held-out split, after BN recalibration:
``python -m supernet.eval --run DIR --subnet max|min|JSON|FILE [--precision int8 [--runtime R]] [--json]``.

``--precision int8``: also the subnet post-training quantized to int8 the way the profiler
quantizes for a device (LiteRT by default, or onnxruntime; calibrated on real training
images), run image by image on this host, and the fp32 -> int8 drop.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .cliargs import ALLOCATOR_MODES, AMP_MODES, CUDNN_MODES, DEVICES_HELP, run_main
from .errors import CheckpointError, DataError
from .space import parse_subnet


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m supernet.eval", description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, required=True, help="run folder written by supernet.train")
    p.add_argument("--subnet", required=True, help="max, min, a JSON object or a JSON file")
    p.add_argument("--data", help="override the run's dataset location")
    p.add_argument("--eval-images", type=int, help="held-out images to use (default: all)")
    p.add_argument("--device", default="auto", help=f"{DEVICES_HELP} (default auto: CUDA when available)")
    p.add_argument("--amp", default="auto", choices=AMP_MODES, help="mixed precision (auto: bf16 on CUDA, off on the CPU)")
    p.add_argument("--cudnn", default="auto", choices=CUDNN_MODES, help="CUDA: on | off | no-depthwise (default auto: no-depthwise)")
    p.add_argument("--allocator", default="auto", choices=ALLOCATOR_MODES,
                   help="keep: glibc keeps freed memory (fewer page faults); system: its defaults (auto: keep on the CPU)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "int8"],
                   help="int8: also the post-training-quantized subnet's top-1 and its drop from fp32")
    p.add_argument("--runtime", default="tflite", choices=["tflite", "onnxruntime"],
                   help="--precision int8: the runtime whose quantizer and kernels are used (default tflite)")
    p.add_argument("--calib-images", type=int, default=128, help="--precision int8: calibration images (default 128)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)

    if args.eval_images is not None and args.eval_images < 1:
        p.exit(2, f"{p.prog}: error: --eval-images must be at least 1 (leave it out for all held-out images)\n")
    from .evaluation import load_run, standard_error  # torch: after the flags are checked

    try:
        net, evaluator, ckpt = load_run(args.run, args.data, args.device, args.amp, args.cudnn,
                                           allocator=args.allocator)
        cfg = parse_subnet(args.subnet, net.space)
    except (CheckpointError, DataError, ValueError) as exc:
        p.exit(2, f"{p.prog}: error: {exc}\n")
    if args.eval_images:
        evaluator.eval_images = args.eval_images
    if args.calib_images < 1:
        p.exit(2, f"{p.prog}: error: --calib-images must be at least 1\n")
    int8 = None
    if args.precision == "int8":
        try:
            int8 = evaluator.int8_top1(cfg, args.runtime, args.calib_images)
        except (RuntimeError, ValueError) as exc:
            p.exit(1, f"{p.prog}: error: int8 evaluation of {cfg.to_json()}: {exc}\n")
        acc = int8["torch_top1"]
    else:
        acc = evaluator.evaluate(cfg)
    n = len(evaluator.data.valid) if evaluator.eval_images is None else min(evaluator.eval_images, len(evaluator.data.valid))
    se = standard_error(acc, n)
    if args.json:
        print(json.dumps({"run": str(args.run), "space": net.space.name, "subnet": cfg.to_dict(),
                          "top1": round(acc, 3), "held_out_images": n, "standard_error_pp": round(se, 3),
                          "recal_images": evaluator.recal_images, "device": str(evaluator.device),
                          "amp": evaluator.amp, **({"int8": int8} if int8 else {})}))
    else:
        print(f"top-1 {acc:.2f}% +- {se:.2f} (standard error) on {n} held-out images "
              f"({net.space.name}, r={cfg.r}, w={cfg.w}; {evaluator.device}, amp {evaluator.amp})")
        if int8:
            print(f"int8 ({int8['runtime']}, {int8['quantizer']}, calibrated on {int8['calibration']}): "
                  f"top-1 {int8['int8_top1']:.2f}% (fp32 in the same runtime {int8['fp32_top1']:.2f}%), "
                  f"drop {int8['drop_pp']:+.2f} pp from PyTorch's fp32")


if __name__ == "__main__":
    run_main(main, "supernet.eval", "nothing was written")
