"""``bench/block_marginal.py`` (issue 11) as the suite runs it: small, onnxruntime, one JSON
object whose per-block figures add up to the prefix networks they were taken from."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import REPO


@pytest.mark.slow
def test_block_marginal_prints_each_blocks_cost_inside_the_network():
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "block_marginal.py"), "--runtime", "onnxruntime",
                           "--space", "tiny", "--resolution", "32", "--subnets", "1", "--rounds", "1", "--reps", "5",
                           "--junctions"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["bench"] == "block_marginal" and out["runtime"] == "onnxruntime" and len(out["subnets"]) == 1
    sub = out["subnets"][0]
    blocks = sub["blocks"]
    assert len(blocks) == sub["blocks_timed"] == out["blocks"] >= 3
    assert all(b["alone_us"] > 0 and b["probe_us"] > 0 and b["params"] >= 0 for b in blocks)
    # the marginals telescope to the whole prefix network; extra is marginal less the model's price
    assert abs(sum(b["marginal_us"] for b in blocks) - sub["network_us"]) < 0.05 * len(blocks)
    for b in blocks:
        assert abs(b["extra_us"] - (b["marginal_us"] - (b["alone_us"] - b["probe_us"]))) < 0.05
    model = sum(b["alone_us"] - b["probe_us"] for b in blocks) + blocks[0]["probe_us"]
    assert abs(model - sub["model_us"]) < 0.05 * len(blocks)
    # --junctions: every pair of neighbours timed as one model; its saving is the two blocks
    # alone less the pair, set beside what the whole network saves over its blocks alone
    junctions = sub["junctions"]
    assert len(junctions) == len(blocks) - 1 and all(j["pair_us"] > 0 for j in junctions)
    for k, j in enumerate(junctions):
        assert (j["a"], j["b"]) == (blocks[k]["block"], blocks[k + 1]["block"])
        assert abs(j["saving_us"] - (blocks[k]["alone_us"] + blocks[k + 1]["alone_us"] - j["pair_us"])) < 0.05
    assert abs(out["network_saving_us"][0] - (sum(b["alone_us"] for b in blocks) - sub["network_us"])) \
        < 0.05 * len(blocks)
    assert out["junction_saving_sum_us"][0] == pytest.approx(sum(j["saving_us"] for j in junctions), abs=0.05)
    bad = subprocess.run([sys.executable, str(REPO / "bench" / "block_marginal.py"), "--space", "tiny",
                          "--resolution", "33"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--resolution 33 is not one of space tiny" in bad.stderr.strip().splitlines()[-1]


@pytest.mark.slow
def test_block_marginal_in_int8_quantizes_every_model():
    """``--precision int8``: prefixes, blocks, probes (and pairs) quantized as profiler.quantize does
    (a convolution onnxruntime still runs in float makes the run say so); the
    telescoping holds as in fp32; LiteRT int8 is one clear error."""
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "block_marginal.py"), "--runtime", "onnxruntime",
                           "--space", "tiny", "--resolution", "32", "--subnets", "1", "--rounds", "1", "--reps", "5",
                           "--precision", "int8", "--calib", "2", "--junctions"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    # prefixes, blocks, probes and the pairs of neighbours, all quantized and checked
    assert out["precision"] == "int8" and out["int8_models_checked"] == 4 * out["blocks"] - 1 >= 11
    sub = out["subnets"][0]
    assert abs(sum(b["marginal_us"] for b in sub["blocks"]) - sub["network_us"]) < 0.05 * len(sub["blocks"])
    bad = subprocess.run([sys.executable, str(REPO / "bench" / "block_marginal.py"), "--runtime", "tflite",
                          "--precision", "int8"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "onnxruntime only" in bad.stderr.strip().splitlines()[-1]


def test_block_marginal_finds_convolutions_onnxruntime_runs_in_float(tmp_path):
    """The int8 check reads onnxruntime's optimized graph: an fp32 block's convolutions are
    named, the same block quantized by profiler.quantize has none left."""
    sys.path.insert(0, str(REPO / "bench"))
    from block_marginal import _float_matmuls

    from profiler.export import export_block
    from profiler.quantize import calibration_inputs, quantize_onnx
    from supernet.space import get_space

    spec = get_space("tiny").blocks(get_space("tiny").max_subnet(r=32))[1]
    fp32 = export_block(spec, "onnx", tmp_path / "b.onnx")
    assert len(_float_matmuls(fp32)) >= 2
    quantize_onnx(fp32, tmp_path / "b.int8.onnx", calibration_inputs(spec.input_shape, 0, n=2))
    assert _float_matmuls(tmp_path / "b.int8.onnx") == []
