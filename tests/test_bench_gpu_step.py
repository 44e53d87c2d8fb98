"""``bench/gpu_step.py`` (issue 15) as the suite runs it: on the CPU, small, one JSON object.

On a GPU the same script runs as written (224 px, batch 256, bf16); here it checks that every
row is timed, that the extracted largest subnet is the supernet's largest (same parameter
count), that timm's row is skipped with a reason where timm is absent, and that bad flags
are one error line.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

from conftest import REPO

SCRIPT = REPO / "bench" / "gpu_step.py"


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=REPO, capture_output=True, text=True,
                          timeout=600)


def test_gpu_step_runs_small_on_the_cpu_and_prints_its_json():
    proc = run("--device", "cpu", "--batch", "2", "--res", "64", "--amp", "off", "--steps", "1", "--reps", "2",
               "--warmup", "1", "--random", "1", "--threads", "1")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["bench"] == "gpu_step" and out["device"].startswith("cpu") and out["amp"] == "off"
    assert out["batch"] == 2 and out["resolution"] == 64 and out["channels_last"] is True
    rows = {r["name"]: r for r in out["rows"]}
    assert {"supernet largest", "supernet random 0", "extracted largest"} <= set(rows)
    for r in rows.values():
        assert r["images_per_s"] > 0 and r["step_ms"] > 0 and r["peak_memory_mb"] is None
    assert rows["supernet largest"]["params_m"] == rows["extracted largest"]["params_m"]
    assert rows["supernet random 0"]["params_m"] < rows["supernet largest"]["params_m"]
    assert out["peak_memory_note"]
    timm_rows = [n for n in rows if n.startswith("timm")]
    if importlib.util.find_spec("timm") is None:
        assert not timm_rows
        assert [s["name"] for s in out["skipped"]] == ["timm mobilenetv3_large_100"]
        assert "not installed" in out["skipped"][0]["reason"]
    else:
        assert len(timm_rows) == 1


def test_gpu_step_refuses_bad_flags_in_one_line():
    for args, message in ((["--batch", "0"], "must be >= 1"), (["--device", "tpu"], "tpu")):
        proc = run(*args, "--device" if "--device" not in args else "--amp", "cpu" if "--device" not in args else "off")
        assert proc.returncode == 2, proc.stderr
        err = proc.stderr.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("gpu_step: error:") and message in err[0], err
