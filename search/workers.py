"""Evaluation worker processes for ``search.collect`` and ``search.int8_drop``: spawned, one
thread each, gone with their parent (``profiler.export``'s watchdog), each loading the run
folder once, on the CPU, the way its parent did (``supernet.evaluation.load_run``).  A task
run in one of them reads that ``Evaluator`` with ``evaluator()``."""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

_LOADED: dict = {}


def _init(run: str, data: str | None, eval_images: int | None, recal_images: int | None, allocator: str) -> None:
    from profiler.export import _worker_init as watch_parent
    from supernet.evaluation import load_run

    watch_parent()  # one thread; exits when the parent is gone
    _, evaluator, _ = load_run(Path(run), data, "cpu", "off", recal_images=recal_images, allocator=allocator)
    if eval_images:
        evaluator.eval_images = eval_images
    _LOADED["evaluator"] = evaluator


def evaluator():
    """In a worker of ``evaluator_pool``: the run's ``Evaluator``."""
    return _LOADED["evaluator"]


def evaluator_pool(workers: int, run: Path | str, data: str | None = None, eval_images: int | None = None,
                   recal_images: int | None = None, allocator: str = "auto") -> ProcessPoolExecutor:
    """``workers`` spawned processes, each holding ``run``'s evaluator (held-out images
    ``eval_images``, BN recalibrated on ``recal_images``: None for the run's own)."""
    import multiprocessing as mp

    return ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_init,
                               initargs=(str(run), data, eval_images, recal_images, allocator))
