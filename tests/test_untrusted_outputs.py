"""Nothing overwritten unasked, outputs checked before the work: profiler.validate keeps each
network's result as it goes and refuses an unusable report path up front; search.collect
never drops rows it cannot parse and refuses to mix settings; search.evolve's --out."""

from __future__ import annotations

import json
import sys

import pytest

from conftest import REPO, last_error_line, run_cli
from profiler.lut import LutWriter, error_row
from search.collect import check_settings, collect, subnet_at
from sshd import write_devices
from supernet.space import TINY

RES, WID = TINY.resolutions, TINY.width_mults

# A runner double: answers info and one measurement, then leaves a marker and exits; while
# the marker exists it refuses to start (the device is gone for good).
DYING_RUNNER = r'''#!{python}
import json, os, sys
MARK = {mark!r}
if os.path.exists(MARK):
    sys.exit(3)
print(json.dumps({{"ok": True, "ready": True, "protocol": 1}}), flush=True)
for line in sys.stdin:
    req = json.loads(line)
    if req.get("op") == "info":
        print(json.dumps({{"ok": True, "id": req["id"], "host": "fake", "cpu": "fake",
                          "runtimes": {{"onnxruntime": {{"version": "1.0", "providers": []}}}}}}), flush=True)
        continue
    print(json.dumps({{"ok": True, "id": req["id"], "runtime": "onnxruntime", "runtime_version": "1.0",
                      "threads": 1, "samples_ms": [2.0, 2.0, 2.0]}}), flush=True)
    open(MARK, "w").close()
    sys.exit(0)
'''


def full_lut(path):
    with LutWriter(path) as w:
        for b in TINY.all_blocks():
            row = error_row(str(b), "onnxruntime", "", {})
            row.update(status="ok", median_ms=0.5, error="")
            w.add(row)
    return path


def validate_cli(tmp_path, lut, *extra):
    script = tmp_path / "dying_runner"
    script.write_text(DYING_RUNNER.format(python=sys.executable, mark=str(tmp_path / "gone")))
    script.chmod(0o755)
    devices = write_devices(tmp_path / "devices.yaml", {"fake": {
        "transport": "local", "runtime": "onnxruntime", "python": str(script), "timeout_s": 5,
        "connect_timeout_s": 2, "retries": 0}})
    return run_cli("profiler.validate", "--device", "fake", "--devices", devices, "--lut", lut, "--space", "tiny",
                   "--cache", tmp_path / "cache", "--no-progress", *extra)


def test_validate_refuses_an_unwritable_report_before_measuring(tmp_path):
    lut = full_lut(tmp_path / "l.csv")
    (tmp_path / "l.validate.csv").mkdir()
    p = validate_cli(tmp_path, lut, "--subnets", "2")
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert "l.validate.csv: exists and is not a file" in last_error_line(p)
    assert not (tmp_path / "cache").exists()  # nothing exported, nothing measured


def test_validate_keeps_each_network_as_it_is_measured(tmp_path):
    lut = full_lut(tmp_path / "l.csv")
    p = validate_cli(tmp_path, lut, "--subnets", "3")
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert "1 measurement(s) made" in last_error_line(p)
    lines = (tmp_path / "l.validate.csv").read_text().splitlines()
    assert len(lines) == 2 and lines[1].split(",")[-4] == "2.0000"  # header + the one measured network


def test_collect_never_drops_a_row_it_cannot_parse(tmp_path):
    collect(tmp_path, TINY, lambda cfg: 50.0, 3, 0, RES, WID, progress=False)
    path = tmp_path / "accuracy.csv"
    with path.open("a") as fh:
        fh.write('7,"{""ks"": [3]}",0.5,50.0,32,1.0,1,1,0.1,0,ok,\n')  # someone's hand-added row
    before = path.read_bytes()
    with pytest.raises(ValueError, match=r"accuracy.csv:5: subnet JSON"):
        collect(tmp_path, TINY, lambda cfg: 50.0, 4, 0, RES, WID, progress=False)
    assert path.read_bytes() == before


def test_collect_rerun_with_other_settings_needs_force(tmp_path, capsys):
    config = {"seed": 0, "resolutions": list(RES), "widths": list(WID), "space_name": "tiny"}
    collect(tmp_path, TINY, lambda cfg: 50.0, 2, 0, RES, WID, progress=False)
    (tmp_path / "accuracy.config.json").write_text(json.dumps(config))
    check_settings(tmp_path, dict(config), force=False, rank=0, world=1)  # same settings: fine
    before = (tmp_path / "accuracy.csv").read_bytes()
    for change in ({"seed": 1}, {"resolutions": [RES[0]]}):
        with pytest.raises(ValueError, match=r"accuracy.config.json: the accuracy data there was collected with"):
            check_settings(tmp_path, {**config, **change}, force=False, rank=0, world=1)
    assert (tmp_path / "accuracy.csv").read_bytes() == before
    check_settings(tmp_path, {**config, "seed": 1}, force=True, rank=0, world=1)
    assert not (tmp_path / "accuracy.csv").exists()
    kept = list(tmp_path.glob("accuracy.*.csv"))
    assert len(kept) == 1 and kept[0].read_bytes() == before
    collect(tmp_path, TINY, lambda cfg: 50.0, 2, 1, RES, WID, progress=False)
    from search.collect import read_rows

    assert read_rows([tmp_path / "accuracy.csv"])[0]["subnet"] == subnet_at(TINY, 1, 0, RES, WID).to_json()


def test_collect_refuses_rows_of_a_supernet_trained_again(tmp_path):
    """Accuracy rows belong to the supernet that was evaluated: after the run is trained
    again (another supernet.pt), adding to them needs --force, which sets them aside."""
    from supernet.atomic import file_sha256

    (tmp_path / "supernet.pt").write_bytes(b"old weights")
    config = {"seed": 0, "resolutions": list(RES), "widths": list(WID), "space_name": "tiny",
              "supernet_sha256": file_sha256(tmp_path / "supernet.pt")}
    collect(tmp_path, TINY, lambda cfg: 50.0, 2, 0, RES, WID, progress=False)
    (tmp_path / "accuracy.config.json").write_text(json.dumps(config))
    (tmp_path / "supernet.pt").write_bytes(b"new weights")
    now = {**config, "supernet_sha256": file_sha256(tmp_path / "supernet.pt")}
    with pytest.raises(ValueError, match=r"collected with another supernet.pt \(SHA-256 [0-9a-f]{12}, now "
                                         r"[0-9a-f]{12}: the run was trained again\)"):
        check_settings(tmp_path, now, force=False, rank=0, world=1)
    old = {k: v for k, v in config.items() if k != "supernet_sha256"}  # data from before the field: accepted
    (tmp_path / "accuracy.config.json").write_text(json.dumps(old))
    check_settings(tmp_path, now, force=False, rank=0, world=1)
    (tmp_path / "accuracy.config.json").write_text(json.dumps(config))
    check_settings(tmp_path, now, force=True, rank=0, world=1)
    assert not (tmp_path / "accuracy.csv").exists() and len(list(tmp_path.glob("accuracy.*.csv"))) == 1


def test_train_force_sets_aside_what_was_derived_from_the_old_supernet(tmp_path, capsys):
    """supernet.train --force starts over: the old supernet's accuracy rows, predictor and int8
    drop would be read as the new one's, so they move to replaced-<time>/, byte for byte."""
    from supernet.train import check_out

    run = tmp_path / "run"
    (run / "accuracy.parts").mkdir(parents=True)
    files = {"supernet.pt": b"w", "config.yaml": b"c: 1\n", "accuracy.csv": b"index\n", "accuracy.config.json": b"{}",
             "accuracy-int8-tflite.csv": b"i\n", "predictor.pt": b"p", "predictor.json": b"{}",
             "int8_drop.json": b"{}", "notes.txt": b"mine"}
    for name, data in files.items():
        (run / name).write_bytes(data)
    with pytest.raises(ValueError, match="already holds a run"):
        check_out(run, resume=False, force=False)
    check_out(run, resume=True, force=False)  # a resume keeps everything
    assert all((run / name).exists() for name in files)
    check_out(run, resume=False, force=True)
    (aside,) = run.glob("replaced-*")
    moved = {"accuracy.csv", "accuracy.config.json", "accuracy-int8-tflite.csv", "predictor.pt", "predictor.json",
             "int8_drop.json", "accuracy.parts"}
    assert {p.name for p in aside.iterdir()} == moved
    assert all((aside / n).read_bytes() == files[n] for n in moved if n in files)
    assert sorted(p.name for p in run.iterdir()) == sorted(["notes.txt", aside.name])
    assert "moved to" in capsys.readouterr().err


def test_evolve_unwritable_out_is_one_line_before_searching(tmp_path):
    from test_untrusted_files import _saved_predictor

    pred = _saved_predictor(tmp_path)
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    p = run_cli("search.evolve", "--predictor", pred, "--macs-m", "1000", "--out", blocker / "out",
                "--generations", "1", "--population", "4", "--samples", "4")
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert "cannot write the --out folder" in p.stderr.strip().splitlines()[-1]


def test_predictor_unwritable_out_is_one_line_before_training(tmp_path):
    from test_untrusted_files import _acc_csv

    data = _acc_csv(tmp_path, "0.5")
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    p = run_cli("search.predictor", "--data", data, "--space", "tiny", "--out", blocker / "p.pt", "--epochs", "1")
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert "cannot write the --out folder" in p.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("extra, message", [
    (["--passes", "0"], "--passes must be at least 1"),
    (["--runtime", "onnxruntime,tvm"], "unknown runtime 'tvm'"),
    (["--width", "inf"], "--width: inf is not a width multiplier of space"),  # was an OverflowError traceback
])
def test_validate_refuses_bad_passes_and_runtimes_before_measuring(tmp_path, extra, message):
    lut = full_lut(tmp_path / "l.csv")
    p = validate_cli(tmp_path, lut, "--subnets", "2", *extra)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert message in last_error_line(p)
    assert not (tmp_path / "cache").exists() and not (tmp_path / "l.validate.csv").exists()


@pytest.mark.parametrize("cmd, n", [(["supernet.eval", "--subnet", "max"], "-5"),
                                    (["search.collect", "--subnets", "3"], "0"), (["search.int8_drop"], "-1")])
def test_eval_images_below_one_is_one_error_line(tmp_path, cmd, n):
    """--eval-images 0 or -5 would evaluate on no image and print 0.00% as a result."""
    p = run_cli(cmd[0], "--run", tmp_path, *cmd[1:], "--eval-images", n)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert "--eval-images must be at least 1" in p.stderr.strip().splitlines()[-1]


def test_a_second_collection_of_the_same_rank_is_refused(tmp_path):
    """Two processes of one rank would evaluate the same subnets and interleave their rows in
    one part file: the second is refused naming the part."""
    from supernet.atomic import Busy, ExclusiveLock, lock_path

    part = tmp_path / "accuracy.parts" / "rank0.csv"
    part.parent.mkdir()
    with ExclusiveLock(lock_path(part), "x"):  # this process plays the first collection
        with pytest.raises(Busy, match=r"accuracy.parts/rank0.csv \(search.collect rank 0\) is in use"):
            collect(tmp_path, TINY, lambda cfg: 50.0, 2, 0, RES, WID, progress=False)
    assert collect(tmp_path, TINY, lambda cfg: 50.0, 2, 0, RES, WID, progress=False) == (2, 0)


def test_validate_refuses_a_lut_that_is_being_written(tmp_path):
    """A LUT a profiler.run is still writing (or another validation is using) is not
    validated: its networks would share the device with that run's blocks."""
    lut = full_lut(tmp_path / "l.csv")
    with LutWriter(lut):  # this process plays the profiler.run still writing it
        p = validate_cli(tmp_path, lut, "--subnets", "1")
    assert p.returncode == 2 and last_error_line(p).startswith(f"error: LUT {lut} is in use by another process")
    assert not (tmp_path / "l.validate.csv").exists()


def test_search_numbers_that_mean_nothing_are_one_line_before_any_work(tmp_path, capsys):
    """search.evolve --method relaxation --steps 0 was an UnboundLocalError traceback and
    --samples -1 passed; search.predictor --epochs 0 trained no MLP and --hidden 0,-3 was a
    tensor traceback; profiler.run --export-workers -1 passed as 0."""
    from profiler.run import main as run_main
    from search.evolve import main as evolve_main
    from search.predictor import main as predictor_main
    from test_untrusted_files import _acc_csv

    note10 = str(REPO / "luts" / "note10.csv")
    for argv, words in ((["--method", "relaxation", "--steps", "0"], "--steps must be >= 1, got 0"),
                        (["--samples", "-1"], "--samples must be >= 0, got -1")):
        with pytest.raises(SystemExit) as exc:
            evolve_main(["--lut", note10, "--out", str(tmp_path / "ev"), *argv])
        assert exc.value.code == 2 and words in capsys.readouterr().err.strip().splitlines()[-1]
    assert not (tmp_path / "ev").exists()
    data = _acc_csv(tmp_path, "0.5")
    for argv, words in ((["--epochs", "0"], "--epochs must be at least 1, got 0"),
                        (["--hidden", "0,-3"], "--hidden must be a comma list of layer sizes of at least 1")):
        with pytest.raises(SystemExit) as exc:
            predictor_main(["--data", str(data), "--space", "tiny", "--out", str(tmp_path / "p.pt"), *argv])
        assert exc.value.code == 2 and words in capsys.readouterr().err.strip().splitlines()[-1]
    assert not (tmp_path / "p.pt").exists()
    with pytest.raises(SystemExit) as exc:
        run_main(["--device", "local", "--space", "tiny", "--resolutions", "32", "--export-workers", "-1",
                  "--lut", str(tmp_path / "l.csv"), "--cache", str(tmp_path / "c"), "--no-progress"])
    assert exc.value.code == 2 and "--export-workers must be at least 0" in capsys.readouterr().err
    assert not (tmp_path / "l.csv").exists() and not (tmp_path / "c").exists()
