"""Evaluation worker processes for ``search.collect`` and ``search.int8_drop``: spawned, one
thread each, gone with their parent (``profiler.export``'s watchdog), each loading the run
folder once, on the CPU, the way its parent did (``supernet.evaluation.load_run``).  A task
run in one of them reads that ``Evaluator`` with ``evaluator()``; ``finished`` hands out their
results as they come."""

from __future__ import annotations

from concurrent.futures import Executor, ProcessPoolExecutor
from pathlib import Path
from typing import Any, Callable, Hashable, Iterator

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


class WorkerDied(RuntimeError):
    """A worker process of the pool died (killed, out of memory): the pool is broken."""


def finished(pool: Executor, task: Callable, jobs: dict[Hashable, tuple]) -> Iterator[tuple[Hashable, Any]]:
    """``task(*args)`` submitted to ``pool`` for every ``key: args`` of ``jobs``; (key, result)
    as each finishes.  A dead worker is ``WorkerDied``; whatever ends the loop early (that,
    a task's error, Ctrl-C) cancels the tasks not started yet."""
    from concurrent.futures import as_completed
    from concurrent.futures.process import BrokenProcessPool

    futures = {pool.submit(task, *args): key for key, args in jobs.items()}
    try:
        for f in as_completed(futures):
            yield futures[f], f.result()
    except BrokenProcessPool:
        raise WorkerDied("a worker process died") from None
    finally:
        for f in futures:
            f.cancel()
