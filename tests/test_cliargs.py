"""--seed, --seeds and --threads: one range for every command, one clear line outside it."""

import argparse

import pytest
import torch

from supernet.cliargs import SEED_MAX, seed_arg, seeds_arg, threads_arg
from supernet.data import TensorSplit, train_batches
from supernet.presets import TrainConfig
from tests.conftest import run_cli


def test_seed_range_and_messages():
    assert seed_arg("0") == 0 and seed_arg(str(SEED_MAX)) == SEED_MAX
    for bad, words in (("-1", "between 0 and"), (str(SEED_MAX + 1), "between 0 and"), ("1.5", "an integer"),
                       ("x", "an integer")):
        with pytest.raises(argparse.ArgumentTypeError, match=words):
            seed_arg(bad)
    assert seeds_arg("0, 1,2") == [0, 1, 2]
    for bad in ("", ",", "0,0", "0,-1"):
        with pytest.raises(argparse.ArgumentTypeError):
            seeds_arg(bad)


def test_train_config_refuses_a_seed_out_of_range():
    with pytest.raises(ValueError, match=f"seed must be >= 0 and <= {SEED_MAX}, got -1"):
        TrainConfig(seed=-1)
    TrainConfig(seed=SEED_MAX)


def test_the_largest_seed_draws_batches():
    """Per-step augmentation seeds are derived from the run's seed; the largest one must not
    overflow the generator's range."""
    split = TensorSplit(torch.zeros(8, 1, 4, 4, dtype=torch.uint8), torch.arange(8), [0.5], [0.5], pad=1, flip=True)
    steps = [s for s, _, _ in train_batches(split, 4, SEED_MAX, epoch=3)]
    assert steps == [0, 1]


@pytest.mark.parametrize("module, args", [
    ("search.evolve", ["--lut", "luts/note10.csv", "--pareto", "--seed", "-1"]),
    ("supernet.train", ["--seed", "-1"]),
    ("search.pipeline", ["--seed", "4294967296"]),
    ("search.collect", ["--run", "x", "--subnets", "1", "--seed", "x"]),
    ("profiler.validate", ["--lut", "x", "--seed", "-2"]),
])
def test_every_command_refuses_a_bad_seed_before_any_work(module, args):
    p = run_cli(module, *args)
    assert p.returncode == 2
    assert "argument --seed: must be" in p.stderr.splitlines()[-1]


def test_threads_are_a_whole_number_from_one():
    assert threads_arg("1") == 1 and threads_arg("16") == 16
    for bad, words in (("0", "at least 1, got 0"), ("-1", "at least 1, got -1"), ("1.5", "whole number"),
                       ("all", "whole number")):
        with pytest.raises(argparse.ArgumentTypeError, match=words):
            threads_arg(bad)


def test_proxyless_refuses_a_bad_thread_count_before_any_work(tmp_path):
    """torch.set_num_threads(-1) was a RuntimeError traceback after the LUT and data were read."""
    p = run_cli("search.proxyless", "--lut", "luts/pixel1.csv", "--latency-ms", "100", "--threads", "-1",
                "--out", tmp_path / "p")
    assert p.returncode == 2 and not (tmp_path / "p").exists()
    assert p.stderr.splitlines()[-1].endswith("argument --threads: must be at least 1, got -1")


def test_run_main_turns_ctrl_c_into_one_line(capsys):
    from supernet.cliargs import run_main

    def interrupted():
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as exc:
        run_main(interrupted, "prog", "what is kept")
    assert exc.value.code == 130
    assert capsys.readouterr().err == "prog: interrupted; what is kept\n"
    with pytest.raises(SystemExit) as exc:
        run_main(lambda: 3, "prog", "x")
    assert exc.value.code == 3


def test_the_command_that_continues_a_stopped_training(monkeypatch, tmp_path):
    from supernet.train import resume_command

    monkeypatch.delenv("HWNAS_CONTINUE_WITH", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert resume_command(["--preset", "main", "--force", "--crash-after-step", "3", "--data", "fmnist:/a b"],
                          tmp_path) == f"python -m supernet.train --preset main --data 'fmnist:/a b' --out {tmp_path} --resume"
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert resume_command(["--out", "r"], tmp_path) == "torchrun --nproc_per_node=4 -m supernet.train -- --out r --resume"
    monkeypatch.setenv("HWNAS_CONTINUE_WITH", "the same search.pipeline command")
    assert resume_command([], tmp_path) == "the same search.pipeline command"


def test_stop_requests_records_the_first_signal_and_aborts_on_a_later_second():
    import os
    import signal
    import time

    from supernet.trainer import stop_requests

    before = signal.getsignal(signal.SIGINT)
    with stop_requests("prog") as asked:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)
        assert asked["signal"] == "SIGTERM"
        os.kill(os.getpid(), signal.SIGINT)  # at once: the same request forwarded (torchrun), ignored
        time.sleep(0.05)
        time.sleep(0.5)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.5)
    assert signal.getsignal(signal.SIGINT) is before


@pytest.mark.parametrize("module, args, message", [
    ("supernet.train", ["--seed", "-1"], "--seed: must be between 0 and"),
    ("supernet.train", ["--config", "CONFIG"], "not valid YAML: duplicate key 'seed'"),
    ("supernet.train", ["--preset", "test", "--out", "/proc/hwnas-run"], "cannot write the run folder"),
    ("supernet.eval", ["--run", "RUN", "--subnet", "max", "--allocator", "spare"], "invalid choice: 'spare'"),
    ("supernet.eval", ["--run", "RUN", "--subnet", "max", "--eval-images", "0"], "--eval-images must be at least 1"),
    ("search.collect", ["--run", "RUN", "--subnets", "2", "--allocator", "spare"], "--allocator 'spare'"),
    ("search.collect", ["--run", "RUN", "--subnets", "0"], "--subnets must be at least 1"),
    ("search.int8_drop", ["--run", "RUN", "--eval-images", "-1"], "--eval-images must be at least 1"),
])
def test_a_mistyped_command_answers_before_importing_torch(tmp_path, module, args, message):
    """Flags, config files and run folders are checked before torch is imported (2-3 s on a
    slow host): a mistyped command is one error line at once."""
    import subprocess
    import sys

    (tmp_path / "c.yaml").write_text("seed: 1\nseed: 2\n")
    args = [str(tmp_path / "c.yaml") if a == "CONFIG" else str(tmp_path) if a == "RUN" else a for a in args]
    p = subprocess.run([sys.executable, "-X", "importtime", "-m", module, *args], capture_output=True, text=True,
                       timeout=120)
    lines = p.stderr.splitlines()
    errors = [ln for ln in lines if not ln.startswith("import time:")]
    assert p.returncode != 0 and message in errors[-1], p.stderr[-2000:]
    imported = {ln.rsplit("|", 1)[-1].strip() for ln in lines if ln.startswith("import time:")}
    assert imported and "torch" not in imported, sorted(m for m in imported if m.startswith("torch"))[:10]


def test_worker_defaults_follow_the_cores_this_process_may_use(monkeypatch):
    # under taskset -c 0 (or a one-CPU cpuset) os.cpu_count() still says every core of the
    # machine: two export workers would share one core
    import os

    from profiler.export import default_export_workers
    from supernet.cliargs import usable_cores

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    assert usable_cores() == 1
    assert default_export_workers() == 1
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    assert usable_cores() == 4
    assert default_export_workers() == 2
