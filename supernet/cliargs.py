"""Argument types shared by the command lines of all three packages."""

from __future__ import annotations

import argparse
import signal
import sys
from typing import Callable, NoReturn

SEED_MAX = 2**32 - 1  # numpy's generators take seeds in [0, 2**32); torch and random take them too


def seed_arg(text: str) -> int:
    """``--seed``: an integer in [0, 2**32 - 1], the range every generator we seed accepts."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
    if not 0 <= value <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"must be between 0 and {SEED_MAX}, got {value}")
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
