"""Export of blocks to ONNX and TFLite: outputs equal PyTorch's, NHWC TFLite I/O without
TRANSPOSE, and the on-disk cache (issue 2, section 3)."""

from __future__ import annotations

import numpy as np
import pytest

from profiler.export import ArtifactCache, block_module
from supernet.space import OFA_MBV3, TINY, BlockSpec

pytestmark = pytest.mark.slow


def _sample_blocks() -> list[BlockSpec]:
    """One block of every kind and every mbconv variant (expand or not, SE, residual,
    stride 2, ReLU and h-swish), small enough to export quickly."""
    blocks = TINY.all_blocks([32])
    picks = {
        "first_conv": lambda b: b.kind == "first_conv",
        "mbconv-noexpand": lambda b: b.kind == "mbconv" and not b.has_expand,
        "mbconv-s2-relu": lambda b: b.kind == "mbconv" and b.stride == 2 and b.act == "relu" and b.kernel == 5,
        "mbconv-se-hswish-res": lambda b: b.kind == "mbconv" and b.se and b.residual and b.act == "hswish",
        "final_expand": lambda b: b.kind == "final_expand",
        "pool": lambda b: b.kind == "pool",
        "feature_mix": lambda b: b.kind == "feature_mix",
        "classifier": lambda b: b.kind == "classifier",
    }
    out = []
    for name, pred in picks.items():
        match = [b for b in blocks if pred(b)]
        assert match, name
        out.append(match[0])
    # one real OFA block with a 7x7 depthwise and SE
    out.append(next(b for b in OFA_MBV3.all_blocks([128]) if b.kernel == 7 and b.se and b.residual))
    return out


BLOCKS = _sample_blocks()


@pytest.fixture(scope="module")
def exported(artifact_cache):
    cache = ArtifactCache(artifact_cache)
    items = [(str(b), fmt) for fmt in ("onnx", "tflite") for b in BLOCKS]
    results = cache.ensure(items, workers=2, progress=False)
    return cache, results


def _reference(spec: BlockSpec, x: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return block_module(spec)(torch.from_numpy(x)).numpy()


@pytest.mark.parametrize("spec", BLOCKS, ids=lambda b: b.kind + ("-se" if b.se else "") + f"-k{b.kernel}")
def test_onnx_matches_pytorch(exported, spec):
    import onnxruntime as ort

    cache, results = exported
    r = results[(str(spec), "onnx")]
    assert r.path is not None, r.error
    sess = ort.InferenceSession(str(r.path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal(spec.input_shape).astype(np.float32)
    (y,) = sess.run(None, {sess.get_inputs()[0].name: x})
    ref = _reference(spec, x)
    assert y.shape == ref.shape == spec.output_shape
    assert np.abs(y - ref).max() <= 1e-4


@pytest.mark.parametrize("spec", BLOCKS, ids=lambda b: b.kind + ("-se" if b.se else "") + f"-k{b.kernel}")
def test_tflite_matches_pytorch_nhwc_without_transpose(exported, spec):
    from ai_edge_litert.interpreter import Interpreter

    cache, results = exported
    r = results[(str(spec), "tflite")]
    assert r.path is not None, r.error
    it = Interpreter(model_path=str(r.path), num_threads=1)
    it.allocate_tensors()
    ops = [op["op_name"] for op in it._get_ops_details()]
    assert "TRANSPOSE" not in ops, ops
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    n, c, h, w = spec.input_shape
    assert tuple(inp["shape"]) == (n, h, w, c)  # NHWC in
    x = np.random.default_rng(1).standard_normal(spec.input_shape).astype(np.float32)
    it.set_tensor(inp["index"], np.ascontiguousarray(x.transpose(0, 2, 3, 1)))
    it.invoke()
    y = it.get_tensor(out["index"])
    ref = _reference(spec, x)
    if ref.ndim == 4:
        ref = ref.transpose(0, 2, 3, 1)  # NHWC out
    assert y.shape == ref.shape
    assert np.abs(y - ref).max() <= 1e-4


def test_second_run_exports_nothing(exported):
    cache, first = exported
    assert all(r.path is not None for r in first.values())
    again = cache.ensure(list(first), workers=2, progress=False)
    assert not any(r.exported for r in again.values())
    assert {k: r.path for k, r in again.items()} == {k: r.path for k, r in first.items()}


def test_cache_is_keyed_by_exporter_version(exported, tmp_path):
    cache, _ = exported
    key = str(BLOCKS[0])
    onnx, tfl = cache.path(key, "onnx"), cache.path(key, "tflite")
    assert cache.version("onnx") in str(onnx) and cache.version("tflite") in str(tfl)
    assert "litert_torch" in cache.version("tflite") and "torch" in cache.version("onnx")


def test_failed_export_is_a_result_not_a_crash(tmp_path, monkeypatch):
    import profiler.export as ex

    def broken(spec, fmt, path):
        raise RuntimeError("converter exploded")

    monkeypatch.setattr(ex, "export_block", broken)
    cache = ArtifactCache(tmp_path)
    res = cache.ensure([(str(BLOCKS[0]), "onnx"), (str(BLOCKS[1]), "onnx")], workers=1, progress=False)
    assert len(res) == 2
    for r in res.values():
        assert r.path is None and "converter exploded" in r.error
    assert not list(tmp_path.rglob("*.onnx"))  # nothing half-written left behind
