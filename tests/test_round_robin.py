"""Round-robin measurement (issue 11, ``profiler.run --context round-robin``): the runner
times a group of models in rotation, the LUT records how each row was timed, and a run in
the other context measures the rows again."""

from __future__ import annotations

import csv

import pytest

from profiler import runner
from profiler.export import export_block
from profiler.lut import LutError, read_rows
from supernet.space import TINY

from conftest import run_cli

FAST = ["--repeats", "5", "--min-time", "0", "--no-progress"]


def test_runner_rotates_a_group_and_a_broken_model_is_its_own_error(tmp_path):
    blocks = TINY.all_blocks([32])[:3]
    paths = []
    for i, b in enumerate(blocks):
        paths.append(str(export_block(b, "onnx", tmp_path / f"b{i}.onnx")))
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    out = runner.measure_group([paths[0], str(bad), paths[1], paths[2]], runtime="onnxruntime", warmup=2,
                               repeats=7, min_time_s=0.0)
    assert out["ok"] is True and len(out["results"]) == 4
    good = [out["results"][i] for i in (0, 2, 3)]
    assert out["results"][1]["ok"] is False and out["results"][1]["error"]
    for r in good:  # every model timed once per round, the same rounds
        assert r["ok"] is True and r["context"] == "round-robin" and r["runs"] == 7 == len(r["samples_ms"])
        assert all(s > 0 for s in r["samples_ms"]) and r["median_ms"] > 0


def test_profiler_run_round_robin_rows_and_switching_context_measures_again(tmp_path):
    lut = tmp_path / "l.csv"
    base = ["--runtime", "onnxruntime", "--space", "tiny", "--resolutions", "32", "--lut", lut,
            "--cache", tmp_path / "cache", *FAST]
    p = run_cli("profiler.run", *base, "--context", "round-robin", "--min-time", "0.05")
    assert p.returncode == 0, p.stderr[-2000:]
    rows = read_rows(lut)
    assert rows and all(r["context"] == "round-robin" and r["status"] == "ok" for r in rows)
    # timed in rotation: every block once per round, so every block row has the same count
    # (timed alone for 0.05 s each, blocks of different cost get different counts); a probe is
    # timed before every block of its shape, its samples pooled
    blocks = [r for r in rows if r["kind"] != "overhead"]
    probes = [r for r in rows if r["kind"] == "overhead"]
    (rounds,) = {r["count"] for r in blocks}
    assert probes and all(r["count"] % rounds == 0 for r in probes)
    assert max(r["count"] for r in probes) > rounds  # some shape has several blocks
    n = len(rows)
    # the same context again: nothing to do
    p = run_cli("profiler.run", *base, "--context", "round-robin", "--json")
    assert p.returncode == 0 and '"measured": 0' in p.stdout, p.stdout[-1000:]
    # the other context: every row measured again, one row per block still (a warm run of the
    # whole space would add the weight-streaming probes: not here)
    p = run_cli("profiler.run", *base, "--json", "--min-time", "0.05", "--stream-probes", "off")
    assert p.returncode == 0 and f'"measured": {n}' in p.stdout, p.stdout[-1000:]
    rows = read_rows(lut)
    assert len(rows) == n and all(r["context"] == "warm" for r in rows)
    assert len({r["count"] for r in rows}) > 1
    # the search prices a round-robin LUT like any other
    p = run_cli("search.latency", "--lut", lut, "--space", "tiny", "--subnet", "max", "--resolution", "32",
                "--runtime", "onnxruntime")
    assert p.returncode == 0, p.stderr[-1000:]


def test_lut_context_column_reads_warm_when_empty_and_rejects_unknown(tmp_path):
    lut = tmp_path / "l.csv"
    p = run_cli("profiler.run", "--runtime", "onnxruntime", "--space", "tiny", "--resolutions", "32", "--limit", "2",
                "--no-overhead-probes", "--lut", lut, "--cache", tmp_path / "cache", *FAST)
    assert p.returncode == 0, p.stderr[-2000:]
    (tmp_path / "l.raw.jsonl").unlink()
    with open(lut) as fh:
        rows = list(csv.DictReader(fh))
    fields = list(rows[0])
    for r in rows:
        r["context"] = ""
    with open(lut, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    assert {r["context"] for r in read_rows(lut)} == {"warm"}
    rows[1]["context"] = "lukewarm"
    with open(lut, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    with pytest.raises(LutError, match=r"l.csv:3: context must be one of warm, round-robin, got 'lukewarm'"):
        read_rows(lut)


def test_rotation_puts_each_blocks_probe_before_it_and_pools_its_samples(tmp_path):
    from profiler.measure import pool_outcomes, rotation_groups
    from profiler.run import with_overhead_probes
    from supernet.space import overhead_probe

    specs = with_overhead_probes(TINY.all_blocks([32]))
    built = [(s, tmp_path / f"{i}.onnx") for i, s in enumerate(specs)]
    groups = rotation_groups(built, size=7)
    flat = [s for g in groups for s, _ in g]
    assert all(len(g) <= 7 for g in groups)
    for i, s in enumerate(flat):
        if s.kind != "overhead":
            assert flat[i - 1] == overhead_probe(s)  # never cut from its probe
    assert [s for s in flat if s.kind != "overhead"] == [s for s in specs if s.kind != "overhead"]
    group = groups[0]
    outs = [{"samples_ms": [float(k), float(k) + 1], "timed_s": 0.001, **runner._stats([float(k), float(k) + 1])}
            for k in range(len(group))]
    pooled = pool_outcomes(group, outs)
    keys = [str(s) for s, _, _ in pooled]
    assert len(keys) == len(set(keys)) == len({str(s) for s, _ in group})
    for spec, _, out in pooled:
        places = [k for k, (s, _) in enumerate(group) if s == spec]
        assert out["count"] == 2 * len(places) and sorted(out["samples_ms"]) == sorted(
            x for k in places for x in (float(k), float(k) + 1))
    # an error at any place is the model's outcome
    outs[0] = "runtime: boom"
    assert dict((str(s), o) for s, _, o in pool_outcomes(group, outs))[str(group[0][0])] == "runtime: boom"


def test_a_probe_in_several_rotation_groups_is_one_row_and_a_rerun_times_probes_again(tmp_path, monkeypatch):
    """A rotation longer than one group: a probe placed in two groups gets one row with the
    samples of both (not the second group's alone), ``measured`` counts it once, and a rerun
    that times some blocks again times their probes with them."""
    from pathlib import Path

    from profiler import measure
    from profiler.devices import parse_device
    from profiler.export import ArtifactCache
    from profiler.run import with_overhead_probes
    from supernet.space import overhead_probe

    monkeypatch.setattr(measure, "GROUP_SIZE", 4)
    specs = with_overhead_probes(TINY.all_blocks([32]))
    blocks = [s for s in specs if s.kind != "overhead"]
    groups = measure.rotation_groups([(s, Path(str(i))) for i, s in enumerate(specs)])
    in_groups = {}
    for gi, g in enumerate(groups):
        for s, _ in g:
            if s.kind == "overhead":
                in_groups.setdefault(str(s), set()).add(gi)
    split = [k for k, gs in in_groups.items() if len(gs) > 1]
    assert split, "the test needs a probe timed in two groups"
    dev = parse_device(Path("d.yaml"), "local", {"transport": "local", "runtime": "onnxruntime", "warmup": 1,
                                                 "repeats": 3, "min_time_s": 0})
    lut = tmp_path / "l.csv"
    cache = ArtifactCache(tmp_path / "cache")
    res = measure.profile_device(dev, specs, "onnxruntime", lut, cache, progress=False, export_workers=0,
                                 context="round-robin")
    assert res.failed == 0 and res.measured == res.todo == len(specs), res
    rows = {r["key"]: r for r in read_rows(lut)}
    assert len(rows) == len(specs)
    (rounds,) = {rows[str(s)]["count"] for s in blocks}
    for key in split:  # 3 samples at each place: pooled over every group that timed it
        places = sum(1 for g in groups for s, _ in g if str(s) == key)
        assert rows[key]["count"] == rounds * places
    # drop one block's row: the rerun times it again with its probe before it
    victim = blocks[-1]
    kept = [r for r in read_rows(lut) if r["key"] != str(victim)]
    (tmp_path / "l.raw.jsonl").unlink()
    with open(lut, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(kept[0]))
        w.writeheader()
        w.writerows(kept)
    res = measure.profile_device(dev, specs, "onnxruntime", lut, cache, progress=False, export_workers=0,
                                 context="round-robin")
    assert res.measured == res.todo == 2 and res.skipped == len(specs) - 2, res
    rows = {r["key"]: r for r in read_rows(lut)}
    assert rows[str(victim)]["status"] == "ok" and rows[str(overhead_probe(victim))]["count"] == rounds


def test_a_lut_timed_in_rotation_prices_no_streaming_and_takes_no_warm_calibration(tmp_path):
    """Blocks timed in rotation met cold caches already: the latency model adds no
    weight-streaming term even where warm stream rows remain in the file, and a calibration
    fitted on warm rows is not applied to them (nor the other way round)."""
    import json

    from profiler.costmodel import LatencyModel, read_calibration
    from profiler.lut import LutTable
    from supernet.space import stream_probes

    lut = tmp_path / "l.csv"
    p = run_cli("profiler.run", "--runtime", "onnxruntime", "--space", "tiny", "--resolutions", "32", "--lut", lut,
                "--cache", tmp_path / "cache", "--context", "round-robin", *FAST)
    assert p.returncode == 0, p.stderr[-2000:]
    rows = read_rows(lut)
    probe = next(r for r in rows if r["kind"] == "overhead")
    with open(lut, "a", newline="") as fh:  # warm stream rows left by an earlier warm run
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        for k, spec in enumerate(stream_probes(layers=(1, 2, 4))):
            w.writerow({**probe, "key": str(spec), "kind": "stream", "context": "warm",
                        "median_ms": 0.01 * 4 ** k, "measured_at": "2026-01-01T00:00:00+00:00"})
    (tmp_path / "l.raw.jsonl").unlink()
    assert LutTable.load(lut).block_context("onnxruntime") == "round-robin"
    model = LatencyModel.from_lut(lut, TINY, "onnxruntime")
    assert model.context == "round-robin" and not model.has_weight_cost(32)
    cal = tmp_path / "l.calibration.json"
    cal.write_text(json.dumps({"runtimes": {"onnxruntime": {"a": 1.1, "b": 0.0, "overhead": True, "stream": False,
                                                            "boundary": True}}}))
    model = LatencyModel.from_lut(lut, TINY, "onnxruntime", calibration="auto")
    assert model.calibration is None and "timed warm" in model.calibration_skipped
    assert read_calibration(cal, "onnxruntime", overhead=True, stream=False) == (1.1, 0.0)  # no context asked
    cal.write_text(json.dumps({"runtimes": {"onnxruntime": {"a": 1.1, "b": 0.0, "overhead": True, "stream": False,
                                                            "boundary": True, "context": "round-robin"}}}))
    assert LatencyModel.from_lut(lut, TINY, "onnxruntime", calibration="auto").calibration == (1.1, 0.0)
