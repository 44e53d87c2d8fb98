"""Train an OFA supernet: ``python -m supernet.train --preset tiny --out runs/tiny``.

Config layering: the preset (``supernet.presets``), then ``--config FILE.yaml``, then flags.
Defaults train the ``fmnist`` space on Fashion-MNIST from ``/usr/share/datasets`` (nothing is
downloaded); ``--data cifar10:PATH`` or ``--data imagefolder:PATH`` use your own data.  Under
``torchrun --nproc_per_node=N`` the same command trains with DistributedDataParallel.
``--resume`` continues from ``OUT/checkpoints/last.pt``.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import yaml

from .data import DataError
from .evaluation import CheckpointError
from .presets import METHODS, PRESETS, TrainConfig, get_preset, with_method
from .trainer import init_distributed, train


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m supernet.train", description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    p.add_argument("--config", type=Path, help="YAML file overriding preset fields")
    p.add_argument("--out", type=Path, required=True, help="run folder")
    p.add_argument("--data", help="fmnist | fmnist:PATH | cifar10:PATH | imagefolder:PATH")
    p.add_argument("--space", help="search space name (default: the preset's)")
    p.add_argument("--method", choices=METHODS, help="ps (progressive shrinking), naive, sandwich or full (largest subnet alone)")
    p.add_argument("--bn", choices=("shared", "switchable"))
    p.add_argument("--kd-weight", type=float)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--train-limit", type=int, help="use only this many training images")
    p.add_argument("--seed", type=int)
    p.add_argument("--threads", type=int)
    p.add_argument("--workers", type=int, help="DataLoader workers decoding images (ImageFolder)")
    p.add_argument("--deterministic", action="store_true", default=None)
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints/last.pt")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--crash-after-step", type=int, help=argparse.SUPPRESS)  # tests: kill -9 itself
    p.add_argument("--dump-rank-weights", action="store_true", help=argparse.SUPPRESS)  # tests: OUT/rankN.pt
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    cfg = get_preset(args.preset)
    if args.config:
        try:
            overrides = yaml.safe_load(args.config.read_text()) or {}
            cfg = TrainConfig.from_dict({**cfg.to_dict(), **overrides})
        except (OSError, yaml.YAMLError, ValueError, TypeError) as exc:
            sys.exit(f"supernet.train: error: config {args.config}: {exc}")
    flags = {"data": args.data, "space": args.space, "bn": args.bn, "kd_weight": args.kd_weight,
             "batch_size": args.batch_size, "train_limit": args.train_limit, "seed": args.seed,
             "threads": args.threads, "workers": args.workers, "deterministic": args.deterministic}
    cfg = replace(cfg, **{k: v for k, v in flags.items() if v is not None})
    if args.method:
        cfg = with_method(cfg, args.method)

    dist = init_distributed()
    try:
        final = train(cfg, args.out, resume=args.resume, dist=dist, progress=not args.no_progress,
                      crash_after_step=args.crash_after_step, dump_rank_weights=args.dump_rank_weights)
    except (DataError, CheckpointError, ValueError) as exc:
        sys.exit(f"supernet.train: error: {exc}")
    if dist.main:
        print(f"supernet: {final}")


if __name__ == "__main__":
    main()
