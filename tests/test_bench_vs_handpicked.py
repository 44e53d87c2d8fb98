"""bench/vs_handpicked.py (issue 15): hand-picked torchvision models adapted to the dataset,
the budget-fitting loop, the per-model comparison, and one small end-to-end run on a real
supernet run, LUT and device (``local``) with a resume."""

from __future__ import annotations

import csv
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import run_cli

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def vh():
    spec = importlib.util.spec_from_file_location("vs_handpicked", REPO / "bench" / "vs_handpicked.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["vs_handpicked"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_space_stride_sets_the_stem(vh):
    from supernet.space import get_space

    assert vh.space_stride(get_space("fmnist")) == 16
    assert vh.space_stride(get_space("ofa_mbv3")) == 32


@pytest.mark.parametrize("name", ["mobilenet_v2_0.35", "mobilenet_v3_small_1", "mobilenet_v3_large_0.75", "mnasnet_0.5"])
def test_handpicked_models_take_the_datasets_input(vh, name):
    """One input channel, ten classes, stride-1 stem: a 48-px image leaves a 3x3 map at the
    head (16x, as the fmnist space), where torchvision's own stem would leave 2x2."""
    net = vh.handpicked_model(name, in_channels=1, num_classes=10, stem_stride=1).eval()
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert convs[0].in_channels == 1 and convs[0].stride == (1, 1)
    shapes = []
    hook = convs[-1].register_forward_hook(lambda m, i, o: shapes.append(o.shape))
    with torch.no_grad():
        out = net(torch.zeros(2, 1, 48, 48))
    hook.remove()
    assert out.shape == (2, 10)
    assert shapes[-1][-2:] == (3, 3)
    base = vh.handpicked_model(name, in_channels=1, num_classes=10, stem_stride=2).eval()
    shapes.clear()
    convs2 = [m for m in base.modules() if isinstance(m, nn.Conv2d)]
    convs2[-1].register_forward_hook(lambda m, i, o: shapes.append(o.shape))
    with torch.no_grad():
        base(torch.zeros(1, 1, 48, 48))
    assert shapes[-1][-2:] == (2, 2)


def test_every_listed_model_builds_and_widths_grow(vh):
    from supernet.ops import count_params

    assert len(vh.HANDPICKED) == 13
    by_family: dict[str, list[tuple[float, int]]] = {}
    for name, (fam, w) in vh.HANDPICKED.items():
        by_family.setdefault(fam, []).append((w, count_params(vh.handpicked_model(name, 1, 10, 1))))
    for fam, sizes in by_family.items():
        sizes.sort()
        assert [p for _, p in sizes] == sorted(p for _, p in sizes), fam
    with pytest.raises(ValueError, match="unknown hand-picked model"):
        vh.handpicked_model("resnet50", 1, 10)


def test_fit_to_latency_lowers_the_budget_until_the_measurement_fits(vh):
    """A device 25% slower than the model: the budget shrinks by the excess until the
    measured subnet is under the target; a candidate never fitting is returned as it is."""
    budgets = []

    def search(b):
        budgets.append(b)
        return b

    got, ms, budget, tries = vh.fit_to_latency(1.0, search, lambda c: 1.25 * c, tries=4)
    assert ms <= 1.0 and tries == 2 and budget == pytest.approx(1.0 / 1.25 * 0.99)
    assert budgets == [1.0, pytest.approx(0.792)]
    got, ms, budget, tries = vh.fit_to_latency(1.0, search, lambda c: 5.0, tries=3)
    assert tries == 3 and ms == 5.0
    got, ms, budget, tries = vh.fit_to_latency(1.0, lambda b: None, lambda c: 0.5)
    assert got is None and tries == 1


def test_compare_needs_both_latency_and_accuracy(vh):
    rows = [
        {"side": "hand-picked", "model": "a", "seed": 0, "onnxruntime_ms": 1.0, "heldout_top1": 90.0, "test_top1": 89.0},
        {"side": "hand-picked", "model": "a", "seed": 1.0, "onnxruntime_ms": 1.0, "heldout_top1": 92.0,
         "test_top1": 91.0},
        {"side": "hwnas extracted", "model": "a", "onnxruntime_ms": 0.9, "heldout_top1": 91.0, "test_top1": 90.0,
         "subnet": "{}"},
        {"side": "hwnas fine-tuned", "model": "a", "seed": 0, "onnxruntime_ms": 0.9, "heldout_top1": 91.5,
         "test_top1": 90.5},
        {"side": "hwnas fine-tuned", "model": "a", "seed": 1, "onnxruntime_ms": 0.9, "heldout_top1": 91.5,
         "test_top1": 90.5},
        {"side": "hand-picked", "model": "b", "onnxruntime_ms": 0.5, "heldout_top1": 80.0, "test_top1": 80.0},
        {"side": "hwnas extracted", "model": "b", "onnxruntime_ms": 0.6, "heldout_top1": 85.0, "test_top1": 85.0,
         "subnet": "{}"},
    ]
    a, b = vh.compare(rows, "onnxruntime")
    assert a["theirs_heldout_top1"] == 91.0 and a["seeds"] == 2
    assert a["extracted_heldout_delta_pp"] == 0.0 and a["finetuned_heldout_delta_pp"] == 0.5
    assert a["ours_fits"] and a["at_least_theirs"]
    # the spread over seeds, and seed for seed (ahead with seed 0's 90.0, behind seed 1's 92.0)
    assert a["theirs_heldout_std"] == pytest.approx(1.414, abs=1e-3) and a["finetuned_heldout_std"] == 0.0
    assert a["finetuned_seeds_ahead"] == 1 and a["paired_seeds"] == 2
    assert not b["ours_fits"] and not b["at_least_theirs"]  # more accurate, but slower: not a win


def _image_folder(root: Path, per_class: int) -> None:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(10):
        d = root / f"class{c}"
        d.mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray((rng.random((32, 32, 3)) * 60 + 20 * c).astype(np.uint8)).save(d / f"{i}.png")


@pytest.mark.slow
def test_end_to_end_on_a_real_run_lut_and_device_then_resume(vh, tmp_path, artifact_cache, monkeypatch, capsys):
    from test_search_evolve import random_predictor

    from supernet.space import TINY, SubnetConfig

    data = tmp_path / "images"
    _image_folder(data / "train", 12)
    _image_folder(data / "val", 3)
    run = tmp_path / "run"
    p = run_cli("supernet.train", "--preset", "test", "--space", "tiny", "--data", f"imagefolder:{data}",
                "--out", run, "--no-progress", timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    random_predictor(TINY).save(run / "predictor.pt")
    lut = tmp_path / "local.csv"
    p = run_cli("profiler.run", "--device", "local", "--space", "tiny", "--resolutions", "32", "--runtime",
                "onnxruntime", "--lut", lut, "--cache", artifact_cache, "--repeats", "3", "--min-time", "0.005",
                "--no-progress", timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("HWNAS_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "vs"
    argv = ["--run", str(run), "--lut", str(lut), "--runtimes", "onnxruntime", "--models",
            "mobilenet_v3_small_0.5,mnasnet_0.5", "--epochs", "0.5", "--seeds", "0,1", "--multi-seed-below-ms", "1000",
            "--generations", "3", "--passes", "1", "--out", str(out), "--no-progress"]
    from supernet.evaluation import Evaluator

    recalibrated = []
    real = Evaluator.recalibrate

    def spy(self, net, r):
        recalibrated.append(type(net).__module__)
        return real(self, net, r)

    monkeypatch.setattr(Evaluator, "recalibrate", spy)
    # every search returns the first search's subnet, so both models' budgets get the same
    # subnet: it is fine-tuned once per seed and the second model's row says whose it is
    import search.evolve

    first = []
    real_evolve = search.evolve.evolve

    def same_subnet(*a, **k):
        if not first:
            first.append(real_evolve(*a, **k))
        return first[0]

    monkeypatch.setattr(search.evolve, "evolve", same_subnet)
    assert vh.main(argv) == 0
    capsys.readouterr()
    doc = json.loads((out / "vs_handpicked.json").read_text())
    rows = doc["rows"]
    assert (out / "vs_handpicked.png").stat().st_size > 0
    with (out / "vs_handpicked.csv").open() as f:
        assert len(list(csv.DictReader(f))) == len(rows)
    for side, n in (("hand-picked", 4), ("hwnas extracted", 2), ("hwnas fine-tuned", 4)):
        assert sum(r["side"] == side for r in rows) == n, side
    # trained networks are evaluated with recalibrated BN, as extracted subnets are: each of
    # the 4 hand-picked ones once after training; our 2 subnets 3 times each as extracted
    # (subnet, held-out, test) and each fine-tuning (one subnet, 2 seeds) before and after training
    assert sum(m.startswith("torchvision.") for m in recalibrated) == 4
    assert len(recalibrated) == 4 + 2 * 3 + 2 * 2, recalibrated
    tuned = [r for r in rows if r["side"] == "hwnas fine-tuned"]
    assert len({r["subnet"] for r in tuned}) == 1
    for r in tuned:
        if r["trained_for"]:  # the same subnet and seed, trained once for the first model
            twin = next(t for t in tuned if t["model"] == r["trained_for"] and t["seed"] == r["seed"])
            assert not twin["trained_for"] and r["model"] != twin["model"]
            assert (r["heldout_top1"], r["test_top1"], r["epochs"]) == (twin["heldout_top1"], twin["test_top1"],
                                                                      twin["epochs"])
    assert sorted(bool(r["trained_for"]) for r in tuned) == [False, False, True, True]
    # seed by seed: every row of seed 0 (and the extracted subnets) before any of seed 1
    order = [r["seed"] for r in rows]
    assert order.index(1) > max(i for i, s in enumerate(order) if s in (0, ""))
    for r in rows:
        assert 0 <= float(r["heldout_top1"]) <= 100 and 0 <= float(r["test_top1"]) <= 100
        assert float(r["onnxruntime_ms"]) > 0
        # trained networks are evaluated after BN recalibration, as extracted subnets are
        assert (r.get("heldout_top1_running_bn") not in ("", None)) == (r["side"] != "hwnas extracted")
        # each trained row says how many threads trained it (rows of several runs can be merged)
        assert r.get("threads") == (None if r["side"] == "hwnas extracted" else doc["threads"])
    for r in (r for r in rows if r["side"] != "hand-picked"):
        cfg = SubnetConfig.from_json(r["subnet"])
        assert cfg.r == 32  # the only resolution the LUT covers
        theirs = next(h for h in rows if h["side"] == "hand-picked" and h["model"] == r["model"])
        assert float(r["onnxruntime_ms"]) <= float(theirs["onnxruntime_ms"]) or "measured over" in r["note"]
    assert {t["model"] for t in doc["comparison"]} == {"mobilenet_v3_small_0.5", "mnasnet_0.5"}
    assert doc["stem_stride"] == 1 and doc["test_images"] == 30
    assert doc["threads"] == torch.get_num_threads()
    trained = [r for r in rows if r["side"] != "hwnas extracted"]
    assert doc["trained_threads"] == {str(doc["threads"]): len(trained)}
    # a resumed run trains nothing again and writes the same rows
    before = (out / "vs_handpicked.csv").read_text()
    assert vh.main(argv + ["--resume"]) == 0
    assert (out / "vs_handpicked.csv").read_text() == before
    # one that has a row to add rewrites the others as they were (integers stay integers)
    lines = before.splitlines(keepends=True)
    (out / "vs_handpicked.csv").write_text("".join(lines[:-1]))
    assert vh.main(argv + ["--resume"]) == 0
    again = (out / "vs_handpicked.csv").read_text().splitlines(keepends=True)
    assert again[:-1] == lines[:-1] and len(again) == len(lines)
    # a table split over two processes (seed 0 in one folder, seed 1 in another, each from a
    # copy of the latencies) merges into the one table, training nothing again
    import shutil

    full = list(csv.DictReader((out / "vs_handpicked.csv").open()))
    header = (out / "vs_handpicked.csv").read_text().splitlines()[0]
    parts = {}
    for name, keep_seed in (("a", "0"), ("b", "1")):
        part = tmp_path / name
        part.mkdir()
        shutil.copy(out / "latency.json", part / "latency.json")
        with (part / "vs_handpicked.csv").open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=header.split(","))
            w.writeheader()
            w.writerows(r for r in full if r["seed"] in ("", keep_seed))
        parts[name] = part
    merged = tmp_path / "merged"
    assert vh.main(argv[:-3] + ["--out", str(merged), "--no-progress", "--merge", str(parts["a"]),
                                "--merge", str(parts["b"])]) == 0
    assert "merged 10 rows" in capsys.readouterr().out  # a: 2 extracted + 2 + 2; b: 2 + 2 (its extracted are a's)
    again = list(csv.DictReader((merged / "vs_handpicked.csv").open()))
    assert sorted(map(str, again)) == sorted(map(str, full))
    assert json.loads((merged / "vs_handpicked.json").read_text())["comparison"] == doc["comparison"]
    # tables that are not of the same comparison: one line naming what differs, nothing written
    rows_b = (parts["b"] / "vs_handpicked.csv").read_text().splitlines()
    tuned = next(i for i, ln in enumerate(rows_b) if ln.startswith("hwnas fine-tuned"))
    fields = rows_b[tuned].split(",")
    fields[header.split(",").index("heldout_top1")] = "12.5"
    rows_b[tuned] = ",".join(fields)
    (parts["b"] / "vs_handpicked.csv").write_text("\n".join(rows_b) + "\n")
    assert vh.main(argv[:-3] + ["--out", str(merged), "--resume", "--no-progress", "--merge", str(parts["b"])]) == 2
    assert "differs from this table's (12.5 against" in capsys.readouterr().err
    lat = json.loads((parts["a"] / "latency.json").read_text())
    lat["mnasnet_0.5"]["onnxruntime"] = 9.0
    (parts["a"] / "latency.json").write_text(json.dumps(lat))
    assert vh.main(argv[:-3] + ["--out", str(tmp_path / "m2"), "--no-progress", "--merge", str(parts["a"]),
                                "--merge", str(parts["b"])]) == 2
    assert "only tables of the same measured latencies" in capsys.readouterr().err
    assert not (tmp_path / "m2" / "vs_handpicked.csv").exists()
    # bad input: one clear line, exit 2
    with pytest.raises(SystemExit) as exc:
        vh.main(argv[:-1] + ["--models", "resnet50"])
    assert exc.value.code == 2
    assert "unknown hand-picked model" in capsys.readouterr().err
