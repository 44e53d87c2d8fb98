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


@pytest.mark.slow
def test_run_folder_and_eval_cli(full_run):
    assert (full_run / "config.yaml").is_file() and (full_run / "supernet.pt").is_file()
    rows = (full_run / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("kind,phase") and any(r.startswith("eval,expand") for r in rows)
    out = _run(["-m", "supernet.eval", "--run", str(full_run), "--subnet", "max", "--json"]).stdout
    res = json.loads(out)
    assert 0.0 <= res["top1"] <= 100.0 and res["subnet"]["d"] == [2, 2]
    bad = _run(["-m", "supernet.eval", "--run", str(full_run), "--subnet", '{"ks": [3]}'], check=False)
    assert bad.returncode != 0 and len(bad.stderr.strip().splitlines()) == 1 and "subnet" in bad.stderr


@pytest.mark.slow
def test_resume_after_kill_reaches_same_weights(full_run, fake_fmnist, tmp_path):
    out = tmp_path / "killed"
    # 4 steps per phase: global step 11 is step 3 of the third phase (sampling 2 subnets per
    # step, with distillation), just after a mid-phase checkpoint (ckpt_every=3)
    proc = _train(fake_fmnist, out, "--crash-after-step", "11", check=False)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert not (out / "supernet.pt").exists()
    state = torch.load(out / "checkpoints" / "last.pt", weights_only=True)["state"]
    assert (state["phase"], state["pstep"], state["global_step"]) == (2, 3, 11)
    _train(fake_fmnist, out, "--resume")
    a = torch.load(full_run / "supernet.pt", weights_only=True)["model"]
    b = torch.load(out / "supernet.pt", weights_only=True)["model"]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # metrics rows past the checkpoint were dropped, not duplicated
    steps = [r.split(",")[3] for r in (out / "metrics.csv").read_text().splitlines()[1:] if r.startswith("train")]
    assert len(steps) == len(set(steps))


@pytest.mark.slow
def test_corrupt_checkpoint_is_one_clear_line(fake_fmnist, tmp_path):
    out = tmp_path / "corrupt"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "last.pt").write_bytes(b"\x00garbage")
    proc = _train(fake_fmnist, out, "--resume", check=False)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "last.pt" in lines[0] and "corrupt" in lines[0]
    assert (out / "checkpoints" / "last.pt").read_bytes() == b"\x00garbage"  # never overwritten


@pytest.mark.slow
def test_two_process_ddp_keeps_ranks_identical(fake_fmnist, tmp_path):
    import socket

    with socket.socket() as s:  # a free port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "ddp"
    _run(["-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}", "-m", "supernet.train",
          "--preset", "test", "--data", f"fmnist:{fake_fmnist}", "--out", str(out), "--no-progress",
          "--threads", "1", "--dump-rank-weights"], timeout=240)
    r0 = torch.load(out / "rank0.pt", weights_only=True)
    r1 = torch.load(out / "rank1.pt", weights_only=True)
    final = torch.load(out / "supernet.pt", weights_only=True)["model"]
    assert r0.keys() == r1.keys() and len(r0) > 0
    for k in r0:
        assert torch.equal(r0[k], r1[k]), k
        assert torch.equal(r0[k], final[k]), k  # rank 0 wrote what every rank holds
