"""Training runs end to end on the ``test`` preset and a fake Fashion-MNIST: run folder,
eval CLI, resume after kill -9 (bit-identical in deterministic mode), distributed ranks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from supernet_fakes import write_fmnist

REPO = Path(__file__).resolve().parents[1]


def _run(args, timeout=180, check=True, env_extra=None):
    env = dict(os.environ, OMP_NUM_THREADS="1", **(env_extra or {}))
    proc = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def _train(data, out, *extra, check=True):
    return _run(["-m", "supernet.train", "--preset", "test", "--data", f"fmnist:{data}", "--out", str(out),
                 "--no-progress", "--threads", "1", "--deterministic", *extra], check=check)


@pytest.fixture(scope="module")
def fake_fmnist(tmp_path_factory):
    return write_fmnist(tmp_path_factory.mktemp("fm"), n=240)


@pytest.fixture(scope="module")
def full_run(fake_fmnist, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "full"
    _train(fake_fmnist, out)
    return out


def test_run_folder_and_eval_cli(full_run):
    assert (full_run / "config.yaml").is_file() and (full_run / "supernet.pt").is_file()
    rows = (full_run / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("kind,phase") and any(r.startswith("eval,expand") for r in rows)
    out = _run(["-m", "supernet.eval", "--run", str(full_run), "--subnet", "max", "--json"]).stdout
    res = json.loads(out)
    assert 0.0 <= res["top1"] <= 100.0 and res["subnet"]["d"] == [2, 2]
    bad = _run(["-m", "supernet.eval", "--run", str(full_run), "--subnet", '{"ks": [3]}'], check=False)
    assert bad.returncode != 0 and len(bad.stderr.strip().splitlines()) == 1 and "subnet" in bad.stderr
    bad = _run(["-m", "supernet.eval", "--subnet", "max", "--run", str(full_run), "--allocator", "spare"], check=False)
    assert bad.returncode == 2 and "--allocator: invalid choice: 'spare'" in bad.stderr.strip().splitlines()[-1]
    bad = _run(["-m", "search.collect", "--subnets", "2", "--run", str(full_run), "--allocator", "spare"], check=False)
    assert bad.returncode == 2 and "--allocator 'spare'" in bad.stderr.strip().splitlines()[-1], bad.stderr
    space = "space 'tiny-1ch-10cls'"  # the tiny space adapted to the data's channels and classes
    for flag, value, message in (("--resolutions", "32,33", f"--resolutions: resolution 33 is not in {space} (allowed: 32, 40, 48)"),
                                 ("--widths", "0.33", f"--widths: 0.33 is not a width multiplier of {space} (1, 1.5)")):
        bad = _run(["-m", "search.collect", "--subnets", "2", "--run", str(full_run), flag, value], check=False)
        assert bad.returncode == 2 and message in bad.stderr.strip().splitlines()[-1], bad.stderr
    assert not (full_run / "accuracy.csv").exists()


def test_training_learns(fake_fmnist, tmp_path):
    """The supernet learns the (learnable) fake data: the full network's training loss falls
    from chance and both the largest and the smallest subnet end far above chance (10%) on
    held-out images.  The other training tests compare runs with runs; this one would fail if
    no step changed the weights.  The elastic phase uses the sandwich rule, which trains the
    smallest subnet every step: with random sampling and three epochs it saw the smallest too
    rarely, and its 48-image score sat between 8% and 25% depending on the host's float
    kernels (an AVX2-only EPYC against AVX-512 ones, 2026-12-06); now 34-47% over seeds 0-3."""
    import csv as csv_

    cfg = tmp_path / "learn.yaml"
    cfg.write_text("phases:\n"
                   "- {name: full, epochs: 15, lr: 0.1, kernels: [5], expands: [3], depths: [2], rule: max}\n"
                   "- {name: expand, epochs: 6, lr: 0.02, subnets_per_step: 2, rule: sandwich, distill: true, "
                   "sort_channels: true}\n"
                   "train_limit: 160\n")
    out = tmp_path / "learn"
    _train(fake_fmnist, out, "--config", str(cfg))
    with (out / "metrics.csv").open() as f:
        full = [float(r["loss"]) for r in csv_.DictReader(f) if r["kind"] == "train" and r["phase"] == "full"]
    assert full[0] > 2.0 and full[-1] < 1.5, full
    res = json.loads((out / "result.json").read_text())
    assert res["max_top1"] >= 35.0 and res["min_top1"] >= 20.0, res


def test_more_recalibration_images_extend_the_runs_own(full_run, tmp_path):
    """``search.collect --recal-images N``: BN is recalibrated on the run's own images and
    then more of the same seeded order; the collection records how many; bench/eval_noise.py
    measures what that does to the noise (smoke run here)."""
    import shutil

    from supernet.evaluation import load_run

    _, ev, ckpt = load_run(full_run, device="cpu")
    _, ev2, _ = load_run(full_run, device="cpu", recal_images=3 * ckpt["config"]["recal_images"])
    n = ckpt["config"]["recal_images"]
    assert ev.recal_images == n and ev2.recal_images == 3 * n and len(ev2.data.recal) > len(ev.data.recal) == n
    assert torch.equal(ev2.data.recal.images[:n], ev.data.recal.images)
    run = tmp_path / "run"
    shutil.copytree(full_run, run)
    out = json.loads(_run(["-m", "search.collect", "--run", str(run), "--subnets", "3", "--recal-images",
                           str(3 * n), "--json"]).stdout)
    assert out["ok"] == 3
    assert json.loads((run / "accuracy.config.json").read_text())["recal_images"] == 3 * n
    bad = _run(["-m", "search.collect", "--run", str(run), "--subnets", "3", "--recal-images", "0"], check=False)
    assert bad.returncode != 0 and "--recal-images" in bad.stderr
    noise = json.loads(_run([str(REPO / "bench" / "eval_noise.py"), "--run", str(run), "--subnets", "4",
                             "--big", str(2 * n), "--threads", "1"]).stdout)
    assert noise["subnets"] == 4 and len(noise["rows"]) == 4 and noise["recal_noise_pp"] >= 0
    assert set(noise["within_res_sd_pp"]) == {"A", "B", "big"} and -1 <= noise["tau_A_vs_B"] <= 1


# LiteRT: a whole-network conversion of about 10 s (slow run); onnxruntime in the default run
@pytest.mark.parametrize("runtime", [pytest.param("tflite", marks=pytest.mark.slow), "onnxruntime"])
def test_eval_int8_quantizes_the_extracted_subnet_and_reports_the_drop(full_run, runtime):
    """Issue 16: --precision int8 runs the subnet quantized as the profiler quantizes for a
    device, on the same held-out images: the runtime's fp32 model must agree with PyTorch's
    top-1 (same images, same preprocessing), the int8 one stay near it."""
    out = _run(["-m", "supernet.eval", "--run", str(full_run), "--subnet", "max", "--precision", "int8",
                "--runtime", runtime, "--calib-images", "16", "--json"]).stdout
    res = json.loads(out)
    q = res["int8"]
    assert q["runtime"] == runtime and q["images"] == res["held_out_images"] > 0
    assert q["torch_top1"] == pytest.approx(res["top1"], abs=1e-3)
    assert abs(q["fp32_top1"] - q["torch_top1"]) <= 100.0 / q["images"] + 1e-9  # at most one image flips
    assert abs(q["int8_top1"] - q["fp32_top1"]) <= 25.0
    assert q["drop_pp"] == pytest.approx(q["torch_top1"] - q["int8_top1"])
    assert q["calibration"] == "16 real images"


def test_int8_top1_for_several_runtimes_recalibrates_once(full_run, monkeypatch):
    """search.int8_drop evaluates each subnet in both runtimes: the subnet is extracted and its
    BN recalibrated once for all of them, and each runtime's result is what int8_top1 gives
    for that runtime alone."""
    from supernet.evaluation import Evaluator, load_run

    import onnx

    from profiler import quantize
    from profiler.quantize import tflite_types

    _, ev, _ = load_run(full_run, device="cpu")
    ev.eval_images = 64
    calls = []
    real = Evaluator.subnet
    monkeypatch.setattr(Evaluator, "subnet", lambda self, cfg: calls.append(cfg) or real(self, cfg))
    scored = []  # what each top-1 was computed on: the int8 figure must come from an int8 model
    real_top1 = quantize.file_top1

    def file_top1(path, images, labels):
        if path.suffix == ".tflite":
            scored.append((path.stem, path.suffix, tflite_types(path)[1]))
        else:
            scored.append((path.stem, path.suffix, {n.op_type for n in onnx.load(str(path)).graph.node}))
        return real_top1(path, images, labels)

    monkeypatch.setattr(quantize, "file_top1", file_top1)
    cfg = ev.supernet.space.min_subnet(r=ev.supernet.space.resolutions[0])
    both = ev.int8_top1_runtimes(cfg, ["onnxruntime", "tflite"], calib_images=8)
    assert len(calls) == 1 and set(both) == {"onnxruntime", "tflite"}
    kinds = {(stem, suffix): what for stem, suffix, what in scored}
    assert "int8" in kinds["int8", ".tflite"] and "float32" not in kinds["int8", ".tflite"]
    assert "int8" not in kinds["fp32", ".tflite"]
    assert {"QuantizeLinear", "DequantizeLinear"} <= kinds["int8", ".onnx"]
    assert not {"QuantizeLinear", "DequantizeLinear"} & kinds["fp32", ".onnx"]
    assert both["onnxruntime"]["torch_top1"] == both["tflite"]["torch_top1"]
    assert all(q["seconds"] > 0 and q["runtime"] == rt for rt, q in both.items())
    alone = ev.int8_top1(cfg, "onnxruntime", calib_images=8)
    assert len(calls) == 2
    assert {k: v for k, v in alone.items() if k != "seconds"} == \
        {k: v for k, v in both["onnxruntime"].items() if k != "seconds"}


@pytest.mark.slow  # the whole int8 drop stage and a search on it: the slow pipeline test runs both too
def test_int8_drop_writes_the_drop_model_the_search_reads(full_run, tmp_path, capsys):
    """search.int8_drop: per runtime the measured fp32 -> int8 drop, in the file that
    search.evolve --precision fp32,int8 reads from the predictor's run folder.  onnxruntime
    here: its whole-network export takes 0.1 s where LiteRT's takes 9-11 s on the AVX2 host,
    and the pipeline test measures LiteRT's drop through the same command."""
    import csv as csv_

    from search.evolve import int8_drop
    from supernet.device import usable_cores
    from search.int8_drop import main as int8_drop_main

    out = tmp_path / "drop"
    proc = _run(["-m", "search.int8_drop", "--run", str(full_run), "--subnets", "2", "--runtime", "onnxruntime",
                 "--calib-images", "8", "--out", str(out)])
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    rt = summary["runtimes"]["onnxruntime"]
    assert summary["subnets"] == 2 and rt["fp32_runtime_vs_torch_max_abs_pp"] <= 100.0 / summary["held_out_images"]
    rows = (out / "int8_drop.csv").read_text().splitlines()
    assert len(rows) == 3 and rows[0].startswith("index,subnet,r,runtime")
    # two worker processes (the default on 2 cores) write the rows in subnet order, each the
    # row this process computes for that subnet (one thread, as --workers 1 runs them)
    assert summary["workers"] == min(2, usable_cores())
    from search.int8_drop import subnet_rows
    from supernet.evaluation import load_run
    from supernet.space import SubnetConfig

    with (out / "int8_drop.csv").open() as f:
        written = list(csv_.DictReader(f))
    assert [r["index"] for r in written] == ["0", "1"]
    _, evaluator, _ = load_run(full_run, device="cpu")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        (here,) = subnet_rows(evaluator, 1, SubnetConfig.from_json(written[1]["subnet"]), ["onnxruntime"], 8)
    finally:
        torch.set_num_threads(threads)
    assert {k: str(v) for k, v in here.items() if k != "seconds"} == \
        {k: v for k, v in written[1].items() if k != "seconds"}
    # every subnet at the run's default width unless --width says otherwise
    subnets = [SubnetConfig.from_json(r["subnet"]) for r in written]
    assert summary["width"] == subnets[0].w == subnets[1].w
    # bad input: one error line, nothing written (in this process: the command's own main)
    capsys.readouterr()
    for args, message in ((["--resolutions", "33"], "--resolutions: 33 is not a resolution of space"),
                          (["--width", "0.33"], "--width: 0.33 is not a width multiplier of space"),
                          (["--runtime", "tvm"], "--runtime: tflite and/or onnxruntime"),
                          (["--calib-images", "0"], "--calib-images must be at least 1"),
                          (["--workers", "0"], "--workers must be at least 1")):
        code = int8_drop_main(["--run", str(full_run), "--out", str(tmp_path / "bad"), *args])
        lines = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and message in lines[0], lines
    assert not (tmp_path / "bad").exists()
    value, source = int8_drop(None, str(out / "predictor.pt"), "onnxruntime")
    assert value == max(0.0, rt["mean_drop_pp"]) and source.startswith(str(out / "int8_drop.json"))
    # a negative measured drop (int8 scoring higher: noise) is not credited to int8; a given one is
    doc = json.loads((out / "int8_drop.json").read_text())
    doc["runtimes"]["onnxruntime"]["mean_drop_pp"] = -0.25
    (out / "int8_drop.json").write_text(json.dumps(doc))
    value, source = int8_drop(None, str(out / "predictor.pt"), "onnxruntime")
    assert value == 0.0 and "measured -0.25 and taken as 0" in source
    assert int8_drop("-0.25", None, "onnxruntime") == (-0.25, "--int8-drop")
    with pytest.raises(ValueError, match="no int8 drop measured for runtime tflite"):
        int8_drop(None, str(out / "predictor.pt"), "tflite")


def test_collect_int8_writes_its_own_table_the_predictor_reads(full_run, tmp_path):
    """search.collect --precision int8: the same seeded subnets quantized, in their own
    resumable table beside accuracy.csv, which search.predictor trains on like accuracy.csv.
    Through onnxruntime (0.1 s a subnet to export against LiteRT's 9-11 s); the LiteRT int8
    evaluation is the same code path with the other quantizer, tested in
    test_eval_int8_quantizes_the_extracted_subnet_and_reports_the_drop."""
    import csv as csv_
    import shutil

    run = tmp_path / "run"
    shutil.copytree(full_run, run)
    for f in run.glob("accuracy*"):
        shutil.rmtree(f) if f.is_dir() else f.unlink()
    fp = _run(["-m", "search.collect", "--run", str(run), "--subnets", "4", "--json"])
    q = _run(["-m", "search.collect", "--run", str(run), "--subnets", "4", "--precision", "int8", "--runtime", "onnxruntime", "--json"])
    assert json.loads(q.stdout)["csv"] == str(run / "accuracy-int8-onnxruntime.csv")
    fp_rows = {r["index"]: r for r in csv_.DictReader((run / "accuracy.csv").open())}
    q_rows = list(csv_.DictReader((run / "accuracy-int8-onnxruntime.csv").open()))
    assert len(q_rows) == 4 and all(r["status"] == "ok" for r in q_rows)
    for r in q_rows:  # the same subnets, the fp32 top-1 of the fp32 table beside the int8 one
        assert r["subnet"] == fp_rows[r["index"]]["subnet"]
        assert float(r["fp32_top1"]) == pytest.approx(float(fp_rows[r["index"]]["top1"]), abs=1e-3)
    assert json.loads((run / "accuracy-int8-onnxruntime.config.json").read_text())["precision"] == "int8"
    assert "fp32_top1" not in (run / "accuracy.csv").read_text().splitlines()[0]
    again = _run(["-m", "search.collect", "--run", str(run), "--subnets", "4", "--precision", "int8", "--runtime", "onnxruntime", "--json"])
    assert json.loads(again.stdout)["evaluated"] == 0  # resumable like the fp32 table
    _run(["-m", "search.predictor", "--data", str(run / "accuracy-int8-onnxruntime.csv"), "--out",
          str(run / "predictor-int8.pt"), "--epochs", "5"])
    assert (run / "predictor-int8.pt").is_file()
    assert fp.returncode == 0


def test_export_and_verify_in_int8(full_run, tmp_path, monkeypatch, capsys):
    """search.evolve --precision int8 --export --verify: the chosen subnet written as an int8
    .tflite (all-int8 graph) and QDQ .onnx quantized on real images, its int8 top-1 measured,
    and its latency measured on the LUT's device in int8."""
    from profiler.quantize import tflite_types
    from search.evolve import main
    from test_search_evolve import _two_precision_lut, random_predictor

    monkeypatch.chdir(REPO)
    monkeypatch.setenv("HWNAS_CACHE", str(tmp_path / "cache"))
    lut = _two_precision_lut(tmp_path / "two.csv", 0.5)
    pred = random_predictor().save(tmp_path / "predictor.pt")
    code = main([str(a) for a in ["--lut", lut, "--predictor", pred, "--run", full_run, "--precision", "int8",
                                  "--latency-ms", 1.0, "--resolutions", 32, "--widths", 1.0, "--generations", 2,
                                  "--population", 8, "--samples", 0, "--int8-drop", 0, "--out", tmp_path / "o",
                                  "--export", "--verify", "--json"]])
    assert code == 0
    (rec,) = json.loads(capsys.readouterr().out)["deploy"]
    assert rec["precision"] == "int8" and rec["int8_calibration"].endswith("real images")
    ops, dtypes = tflite_types(Path(rec["int8_tflite"]))
    assert not ops & {"QUANTIZE", "DEQUANTIZE"} and dtypes <= {"int8", "int32"}
    assert Path(rec["int8_onnx"]).is_file() and rec["int8_runtime"] == "onnxruntime"
    assert 0.0 <= rec["int8_held_out_top1"] <= 100.0
    assert rec["runtime"] == "onnxruntime" and rec["precision"] == "int8" and rec["measured_latency_ms"] > 0


def test_resume_after_sigterm_and_kill_reaches_same_weights(full_run, fake_fmnist, tmp_path):
    """SIGTERM (a scheduler's preemption; Ctrl-C's SIGINT takes the same path) stops the run
    at the end of the step it arrives in, with a checkpoint there and one line saying how to
    go on; kill -9 loses what came after the last checkpoint; each resume goes on exactly."""
    out = tmp_path / "killed"
    first = _train(fake_fmnist, out, "--crash-after-step", "7", "--crash-signal", "TERM", check=False)
    assert first.returncode == 128 + signal.SIGTERM, first.stderr[-2000:]
    assert "Traceback" not in first.stderr and not (out / "supernet.pt").exists()
    state = torch.load(out / "checkpoints" / "last.pt", weights_only=True)["state"]
    assert (state["phase"], state["pstep"], state["global_step"]) == (1, 3, 7)  # mid-phase, between checkpoints
    last = first.stderr.strip().splitlines()[-1]
    assert last.startswith("supernet.train: SIGTERM: stopped at step 7 of ") and last.endswith(
        f"continue with: python -m supernet.train --preset test --data fmnist:{fake_fmnist} --out {out} "
        "--no-progress --threads 1 --deterministic --resume")
    # 4 steps per phase: global step 11 is step 3 of the third phase (sampling 2 subnets per
    # step, with distillation), just after a mid-phase checkpoint (ckpt_every=3)
    proc = _train(fake_fmnist, out, "--resume", "--crash-after-step", "11", check=False)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert not (out / "supernet.pt").exists()
    state = torch.load(out / "checkpoints" / "last.pt", weights_only=True)["state"]
    assert (state["phase"], state["pstep"], state["global_step"]) == (2, 3, 11)
    with (out / "metrics.csv").open("a") as f:  # a row torn by the kill: dropped, no traceback
        f.write("train,depth,99,99,0.5,0.01,1.")
    # a resume with other flags is refused and leaves the run folder as it was
    config = (out / "config.yaml").read_bytes()
    bad = _train(fake_fmnist, out, "--resume", "--seed", "7", check=False)
    assert bad.returncode != 0 and "different config" in bad.stderr
    assert (out / "config.yaml").read_bytes() == config
    resumed = _train(fake_fmnist, out, "--resume")
    assert "resuming" in resumed.stderr and "at step 11 of" in resumed.stderr and "phase depth" in resumed.stderr
    a = torch.load(full_run / "supernet.pt", weights_only=True)["model"]
    b = torch.load(out / "supernet.pt", weights_only=True)["model"]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # metrics rows past the checkpoint were dropped, not duplicated
    steps = [r.split(",")[3] for r in (out / "metrics.csv").read_text().splitlines()[1:] if r.startswith("train")]
    assert len(steps) == len(set(steps)) and "99" not in steps


def test_a_run_folder_in_use_is_refused_before_anything_in_it_changes(full_run, fake_fmnist, tmp_path):
    """While one supernet.train holds a run folder, a second (--force would empty it, --resume
    would write the same checkpoints) is one line naming the holder, before it changes anything."""
    import shutil

    from supernet.trainer import run_folder_lock

    out = tmp_path / "busy"
    shutil.copytree(full_run, out)
    def files():
        return {p.name: p.stat().st_mtime_ns for p in out.iterdir()}

    before = files()
    with run_folder_lock(out):  # this process plays the run that holds it
        proc = _train(fake_fmnist, out, "--force", check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(
        f"supernet.train: error: run folder {out} is in use by another process (pid {os.getpid()}: ")
    assert files() == before


def test_an_unwritable_run_folder_is_one_line_before_any_work(fake_fmnist, tmp_path):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    proc = _train(fake_fmnist, blocker / "run", check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "afile" in lines[0], proc.stderr
    assert blocker.read_text() == "x"


def test_corrupt_checkpoint_is_one_clear_line(fake_fmnist, tmp_path):
    out = tmp_path / "corrupt"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "last.pt").write_bytes(b"\x00garbage")
    proc = _train(fake_fmnist, out, "--resume", check=False)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "last.pt" in lines[0] and "corrupt" in lines[0]
    assert (out / "checkpoints" / "last.pt").read_bytes() == b"\x00garbage"  # never overwritten
    assert not (out / "config.yaml").exists()  # nothing written for a resume that cannot start


def test_two_process_ddp_keeps_ranks_identical(fake_fmnist, tmp_path):
    import socket

    with socket.socket() as s:  # a free port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    import csv as csv_

    import yaml

    from supernet.device import usable_cores

    out = tmp_path / "ddp"
    cores = tmp_path / "cores.yaml"  # a preset's thread count for one process: more than each of 2 ranks gets
    cores.write_text(f"threads: {2 * usable_cores()}\n")
    proc = _run(["-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}", "-m", "supernet.train",
                 "--preset", "test", "--data", f"fmnist:{fake_fmnist}", "--out", str(out), "--no-progress",
                 "--config", str(cores), "--dump-rank-weights"], timeout=240)
    # each rank takes its share of the cores, not the preset's count (two ranks of 2 threads on 2
    # cores spun OpenMP threads against each other: 5x slower than one thread each), records it and says so
    share = max(1, usable_cores() // 2)
    assert yaml.safe_load((out / "config.yaml").read_text())["threads"] == share
    assert f"cpu ({share} threads) in each of 2 processes" in proc.stderr, proc.stderr[-2000:]
    r0 = torch.load(out / "rank0.pt", weights_only=True)
    r1 = torch.load(out / "rank1.pt", weights_only=True)
    final = torch.load(out / "supernet.pt", weights_only=True)["model"]
    assert r0.keys() == r1.keys() and len(r0) > 0
    for k in r0:
        assert torch.equal(r0[k], r1[k]), k
        assert torch.equal(r0[k], final[k]), k  # rank 0 wrote what every rank holds

    # the README's sharded collection, as typed: the "--" keeps torchrun from taking --run for
    # an abbreviation of its own --run-path
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = _run(["-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}", "-m", "search.collect",
                 "--", "--run", str(out), "--subnets", "4", "--no-progress"], timeout=240)
    assert "rank 0/2: evaluated 2 subnets" in proc.stdout and "rank 1/2: evaluated 2 subnets" in proc.stdout, proc.stdout
    with (out / "accuracy.csv").open() as f:
        assert sorted(int(r["index"]) for r in csv_.DictReader(f)) == [0, 1, 2, 3]


def test_process_threads_is_each_process_share_of_the_cores(monkeypatch):
    from supernet.device import process_threads, usable_cores

    n = usable_cores()
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert process_threads(None) is None and process_threads(1) == 1 and process_threads(n + 3) == n
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert process_threads(n) == max(1, n // 2)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(4 * n))  # more processes than cores: one thread each
    assert process_threads(8) == 1


class _Payload:
    """Unpickling this runs a shell command (what a malicious checkpoint would carry)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_that_carries_code_is_refused_without_running_it(full_run, tmp_path):
    marker = tmp_path / "code-ran"
    run = tmp_path / "evil"
    run.mkdir()
    ckpt = torch.load(full_run / "supernet.pt", weights_only=True)
    ckpt["extra"] = _Payload(marker)
    torch.save(ckpt, run / "supernet.pt")
    for args in (["-m", "supernet.eval", "--run", str(run), "--subnet", "max"],
                 ["-m", "search.collect", "--run", str(run), "--subnets", "2"]):
        proc = _run(args, check=False)
        assert proc.returncode != 0
        assert not marker.exists(), "unpickling ran the payload"
        lines = proc.stderr.strip().splitlines()
        assert "supernet.pt" in lines[-1] and "refusing" in lines[-1], proc.stderr
    # a checkpoint without its config is one line too, not a KeyError
    torch.save({"model": ckpt["model"], "space": ckpt["space"]}, run / "supernet.pt")
    proc = _run(["-m", "supernet.eval", "--run", str(run), "--subnet", "max"], check=False)
    assert proc.returncode != 0 and len(proc.stderr.strip().splitlines()) == 1 and "config" in proc.stderr


def test_an_existing_run_folder_is_not_overwritten_unasked(full_run, fake_fmnist):
    before = {p.name: p.read_bytes() for p in full_run.iterdir() if p.is_file()}
    proc = _train(fake_fmnist, full_run, check=False)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "--resume" in lines[0] and "--force" in lines[0]
    assert {p.name: p.read_bytes() for p in full_run.iterdir() if p.is_file()} == before


def test_device_auto_trains_on_the_cpu_here_and_says_so(fake_fmnist, tmp_path):
    import yaml

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: --device auto picks it (see the CUDA test)")
    out = tmp_path / "auto"
    proc = _run(["-m", "supernet.train", "--preset", "test", "--data", f"fmnist:{fake_fmnist}", "--out", str(out),
                 "--threads", "1", "--device", "auto", "--resume"])  # --resume with nothing to resume: said, then a fresh run
    assert "cpu" in proc.stderr.splitlines()[0] or "cpu" in proc.stderr
    assert "no checkpoint at" in proc.stderr and "starting from the first step" in proc.stderr
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["device"] == "cpu" and cfg["amp"] == "off" and cfg["channels_last"] is True and cfg["cudnn"] == "on"
    assert cfg["allocator"] == "keep" and "allocator keeps freed memory" in proc.stderr  # glibc here
    res = json.loads((out / "result.json").read_text())
    assert res["device"] == "cpu" and res["held_out_images"] > 0 and 0 <= res["max_top1"] <= 100
    bad = _run(["-m", "supernet.train", "--preset", "test", "--data", f"fmnist:{fake_fmnist}",
                "--out", str(tmp_path / "gpu"), "--device", "cuda"], check=False)
    assert bad.returncode != 0 and len(bad.stderr.strip().splitlines()) == 1 and "CUDA" in bad.stderr
    assert not (tmp_path / "gpu").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on this machine)")
def test_cuda_training_with_bf16(fake_fmnist, tmp_path):
    import yaml

    out = tmp_path / "cuda"
    _run(["-m", "supernet.train", "--preset", "test", "--data", f"fmnist:{fake_fmnist}", "--out", str(out),
          "--device", "cuda"])
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["device"].startswith("cuda") and cfg["amp"] == "bf16"
    res = json.loads(_run(["-m", "supernet.eval", "--run", str(out), "--subnet", "max", "--json",
                           "--device", "cuda"]).stdout)
    assert res["device"].startswith("cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on this machine)")
def test_cuda_deterministic_resume_reaches_the_same_weights(fake_fmnist, tmp_path):
    """On a GPU too (fp16, its loss scale, dropout drawn from the CUDA generator), a run
    killed and resumed with --deterministic ends with the weights of an unbroken run."""
    flags = ["--device", "cuda", "--amp", "fp16"]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    _train(fake_fmnist, whole, *flags)
    proc = _train(fake_fmnist, killed, *flags, "--crash-after-step", "11", check=False)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    _train(fake_fmnist, killed, *flags, "--resume")
    a = torch.load(whole / "supernet.pt", weights_only=True)["model"]
    b = torch.load(killed / "supernet.pt", weights_only=True)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on this machine)")
def test_cuda_fp16_collect_and_cpu_agreement(fake_fmnist, full_run, tmp_path):
    """fp16 training (with its gradient scaler) runs on CUDA; a CPU-trained run evaluates to
    the same top-1 on CUDA in fp32 as on the CPU; search.collect runs on CUDA."""
    import yaml

    out = tmp_path / "fp16"
    _run(["-m", "supernet.train", "--preset", "test", "--data", f"fmnist:{fake_fmnist}", "--out", str(out),
          "--device", "cuda", "--amp", "fp16", "--no-progress"])
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["device"].startswith("cuda") and cfg["amp"] == "fp16"
    res = json.loads((out / "result.json").read_text())
    assert 0 <= res["max_top1"] <= 100 and res["max_top1"] == res["max_top1"]  # not NaN
    tops = {}
    for dev in ("cpu", "cuda"):
        r = json.loads(_run(["-m", "supernet.eval", "--run", str(full_run), "--subnet", "max", "--json",
                             "--device", dev, "--amp", "off"]).stdout)
        assert r["device"].startswith(dev)
        tops[dev], n = r["top1"], r["held_out_images"]
    # same weights, same held-out images, same BN recalibration: at most one image apart
    assert abs(tops["cpu"] - tops["cuda"]) <= 100 / n + 1e-6, tops
    col = json.loads(_run(["-m", "search.collect", "--run", str(out), "--subnets", "3", "--device", "cuda",
                           "--json"]).stdout)
    assert col["ok"] == 3 and col["rows"] == 3, col


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on this machine)")
def test_cuda_depthwise_without_cudnn_matches_cudnn():
    """``--cudnn no-depthwise``: the supernet's depthwise op on CUDA through PyTorch's own
    kernels gives cuDNN's outputs and gradients (fp32), and runs under bf16 autocast with
    float32 weight gradients."""
    from supernet import dynamic
    from supernet.device import apply_cudnn

    torch.manual_seed(0)
    try:
        for k, s, hw in ((3, 1, 12), (5, 2, 24), (7, 1, 6)):
            x = torch.randn(4, 16, hw, hw, device="cuda", requires_grad=True)
            w = torch.randn(16, 1, k, k, device="cuda", requires_grad=True)
            grads = {}
            for mode in ("on", "no-depthwise"):
                apply_cudnn(mode)
                y = dynamic.depthwise_conv2d(x, w, s, k // 2)
                assert (y.grad_fn.name() == "_NativeDepthwiseConv2dBackward") == (mode == "no-depthwise")
                gx, gw = torch.autograd.grad((y * y).sum(), (x, w))
                grads[mode] = (y.detach(), gx, gw)
            for a, b in zip(grads["on"], grads["no-depthwise"]):
                assert torch.allclose(a, b, rtol=1e-4, atol=1e-4), (k, s, (a - b).abs().max())
            with torch.autocast("cuda", dtype=torch.bfloat16):
                y = dynamic.depthwise_conv2d(x.to(memory_format=torch.channels_last), w, s, k // 2)
            assert y.dtype == torch.bfloat16
            gx, gw = torch.autograd.grad(y.float().sum(), (x, w))
            assert gx.dtype == gw.dtype == torch.float32 and torch.isfinite(gw).all()
    finally:
        apply_cudnn("on")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on this machine)")
def test_cuda_training_cudnn_modes(fake_fmnist, tmp_path):
    import yaml

    for mode in ("no-depthwise", "off"):
        out = tmp_path / mode
        _run(["-m", "supernet.train", "--preset", "test", "--data", f"fmnist:{fake_fmnist}", "--out", str(out),
              "--device", "cuda", "--cudnn", mode, "--no-progress"])
        cfg = yaml.safe_load((out / "config.yaml").read_text())
        assert cfg["cudnn"] == mode
        res = json.loads((out / "result.json").read_text())
        assert res["max_top1"] == res["max_top1"]  # not NaN


def test_elastic_widths_train_and_collect_defaults_to_them(fake_fmnist, tmp_path):
    import yaml

    out = tmp_path / "widths"
    _train(fake_fmnist, out, "--widths", "1.0,1.5")
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["bn"] == "switchable" and cfg["phases"][-1]["name"] == "width"
    assert "eval,width" in (out / "metrics.csv").read_text()
    _run(["-m", "search.collect", "--run", str(out), "--subnets", "6", "--eval-images", "16"])
    conf = json.loads((out / "accuracy.config.json").read_text())
    assert conf["widths"] == [1.0, 1.5]


def test_collect_samples_only_the_width_the_run_trained(full_run):
    """Also: its progress bar (on stderr) and --no-progress, which the main job passes on."""
    shown = _run(["-m", "search.collect", "--run", str(full_run), "--subnets", "3", "--eval-images", "16"])
    assert json.loads((full_run / "accuracy.config.json").read_text())["widths"] == [1.0]
    assert "collect (rank 0)" in shown.stderr
    quiet = _run(["-m", "search.collect", "--run", str(full_run), "--subnets", "4", "--eval-images", "16",
                  "--no-progress"])
    assert "collect (rank 0)" not in quiet.stderr and "subnet/s" not in quiet.stderr, quiet.stderr


def test_collect_workers_write_the_rows_of_one_process(full_run, tmp_path):
    """``search.collect --workers 2``: two spawned one-thread processes evaluate the subnets
    and this process writes them: the same subnets, accuracies and files as one process of
    one thread; a bad count is one line."""
    import shutil

    from search.collect import collect_workers, read_rows

    runs = {}
    for workers in ("1", "2"):
        run = tmp_path / f"w{workers}"
        shutil.copytree(full_run, run, ignore=shutil.ignore_patterns("accuracy*"))
        got = json.loads(_run(["-m", "search.collect", "--run", str(run), "--subnets", "9", "--eval-images", "32",
                               "--workers", workers, "--json"]).stdout)
        assert got["evaluated"] == 9 and got["ok"] == 9
        assert json.loads((run / "accuracy.config.json").read_text())["workers"] == int(workers)
        assert [p.name for p in (run / "accuracy.parts").glob("rank*.csv")] == ["rank0.csv"]
        runs[workers] = read_rows([run / "accuracy.csv"])
    assert sorted(runs["2"]) == list(range(9))
    for i, row in runs["1"].items():
        assert (runs["2"][i]["subnet"], runs["2"][i]["top1"]) == (row["subnet"], row["top1"])
        assert float(runs["2"][i]["seconds"]) > 0
    bad = _run(["-m", "search.collect", "--run", str(full_run), "--subnets", "2", "--workers", "0"], check=False)
    assert bad.returncode == 2 and "--workers must be auto or a whole number of at least 1, got '0'" in \
        bad.stderr.strip().splitlines()[-1], bad.stderr
    assert collect_workers("auto", "cuda", 1) == 1 and collect_workers("auto", "cpu", 2) == 1
    with pytest.raises(ValueError, match="workers are for the CPU"):
        collect_workers("2", "cuda", 1)
    with pytest.raises(ValueError, match="each rank is a worker"):
        collect_workers("2", "cpu", 2)


@pytest.mark.slow
def test_supernet_vs_scratch_bench_trains_each_subnet_alone_for_the_given_time(full_run, tmp_path):
    """bench/supernet_vs_scratch.py: the subnet from the supernet against the same
    architecture trained alone for a wall-time budget, written as CSV and JSON."""
    proc = _run(["bench/supernet_vs_scratch.py", "--run", str(full_run), "--subnets", "max,min", "--seconds", "2",
                 "--threads", "1", "--out", str(tmp_path)])
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["supernet_train_seconds"] == 2 and summary["max_gap_pp"] is not None
    full = json.loads((tmp_path / "supernet_vs_scratch.json").read_text())
    rows = full["rows"]
    assert [r["subnet"] for r in rows] == ["max", "min"]
    for r in rows:
        assert 0 <= r["supernet_top1"] <= 100 and 0 <= r["alone_top1"] <= 100
        assert r["gap_pp"] == pytest.approx(r["alone_top1"] - r["supernet_top1"], abs=1e-2)
        assert 1 <= r["alone_seconds"] <= 30 and r["alone_epochs"] > 0  # trained for the budget, not a step count
    table = (tmp_path / "supernet_vs_scratch.csv").read_text()
    assert table.startswith("subnet,r,params_m") and full["complete"] is True
    # a table is not replaced unasked; --resume keeps every row of the same subnet, supernet,
    # budget and seed (nothing trained again), and trains a row whose budget differs
    again = _run(["bench/supernet_vs_scratch.py", "--run", str(full_run), "--subnets", "max,min", "--seconds", "2",
                  "--out", str(tmp_path)], check=False)
    assert again.returncode != 0 and "--resume" in again.stderr and (tmp_path / "supernet_vs_scratch.csv").read_text() == table
    kept = _run(["bench/supernet_vs_scratch.py", "--run", str(full_run), "--subnets", "max,min", "--seconds", "2",
                 "--threads", "1", "--out", str(tmp_path), "--resume"])
    assert kept.stdout.count("[kept from") == 2
    assert json.loads((tmp_path / "supernet_vs_scratch.json").read_text())["rows"] == rows
    more = _run(["bench/supernet_vs_scratch.py", "--run", str(full_run), "--subnets", "max,min", "--seconds", "1",
                 "--threads", "1", "--out", str(tmp_path), "--resume"])
    assert more.stdout.count("[kept from") == 0
