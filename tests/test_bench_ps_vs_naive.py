"""bench/ps_vs_naive.py end to end on the `test` preset: the paired comparison with
progressive shrinking, the training curves against the budget, and a second invocation that
evaluates the finished runs instead of training them again."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(out: Path, only: str, test_images: int = 64) -> dict:
    res = subprocess.run([sys.executable, "bench/ps_vs_naive.py", "--preset", "test", "--subnets", "3",
                          "--eval-images", "32", "--only", only, "--out", str(out), "--test-images", str(test_images)],
                         cwd=ROOT, check=True, text=True, capture_output=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_ps_vs_naive_pairs_subnets_with_ps_and_writes_curves(tmp_path):
    out = _run(tmp_path, "ps,naive")
    ps, naive = out["results"]["ps"][0], out["results"]["naive"][0]
    diffs = [a - b for a, b in zip(naive["top1"], ps["top1"])]
    p = out["paired_vs_ps"]["naive"]
    assert p["pairs"] == 3 == p["wins"] + p["ties"] + p["losses"]
    assert p["mean_diff"] == pytest.approx(sum(diffs) / 3, abs=0.01)
    assert p["wins"] == sum(d > 0 for d in diffs) and p["losses"] == sum(d < 0 for d in diffs)
    assert "ps" not in out["paired_vs_ps"]
    # the two-way bootstrap over subnets and images, from the hits behind these accuracies
    assert p["se_boot"] >= 0 and out["paired_vs_ps_test"]["naive"]["se_boot"] >= 0
    assert "over subnets and images" in out["table"][0] and "hits" not in naive
    assert any("against PS" in line for line in out["table"])

    rows = list(csv.DictReader((tmp_path / "curves.csv").open()))
    for method, budget in (("ps", ps["budget_subnet_epochs"]), ("naive", naive["budget_subnet_epochs"])):
        xs = [float(r["subnet_epochs"]) for r in rows if r["method"] == method and r["kind"] == "train"]
        assert xs and xs == sorted(xs) and xs[-1] == pytest.approx(budget)
    # PS's phases are laid end to end on the budget axis: the expand phase starts where the others ended
    ps_phases = [r["phase"] for r in rows if r["method"] == "ps" and r["kind"] == "train"]
    assert list(dict.fromkeys(ps_phases)) == ["full", "kernel", "depth", "expand"]
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # the dataset's test images, the same for every seed: the same subnets, paired with PS there too
    for row in (ps, naive):
        t = row["test"]
        assert t["images"] == 64 and len(t["top1"]) == 3 and all(0 <= a <= 100 for a in t["top1"])
        assert t["random"]["mean"] == pytest.approx(sum(t["top1"]) / 3, abs=0.01)
    pt = out["paired_vs_ps_test"]["naive"]
    assert pt["pairs"] == 3
    assert pt["mean_diff"] == pytest.approx(sum(a - b for a, b in zip(naive["test"]["top1"], ps["test"]["top1"])) / 3,
                                            abs=0.01)
    assert out["test_images"] == 64 and "test images" in out["table"][0]

    assert naive["evaluation_cached"] is False and (tmp_path / "naive-seed0" / "evaluation.pt").is_file()

    # the same invocation again: neither trained nor evaluated again, the same figures
    same = _run(tmp_path, "ps,naive")
    for name in ("ps", "naive"):
        row = same["results"][name][0]
        assert row["evaluation_cached"] is True and row["train_wall_s"] < 1.0
        assert row["top1"] == out["results"][name][0]["top1"] and row["test"] == out["results"][name][0]["test"]
    assert same["paired_vs_ps"] == out["paired_vs_ps"] and same["paired_vs_ps_test"] == out["paired_vs_ps_test"]

    # a torn evaluation file is evaluated again, not trusted
    (tmp_path / "naive-seed0" / "evaluation.pt").write_bytes(b"not a torch file")
    torn = _run(tmp_path, "ps,naive")
    assert torn["results"]["naive"][0]["evaluation_cached"] is False
    assert torn["results"]["naive"][0]["top1"] == naive["top1"]

    # resumable: the finished runs are evaluated, not trained again; --test-images 0 leaves the test split alone
    again = _run(tmp_path, "ps,naive", test_images=0)
    assert again["results"]["naive"][0]["top1"] == naive["top1"]
    assert again["results"]["naive"][0]["train_wall_s"] < 1.0
    assert "test" not in again["results"]["naive"][0] and again["paired_vs_ps_test"] == {}
    assert again["results"]["naive"][0]["evaluation_cached"] is False  # another image count: evaluated again


@pytest.mark.slow
def test_ps_vs_naive_pairs_switchable_with_shared_bn(tmp_path):
    out = _run(tmp_path, "bn_shared,bn_switchable", test_images=32)
    shared, switchable = out["results"]["bn_shared"][0], out["results"]["bn_switchable"][0]
    pair = out["paired_bn_switchable_vs_shared"]
    diffs = [a - b for a, b in zip(switchable["top1"], shared["top1"])]
    assert pair["held_out"]["pairs"] == 3 == pair["held_out"]["wins"] + pair["held_out"]["ties"] + pair["held_out"]["losses"]
    assert pair["held_out"]["mean_diff"] == pytest.approx(sum(diffs) / 3, abs=0.01)
    assert pair["held_out"]["se_boot"] >= 0 and pair["test"]["pairs"] == 3
    assert pair["test"]["mean_diff"] == pytest.approx(
        sum(a - b for a, b in zip(switchable["test"]["top1"], shared["test"]["top1"])) / 3, abs=0.01)
    assert out["paired_vs_ps"] == {}  # no PS run to pair them with
    assert any(line.startswith("bn_switchable against bn_shared, paired") for line in out["table"])


def test_ps_vs_naive_refuses_a_negative_test_image_count(tmp_path):
    res = subprocess.run([sys.executable, "bench/ps_vs_naive.py", "--preset", "test", "--test-images", "-1",
                          "--out", str(tmp_path / "out")], cwd=ROOT, text=True, capture_output=True)
    assert res.returncode == 2
    assert "--test-images must be 0 or more" in res.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "out").exists()  # refused before anything was trained or written


def test_bootstrap_se_counts_the_images_all_subnets_share():
    """Two methods whose subnets differ only on a shared handful of images: the standard
    error over subnets sees no spread at all, the two-way bootstrap sees the images' luck."""
    import torch

    sys.path.insert(0, str(ROOT / "bench"))
    from ps_vs_naive import bootstrap_se, paired

    n_sub, n_img = 20, 400
    ref = torch.zeros(n_sub, n_img, dtype=torch.bool)
    ref[:, :300] = True
    same_gain = ref.clone()
    same_gain[:, 300:308] = True  # every subnet wins the same 8 images: +2 points each
    xs = [100.0 * r.float().mean().item() for r in same_gain]
    refs = [100.0 * r.float().mean().item() for r in ref]
    p = paired(xs, refs, [(same_gain, ref)], reps=300)
    assert p["mean_diff"] == pytest.approx(2.0) and p["se"] == 0.0 and p["wins"] == 20
    # 8 of 400 images: binomial-like s.e. of the shared gain, sqrt(0.02 * 0.98 / 400) = 0.70 points
    assert 0.4 < p["se_boot"] < 1.0
    # no difference anywhere: nothing to be uncertain about
    assert bootstrap_se([(ref, ref)], reps=50) == 0.0
    # subnet-to-subnet spread alone (each subnet wins its own image) is counted too
    own = ref.clone()
    for j in range(n_sub):
        own[j, 300 + j] = j % 2 == 0
    assert bootstrap_se([(own, ref)], reps=300) > 0.0


def test_bootstrap_se_draws_shared_test_images_once_for_every_seed():
    """Three seeds scored on the same images, each winning the same 8 of them: drawn apart,
    the images' luck averages out over the seeds; drawn once for all, it does not."""
    import torch

    sys.path.insert(0, str(ROOT / "bench"))
    from ps_vs_naive import bootstrap_se

    ref = torch.zeros(10, 400, dtype=torch.bool)
    gain = ref.clone()
    gain[:, :8] = True
    apart = bootstrap_se([(gain, ref)] * 3, reps=400)
    shared = bootstrap_se([(gain, ref)] * 3, reps=400, shared_images=True)
    assert shared > 1.4 * apart  # sqrt(3) in expectation
    with pytest.raises(ValueError, match="same images"):
        bootstrap_se([(gain, ref), (gain[:, :200], ref[:, :200])], shared_images=True)
