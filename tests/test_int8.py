"""int8 lookup tables (issue 16): quantized blocks read back from their files, inputs quantized
with the model's own parameters, LUTs holding both precisions, a search that prices int8 from
int8 rows only, and bad input as one clear line."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest

from profiler.costmodel import LatencyModel, MissingKeysError
from profiler.export import ArtifactCache
from profiler.lut import COLUMNS, LutError, LutTable, LutWriter, read_rows, record_space
from profiler.quantize import ERROR_BOUND, read_meta, tflite_types
from supernet.space import TINY, overhead_probe, stream_probes

from conftest import last_error_line, run_cli

BLOCKS = TINY.all_blocks([32])
MB = next(b for b in BLOCKS if b.kind == "mbconv" and b.act == "hswish" and b.se)
FIRST = next(b for b in BLOCKS if b.kind == "first_conv")


@pytest.fixture(scope="module")
def int8_artifacts(artifact_cache):
    """One SE/h-swish block and its overhead probe, quantized for both runtimes."""
    cache = ArtifactCache(artifact_cache)
    items = [(str(b), fmt) for b in (MB, overhead_probe(MB)) for fmt in ("tflite-int8", "onnx-int8")]
    results = cache.ensure(items, workers=1, progress=False)
    for it, res in results.items():
        assert res.path is not None, (it, res.error)
    return {it: res.path for it, res in results.items()}


def test_tflite_int8_block_is_all_int8_read_from_the_file(int8_artifacts):
    path = int8_artifacts[(str(MB), "tflite-int8")]
    assert path.suffix == ".tflite"
    ops, dtypes = tflite_types(path)
    assert "CONV_2D" in ops and "DEPTHWISE_CONV_2D" in ops and "HARD_SWISH" in ops
    assert not ops & {"QUANTIZE", "DEQUANTIZE"}, ops  # no float island in the graph
    assert dtypes <= {"int8", "int32"}, dtypes  # int8 tensors, int32 biases
    fp32_ops, fp32_dtypes = tflite_types(path.parents[2] / "tflite" / path.parent.name.split("-ai_edge")[0]
                                         / path.name)
    assert "float32" in fp32_dtypes  # the fp32 model it was quantized from is beside it, in the cache
    meta = read_meta(path)
    assert meta["precision"] == "int8" and 0 < meta["error"] <= meta["bound"] == ERROR_BOUND["mbconv"]
    assert meta["calibration"].startswith("random-normal")


def test_onnx_int8_block_is_qdq_with_int8_weights(int8_artifacts):
    import onnx

    model = onnx.load(str(int8_artifacts[(str(MB), "onnx-int8")]))
    ops = [n.op_type for n in model.graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    dtypes = {onnx.helper.tensor_dtype_to_np_dtype(t.data_type).name for t in model.graph.initializer}
    assert "int8" in dtypes and "uint8" in dtypes  # s8 weights, u8 activation zero points
    # the probe: what an int8 block pays on entry and exit (quantize, dequantize), nothing else
    probe = onnx.load(str(int8_artifacts[(str(overhead_probe(MB)), "onnx-int8")]))
    assert [n.op_type for n in probe.graph.node] == ["QuantizeLinear", "DequantizeLinear"]


def test_runner_feeds_int8_models_inputs_quantized_with_their_own_parameters(int8_artifacts):
    from profiler import runner

    path = int8_artifacts[(str(MB), "tflite-int8")]
    model = runner._Model(str(path), "tflite", 1)
    detail = model.interp.get_input_details()[0]
    assert detail["dtype"] == np.int8
    scale, zero = detail["quantization"]
    assert scale > 0
    fed = model.interp.get_tensor(detail["index"])
    x = np.random.default_rng(0).standard_normal(tuple(detail["shape"])).astype(np.float32)
    expected = np.clip(np.round(x / scale) + zero, -128, 127).astype(np.int8)
    np.testing.assert_array_equal(fed, expected)
    assert len(np.unique(fed)) > 20  # not a cast of N(0, 1) to int8 (-3..3)
    reply = runner.measure(str(path), "tflite", threads=1, warmup=2, repeats=5)
    assert reply["ok"] and reply["count"] >= 5


def _row(key, ms, runtime="tflite", precision="fp32", at="2026-01-01T00:00:00"):
    return {"key": key, "runtime": runtime, "status": "ok", "median_ms": ms, "mean_ms": ms, "std_ms": 0.0,
            "p90_ms": ms, "min_ms": ms, "max_ms": ms, "iqr_ms": 0.0, "count": 10, "threads": 1,
            "device": "local", "measured_at": at, "precision": precision,
            **({"quant_error": 0.01, "quant_bound": 0.08, "quant_calibration": "random-normal n=8 seed=1"}
               if precision == "int8" else {})}


def _both_precisions(path, keys, drop_int8=()):
    with LutWriter(path) as w:
        for i, k in enumerate(keys):
            w.add(_row(k, 0.1 + 0.01 * i))
            if k not in drop_int8:
                w.add(_row(k, 2 * (0.1 + 0.01 * i), precision="int8"))
    record_space(path, TINY.name)


def test_a_lut_with_both_precisions_round_trips(tmp_path):
    path = tmp_path / "l.csv"
    keys = [str(b) for b in BLOCKS[:4]]
    _both_precisions(path, keys)
    rows = read_rows(path)
    assert len(rows) == 8 and {r["precision"] for r in rows} == {"fp32", "int8"}
    int8 = [r for r in rows if r["precision"] == "int8"]
    assert all(r["quant_error"] == 0.01 and r["quant_bound"] == 0.08 for r in int8)
    table = LutTable.load(path)
    assert table.precisions("tflite") == ["fp32", "int8"]
    assert table.table("tflite", precision="int8")[keys[1]] == pytest.approx(2 * table.table("tflite")[keys[1]])
    # the CSV written back (and the journal replayed) gives the same rows
    LutWriter(path).close()
    assert read_rows(path) == rows


def test_an_old_lut_without_the_precision_column_reads_as_fp32(tmp_path):
    path = tmp_path / "old.csv"
    old = [c for c in COLUMNS if c not in ("precision", "quant_error", "quant_bound", "quant_calibration")]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=old, lineterminator="\n")
    w.writeheader()
    w.writerow({c: v for c, v in _row(str(BLOCKS[0]), 0.5).items() if c in old})
    path.write_text(buf.getvalue())
    (row,) = read_rows(path)
    assert row["precision"] == "fp32"
    table = LutTable.load(path)
    assert table.table("tflite") == {str(BLOCKS[0]): 0.5}
    with pytest.raises(LutError, match="no int8 rows for runtime tflite.*--precision int8"):
        table.check_precision("tflite", "int8")


def test_an_unknown_precision_in_a_lut_names_file_and_line(tmp_path):
    path = tmp_path / "l.csv"
    _both_precisions(path, [str(BLOCKS[0])])
    text = path.read_text().replace(",int8,", ",int4,")
    path.write_text(text)
    (tmp_path / "l.raw.jsonl").unlink()
    with pytest.raises(LutError, match=r"l.csv:3: precision must be one of fp32, int8, got 'int4'"):
        read_rows(path)


def _all_keys(cfg):
    """Every block of the space at the subnet's resolution, and their overhead probes."""
    keys = []
    for b in TINY.all_blocks([cfg.r]):
        keys += [str(b), str(overhead_probe(b))]
    return list(dict.fromkeys(keys))


def test_an_int8_search_prices_from_int8_rows_only(tmp_path):
    cfg = TINY.max_subnet(r=32)
    keys = _all_keys(cfg)
    path = tmp_path / "l.csv"
    _both_precisions(path, keys)
    fp32 = LatencyModel.from_lut(path, TINY, "tflite")
    int8 = LatencyModel.from_lut(path, TINY, "tflite", precision="int8")
    assert int8.precision == "int8"
    assert float(int8.latency([cfg])[0]) == pytest.approx(2 * float(fp32.latency([cfg])[0]))
    # an int8 row missing for one block: a missing key, never that block's fp32 row
    missing = next(k for k in keys if k.startswith("mbconv"))
    path2 = tmp_path / "m.csv"
    _both_precisions(path2, keys, drop_int8={missing})
    with pytest.raises(MissingKeysError) as exc:
        LatencyModel.from_lut(path2, TINY, "tflite", precision="int8").latency([cfg])
    assert exc.value.keys == [missing] and "int8 rows" in str(exc.value)
    assert LatencyModel.from_lut(path2, TINY, "tflite").latency([cfg])[0] > 0  # fp32 still prices


def test_cli_int8_pricing_and_bad_precision_are_one_clear_line(tmp_path):
    cfg = TINY.max_subnet(r=32)
    keys = _all_keys(cfg)
    path = tmp_path / "l.csv"
    _both_precisions(path, keys)
    p = run_cli("search.latency", "--lut", path, "--subnet", "max", "--resolution", "32", "--space", "tiny",
                "--precision", "int8", "--json")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["precision"] == "int8"
    q = run_cli("search.latency", "--lut", path, "--subnet", "max", "--resolution", "32", "--space", "tiny", "--json")
    assert out["latency_ms"] == pytest.approx(2 * json.loads(q.stdout)["latency_ms"], rel=1e-3)
    # a LUT with no int8 rows
    fp32_only = tmp_path / "f.csv"
    with LutWriter(fp32_only) as w:
        for k in keys:
            w.add(_row(k, 0.1))
    p = run_cli("search.latency", "--lut", fp32_only, "--subnet", "max", "--resolution", "32", "--space", "tiny",
                "--precision", "int8")
    assert p.returncode == 2
    assert last_error_line(p).startswith(f"error: {fp32_only}: no int8 rows for runtime tflite")
    # a precision no runtime can do
    p = run_cli("profiler.run", "--device", "local", "--space", "tiny", "--precision", "int4", "--lut",
                tmp_path / "x.csv")
    assert p.returncode == 2 and "unknown precision 'int4' (known: fp32, int8)" in p.stderr
    assert not (tmp_path / "x.csv").exists()


def test_int8_report_groups_blocks_and_names_the_slower_kinds(tmp_path):
    """profiler.int8_report: int8 / fp32 per block, grouped by kind, the slower kinds named."""
    from profiler.int8_report import main as report_main

    path = tmp_path / "l.csv"
    blocks = [b for b in BLOCKS if b.kind != "overhead"]
    with LutWriter(path) as w:
        for b in blocks + [overhead_probe(blocks[0]), stream_probes(layers=(2,))[0]]:
            slow = b.act == "hswish"  # h-swish blocks twice as slow in int8, the rest half
            w.add(_row(str(b), 0.1))
            w.add(_row(str(b), 0.2 if slow else 0.05, precision="int8"))
    assert report_main(["--lut", str(path), "--json"]) == 0
    rep = json.loads((tmp_path / "l.int8.json").read_text())["runtimes"]["tflite"]
    assert rep["blocks"] == len(blocks)  # the probes are no blocks of a network
    by = {g["group"]: g for g in rep["groups"]}
    for b in blocks:
        g = next(v for k, v in by.items() if k.startswith(b.kind) and (b.kind != "mbconv" or f"k{b.kernel} " in k))
        assert g["median_ratio"] in (pytest.approx(2.0), pytest.approx(0.5))
    assert all(by[g]["median_ratio"] == pytest.approx(2.0) for g in rep["slower_groups"])
    assert {g for g in by if "hswish" in g} == set(rep["slower_groups"])
    rows = list(csv.DictReader(io.StringIO((tmp_path / "l.int8.csv").read_text())))
    assert len(rows) == len(blocks) and {r["runtime"] for r in rows} == {"tflite"}
    # a LUT with one precision only: one clear line
    fp32_only = tmp_path / "f.csv"
    with LutWriter(fp32_only) as w:
        w.add(_row(str(blocks[0]), 0.1))
    p = run_cli("profiler.int8_report", "--lut", fp32_only)
    assert p.returncode == 2 and last_error_line(p).startswith(f"error: {fp32_only}: no runtime has both fp32 and int8")


# --------------------------------------------------------------------------- real-image calibration


@pytest.fixture(scope="module")
def fake_fm(tmp_path_factory):
    from supernet_fakes import write_fmnist

    return write_fmnist(tmp_path_factory.mktemp("fm"), n=240)


def test_real_calibration_carries_images_block_by_block(fake_fm):
    """Each block's calibration inputs are what the largest subnet's previous block outputs
    on real images (and the first convolution's are the images themselves)."""
    import torch

    from profiler.calibrate import _carrier, block_activations

    chain = TINY.blocks(TINY.max_subnet(r=32))
    # a stream probe of the feature mix's input shape is still no block: random calibration
    probe = stream_probes(channels=chain[-2].in_c, layers=(2,))[0]
    assert probe.input_shape == chain[-2].input_shape
    acts, label = block_activations(TINY, BLOCKS + [probe], f"fmnist:{fake_fm}", None, n=4)
    assert label.startswith("real images n=4") and set(acts) == {str(b) for b in BLOCKS}
    for b in BLOCKS:
        assert acts[str(b)].shape == (4, b.in_c, b.in_h, b.in_w) and acts[str(b)].dtype == np.float32
    net, images = _carrier(TINY, f"fmnist:{fake_fm}", None, 4, 0)(32, TINY.default_width)
    np.testing.assert_allclose(acts[str(chain[0])], images.numpy(), rtol=0, atol=0)
    with torch.no_grad():
        for j in range(len(chain) - 1):
            want = net[j](torch.from_numpy(acts[str(chain[j])])).numpy()
            got = acts[str(chain[j + 1])]
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    # real inputs, not random normal ones: the images' background is the dataset's, not N(0, 1)
    first = acts[str(chain[0])]
    assert abs(float(first.mean())) > 0.1 and len(np.unique(first.round(4))) < first.size / 4


@pytest.mark.slow
def test_profiler_run_with_data_calibrates_int8_rows_on_real_images(fake_fm, tmp_path):
    cache, lut = tmp_path / "cache", tmp_path / "real.csv"
    args = ["--device", "local", "--space", "tiny", "--resolutions", "32", "--limit", "3", "--precision", "int8",
            "--repeats", "3", "--min-time", "0", "--cache", cache, "--no-progress"]
    proc = run_cli("profiler.run", *args, "--data", f"fmnist:{fake_fm}", "--calib-images", "4", "--lut", lut)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "int8 calibration:" in proc.stderr
    rows = read_rows(lut)
    assert rows and all(r["precision"] == "int8" for r in rows)
    assert all(r["quant_calibration"].startswith("real images n=4") for r in rows), [r["quant_calibration"] for r in rows]
    assert all(0 < float(r["quant_error"]) <= float(r["quant_bound"]) for r in rows if r["kind"] != "overhead")
    assert {r["runtime"] for r in rows} == {"onnxruntime", "tflite"}
    # the same blocks with random calibration in the same cache: their own artifacts, their own label
    proc = run_cli("profiler.run", *args, "--runtime", "onnxruntime", "--lut", tmp_path / "random.csv")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert all(r["quant_calibration"].startswith("random-normal") for r in read_rows(tmp_path / "random.csv"))
    versions = sorted(p.name for p in (cache / "onnx-int8").iterdir())
    assert len(versions) == 2 and sum("-cal" in v for v in versions) == 1, versions


def test_validate_int8_quantizes_whole_networks_on_real_images_with_data(fake_fm, tmp_path, artifact_cache):
    """profiler.validate --precision int8 --data: every network quantized on real images (the
    report says which), cached apart from the random-calibrated networks of a run without it."""
    from profiler.calibrate import network_inputs

    cache, lut = tmp_path / "cache", tmp_path / "l.csv"
    # the LUT's blocks from the session's cache (the networks below get a cache of their own)
    proc = run_cli("profiler.run", "--device", "local", "--runtime", "onnxruntime", "--space", "tiny",
                   "--resolutions", "32", "--precision", "int8", "--repeats", "5", "--min-time", "0",
                   "--cache", artifact_cache, "--lut", lut, "--no-progress")
    assert proc.returncode == 0, proc.stderr[-2000:]
    # int8 blocks do not run in onnxruntime's NCHWc layout: overhead probes, no boundary probes
    kinds = {r["kind"] for r in read_rows(lut)}
    assert "overhead" in kinds and "boundary" not in kinds, kinds
    base = ["--runtime", "onnxruntime", "--space", "tiny", "--lut", lut, "--subnets", "2", "--passes", "1",
            "--precision", "int8", "--cache", cache, "--drift-blocks", "0", "--no-progress", "--json"]
    real = run_cli("profiler.validate", *base, "--data", f"fmnist:{fake_fm}", "--calib-images", "3")
    assert real.returncode == 0, real.stderr[-2000:]
    s = json.loads(real.stdout)
    assert s["n"] == 2 and s["precision"] == "int8"
    assert s["int8_calibration"].startswith("real images n=3") and "network's input" in s["int8_calibration"]
    rand = run_cli("profiler.validate", *base)
    assert rand.returncode == 0, rand.stderr[-2000:]
    assert json.loads(rand.stdout)["int8_calibration"].startswith("random-normal n=8")
    versions = sorted(p.name for p in (cache / "networks" / "onnx-int8").iterdir())
    assert len(versions) == 2 and sum("-cal" in v for v in versions) == 1, versions
    # each network's record names what it was calibrated on
    labels = {v: {read_meta(f)["calibration"] for f in (cache / "networks" / "onnx-int8" / v).glob("*.onnx")}
              for v in versions}
    for v, got in labels.items():  # random inputs are seeded per network, real ones are the same images
        assert got and all(g.startswith("real images" if "-cal" in v else "random-normal") for g in got), labels
        assert len(got) == (1 if "-cal" in v else 2), labels
    # the inputs are the dataset's images at the network's resolution, one batch-1 array each
    inputs, label = network_inputs(TINY, f"fmnist:{fake_fm}", 3, [32])
    assert [x.shape for x in inputs[32]] == [(1, TINY.in_channels, 32, 32)] * 3 and label.startswith("real images n=3")
    assert abs(float(np.mean(inputs[32]))) > 0.1  # the dataset's background, not N(0, 1)
    # misuse is one line
    for extra, needle in ((["--precision", "fp32", "--data", f"fmnist:{fake_fm}"], "add --precision int8"),
                          (["--calib-images", "2"], "--calib-images needs --data"),
                          (["--data", f"fmnist:{tmp_path / 'nowhere'}"], "nowhere")):
        args = [a for a in base if a not in ("--json",)]
        if extra[0] == "--precision":
            args = [a for i, a in enumerate(args) if a != "--precision" and (i == 0 or args[i - 1] != "--precision")]
        bad = run_cli("profiler.validate", *args, *extra)
        assert bad.returncode == 2 and needle in last_error_line(bad), (extra, bad.stderr[-1000:])


def test_real_calibration_bad_input_is_one_clear_line(fake_fm, tmp_path):
    base = ["--device", "local", "--space", "tiny", "--resolutions", "32", "--limit", "2",
            "--cache", tmp_path / "cache", "--lut", tmp_path / "l.csv", "--no-progress"]
    cases = [
        (["--precision", "fp32", "--data", f"fmnist:{fake_fm}"], "add --precision int8"),
        (["--precision", "int8", "--data", f"fmnist:{tmp_path / 'nowhere'}"], "nowhere"),
        (["--precision", "int8", "--calib-run", tmp_path / "norun"], "norun"),
        (["--precision", "int8", "--calib-images", "4"], "--calib-images needs --data"),
    ]
    for extra, needle in cases:
        proc = run_cli("profiler.run", *base, *extra)
        line = last_error_line(proc)
        assert proc.returncode == 2 and needle in line, (extra, proc.stderr[-1000:])
    assert not (tmp_path / "l.csv").exists()


def test_profiler_run_calibrates_through_a_trained_run_of_the_same_space(fake_fm, tmp_path):
    run = tmp_path / "run"
    proc = run_cli("supernet.train", "--preset", "test", "--space", "fmnist", "--data", f"fmnist:{fake_fm}",
                   "--out", run, "--threads", "1", "--no-progress")
    assert proc.returncode == 0, proc.stderr[-2000:]
    # one runtime: the images reach every runtime's quantizer by the same path
    # (test_profiler_run_with_data_calibrates_int8_rows_on_real_images, in the slow run, feeds
    # LiteRT's and onnxruntime's)
    base = ["--device", "local", "--runtime", "onnxruntime", "--resolutions", "32", "--limit", "2", "--precision",
            "int8", "--repeats", "3", "--min-time", "0", "--cache", tmp_path / "cache", "--no-progress", "--calib-run", run]
    proc = run_cli("profiler.run", *base, "--space", "fmnist", "--lut", tmp_path / "l.csv")
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = read_rows(tmp_path / "l.csv")
    assert rows and all("through the largest subnet of supernet run run" in r["quant_calibration"] for r in rows)
    # a run of another space cannot carry images to these blocks: one line, nothing measured
    proc = run_cli("profiler.run", *base, "--space", "tiny", "--lut", tmp_path / "t.csv")
    assert proc.returncode == 2 and "is not the profiled space tiny" in last_error_line(proc), proc.stderr[-1000:]
    assert not (tmp_path / "t.csv").exists()


def test_an_int8_block_over_its_bound_is_an_error_never_an_int8_price(tmp_path, monkeypatch):
    """The guard against a broken quantization: a block whose int8 output is further from
    fp32 than its kind's bound is refused (QuantizationError) and no artifact is left, so
    profiler.run writes an error row for it instead of an int8 price."""
    from profiler import quantize
    from profiler.export import export_block

    fp32 = export_block(MB, "onnx", tmp_path / "b.onnx")
    ok = quantize.quantize_model("onnx-int8", fp32, tmp_path / "ok.onnx", MB.input_shape, str(MB), MB.kind)
    assert 0 < ok["error"] <= ok["bound"] and (tmp_path / "ok.onnx").is_file()
    monkeypatch.setattr(quantize, "error_bound", lambda kind, name="": ok["error"] / 2)  # the same error, over
    with pytest.raises(quantize.QuantizationError, match=r"above the .* bound for mbconv blocks"):
        quantize.quantize_model("onnx-int8", fp32, tmp_path / "bad.onnx", MB.input_shape, str(MB), MB.kind)
    assert not (tmp_path / "bad.onnx").exists()
