"""The main job end to end (search.pipeline) at its smallest: the ``tiny`` space at one
resolution, the ``test`` training preset on a small generated 3-channel ImageFolder, a few
subnets, two generations.  Checks the run folder and that every chosen subnet fits its
budget on its own runtime's LUT, then that a rerun skips every finished stage: in the
default run for onnxruntime in fp32 (about 40 s), and with both runtimes and both precisions,
the main job's defaults, in the ``slow`` run (about 2.5 minutes on 2 cores: LiteRT
conversions of blocks and whole networks and int8 quantization dominate)."""

from __future__ import annotations

import csv
import json
import sys
import time

import pytest
from conftest import last_error_line, run_cli

# block exports and whole-network conversions dominate, much longer on a loaded box, hence
# the generous timeout
pytestmark = [pytest.mark.timeout(900)]


def _image_folder(root, classes: int = 10, per_class: int = 12) -> None:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(classes):
        d = root / f"class{c}"
        d.mkdir(parents=True)
        for i in range(per_class):
            img = (rng.random((32, 32, 3)) * 60 + 20 * c).astype(np.uint8)
            Image.fromarray(img).save(d / f"{i}.png")


def _small_job(tmp_path, cache) -> list:
    """The pipeline's flags for the smallest job: generated images, the tiny space at 32 px."""
    data = tmp_path / "images"
    _image_folder(data)
    return ["--out", tmp_path / "run", "--space", "tiny", "--data", f"imagefolder:{data}", "--preset", "test",
            "--train-limit", "16", "--resolutions", "32", "--repeats", "3", "--min-time", "0.005",
            "--cache", cache, "--subnets", "6", "--validate-subnets", "2", "--drift-blocks", "1",
            "--eval-images", "32", "--predictor-epochs", "10", "--generations", "2", "--population", "8",
            "--samples", "10", "--fractions", "0.3,0.8"]


def test_pipeline_end_to_end_for_one_runtime_and_resume(tmp_path, artifact_cache):
    """The whole job for onnxruntime in fp32: every stage runs, every chosen subnet fits its
    budget on the LUT the job measured, the fidelity line is printed beside the table, no
    int8 stage runs, and a rerun skips every stage and writes the same table."""
    from search.latency import LatencyModel
    from supernet.space import SubnetConfig, get_space

    # bad input: one error line, nothing written
    bad = run_cli("search.pipeline", "--out", tmp_path / "bad", "--data", f"fmnist:{tmp_path / 'nope'}", timeout=120)
    lines = [ln for ln in bad.stderr.splitlines() if ln.strip()]
    assert bad.returncode != 0 and len(lines) == 1, bad.stderr
    assert lines[0].startswith("error: Fashion-MNIST not found") and not (tmp_path / "bad").exists()

    args = _small_job(tmp_path, artifact_cache) + ["--runtimes", "onnxruntime", "--precision", "fp32"]
    out = tmp_path / "run"
    t0 = time.time()
    p = run_cli("search.pipeline", *args, "--no-progress", timeout=400)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    first = time.time() - t0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["runtimes"] == ["onnxruntime"] and cfg["precisions"] == ["fp32"]
    stages = json.loads((out / "stages.json").read_text())["stages"]
    assert {"profile", "validate", "train", "collect", "predictor", "search onnxruntime", "summary"} <= set(stages)
    assert "int8 drop" not in stages and not (out / "supernet" / "int8_drop.json").exists()
    assert not (out / "search-tflite").exists()
    summary = json.loads((out / "summary.json").read_text())
    rows = summary["rows"]
    assert len(rows) == 2 and {r["searched_for"] for r in rows} == {"onnxruntime"}
    with (out / "summary.csv").open() as f:
        assert len(list(csv.DictReader(f))) == 2
    lut = out / "luts" / "local.csv"
    with lut.open() as f:
        lut_rows = list(csv.DictReader(f))
    assert {r["runtime"] for r in lut_rows} == {"onnxruntime"} and {r["precision"] for r in lut_rows} == {"fp32"}
    space = get_space("tiny")
    model = LatencyModel.from_lut(lut, space, "onnxruntime", calibration="auto", precision="fp32")
    budgets = summary["budgets"]["onnxruntime"]
    assert budgets == sorted(budgets) and len(budgets) == 2
    for r in rows:
        sub = SubnetConfig.from_dict(r["subnet"])
        lat = float(model.latency([sub])[0])
        assert r["precision"] == "fp32" and lat <= r["budget_ms"] + 1e-6 and r["fits"], (lat, r)
        assert abs(lat - r["onnxruntime_ms"]) < 1e-3 and sub.r == 32 and 0.0 <= r["predicted_accuracy"] <= 1.0
    f = summary["fidelity"]["onnxruntime"]
    assert sorted(summary["fidelity"]) == ["onnxruntime"] and f["n"] == 2 and f["passes"] == 2
    assert "LUT fidelity, onnxruntime: LUT median |error|" in p.stdout and "summary.png" in p.stdout
    assert (out / "summary.png").is_file()

    t1 = time.time()
    again = run_cli("search.pipeline", *args, timeout=200)
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.count("skipped") >= 6, again.stdout
    assert json.loads((out / "summary.json").read_text())["rows"] == rows
    assert time.time() - t1 < first

    # a validate stage too noisy to judge the table is made again before the searches read its
    # calibration, and its own report is kept beside the new one
    validated, first_validation = out / "luts" / "local.validate.json", out / "luts" / "local.validate-first.json"
    doc = json.loads(validated.read_text())  # one runtime: its report flat
    assert doc["runtime"] == "onnxruntime"
    doc["verdict"] = "noisy"
    validated.write_text(json.dumps(doc))
    st = json.loads((out / "stages.json").read_text())
    st["stages"].pop("validate again", None)  # (the first run may have validated again already)
    (out / "stages.json").write_text(json.dumps(st))
    third = run_cli("search.pipeline", *args, timeout=300)
    assert third.returncode == 0, third.stderr[-2000:]
    assert "] validate: finished before" in third.stdout and "] validate again: " in third.stdout, third.stdout
    assert f"validating again, the first report kept in {first_validation}" in third.stdout
    assert json.loads(first_validation.read_text())["verdict"] == "noisy"
    assert json.loads(validated.read_text())["validated_at"] != doc["validated_at"]  # measured anew
    summary = json.loads((out / "summary.json").read_text())
    assert summary["fidelity_validate_stage"]["onnxruntime"]["verdict"] == "noisy"
    assert "LUT fidelity in the validate stage, onnxruntime" in third.stdout
    assert "validate again" in json.loads((out / "stages.json").read_text())["stages"]
    # a validation report that cannot be read is one error line
    validated.write_text("{not json")
    bad = run_cli("search.pipeline", *args, timeout=200)
    assert bad.returncode != 0 and last_error_line(bad).startswith(f"error: {validated}: unreadable"), bad.stderr[-1000:]
    assert "Traceback" not in bad.stderr


@pytest.mark.slow
def test_pipeline_end_to_end_and_resume(tmp_path, artifact_cache):
    from search.latency import LatencyModel
    from supernet.space import BlockSpec, SubnetConfig, get_space

    out = tmp_path / "run"
    args = _small_job(tmp_path, artifact_cache) + ["--int8-subnets", "2", "--int8-eval-images", "24", "--no-progress"]

    t0 = time.time()
    p = run_cli("search.pipeline", *args, timeout=400)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    first = time.time() - t0
    assert "collect (rank" not in p.stdout + p.stderr  # --no-progress reaches every stage

    cfg = json.loads((out / "config.json").read_text())
    assert cfg["resolutions"] == [32] and cfg["runtimes"] == ["onnxruntime", "tflite"]
    for f in ("luts/local.csv", "supernet/supernet.pt", "supernet/accuracy.csv", "supernet/predictor.pt",
              "supernet/int8_drop.json",
              "search-onnxruntime/search.json", "search-tflite/search.json", "summary.csv", "summary.png",
              "stages.json"):
        assert (out / f).exists(), f
    summary = json.loads((out / "summary.json").read_text())
    rows = summary["rows"]
    assert len(rows) == 4 and {r["searched_for"] for r in rows} == {"onnxruntime", "tflite"}
    with (out / "summary.csv").open() as f:
        assert len(list(csv.DictReader(f))) == 4
    space = get_space("tiny")
    lut = out / "luts" / "local.csv"
    with lut.open() as f:  # int8 blocks calibrated on the job's own images (profiler.calibrate)
        int8_rows = [r for r in csv.DictReader(f) if r["precision"] == "int8"]
    # every block, and every overhead probe at a block's input shape; the weight-streaming
    # probes are measured in int8 too, on seeded random inputs (they are in no network)
    shapes = {BlockSpec.parse(r["key"]).input_shape for r in int8_rows if r["kind"] not in ("stream", "overhead")}
    in_net = [r for r in int8_rows if r["kind"] != "stream" and BlockSpec.parse(r["key"]).input_shape in shapes]
    assert in_net and all(r["quant_calibration"].startswith("real images") for r in in_net)
    streams = [r for r in int8_rows if r["kind"] == "stream"]
    assert streams and all(r["quant_calibration"].startswith("random-normal") for r in streams)
    for rt in ("onnxruntime", "tflite"):
        budgets = summary["budgets"][rt]
        assert budgets == sorted(budgets) and len(budgets) == 2
        for r in (r for r in rows if r["searched_for"] == rt):
            # each chosen subnet fits its budget in the precision it is to be deployed in
            prec = r["precision"]
            assert prec in ("fp32", "int8")
            model = LatencyModel.from_lut(lut, space, rt, calibration="auto", precision=prec)
            cfg_ = SubnetConfig.from_dict(r["subnet"])
            lat = float(model.latency([cfg_])[0])
            assert lat <= r["budget_ms"] + 1e-6, (rt, prec, lat, r["budget_ms"])
            assert abs(lat - r[f"{rt}_int8_ms" if prec == "int8" else f"{rt}_ms"]) < 1e-3 and r["fits"]
            assert cfg_.r == 32 and 0.0 <= r["predicted_accuracy"] <= 1.0
            # the other precision's best under the same budget, where it has one
            assert r.get("alternative") is None or r["alternative"]["precision"] == {"fp32": "int8", "int8": "fp32"}[prec]
    assert len(summary["architectures_differ_per_budget_level"]) == 2
    assert "summary.png" in p.stdout and "architecture" in p.stdout
    # the LUT's fidelity for both runtimes, beside the noise floor, printed with the table
    assert sorted(summary["fidelity"]) == ["onnxruntime", "tflite"]
    for rt, f in summary["fidelity"].items():
        assert f["n"] == 2 and f["passes"] == 2 and f["overhead_model"] and "repeat_within_10pct" in f
        assert f["lut_drift"]["status"] == "measured" and f["lut_drift"]["n"] == 1 and f["lut_drift"]["ratio_median"] > 0
        assert f"LUT fidelity, {rt}: LUT median |error|" in p.stdout
    # both precisions (issue 16): every chosen subnet priced from each runtime's int8 rows, and
    # where int8 is slower than fp32 said per runtime
    assert cfg["precisions"] == ["fp32", "int8"]
    for rt in ("onnxruntime", "tflite"):
        int8_model = LatencyModel.from_lut(lut, space, rt, calibration="auto", precision="int8")
        for r in rows:
            assert r[f"{rt}_int8_ms"] == pytest.approx(
                float(int8_model.latency([SubnetConfig.from_dict(r["subnet"])])[0]), abs=1e-3)
        assert summary["int8"][rt]["blocks"] > 0
        assert f"int8 blocks against fp32, {rt}: int8 / fp32 median" in p.stdout
        # the measured accuracy drop the search scored int8 candidates with, per runtime
        drop = json.loads((out / "supernet" / "int8_drop.json").read_text())["runtimes"][rt]
        assert summary["int8"][rt]["accuracy_drop"] == drop and drop["min_drop_pp"] <= drop["mean_drop_pp"]
        assert f"int8 accuracy drop, {rt}: {drop['mean_drop_pp']:+.2f}" in p.stdout
        search = json.loads((out / f"search-{rt}" / "search.json").read_text())
        assert search["precision"] == "fp32,int8" and search["int8_drop"]["pp"] == pytest.approx(max(0.0, drop["mean_drop_pp"]))
        assert f"the search used {search['int8_drop']['pp']:+.2f}" in p.stdout
    with (out / "summary.csv").open() as f:
        assert [r["precision"] for r in csv.DictReader(f)] == [r["precision"] for r in rows]
    assert " deploy " in p.stdout
    assert (out / "luts" / "local.int8.csv").is_file()

    # a rerun skips every finished stage and writes the same table (progress bars or not)
    t1 = time.time()
    again = run_cli("search.pipeline", *[a for a in args if a != "--no-progress"], timeout=200)
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.count("skipped") >= 8, again.stdout
    assert json.loads((out / "summary.json").read_text())["rows"] == rows
    assert time.time() - t1 < first


def test_the_runtimes_validated_again_are_those_whose_validation_could_not_judge_the_table(tmp_path):
    from search.pipeline import unjudged_runtimes

    report = tmp_path / "local.validate.json"
    report.write_text(json.dumps({"runtimes": {"onnxruntime": {"verdict": "drifted"}, "tflite": {"verdict": "off"},
                                               "other": {"verdict": "noisy"}}}))
    assert unjudged_runtimes(report) == ["onnxruntime", "other"]
    report.write_text(json.dumps({"runtime": "tflite", "verdict": "faithful"}))  # one runtime: flat
    assert unjudged_runtimes(report) == []


def test_a_stage_over_its_timeout_is_stopped_with_its_workers_in_one_error_line(tmp_path):
    """--stage-timeout stops a stage with one line that says how to go on; the stage is not
    recorded as finished, and a bad value is refused before any work.  run_cli returns only
    when every holder of the stage's output pipe has exited: an export worker left running
    (as before the stage's process group was stopped) makes it time out."""
    out = tmp_path / "run"
    bad = run_cli("search.pipeline", "--out", out, "--stage-timeout", "-5", timeout=120)
    lines = [ln for ln in bad.stderr.splitlines() if ln.strip()]
    assert bad.returncode != 0 and lines == ["error: --stage-timeout must be 0 (no limit) or a number of "
                                             "seconds, got -5"], bad.stderr
    assert not out.exists()
    # a fresh cache: the profile stage exports blocks for far longer than 0.5 s
    p = run_cli("search.pipeline", "--out", out, "--space", "tiny", "--resolutions", "32", "--preset", "test",
                "--cache", tmp_path / "cache", "--stage-timeout", "0.5", "--no-progress", timeout=300)
    errors = [ln for ln in p.stderr.splitlines() if ln.startswith("error:")]
    assert p.returncode != 0, p.stdout[-2000:] + p.stderr[-2000:]
    assert errors == ["error: pipeline stage profile exceeded --stage-timeout 0.5 s; rerun the same command to "
                      "continue it (finished work is kept), or raise --stage-timeout (0: no limit)"], p.stderr[-2000:]
    stages = json.loads((out / "stages.json").read_text())["stages"] if (out / "stages.json").exists() else {}
    assert "profile" not in stages


def test_a_stage_that_runs_again_forgets_itself_and_every_later_stage(tmp_path):
    """stages.json: when a stage runs again, its record and every later stage's are dropped
    first (on disk), so a run interrupted after it cannot leave later stages looking
    finished on inputs that changed; flags that change no result do not make a stage new."""
    from search.pipeline import Stages, _portable

    first = Stages(tmp_path, force=False)
    for name in ("profile", "validate", "train", "collect"):
        first.record(name, ["py", "-m", name], 1.0)
    again = Stages(tmp_path, force=False)
    again.seen = ["profile"]  # profile was skipped; validate runs again
    again.forget_from("validate")
    assert list(json.loads((tmp_path / "stages.json").read_text())["stages"]) == ["profile"]
    cmd = ["py", "-m", "profiler.run", "--lut", "l.csv", "--export-workers", "2", "--cache", "c", "--no-progress"]
    assert _portable(cmd) == ["-m", "profiler.run", "--lut", "l.csv"]
    assert _portable(["other-py", "-m", "x", "--resume", "--seed", "1"]) == ["-m", "x", "--seed", "1"]


def test_a_killed_training_is_continued_only_by_the_command_that_started_it(tmp_path):
    """A training killed mid-run leaves a checkpoint: the same pipeline command continues it
    (--resume), while one with another preset starts over (--force; supernet.train refuses to
    resume under other settings, so adding --resume there stopped the pipeline for good).
    The started command survives a reload of stages.json and the forgetting of later stages."""
    from search.pipeline import Stages, train_restart_flag

    run = tmp_path / "supernet"
    tiny = ["py", "-m", "supernet.train", "--preset", "tiny", "--out", str(run)]
    small = ["py", "-m", "supernet.train", "--preset", "small", "--out", str(run)]
    stages = Stages(tmp_path, force=False)
    assert train_restart_flag(run, stages, tiny, False) == []  # nothing there yet
    # a stage that dies is not finished, but its command is on record
    dies = [sys.executable, "-c", "raise SystemExit(3)", "--preset", "tiny", "--out", str(run)]
    with pytest.raises(BaseException, match="failed"):
        stages.run("train", dies, [], None)
    assert "train" not in stages.done and Stages(tmp_path, force=False).started_with("train", dies)
    stages.started["train"] = ["-m", "supernet.train", "--preset", "tiny", "--out", str(run)]
    stages.forget_from("train")  # what Stages.run does before it starts the stage
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.pt").write_bytes(b"x")
    (run / "config.yaml").write_text("preset: tiny\n")
    again = Stages(tmp_path, force=False)  # the pipeline run again after the kill
    assert again.started_with("train", tiny + ["--no-progress"])
    assert train_restart_flag(run, again, tiny + ["--no-progress"], False) == ["--resume"]
    assert train_restart_flag(run, again, small, False) == ["--force"]
    assert train_restart_flag(run, again, tiny, True) == ["--force"]
    (run / "supernet.pt").write_bytes(b"x")  # finished: the stage runs again only from scratch
    assert train_restart_flag(run, again, tiny, False) == ["--force"]


def test_a_table_measured_with_other_settings_is_set_aside_whole(tmp_path):
    """The profiler resumes whatever rows it finds, so a LUT left by a profile with other
    settings (finished, or killed before it was recorded) is moved aside, not mixed with new
    rows; the same settings keep it (a killed profile resumes), --force always sets it aside."""
    from search.pipeline import Stages, set_lut_aside

    lut = tmp_path / "luts" / "local.csv"
    lut.parent.mkdir()
    lut.write_text("rows\n")
    a = ["py", "-m", "profiler.run", "--repeats", "50", "--lut", str(lut)]
    b = ["py", "-m", "profiler.run", "--repeats", "5", "--lut", str(lut)]
    stages = Stages(tmp_path, force=False)
    assert set_lut_aside(lut, stages, a, False) is None  # no record: kept
    stages.started["profile"] = ["-m", "profiler.run", "--repeats", "50", "--lut", str(lut)]
    stages.forget_from("profile")  # killed before it finished: only its start is on record
    again = Stages(tmp_path, force=False)
    assert set_lut_aside(lut, again, a + ["--no-progress"], False) is None and lut.read_text() == "rows\n"
    aside = set_lut_aside(lut, again, b, False)
    assert aside is not None and (aside / "local.csv").read_text() == "rows\n"
    assert lut.parent.is_dir() and not lut.exists()
    lut.write_text("new\n")
    second = set_lut_aside(lut, again, a, True)  # --force, maybe within the same second
    assert second not in (None, aside) and (second / "local.csv").read_text() == "new\n"
    assert (aside / "local.csv").read_text() == "rows\n"


@pytest.mark.parametrize("flag, value, message", [
    ("--preset", "nope", "--preset 'nope': known presets are"),
    ("--train-limit", "0", "--train-limit must be at least 1"),
    ("--validate-subnets", "0", "--validate-subnets must be at least 1"),
    ("--drift-blocks", "-1", "--drift-blocks must be 0 (off) or more, got -1"),
    ("--population", "1", "--population must be at least 2"),
    ("--repeats", "0", "--repeats must be at least 1"),
    ("--min-time", "nan", "--min-time must be a number of seconds >= 0, got nan"),
    ("--export-workers", "-1", "--export-workers must be at least 0"),
    ("--samples", "-1", "--samples must be at least 0"),
])
def test_a_bad_flag_is_refused_before_any_stage_runs(tmp_path, capsys, flag, value, message):
    """Each of these once started the profile stage (minutes of work) and failed later or never."""
    from search.pipeline import main

    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exc:
        main(["--out", str(out), flag, value, "--no-progress"])
    assert str(exc.value).startswith("error: ") and message in str(exc.value), str(exc.value)
    assert not out.exists()


def test_a_folder_another_pipeline_is_running_in_is_refused(tmp_path):
    import os

    from search.pipeline import main
    from supernet.atomic import ExclusiveLock

    out = tmp_path / "run"
    out.mkdir()
    with ExclusiveLock(out, "x"):  # this process plays the running pipeline
        with pytest.raises(SystemExit) as exc:
            main(["--out", str(out), "--no-progress"])
    assert str(exc.value).startswith(f"error: pipeline folder {out} is in use by another process (pid {os.getpid()}: ")
    assert not any(out.iterdir())
