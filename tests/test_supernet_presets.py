"""Phases as data: presets round-trip through YAML-able dicts and methods share a budget."""

from __future__ import annotations


import pytest
import yaml

from supernet.ofa import OFASupernet
from supernet.presets import PRESETS, Phase, TrainConfig, get_preset, with_method
from supernet.space import get_space
from supernet.trainer import phase_subnets, step_rng


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_round_trip_and_fit_their_space(name):
    cfg = get_preset(name)
    again = TrainConfig.from_dict(yaml.safe_load(yaml.safe_dump(cfg.to_dict())))
    assert again == cfg
    space = get_space(cfg.space)
    for phase in cfg.phases:
        phase.choices.resolve(space)


def test_ofa_imagenet_preset_is_the_published_schedule():
    ph = get_preset("ofa_imagenet").phases
    assert [p.name for p in ph] == ["full", "kernel", "depth1", "depth2", "expand1", "expand2"]
    assert [p.epochs for p in ph] == [180, 120, 25, 120, 25, 120]
    assert [p.subnets_per_step for p in ph] == [1, 1, 2, 2, 4, 4]
    assert ph[2].depths == (3, 4) and ph[3].depths is None and ph[4].expands == (4, 6)


def test_methods_share_the_budget():
    base = get_preset("tiny")
    budgets = {m: with_method(base, m).budget() for m in ("ps", "naive", "sandwich", "full")}
    assert len(set(budgets.values())) == 1, budgets
    assert with_method(base, "sandwich").phases[0].rule == "sandwich"


def test_bad_config_is_rejected():
    with pytest.raises(ValueError, match="unknown config keys"):
        TrainConfig.from_dict({"batchsize": 3})
    with pytest.raises(ValueError, match="rule"):
        Phase("x", 1, 0.1, rule="greedy")


@pytest.mark.parametrize("override, message", [
    ({"threads": 0}, "threads must be >= 1, got 0"),
    ({"threads": -2}, "threads must be >= 1"),
    ({"log_every": 0}, "log_every must be >= 1"),        # a modulo by zero in the step loop
    ({"ckpt_every": 0}, "ckpt_every must be >= 1"),
    ({"batch_size": "64"}, "batch_size must be an integer, got '64'"),  # YAML strings are not numbers
    ({"batch_size": True}, "batch_size must be an integer"),
    ({"valid_size": 0}, "valid_size must be >= 1"),
    ({"eval_images": -5}, "eval_images must be >= 1"),
    ({"train_limit": 0}, "train_limit must be >= 1"),
    ({"label_smoothing": 1.0}, "label_smoothing must be >= 0 and < 1"),
    ({"momentum": float("nan")}, "momentum must be a finite number"),
    ({"kd_weight": -1}, "kd_weight must be >= 0"),
    ({"workers": -1}, "workers must be >= 0"),
    ({"bn": "batch"}, "bn 'batch' is not one of shared, switchable"),
    ({"widths": [0.0, 1.0]}, "every width multiplier must be > 0"),
    ({"phases": [{"name": "a", "epochs": float("nan"), "lr": 0.1}]}, "phase a: epochs must be a finite number"),
    ({"phases": [{"name": "a", "epochs": 1, "lr": 0.1, "warmup_epochs": -1}]}, "phase a: warmup_epochs must be >= 0"),
    ({"phases": [{"name": "a", "epochs": 1, "lr": 0.1, "final_lr_ratio": -0.5}]}, "phase a: final_lr_ratio"),
    ({"phases": [{"name": "a", "epochs": 1, "lr": 0.1, "kernels": [3, 0]}]}, "phase a: kernels entry must be > 0"),
    ({"phases": [{"name": "a", "epochs": 1, "lr": 0.1, "depths": [2.5]}]}, "phase a: depths entry must be an integer"),
    ({"phases": [{"name": "a", "epochs": 1, "lr": 0.1, "widths": []}]}, "phase a: widths must be a non-empty list"),
    ({"phases": 3}, "phases must be a non-empty list of phases, got 3"),
    ({"phases": []}, "phases must be a non-empty list of phases, got []"),
    ({"phases": [{"name": "a", "epochs": 1}]}, "phase 0: missing lr"),
    ({"seed": -1}, "seed must be >= 0 and <= 4294967295, got -1"),
])
def test_every_field_of_a_config_is_checked_in_one_line(override, message):
    """A --config file or flag that would crash the run later (or train nonsense) fails at once."""
    with pytest.raises(ValueError) as exc:
        TrainConfig.from_dict({**get_preset("tiny").to_dict(), **override})
    assert message in str(exc.value) and "\n" not in str(exc.value)


def test_step_sampling_is_identical_across_ranks_and_rules():
    net = OFASupernet(get_space("tiny"))
    sandwich = Phase("s", 1, 0.1, subnets_per_step=3, rule="sandwich")
    a = phase_subnets(net, sandwich, step_rng(0, 1, 7))
    b = phase_subnets(net, sandwich, step_rng(0, 1, 7))
    assert a == b
    r, subs = a
    space = net.space
    assert subs[0] == space.max_subnet(r=r) and subs[1] == space.min_subnet(r=r)
    assert all(s.r == r for s in subs)


def test_with_widths_adds_a_last_width_phase_with_switchable_bn():
    from supernet.presets import trained_widths, with_widths

    cfg = with_widths(get_preset("tiny"), (1.5, 1.0))
    assert cfg.bn == "switchable" and cfg.widths == (1.0, 1.5)
    assert cfg.phases[-1].name == "width" and cfg.phases[-1].widths == (1.0, 1.5)
    assert [p.name for p in cfg.phases[:-1]] == [p.name for p in get_preset("tiny").phases]  # OFA's order kept
    assert trained_widths(cfg.to_dict(), 1.0) == [1.0, 1.5]
    assert trained_widths(get_preset("tiny").to_dict(), 1.0) == [1.0]
    assert TrainConfig.from_dict(yaml.safe_load(yaml.safe_dump(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match="at least two"):
        with_widths(get_preset("tiny"), (1.0,))


def test_allocator_modes_resolve_per_device(monkeypatch):
    """``--allocator``: auto keeps freed memory on the CPU where glibc is the allocator, and
    leaves a GPU's process alone; keep without glibc and an unknown mode are one error each."""
    import torch

    from supernet import device as dev

    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    assert dev.resolve_allocator("auto", cpu) == "keep" and dev.resolve_allocator(None, cpu) == "keep"
    assert dev.resolve_allocator("auto", cuda) == "system"
    assert [dev.resolve_allocator(m, cpu) for m in ("keep", "system")] == ["keep", "system"]
    with pytest.raises(ValueError, match="--allocator 'fast'"):
        dev.resolve_allocator("fast", cpu)
    monkeypatch.setattr(dev, "_glibc", lambda: None)
    assert dev.resolve_allocator("auto", cpu) == "system"
    with pytest.raises(ValueError, match="needs glibc"):
        dev.resolve_allocator("keep", cpu)


_FAULTS = """
import resource, sys, torch, torch.nn.functional as F
from supernet.device import apply_allocator
from supernet.ofa import OFASupernet
from supernet.space import FMNIST
apply_allocator(sys.argv[1])
torch.set_num_threads(1)
torch.manual_seed(0)
net = OFASupernet(FMNIST).train().to(memory_format=torch.channels_last)
net.set_active(FMNIST.max_subnet(r=48))
opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)
x, y = torch.randn(16, 1, 48, 48).contiguous(memory_format=torch.channels_last), torch.randint(0, 10, (16,))
def step():
    opt.zero_grad(set_to_none=True)
    F.cross_entropy(net(x), y).backward()
    opt.step()
for _ in range(3):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.slow
def test_allocator_keep_stops_the_page_faults_of_a_training_step():
    """What ``keep`` is for: when glibc maps the activation buffers of a training step (the
    largest Fashion-MNIST subnet, batch 16) it hands them back to the kernel when freed and
    faults their pages in again the next step, thousands of faults a step; kept, steady steps
    reuse the heap (the process's own minor-fault count over 5 steps after 3).

    glibc's default mmap threshold moves with the order a process frees its buffers, so
    whether a default process faults is the host's and the run's (measured: 28-40k faults in 5
    steps on the 2-core host, 155 on a CI host).  Both children therefore start from glibc's
    initial threshold held fixed (128 KiB, the tunable that also stops it moving), the
    worst case ``keep`` must repair whatever the environment set: its mallopt overrides it."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env["GLIBC_TUNABLES"] = "glibc.malloc.mmap_threshold=131072"
    counts = {mode: int(subprocess.run([sys.executable, "-c", _FAULTS, mode], cwd=root, check=True, text=True,
                                       capture_output=True, env=env).stdout) for mode in ("system", "keep")}
    assert counts["system"] > 5 * 1000, counts
    assert counts["keep"] < counts["system"] / 20, counts


def test_cudnn_modes_resolve_per_device():
    """``--cudnn``: auto keeps cuDNN off the depthwise convolutions on CUDA (measured: ~5 s a
    new shape there); the CPU has no cuDNN to switch; an unknown mode names itself."""
    import torch

    from supernet.device import resolve_cudnn

    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    assert resolve_cudnn("auto", cuda) == "no-depthwise" and resolve_cudnn(None, cuda) == "no-depthwise"
    assert [resolve_cudnn(m, cuda) for m in ("on", "off", "no-depthwise")] == ["on", "off", "no-depthwise"]
    assert {resolve_cudnn(m, cpu) for m in ("auto", "on", "off", "no-depthwise")} == {"on"}
    with pytest.raises(ValueError, match="--cudnn 'fast'"):
        resolve_cudnn("fast", cuda)
    assert get_preset("small_gpu").batch_size == 256 and get_preset("small_gpu").cudnn == "auto"


@pytest.mark.parametrize("text, message", [
    (b"a: [1,\n", ".yaml:2: not valid YAML: expected the node content, but found '<stream end>'"),
    (b"seed: 1\nseed: 2\n", ".yaml:2: not valid YAML: duplicate key 'seed' (first on line 1)"),
    (b"- 1\n- 2\n", ".yaml: must be a mapping of training settings (the keys of a preset), got list"),
    (b"\xff\xfe", ".yaml: not a text file"),
    (None, ".yaml: cannot read: No such file or directory"),
])
def test_a_config_file_that_cannot_be_used_is_one_line(tmp_path, text, message):
    from tests.conftest import run_cli

    cfg = tmp_path / "c.yaml"
    if text is not None:
        cfg.write_bytes(text)
    p = run_cli("supernet.train", "--config", cfg, "--out", tmp_path / "run")
    assert p.returncode != 0 and not (tmp_path / "run").exists()
    assert p.stderr.strip().splitlines() == [f"supernet.train: error: config {tmp_path / 'c'}{message}"]
