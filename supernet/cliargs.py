"""Argument types shared by the command lines of all three packages."""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
from typing import Callable, NoReturn

SEED_MAX = 2**32 - 1  # numpy's generators take seeds in [0, 2**32); torch and random take them too

# the device flags' values (supernet.device resolves them; here so that a command can check its
# flags before it imports torch, 2-3 s on a slow host)
DEVICES_HELP = "auto | cpu | cuda | cuda:N"
AMP_MODES = ("auto", "bf16", "fp16", "off")
CUDNN_MODES = ("auto", "on", "off", "no-depthwise")
ALLOCATOR_MODES = ("auto", "keep", "system")


def allocator_mode(spec: str | None) -> str:
    """``--allocator``'s value, normalised (None: auto); a value not in ``ALLOCATOR_MODES``
    is a ValueError (``supernet.device.resolve_allocator`` decides what auto means)."""
    spec = (spec or "auto").strip().lower()
    if spec not in ALLOCATOR_MODES:
        raise ValueError(f"--allocator {spec!r}: expected one of {', '.join(ALLOCATOR_MODES)}")
    return spec


def seed_arg(text: str) -> int:
    """``--seed``: an integer in [0, 2**32 - 1], the range every generator we seed accepts."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
    if not 0 <= value <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"must be between 0 and {SEED_MAX}, got {value}")
    return value


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity: ``taskset`` or a container's
    cpuset can leave fewer than ``os.cpu_count()``); the default for worker and thread counts."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def threads_arg(text: str) -> int:
    """``--threads``: a whole number of threads, at least 1 (torch refuses anything else with
    a traceback from deep inside a run)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number of threads, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def seeds_arg(text: str) -> list[int]:
    """``--seeds``: a comma list of ``seed_arg`` values, at least one, no repeats."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts:
        raise argparse.ArgumentTypeError(f"must be a comma list of seeds, got {text!r}")
    seeds = [seed_arg(p) for p in parts]
    if len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"repeats a seed: {text!r}")
    return seeds


def run_main(main: Callable[[], int | None], prog: str, kept: str) -> NoReturn:
    """``sys.exit(main())`` for a command's ``__main__``: Ctrl-C ends it with one line saying
    what is kept and how to go on (``kept``), exit status 130, instead of a traceback."""
    try:
        code = main()
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; {kept}", file=sys.stderr, flush=True)
        code = 128 + signal.SIGINT
    sys.exit(code)


def resume_command(module: str, argv, *, out=None, drop_with_value: tuple[str, ...] = ()) -> str:
    """The command line that continues a stopped run of ``python -m module``: its flags
    (``argv``, or ``sys.argv``) without ``--force`` (which would start over) and without the
    flags in ``drop_with_value`` and their values, ``--out OUT`` added where the run folder was a
    default one, and ``--resume``; under torchrun the same launch.  A stage of
    ``search.pipeline`` (``HWNAS_CONTINUE_WITH``) names the pipeline's command instead."""
    if os.environ.get("HWNAS_CONTINUE_WITH"):
        return os.environ["HWNAS_CONTINUE_WITH"]
    given, args = list(sys.argv[1:] if argv is None else argv), []
    while given:
        a = given.pop(0)
        if a in drop_with_value:
            given = given[1:]
        elif a != "--force" and not a.startswith(tuple(f"{d}=" for d in drop_with_value)):
            args.append(a)
    if out is not None and "--out" not in args and not any(a.startswith("--out=") for a in args):
        args += ["--out", str(out)]
    if "--resume" not in args:
        args.append("--resume")
    launcher = ["python"]
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # under torchrun: the same launch, one node or several
        if os.environ.get("GROUP_WORLD_SIZE", "1") != "1":
            return "the same torchrun command with " + shlex.join(args)
        # "--": torchrun reads abbreviations of its own options past the module (--run for --run-path)
        launcher = ["torchrun", f"--nproc_per_node={os.environ.get('LOCAL_WORLD_SIZE', os.environ['WORLD_SIZE'])}"]
        return shlex.join([*launcher, "-m", module, "--", *args])
    return shlex.join([*launcher, "-m", module, *args])
