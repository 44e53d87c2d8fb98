"""Export of blocks to ONNX and TFLite: outputs equal PyTorch's, NHWC TFLite I/O without
TRANSPOSE, and the on-disk cache (issue 2, section 3)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from profiler.export import ArtifactCache, block_module
from supernet.space import OFA_MBV3, TINY, BlockSpec



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
    # in this process: a pool's workers would each import litert-torch again (7 s of CPU each
    # on a slow host); export pools have tests of their own
    results = cache.ensure(items, workers=1, progress=False)
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


def test_blocks_converted_together_equal_each_converted_alone(exported, tmp_path):
    """The fixture converted the TFLite blocks in one litert-torch call and split the result
    (``TFLITE_BATCH``): each part has the operators of the block converted on its own and
    gives bit-identical outputs."""
    from ai_edge_litert.interpreter import Interpreter

    from profiler.export import batchable, export_block
    from profiler.tflite_split import operator_names

    cache, results = exported
    joint = [b for b in BLOCKS if batchable(str(b), "tflite")]
    assert len(joint) >= 6
    for spec in (next(b for b in joint if b.se), joint[-1]):
        together = results[(str(spec), "tflite")].path.read_bytes()
        alone = export_block(spec, "tflite", tmp_path / "alone.tflite").read_bytes()
        assert operator_names(together) == operator_names(alone), spec
        x = np.random.default_rng(2).standard_normal(spec.input_shape).astype(np.float32).transpose(0, 2, 3, 1)
        outs = []
        for model in (together, alone):
            runner = Interpreter(model_content=model, num_threads=1).get_signature_runner()
            outs.append(runner(args_0=np.ascontiguousarray(x))["output_0"])
        assert np.array_equal(outs[0], outs[1]), spec


def test_folding_batchnorm_before_conversion_changes_no_operator_or_weight(tmp_path, monkeypatch):
    """The exporters are handed each module with its BatchNorms folded into the convolutions
    (``supernet.ops.fold_bn``, which makes litert-torch's conversion 1.5x faster): the .tflite
    written has the operators and constant buffers, bit for bit, of the module converted as
    it was, so no table measures another graph than before."""
    import torch
    from ai_edge_litert import schema_py_generated as schema

    import supernet.ops

    from profiler.export import export_block

    def constants(data: bytes) -> list:
        m = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(data, 0))
        g = m.subgraphs[0]
        return [(m.operatorCodes[op.opcodeIndex].builtinCode,
                 [bytes(m.buffers[g.tensors[t].buffer].data) for t in op.inputs
                  if t >= 0 and m.buffers[g.tensors[t].buffer].data is not None])
                for op in g.operators]

    spec = next(b for b in BLOCKS if b.kind == "mbconv" and b.se)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in block_module(spec).modules())
    folded = constants(export_block(spec, "tflite", tmp_path / "folded.tflite").read_bytes())
    monkeypatch.setattr(supernet.ops, "fold_bn", lambda net: net)  # the module as it is
    as_is = constants(export_block(spec, "tflite", tmp_path / "as_is.tflite").read_bytes())
    assert [op for op, _ in folded] == [op for op, _ in as_is] and len(folded) >= 5
    assert folded == as_is


def test_networks_that_fail_together_are_exported_one_by_one(tmp_path, monkeypatch):
    """export_networks (profiler.validate's TFLite networks): one joint conversion; when it
    fails, network by network, so the network that cannot be converted is the one error."""
    import profiler.export as ex
    from supernet.space import get_space

    space = get_space("tiny")
    cfgs = [space.max_subnet(r=32), space.min_subnet(r=32), space.max_subnet(r=32)]
    calls = []

    def joint_ok(modules, examples, paths, what="blocks"):
        calls.append(len(modules))
        for p in paths:
            Path(p).write_bytes(b"joint")

    def joint_fails(modules, examples, paths, what="blocks"):
        raise RuntimeError("joint conversion exploded")

    def alone(space_, cfg, fmt, path, module=None):
        if cfg == cfgs[1]:
            raise RuntimeError("this network cannot be converted")
        Path(path).write_bytes(b"alone")
        return path

    monkeypatch.setattr(ex, "export_network", alone)
    monkeypatch.setattr(ex, "export_tflite_many", joint_ok)
    paths = [tmp_path / f"n{i}.tflite" for i in range(3)]
    done = []
    assert ex.export_networks(space, cfgs, "tflite", paths, done=done.append) == ["", "", ""]
    assert calls == [3] and sum(done) == 3 and all(p.read_bytes() == b"joint" for p in paths)
    monkeypatch.setattr(ex, "export_tflite_many", joint_fails)
    errs = ex.export_networks(space, cfgs, "tflite", paths)
    assert errs[0] == errs[2] == "" and "cannot be converted" in errs[1]
    assert paths[0].read_bytes() == b"alone"
    # ONNX networks are exported one by one from the start
    monkeypatch.setattr(ex, "export_tflite_many", joint_ok)
    calls.clear()
    assert ex.export_networks(space, cfgs, "onnx", [tmp_path / f"n{i}.onnx" for i in range(3)])[1].startswith("export:")
    assert calls == []


@pytest.mark.slow
def test_networks_converted_in_worker_processes_compute_the_seeded_network(tmp_path):
    """export_networks(workers=2), as profiler.validate converts TFLite networks: each file is
    written by a spawned worker and computes what the network this process builds for the
    configuration (seeded weights, ``network_module``) computes; progress hears of every
    network."""
    import torch
    from ai_edge_litert.interpreter import Interpreter

    from profiler.export import export_networks, network_module
    from supernet.space import get_space

    space = get_space("tiny")
    cfgs = [space.min_subnet(r=32), space.min_subnet(r=40)]
    paths = [tmp_path / f"n{i}.tflite" for i in range(2)]
    done = []
    assert export_networks(space, cfgs, "tflite", paths, done=done.append, workers=2) == ["", ""]
    assert sum(done) == 2
    for cfg, path in zip(cfgs, paths):
        x = np.random.default_rng(3).standard_normal((1, space.in_channels, cfg.r, cfg.r)).astype(np.float32)
        with torch.no_grad():
            want = network_module(space, cfg)(torch.from_numpy(x)).numpy()
        runner = Interpreter(model_path=str(path), num_threads=1).get_signature_runner()
        got = next(iter(runner(args_0=np.ascontiguousarray(x.transpose(0, 2, 3, 1))).values()))
        assert np.allclose(got.reshape(want.shape), want, atol=1e-4), cfg


def test_a_chunk_that_fails_together_is_converted_block_by_block(tmp_path, monkeypatch):
    import profiler.export as ex

    def joint_fails(specs, paths):
        raise RuntimeError("joint conversion exploded")

    def alone(spec, fmt, path):
        if spec.kind == "classifier":
            raise RuntimeError("this block cannot be converted")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"model of " + str(spec).encode())
        return path

    monkeypatch.setattr(ex, "export_tflite_blocks", joint_fails)
    monkeypatch.setattr(ex, "export_block", alone)
    blocks = [b for b in BLOCKS if b.kind != "pool"]
    assert len(ex.plan_tasks([(str(b), "tflite") for b in blocks], workers=1)) == 1  # one chunk
    res = ArtifactCache(tmp_path).ensure([(str(b), "tflite") for b in blocks], workers=1, progress=False)
    for b in blocks:
        r = res[(str(b), "tflite")]
        if b.kind == "classifier":
            assert r.path is None and "cannot be converted" in r.error
        else:
            assert r.path.read_bytes() == b"model of " + str(b).encode()


def test_split_refuses_a_model_whose_outputs_are_not_independent(tmp_path):
    import litert_torch
    import torch

    from profiler.tflite_split import SplitError, split_model

    class Crossed(torch.nn.Module):
        def forward(self, a, b):
            return torch.relu(a), a * b

    path = tmp_path / "crossed.tflite"
    litert_torch.convert(Crossed().eval(), (torch.randn(1, 4, 4, 3), torch.randn(1, 4, 4, 3))).export(str(path))
    with pytest.raises(SplitError, match="output_1 reads"):
        split_model(path.read_bytes(), 2)
    with pytest.raises(SplitError, match="signature"):
        split_model(path.read_bytes(), 3)


def test_quiet_fds_captures_the_converters_output_and_leaves_no_log_behind():
    """Exports and quantizations silence fds 1 and 2 into a temporary log (an error quotes its
    tail); the log is removed afterwards, on success and on failure, so that a LUT build of
    thousands of artifacts leaves nothing in the temporary folder."""
    import os

    from profiler.export import _tail, quiet_fds

    with quiet_fds() as log:
        os.write(1, b"converter progress on fd 1\n")
        os.write(2, b"absl warning on fd 2\n")
        assert "converter progress on fd 1 | absl warning on fd 2" in _tail(log)
    assert not log.exists()
    with pytest.raises(RuntimeError, match="failed"):
        with quiet_fds() as log2:
            raise RuntimeError("failed")
    assert not log2.exists()


def test_a_dead_export_worker_costs_no_block_and_the_next_submit_works(tmp_path):
    """A worker killed mid-run (out of memory, a converter's crash) breaks the whole process
    pool: its tasks are given once more to a new pool, so no block gets an error row for
    it, and later submissions start a new pool instead of raising BrokenProcessPool."""
    import os
    import signal

    from profiler.export import ArtifactCache
    from profiler.measure import ExportBroker
    from supernet.space import TINY

    blocks = TINY.all_blocks([32])[:4]
    broker = ExportBroker(ArtifactCache(tmp_path / "cache"), workers=1)
    try:
        futures = broker.submit_many([(str(b), "onnx") for b in blocks[:3]])
        first = broker._pool
        for pid in list(first._processes):  # dies before converting anything
            os.kill(pid, signal.SIGKILL)
        results = [f.result(timeout=120) for f in futures.values()]
        assert all(r.path is not None and r.path.is_file() and not r.error for r in results), results
        later = broker.submit_many([(str(blocks[3]), "onnx")])
        (r,) = [f.result(timeout=120) for f in later.values()]
        assert r.path is not None and not r.error and broker._pool is not first
    finally:
        broker.close()


def test_the_cache_version_follows_the_code_that_builds_artifacts(tmp_path, monkeypatch):
    """An artifact built by other builder, export or quantization code is another cache
    entry: the version holds a hash of those sources (a forgotten manual bump once let old
    networks be reused after the builder changed)."""
    from profiler import export

    src = tmp_path / "builder.py"
    src.write_text("x = 1\n")
    monkeypatch.setattr(export, "_SOURCES", {"fp32": (str(src),), "int8": (str(src),)})
    before = {f: export.exporter_version(f) for f in export.FORMATS}
    src.write_text("x = 2\n")
    after = {f: export.exporter_version(f) for f in export.FORMATS}
    assert all(before[f] != after[f] for f in export.FORMATS)
    assert ArtifactCache(tmp_path / "c").path("k", "onnx").parent.name == after["onnx"]
