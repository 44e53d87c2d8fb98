"""Shared test fixtures: paths, the published reference data (tests/data), a session artifact cache, and
a helper that runs the command-line entry points as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data"


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The published reference data, copied into the repository (tests/data/README.md)."""
    return DATA


_OWN_CACHE: str | None = None


def pytest_configure(config):
    """One artifact cache for the whole session (every module, through HWNAS_TEST_CACHE),
    fresh each run so exports are really exercised; an explicit HWNAS_TEST_CACHE is kept."""
    global _OWN_CACHE
    if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
        # one xdist worker a core: torch's default of one thread a core in each worker (and
        # in the commands a test starts without --threads) oversubscribes the machine
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        import torch

        torch.set_num_threads(1)
    if "HWNAS_TEST_CACHE" not in os.environ:
        import tempfile

        _OWN_CACHE = tempfile.mkdtemp(prefix="hwnas-test-artifacts-")
        os.environ["HWNAS_TEST_CACHE"] = _OWN_CACHE


def pytest_unconfigure(config):
    if _OWN_CACHE:
        import shutil

        shutil.rmtree(_OWN_CACHE, ignore_errors=True)
        os.environ.pop("HWNAS_TEST_CACHE", None)


@pytest.fixture(scope="session")
def artifact_cache() -> Path:
    """The session's artifact cache, so each block is exported once."""
    return Path(os.environ["HWNAS_TEST_CACHE"])


def run_cli(module: str, *args: str, cwd: Path | None = None, timeout: float = 600,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m module args`` as a user would; returns the completed process."""
    full_env = dict(os.environ, PYTHONUNBUFFERED="1")
    if env:
        full_env.update(env)
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=cwd or REPO,
                          capture_output=True, text=True, timeout=timeout, env=full_env)


def last_error_line(proc: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    return lines[-1] if lines else ""


# The modules whose tests take the longest (the whole pipeline, int8 exports of whole
# networks, training runs), heaviest first.  They are scheduled before the rest so that the
# two xdist workers (``-n 2``, whole files a worker: ``--dist loadfile`` in pyproject.toml)
# do not end with one worker running a minute-long test while the other waits: a fresh-clone
# run on the 2-core Intel host took 4 min 53 s in collection order.
HEAVY_FIRST = ("test_supernet_train.py", "test_int8.py", "test_pipeline.py", "test_export.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(HEAVY_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(HEAVY_FIRST)))  # stable: the rest in order
