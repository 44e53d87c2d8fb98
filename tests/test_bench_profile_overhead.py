"""``bench/profile_overhead.py`` (issue 11): a cold and a warm LUT build per runtime, each with
its wall / timed ratio and the cold build judged against that runtime's target (onnxruntime
here: a LiteRT pass adds about 10 s of export-worker start-up to the suite; the bench runs
both by default, and the per-runtime code is the same)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import REPO


@pytest.mark.slow
def test_profile_overhead_prints_cold_and_warm_ratios_per_runtime(tmp_path):
    out_file = tmp_path / "po.json"
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "profile_overhead.py"), "--space", "tiny",
                           "--resolutions", "32", "--limit", "2", "--runtime", "onnxruntime", "--workdir", str(tmp_path / "w"),
                           "--out", str(out_file)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(out_file.read_text())
    assert out["runtimes"] == ["onnxruntime"] and out["blocks"] >= 2
    for rt, target in (("onnxruntime", 2.0),):
        run = out["runs"][rt]
        assert run["target_cold_wall_over_timed"] == target
        cold, warm = run["cold"], run["warm"]
        assert cold["exported"] == cold["blocks"] == out["blocks"] and warm["exported"] == 0  # cold exports, warm reuses
        assert cold["failed"] == warm["failed"] == 0
        for p in (cold, warm):
            assert p["timed_inference_s"] > 0 and p["wall_s"] >= p["measure_s"] >= p["timed_inference_s"]
            assert p["wall_over_timed"] == pytest.approx(p["wall_s"] / p["timed_inference_s"], rel=0.01)
        assert run["cold_target_met"] == (cold["wall_over_timed"] <= target)
        assert (tmp_path / "w" / rt / "cold.csv").exists() and (tmp_path / "w" / rt / "warm.csv").exists()
    bad = subprocess.run([sys.executable, str(REPO / "bench" / "profile_overhead.py"), "--runtime", "tensorrt"],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "tensorrt" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
