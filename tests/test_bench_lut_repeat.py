"""``bench/lut_repeat.py``: the same table built pinned and unpinned (or with two sweeps a
block and with one), alternating, and each kind's builds compared block by block (the
figures behind the shipped ``cpu_mask: last`` and the default two sweeps)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO
from profiler.lut import read_rows
from profiler.run import with_overhead_probes
from supernet.space import TINY

BENCH = str(REPO / "bench" / "lut_repeat.py")


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="no CPU affinity on this system")
def test_lut_repeat_compares_pinned_and_unpinned_builds(tmp_path):
    out_file = tmp_path / "r.json"
    p = subprocess.run([sys.executable, BENCH, "--space", "tiny", "--resolutions", "32", "--limit", "2", "--builds",
                        "3", "--runtime", "onnxruntime", "--repeats", "5", "--min-time", "0", "--workdir",
                        str(tmp_path / "w"), "--out", str(out_file)], cwd=REPO, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    out = json.loads(out_file.read_text())
    allowed = sorted(os.sched_getaffinity(0))
    assert out["cpus"]["pinned"] == [str(allowed[-1])]  # cpu_mask last: the highest-numbered CPU
    assert out["cpus"]["unpinned"] != out["cpus"]["pinned"] or len(allowed) == 1
    for kind in ("pinned", "unpinned"):
        r = out["runs"]["onnxruntime"][kind]
        assert len(r["pairs_median_abs_diff_pct"]) == 3  # every pair of three builds
        assert all(d >= 0 for d in r["pairs_median_abs_diff_pct"])
        assert r["median_abs_diff_pct"] == sorted(r["pairs_median_abs_diff_pct"])[1]
        assert len(r["pairs_rows_apart"]) == 3 and r["rows_apart_max"] == max(r["pairs_rows_apart"])
        assert 0 <= r["rows_apart_max"] <= len(with_overhead_probes(TINY.all_blocks([32])[:2]))
    # the warm-up build and six counted ones, each its own table
    assert len(list((tmp_path / "w").glob("onnxruntime-*-*.csv"))) == 6
    # two sweeps a block against one, both pinned
    p = subprocess.run([sys.executable, BENCH, "--compare", "sweeps", "--space", "tiny", "--resolutions", "32",
                        "--limit", "2", "--builds", "2", "--runtime", "onnxruntime", "--repeats", "4", "--min-time",
                        "0", "--workdir", str(tmp_path / "s")], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    out = json.loads(p.stdout)
    assert out["compare"] == "sweeps" and out["cpus"]["two sweeps"] == out["cpus"]["one sweep"] == [str(allowed[-1])]
    assert set(out["runs"]["onnxruntime"]) == {"two sweeps", "one sweep"}
    for kind, sweeps in (("two_sweeps", 2), ("one_sweep", 1)):
        luts = sorted((tmp_path / "s").glob(f"onnxruntime-{kind}-*.csv"))
        assert len(luts) == 2 and all(r["sweeps"] == sweeps for lut in luts for r in read_rows(lut))
    bad = subprocess.run([sys.executable, BENCH, "--runtime", "tensorrt"], cwd=REPO, capture_output=True, text=True,
                         timeout=60)
    assert bad.returncode != 0 and "tensorrt" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
