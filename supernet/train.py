"""Train an OFA supernet: ``python -m supernet.train [--preset tiny] [--out runs/<preset>]``.

Config layering: the preset (``supernet.presets``), then ``--config FILE.yaml``, then flags.
Defaults train the ``fmnist`` space on Fashion-MNIST from ``/usr/share/datasets`` (nothing is
downloaded); ``--data cifar10:PATH`` or ``--data imagefolder:PATH`` use your own data.  Under
``torchrun --nproc_per_node=N`` the same command trains with DistributedDataParallel.
``--resume`` continues from ``OUT/checkpoints/last.pt``; an existing run folder is never
overwritten unless ``--force`` is given, and never while another run holds it.  Ctrl-C or
SIGTERM stops at the end of the step with a checkpoint there and prints the command that
continues.  ``--device auto`` (default) trains on a GPU when
one is available, with bf16 autocast (``--amp``); the run's ``config.yaml`` records what was
used.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from dataclasses import replace
from pathlib import Path

import yaml

from .atomic import ensure_writable_folder, run_folder_lock, stamped_free_path
from . import cliargs
from .cliargs import ALLOCATOR_MODES, AMP_MODES, CUDNN_MODES, DEVICES_HELP
from .errors import CheckpointError, DataError, TrainingStopped
from .presets import METHODS, PRESETS, TrainConfig, get_preset, with_method, with_widths
from .safeyaml import load_unique, yaml_error_line

# torch (supernet.trainer) is imported only once the flags, the config file and the run folder
# have been checked: a mistyped command is one error line at once, not after 2-3 s of imports


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m supernet.train", description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="tiny", choices=sorted(PRESETS),
                   help="training recipe (default tiny: about 2 minutes on 2 CPU cores; main: the main job's; "
                        "small: under an hour; small_gpu: small for one GPU; README, 'The once-for-all supernet')")
    p.add_argument("--config", type=Path, help="YAML file overriding preset fields")
    p.add_argument("--out", type=Path, help="run folder (default: runs/<preset>)")
    p.add_argument("--device", help=f"{DEVICES_HELP} (default auto: CUDA when available)")
    p.add_argument("--amp", choices=AMP_MODES, help="mixed precision (default auto: bf16 on CUDA, off on the CPU)")
    p.add_argument("--cudnn", choices=CUDNN_MODES,
                   help="CUDA: cuDNN for every layer (on), none (off) or all but the depthwise convolutions "
                        "(no-depthwise; default auto: no-depthwise on CUDA)")
    p.add_argument("--allocator", choices=ALLOCATOR_MODES,
                   help="keep: glibc keeps freed memory for the next step instead of returning it (fewer page faults; "
                        "the process holds its peak); system: glibc's defaults (default auto: keep on the CPU)")
    p.add_argument("--no-channels-last", action="store_true", help="train NCHW instead of channels-last")
    p.add_argument("--data", help="fmnist | fmnist:PATH | cifar10:PATH | imagefolder:PATH")
    p.add_argument("--space", help="search space name (default: the preset's)")
    p.add_argument("--method", choices=METHODS, help="ps (progressive shrinking), naive, sandwich or full (largest subnet alone)")
    p.add_argument("--bn", choices=("shared", "switchable"),
                   help="BN across elastic widths: one set (shared) or each width its own (switchable, the "
                        "default with --widths)")
    p.add_argument("--widths", help="elastic width multipliers, e.g. 1.0,1.5: a last width phase with "
                                    "switchable BN (slimmable networks)")
    p.add_argument("--kd-weight", type=float, help="weight of the distillation loss from the largest subnet "
                   "(0: none; default: the preset's, 1.0)")
    p.add_argument("--batch-size", type=int, help="images per step and process (default: the preset's)")
    p.add_argument("--train-limit", type=int, help="use only this many training images")
    p.add_argument("--seed", type=cliargs.seed_arg, help="seed of weights, data order and subnet sampling (default 0)")
    p.add_argument("--threads", type=int, help="torch threads of each process (default: the preset's, else torch's), "
                                               "at most its share of the cores (under torchrun, of its machine's)")
    p.add_argument("--workers", type=int, help="DataLoader workers decoding images (ImageFolder)")
    p.add_argument("--deterministic", action="store_true", default=None,
                   help="bit-reproducible kernels (a resumed run then ends with an unbroken run's weights; slower)")
    p.add_argument("--resume", action="store_true",
                   help="continue from OUT/checkpoints/last.pt (after Ctrl-C, SIGTERM or a kill)")
    p.add_argument("--force", action="store_true", help="start over in an existing run folder (its outputs are replaced)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (metrics.csv still has every line)")
    p.add_argument("--crash-after-step", type=int, help=argparse.SUPPRESS)  # tests: kill -9 itself
    p.add_argument("--crash-signal", default="KILL", choices=("KILL", "INT", "TERM"),
                   help=argparse.SUPPRESS)  # tests: the signal --crash-after-step sends
    p.add_argument("--dump-rank-weights", action="store_true", help=argparse.SUPPRESS)  # tests: OUT/rankN.pt
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    cfg = get_preset(args.preset)
    if args.config:
        try:
            overrides = load_unique(args.config.read_text(encoding="utf-8"))
            if overrides is None:
                overrides = {}
            if not isinstance(overrides, dict):
                raise ValueError(f"must be a mapping of training settings (the keys of a preset), "
                                 f"got {type(overrides).__name__}")
            cfg = TrainConfig.from_dict({**cfg.to_dict(), **overrides})
        except OSError as exc:
            sys.exit(f"supernet.train: error: config {args.config}: cannot read: {exc.strerror or exc}")
        except UnicodeDecodeError:
            sys.exit(f"supernet.train: error: config {args.config}: not a text file")
        except yaml.YAMLError as exc:
            line, problem = yaml_error_line(exc)
            sys.exit(f"supernet.train: error: config {args.config}{line}: not valid YAML: {problem}")
        except (ValueError, TypeError) as exc:
            sys.exit(f"supernet.train: error: config {args.config}: {exc}")
    flags = {"data": args.data, "space": args.space, "bn": args.bn, "kd_weight": args.kd_weight,
             "batch_size": args.batch_size, "train_limit": args.train_limit, "seed": args.seed,
             "threads": args.threads, "workers": args.workers, "deterministic": args.deterministic,
             "device": args.device, "amp": args.amp, "cudnn": args.cudnn, "allocator": args.allocator, "channels_last": False if args.no_channels_last else None}
    try:
        cfg = replace(cfg, **{k: v for k, v in flags.items() if v is not None})
        if args.method:
            cfg = with_method(cfg, args.method)
        if args.widths:
            try:
                widths = tuple(float(w) for w in args.widths.split(",") if w.strip())
            except ValueError:
                raise ValueError(f"--widths must be a comma list of numbers, got {args.widths!r}") from None
            cfg = with_widths(cfg, widths, args.bn)
    except ValueError as exc:
        sys.exit(f"supernet.train: error: {exc}")
    out = args.out or Path("runs") / cfg.preset
    lock = None
    try:
        if int(os.environ.get("RANK", "0")) == 0:
            # an existing folder is locked before anything looks into it (--force empties it)
            lock = run_folder_lock(out) if out.is_dir() else None
            check_out(out, args.resume, args.force)
        from .trainer import init_distributed, train

        dist = init_distributed(cfg.device)
        final = train(cfg, out, resume=args.resume, dist=dist, progress=not args.no_progress,
                      crash_after_step=args.crash_after_step, dump_rank_weights=args.dump_rank_weights,
                      crash_signal=getattr(signal, f"SIG{args.crash_signal}"), lock=lock)
    except (DataError, CheckpointError, ValueError, OSError) as exc:
        sys.exit(f"supernet.train: error: {exc}")
    except TrainingStopped as stop:
        if dist.main:
            print(f"supernet.train: {stop.signame}: stopped at step {stop.step} of {stop.total}, saved in "
                  f"{stop.checkpoint}; continue with: {resume_command(argv, out)}", file=sys.stderr, flush=True)
        if dist.world > 1:  # every rank leaves once rank 0 has said it (torchrun ends the others when one exits)
            import torch.distributed as tdist

            tdist.barrier()
            tdist.destroy_process_group()
        sys.exit(128 + getattr(signal, stop.signame))
    except KeyboardInterrupt:
        ckpt = out / "checkpoints" / "last.pt"
        where = (f"the last checkpoint ({ckpt}) is kept; continue with: {resume_command(argv, out)}"
                 if ckpt.is_file() else "no checkpoint was written yet")
        print(f"supernet.train: interrupted; {where}", file=sys.stderr)
        sys.exit(128 + signal.SIGINT)
    finally:
        if lock is not None:  # train() released it already when it got that far
            lock.close()
    if dist.main:
        print(f"supernet: {final}")


def resume_command(argv, out: Path) -> str:
    """The command line that continues this run (``cliargs.resume_command``), without the
    tests' crash hooks, which have done their part."""
    return cliargs.resume_command("supernet.train", argv, out=out,
                                  drop_with_value=("--crash-after-step", "--crash-signal"))


OUTPUTS = ("config.yaml", "metrics.csv", "supernet.pt", "result.json", "checkpoints")
# what other commands derive from a run's supernet: meaningless for a supernet trained again
DERIVED = ("accuracy*.csv", "accuracy*.parts", "accuracy*.config.json", "predictor*.pt", "predictor*.json",
           "int8_drop.csv", "int8_drop.json", "vs_handpicked")


def check_out(out: Path, resume: bool, force: bool) -> None:
    """Refuse to write into a run folder that holds a run unless ``--resume`` or ``--force``
    (which removes the old outputs first); an unwritable folder is an error before any work."""
    existing = [name for name in OUTPUTS if (out / name).exists()] if out.is_dir() else []
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a folder")
    if existing and not (resume or force):
        raise ValueError(f"run folder {out} already holds a run ({', '.join(existing)}); "
                         "pass --resume to continue it or --force to start over")
    if force and not resume:
        import shutil

        for name in existing:
            path = out / name
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        set_aside_derived(out)
    probe = out  # the nearest existing folder: nothing is created before the run starts
    while not probe.exists():
        probe = probe.parent
    ensure_writable_folder(probe, f"run folder {out} (in it)")


def set_aside_derived(out: Path) -> Path | None:
    """Move what was derived from the run's old supernet (accuracy rows, predictors, the int8
    drop, benchmark tables) into ``out/replaced-<time>/``, so that nothing reads them as the
    new supernet's and nothing measured is lost; the folder, or None when there was none."""
    found = sorted({p for pattern in DERIVED for p in out.glob(pattern)}) if out.is_dir() else []
    if not found:
        return None
    aside = stamped_free_path(out, "replaced")
    aside.mkdir()
    for p in found:
        p.rename(aside / p.name)
    print(f"note: {', '.join(p.name for p in found)} (from the supernet trained before) moved to {aside}",
          file=sys.stderr)
    return aside


if __name__ == "__main__":
    main()
