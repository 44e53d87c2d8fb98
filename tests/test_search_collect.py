"""Accuracy collection: the seeded list is independent of sharding, shards cover it exactly
once, a killed run resumes without losing or repeating rows, failures are rows."""

from __future__ import annotations

import csv

import pytest

from search.collect import collect, merge, read_rows, subnet_at
from search.predictor import read_accuracy_csv
from supernet.space import TINY

RES, WID = TINY.resolutions, TINY.width_mults


def fake_top1(cfg):
    return 50.0 + sum(cfg.d) + cfg.r / 10


def test_shards_cover_the_list_once_and_match_a_single_process(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    collect(a, TINY, fake_top1, 30, 5, RES, WID, progress=False)
    for rank in range(3):
        collect(b, TINY, fake_top1, 30, 5, RES, WID, rank=rank, world=3, progress=False)
    ra, rb = read_rows([a / "accuracy.csv"]), read_rows([b / "accuracy.csv"])
    assert sorted(ra) == sorted(rb) == list(range(30))
    assert all(ra[i]["subnet"] == rb[i]["subnet"] == subnet_at(TINY, 5, i, RES, WID).to_json() for i in range(30))
    assert {rb[i]["rank"] for i in rb} == {"0", "1", "2"}
    subnets, accs = read_accuracy_csv(b / "accuracy.csv", TINY)
    assert len(subnets) == 30 and all(0.5 < x < 0.6 for x in accs)


def test_resume_after_a_kill_repeats_nothing(tmp_path):
    calls = []

    def dies_after_7(cfg):
        if len(calls) == 7:
            raise KeyboardInterrupt
        calls.append(cfg)
        return fake_top1(cfg)

    with pytest.raises(KeyboardInterrupt):
        collect(tmp_path, TINY, dies_after_7, 20, 0, RES, WID, progress=False)
    part = tmp_path / "accuracy.parts" / "rank0.csv"
    part.write_text(part.read_text() + '3,{"ks":[3')  # a torn line, as a kill mid-write leaves
    calls2 = []
    new, old = collect(tmp_path, TINY, lambda c: calls2.append(c) or fake_top1(c), 20, 0, RES, WID, progress=False)
    assert (new, old) == (13, 7) and len(calls2) == 13
    rows = read_rows([tmp_path / "accuracy.csv"])
    assert sorted(rows) == list(range(20))
    with open(tmp_path / "accuracy.csv") as f:
        assert len(list(csv.DictReader(f))) == 20


def test_a_failing_subnet_is_an_error_row_and_is_retried(tmp_path):
    def flaky(cfg):
        if cfg.r == 48:
            raise RuntimeError("out of memory")
        return fake_top1(cfg)

    collect(tmp_path, TINY, flaky, 12, 1, RES, WID, progress=False)
    rows = read_rows([tmp_path / "accuracy.csv"])
    bad = [r for r in rows.values() if r["status"] == "error"]
    assert bad and all("out of memory" in r["error"] for r in bad)
    subnets, _ = read_accuracy_csv(tmp_path / "accuracy.csv", TINY)   # error rows are skipped
    assert len(subnets) == 12 - len(bad)
    new, _ = collect(tmp_path, TINY, fake_top1, 12, 1, RES, WID, progress=False)
    assert new == len(bad)
    assert all(r["status"] == "ok" for r in read_rows([merge(tmp_path)]).values())


def test_ranks_merge_one_at_a_time(tmp_path):
    """A rank's merge waits for another's: otherwise a rank that read the parts before the
    other rank's last row could replace that rank's complete table with its older one."""
    import fcntl
    import threading

    collect(tmp_path, TINY, fake_top1, 4, 0, RES, WID, progress=False)
    done = threading.Event()
    with open(tmp_path / "accuracy.parts" / ".merge.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        t = threading.Thread(target=lambda: (merge(tmp_path), done.set()))
        t.start()
        assert not done.wait(0.3)
    t.join(10)
    assert done.is_set() and sorted(read_rows([tmp_path / "accuracy.csv"])) == [0, 1, 2, 3]


def test_a_dead_evaluation_worker_is_one_error_and_the_rest_is_cancelled():
    """search.workers.finished (search.collect's and search.int8_drop's workers): results as
    they finish; a worker that dies breaks the pool into ``WorkerDied``, not a hang, and the
    tasks not started are cancelled."""
    import multiprocessing as mp
    import os
    from concurrent.futures import ProcessPoolExecutor

    from search.workers import WorkerDied, finished

    with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
        assert sorted(finished(pool, pow, {"a": (2, 3), "b": (3, 2)})) == [("a", 8), ("b", 9)]
    with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
        with pytest.raises(WorkerDied):
            list(finished(pool, os._exit, {i: (1,) for i in range(4)}))
