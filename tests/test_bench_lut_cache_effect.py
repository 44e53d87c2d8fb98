"""``bench/lut_cache_effect.py`` (issue 11) as the suite runs it: small, onnxruntime, one JSON
object with every sum, the latency model's sums (probes timed alone and in the rotation) among
them, each consistent with its parts."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import REPO


def test_lut_cache_effect_prints_warm_round_robin_and_model_sums():
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "lut_cache_effect.py"), "--runtime", "onnxruntime",
                           "--space", "tiny", "--resolution", "32", "--subnets", "1", "--rounds", "5",
                           "--flush-mb", "0"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["bench"] == "lut_cache_effect" and out["runtime"] == "onnxruntime" and len(out["subnets"]) == 1
    row = out["subnets"][0]
    for k in ("warm_sum_ms", "round_robin_sum_ms", "network_ms"):
        assert row[k] > 0, (k, row)
    # the model takes one probe per block off and adds one back: below the plain sum (not
    # necessarily above 0: at 32 px a tiny block costs about what its probe does, and on a
    # busy host the probes can time slower than their blocks, as a fresh clone's run saw)
    assert row["warm_model_ms"] < row["warm_sum_ms"] and row["round_robin_model_ms"] < row["round_robin_sum_ms"]
    for k in ("warm", "round_robin", "warm_model", "round_robin_model"):
        value = row[f"{k}_{'sum_' if 'model' not in k else ''}ms"]  # every figure rounded to 1 us or 0.001
        tol = 0.0005 * (1 + abs(value) / row["network_ms"]) / row["network_ms"] + 0.0005
        assert abs(row[f"{k}_over_network"] - value / row["network_ms"]) <= tol, (k, row)
        assert out[f"median_{k}_over_network"] == row[f"{k}_over_network"]
    assert "flushed_over_network" not in row  # --flush-mb 0: no flushed sums
