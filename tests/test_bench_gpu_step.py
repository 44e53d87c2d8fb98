"""``bench/gpu_step.py`` (issue 15) as the suite runs it: on the CPU, small, one JSON object.

On a GPU the same script runs as written (224 px, batch 256, bf16); here it checks that every
row is timed, that the extracted largest subnet is the supernet's largest (same parameter
count), that timm's row is skipped with a reason where timm is absent, and that bad flags
are one error line.
"""

from __future__ import annotations

import importlib.util
import json

import pytest

from conftest import REPO

SCRIPT = REPO / "bench" / "gpu_step.py"


def bench():
    spec = importlib.util.spec_from_file_location("gpu_step", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_gpu_step_runs_small_on_the_cpu_and_prints_its_json(capsys):
    code = bench().main(["--device", "cpu", "--batch", "2", "--res", "64", "--amp", "off", "--steps", "1",
                         "--reps", "2", "--warmup", "1", "--random", "1", "--threads", "1"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
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


def test_gpu_step_refuses_bad_flags_in_one_line(capsys):
    main = bench().main
    for args, message in ((["--batch", "0", "--device", "cpu"], "must be >= 1"), (["--device", "tpu"], "tpu")):
        with pytest.raises(SystemExit) as exc:
            main(args)
        assert exc.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("gpu_step: error:") and message in err[0], err


def test_gpu_warmup_runs_small_on_the_cpu_and_prints_its_json(capsys):
    spec = importlib.util.spec_from_file_location("gpu_warmup", REPO / "bench" / "gpu_warmup.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    code = mod.main(["--device", "cpu", "--subnets", "2", "--steady", "1", "--batch", "4", "--batches", "4,8",
                     "--variants", "cl-off,nchw-off-nodw", "--threads", "1"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["bench"] == "gpu_warmup" and out["device"].startswith("cpu") and out["space"] == "fmnist"
    assert [v["variant"] for v in out["variants"]] == ["cl-off", "nchw-off-nodw"]
    assert [v["cudnn"] for v in out["variants"]] == ["on", "no-depthwise"]
    for v in out["variants"]:
        assert len(v["subnets"]) == 2 and v["first_ms_median"] > 0 and v["steady_images_per_s"] > 0
        # the same seeded subnets in every variant
        assert [s["r"] for s in v["subnets"]] == [s["r"] for s in out["variants"][0]["subnets"]]
    best = min(out["variants"], key=lambda v: v["est_s_per_subnet"])["variant"]
    assert out["best_variant"] == best and out["batch_sweep_variant"] == best  # the sweep runs the best one
    assert [s["batch"] for s in out["batch_sweep"]] == [4, 8]
    with pytest.raises(SystemExit) as exc:
        mod.main(["--device", "cpu", "--variants", "cl-int4"])
    assert exc.value.code == 2 and "cl-int4" in capsys.readouterr().err
