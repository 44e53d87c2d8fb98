"""A clone that stands on its own (issue 10): the shipped Note10 table and OFA's predictor,
the default search on them, a LUT's recorded space, the phone check of ``profiler.run``, and
no reference to data outside the repository."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import DATA, REPO, last_error_line, run_cli

LUT = REPO / "luts" / "note10.csv"


def _rows(path):
    with open(path) as fh:
        return [{k: v for k, v in r.items() if k != "measured_at"} for r in csv.DictReader(fh)]


def test_shipped_note10_is_the_import_of_the_published_tables(tmp_path):
    out = tmp_path / "note10.csv"
    p = run_cli("profiler.import_lut", "--format", "ofa", *sorted((DATA / "ofa" / "note10").glob("*.yaml")),
                "--out", out)
    assert p.returncode == 0, p.stderr
    assert _rows(out) == _rows(LUT)
    assert json.loads((tmp_path / "note10.space.json").read_text()) == {"spaces": ["ofa_mbv3"]}
    assert (REPO / "luts" / "note10.space.json").read_text() == (tmp_path / "note10.space.json").read_text()


def test_evolve_defaults_on_the_shipped_lut(tmp_path, capsys):
    """No --predictor, no budget: OFA's predictor, four budgets inside the LUT's range."""
    from search.evolve import CostArrays, covered_choices, main
    from search.latency import LatencyModel
    from search.predictor import load_predictor
    from supernet.space import OFA_MBV3

    code = main(["--lut", str(LUT), "--generations", "3", "--population", "16", "--samples", "10",
                 "--out", str(tmp_path), "--json"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["predictor"]["source"] == "ofa" and summary["space"] == "ofa_mbv3"
    model = LatencyModel.from_lut(LUT, OFA_MBV3)
    costs = CostArrays(model, covered_choices(model, OFA_MBV3, load_predictor("ofa").supports))
    lo, hi = costs.cheapest()[0], costs.dearest()
    budgets = [r["budget"] for r in summary["results"]]
    assert len(budgets) == 4 and lo < budgets[0] < budgets[-1] < hi
    assert all(r["predicted_latency_ms"] <= r["budget"] for r in summary["results"])
    assert hi == pytest.approx(92.40, abs=0.01)  # the largest subnet at 224 px is the dearest here


def test_a_lut_of_another_space_is_one_line(tmp_path):
    from profiler.lut import record_space

    lut = tmp_path / "other.csv"
    shutil.copy(LUT, lut)
    record_space(lut, "tiny", keep=False)
    for module, args in [("search.latency", ["--subnet", "max"]),
                         ("search.evolve", ["--latency-ms", "20"]),
                         ("profiler.validate", ["--device", "local"])]:
        p = run_cli(module, "--lut", lut, "--space", "ofa_mbv3", *args, timeout=120)
        assert p.returncode == 2, (module, p.stderr)
        assert p.stderr.strip().count("\n") == 0, (module, p.stderr)
        assert "a LUT of space tiny" in last_error_line(p) and "not of ofa_mbv3" in last_error_line(p), p.stderr


def test_space_record_unions_and_refuses_a_corrupt_file(tmp_path):
    from profiler.lut import LutError, check_space, lut_spaces, record_space, space_path

    lut = tmp_path / "l.csv"
    assert lut_spaces(lut) == [] and check_space(lut, "tiny") is None  # nothing recorded: no check
    record_space(lut, "tiny")
    record_space(lut, "fmnist")
    record_space(lut, "tiny")
    assert lut_spaces(lut) == ["tiny", "fmnist"]
    check_space(lut, "fmnist")
    with pytest.raises(LutError, match="a LUT of space tiny, fmnist"):
        check_space(lut, "ofa_mbv3")
    space_path(lut).write_text("{not json")
    with pytest.raises(LutError, match="l.space.json: not a space record"):
        lut_spaces(lut)


def test_profiler_run_records_the_space_it_measured(tmp_path, artifact_cache):
    lut = tmp_path / "local.csv"
    p = run_cli("profiler.run", "--device", "local", "--runtime", "onnxruntime", "--space", "tiny", "--resolutions",
                "32", "--limit", "1", "--lut", lut, "--cache", artifact_cache, "--no-progress", "--export-workers", "1")
    assert p.returncode == 0, p.stderr
    assert json.loads((tmp_path / "local.space.json").read_text()) == {"spaces": ["tiny"]}
    p = run_cli("search.latency", "--lut", lut, "--subnet", "max", "--space", "ofa_mbv3")  # the default is the recorded one
    assert p.returncode == 2 and "a LUT of space tiny" in last_error_line(p), p.stderr


def _bin(folder, name, script):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(f"#!/bin/sh\nexec {sys.executable} {script} \"$@\"\n")
    (folder / name).chmod(0o755)


@pytest.mark.adb
@pytest.mark.parametrize("case", ["no_phone", "no_adb"])
def test_profile_pixel1_without_a_phone_says_what_to_do(tmp_path, case):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    env = {"PATH": str(bin_dir)}
    if case == "no_phone":
        _bin(bin_dir, "adb", REPO / "tests" / "doubles" / "fake_adb")
        (tmp_path / "state.json").write_text(json.dumps({"devices": {}}))
        env["FAKE_ADB_STATE"] = str(tmp_path / "state.json")
    before = sorted((REPO / "luts").iterdir())
    p = run_cli("profiler.run", "--device", "pixel1", "--no-progress", env=env, timeout=120)
    assert p.returncode == 1 and p.stdout == "" and p.stderr.count("\n") == 1, p.stderr
    expected = {"no_phone": "adb device 'FA6AB0301234' not found (adb devices lists: none)",
                "no_adb": "adb client 'adb' not found"}[case]
    assert expected in p.stderr and "field" in p.stderr and "devices.yaml" in p.stderr, p.stderr
    assert sorted((REPO / "luts").iterdir()) == before  # nothing written


def _tracked_files():
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True, timeout=60)
        return [REPO / p for p in out.stdout.decode().split("\0") if p]
    except (OSError, subprocess.CalledProcessError):
        return [p for p in REPO.rglob("*") if p.is_file() and not {".venv", ".git"} & set(p.parts)]


NEEDLE = "../" + "shared"  # spelled in two parts so that this file does not match itself
PROVENANCE = {"luts/README.md", "search/data/README.md", "tests/data/README.md"}


def _references(scope: tuple[str, ...]) -> list[str]:
    """``file:line`` of every tracked text file under ``scope`` naming the folder the
    reference data was copied from, except the provenance notes."""
    hits = []
    for path in _tracked_files():
        rel = path.relative_to(REPO).as_posix()
        if not rel.startswith(scope) or rel in PROVENANCE or not path.is_file() or path.suffix == ".pth":
            continue
        lines = path.read_text(errors="ignore").splitlines()
        hits += [f"{rel}:{i}" for i, line in enumerate(lines, 1) if NEEDLE in line]
    return hits


def test_tests_and_packages_use_only_data_inside_the_repository():
    """bench/ is left out: it compares against the reference implementation's side."""
    hits = _references(("tests/", "supernet/", "profiler/", "search/", "setup.sh", "pyproject.toml", ".ci/"))
    assert not hits, f"references to {NEEDLE}: {', '.join(hits)}"
    assert os.path.isfile(REPO / "search" / "data" / "LICENSE")


def test_readme_commands_use_only_data_inside_the_repository():
    hits = _references(("README.md",))
    assert not hits, f"references to {NEEDLE}: {', '.join(hits)}"
