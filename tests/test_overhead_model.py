"""Issue 11: the latency model takes each block's invocation overhead off and charges a
network once; calibrations are per runtime and per kind of sum; validation's noise floor;
nothing in profiler/ imports search/."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from profiler.costmodel import (CalibrationMismatch, LatencyModel, MissingKeysError, read_calibration,
                                write_calibration)
from profiler.lut import LutWriter, error_row
from profiler.run import with_overhead_probes
from profiler.validate import repeat_agreement
from supernet.space import PROBE_KINDS, TINY, BlockSpec, boundary_probes, overhead_probe

from conftest import REPO

R = 32


def _table(with_probes=True):
    """Block latency = 1 ms + 0.001 ms per output element; probe = 0.25 ms + 1e-5 ms per input element."""
    t = {}
    for b in TINY.all_blocks([R]):
        t[str(b)] = 1.0 + 0.001 * b.out_h * b.out_w * b.out_c
    if with_probes:
        for p in (s for s in with_overhead_probes(TINY.all_blocks([R])) if s.kind == "overhead"):
            t[str(p)] = 0.25 + 1e-5 * p.in_h * p.in_w * p.in_c
    return t


def test_probe_is_an_identity_shaped_relu_keyed_like_a_block():
    b = TINY.all_blocks([R])[3]
    p = overhead_probe(b)
    assert (p.kind, p.in_h, p.in_w, p.in_c) == ("overhead", b.in_h, b.in_w, b.in_c)
    assert p.output_shape == p.input_shape and p.params() == 0 and p.macs() == 0
    assert BlockSpec.parse(str(p)) == p
    with pytest.raises(ValueError, match="overhead probe"):
        BlockSpec("overhead", 4, 4, 8, 2, 2, 8, act="relu")
    # profiler.run measures each shape's probes (overhead, then the two boundary probes) just
    # before the first block of that shape
    specs = TINY.all_blocks([R])
    out = with_overhead_probes(specs)
    assert [s for s in out if s.kind not in PROBE_KINDS] == specs
    for i, s in enumerate(out):
        if s.kind == "overhead":
            assert out[i + 1: i + 3] == list(boundary_probes(s)) and out[i + 3].input_shape == s.input_shape
    assert len([s for s in out if s.kind == "overhead"]) == len({s.input_shape for s in specs})
    assert len([s for s in out if s.kind == "boundary"]) == 2 * len({s.input_shape for s in specs})


def test_overhead_model_subtracts_per_block_and_adds_once_per_network():
    t = _table()
    m, plain = LatencyModel(TINY, t), LatencyModel(TINY, t, overhead=False)
    assert m.uses_overhead(R) and not plain.uses_overhead(R)
    rng = __import__("random").Random(0)
    subnets = [TINY.sample(rng, resolutions=[R]) for _ in range(12)] + [TINY.max_subnet(r=R), TINY.min_subnet(r=R)]
    for cfg in subnets:
        blocks = TINY.blocks(cfg)
        want = sum(t[str(b)] - t[str(overhead_probe(b))] for b in blocks) + t[str(overhead_probe(blocks[0]))]
        assert m.raw_sum(cfg) == pytest.approx(want)
        assert plain.raw_sum(cfg) == pytest.approx(sum(t[str(b)] for b in blocks))
    # the vectorised tables agree with the per-block sums, calibrated or not
    assert np.allclose(m.cost(subnets, calibrated=False), [m.raw_sum(c) for c in subnets])
    m.calibration = (2.0, 0.5)
    assert np.allclose(m.latency(subnets), [2.0 * m.raw_sum(c) + 0.5 for c in subnets])
    # a LUT without probes is summed as it is, whatever is asked
    bare = LatencyModel(TINY, _table(with_probes=False))
    assert not bare.uses_overhead(R)
    assert bare.raw_sum(subnets[0]) == pytest.approx(plain.raw_sum(subnets[0]))


def _with_boundary(t, clamped_shape):
    """``t`` with boundary probes: one layer 0.3 ms, two 0.32 ms + 1e-5 ms per input element
    (edge 0.28 ms + 1e-5 per element, above the overhead probe), except at ``clamped_shape``,
    whose two-layer probe is so slow that 2 t(one) - t(two) falls under the overhead probe."""
    t = dict(t)
    for p in (s for s in with_overhead_probes(TINY.all_blocks([R])) if s.kind == "overhead"):
        one, two = boundary_probes(p)
        el = p.in_h * p.in_w * p.in_c
        t[str(one)] = 0.3 + 2e-5 * el
        t[str(two)] = (0.32 + 3e-5 * el) if p.input_shape != clamped_shape else 0.6 + 3e-5 * el
    return t


def test_boundary_probes_replace_the_overhead_probe_as_a_blocks_edge(tmp_path):
    base = _table()
    blocks_r = TINY.all_blocks([R])
    clamped = blocks_r[3].input_shape
    t = _with_boundary(base, clamped)
    m, ident = LatencyModel(TINY, t), LatencyModel(TINY, t, boundary=False)
    assert m.uses_overhead(R) and m.uses_boundary(R) and not ident.uses_boundary(R)
    assert not LatencyModel(TINY, base).uses_boundary(R) and not LatencyModel(TINY, t, overhead=False).uses_boundary(R)
    # int8 blocks do not run in onnxruntime's NCHWc: their boundary rows (older tables) are not used
    assert not LatencyModel(TINY, t, precision="int8").uses_boundary(R)
    assert LatencyModel(TINY, t, precision="int8").raw_sum(TINY.max_subnet(r=R)) == pytest.approx(
        LatencyModel(TINY, base, precision="int8").raw_sum(TINY.max_subnet(r=R)))
    rng = __import__("random").Random(1)
    subnets = [TINY.sample(rng, resolutions=[R]) for _ in range(12)] + [TINY.max_subnet(r=R), TINY.min_subnet(r=R)]

    def edge(b):
        one, two = boundary_probes(b)
        return max(2 * t[str(one)] - t[str(two)], t[str(overhead_probe(b))])

    assert edge(blocks_r[3]) == t[str(overhead_probe(blocks_r[3]))]  # clamped to the overhead probe
    assert edge(blocks_r[0]) > t[str(overhead_probe(blocks_r[0]))]
    for cfg in subnets:
        blocks = TINY.blocks(cfg)
        first = t[str(overhead_probe(blocks[0]))]  # a network still pays one invocation
        assert m.raw_sum(cfg) == pytest.approx(sum(t[str(b)] - edge(b) for b in blocks) + first)
        assert ident.raw_sum(cfg) == pytest.approx(LatencyModel(TINY, base).raw_sum(cfg))
        assert m.raw_sum(cfg) < ident.raw_sum(cfg)
    assert np.allclose(m.cost(subnets, calibrated=False), [m.raw_sum(c) for c in subnets])
    # a missing boundary probe is named like any missing row
    gone = boundary_probes(TINY.blocks(TINY.max_subnet(r=R))[2])[1]
    del t[str(gone)]
    with pytest.raises(MissingKeysError, match=str(gone).replace("+", r"\+")):
        LatencyModel(TINY, t).raw_sum(TINY.max_subnet(r=R))
    # a calibration fitted on sums with the overhead probe as the edge is not applied to these
    cal = tmp_path / "c.json"
    write_calibration(cal, "onnxruntime", {"a": 1.1, "b": 0.0, "overhead": True, "stream": False})
    with pytest.raises(CalibrationMismatch, match="without the layout-boundary probes"):
        read_calibration(cal, "onnxruntime", overhead=True, stream=False, boundary=True)
    assert read_calibration(cal, "onnxruntime", overhead=True, stream=False, boundary=False) == (1.1, 0.0)


def test_a_missing_probe_is_named():
    t = _table()
    probe = overhead_probe(TINY.blocks(TINY.max_subnet(r=R))[2])
    del t[str(probe)]
    m = LatencyModel(TINY, t)
    with pytest.raises(MissingKeysError) as exc:
        m.raw_sum(TINY.max_subnet(r=R))
    assert str(probe) in exc.value.keys
    with pytest.raises(MissingKeysError):
        m.tables(R, TINY.default_width)


def test_calibration_file_keeps_every_runtime_and_the_kind_of_sum(tmp_path):
    path = tmp_path / "l.calibration.json"
    write_calibration(path, "onnxruntime", {"a": 0.9, "b": 0.01, "overhead": True})
    write_calibration(path, "tflite", {"a": 1.1, "b": 0.0, "overhead": False})
    data = json.loads(path.read_text())["runtimes"]
    assert sorted(data) == ["onnxruntime", "tflite"]
    assert read_calibration(path, "onnxruntime", overhead=True) == (0.9, 0.01)
    assert read_calibration(path, "tflite", overhead=False) == (1.1, 0.0)
    with pytest.raises(CalibrationMismatch, match="without the overhead model"):
        read_calibration(path, "tflite", overhead=True)
    with pytest.raises(CalibrationMismatch, match="is for runtime"):
        read_calibration(path, "tvm")
    # the one-runtime form of earlier versions still reads (fitted on plain sums)
    old = tmp_path / "old.calibration.json"
    old.write_text(json.dumps({"a": 2.0, "b": 0.5, "runtime": "onnxruntime"}))
    assert read_calibration(old, "onnxruntime", overhead=False) == (2.0, 0.5)
    with pytest.raises(CalibrationMismatch):
        read_calibration(old, "onnxruntime", overhead=True)


def _write_lut(lut):
    """``_table()`` as an onnxruntime LUT file."""
    with LutWriter(lut) as w:
        for key, ms in _table().items():
            row = error_row(key, "onnxruntime", "", {})
            row.update(status="ok", median_ms=ms, error="")
            w.add(row)
    return lut


def test_auto_calibration_applies_only_to_the_same_kind_of_sum(tmp_path):
    lut = _write_lut(tmp_path / "l.csv")
    write_calibration(tmp_path / "l.calibration.json", "onnxruntime", {"a": 0.5, "b": 0.0, "overhead": True})
    assert LatencyModel.from_lut(lut, TINY, calibration="auto").calibration == (0.5, 0.0)
    assert LatencyModel.from_lut(lut, TINY, calibration="auto", overhead=False).calibration is None


def test_a_calibration_fitted_on_a_noisy_validation_is_not_applied(tmp_path):
    lut = _write_lut(tmp_path / "l.csv")
    cal = tmp_path / "l.calibration.json"
    write_calibration(cal, "onnxruntime", {"a": 0.5, "b": 0.0, "overhead": True, "verdict": "off", "noise_pct": 1.3})
    assert LatencyModel.from_lut(lut, TINY, calibration="auto").calibration == (0.5, 0.0)
    write_calibration(cal, "onnxruntime", {"a": 0.5, "b": 0.0, "overhead": True, "verdict": "noisy",
                                           "noise_pct": 41.9})
    model = LatencyModel.from_lut(lut, TINY, calibration="auto")
    assert model.calibration is None and "too noisy to judge" in model.calibration_skipped
    assert "41.9%" in model.calibration_skipped
    with pytest.raises(CalibrationMismatch, match="run profiler.validate again on a quiet device"):
        read_calibration(cal, "onnxruntime", overhead=True)
    # nor one fitted while the table's own blocks ran 1.16x their rows (a passing state of the device)
    write_calibration(cal, "onnxruntime", {"a": 1.2, "b": 0.0, "overhead": True, "verdict": "drifted",
                                           "noise_pct": 1.9, "drift": 1.16})
    model = LatencyModel.from_lut(lut, TINY, calibration="auto")
    assert model.calibration is None and "took 1.16x their LUT time" in model.calibration_skipped


def test_repeat_agreement_pools_both_directions():
    meas = np.array([[1.0, 2.0, 4.0, np.nan], [1.0, 2.4, 4.0, 3.0]])
    r = repeat_agreement(meas)
    # pairs: 0, +20% / -16.7%, 0 (both directions), the NaN network left out
    assert r["repeat_within_10pct"] == pytest.approx(4 / 6)
    assert r["repeat_median_abs_diff_pct"] == pytest.approx(0.0)
    assert repeat_agreement(meas[:1]) == {}


def test_profiler_never_imports_search():
    code = ("import sys, importlib, pkgutil, profiler\n"
            "for m in pkgutil.iter_modules(profiler.__path__):\n"
            "    importlib.import_module('profiler.' + m.name)\n"
            "bad = sorted(k for k in sys.modules if k == 'search' or k.startswith('search.'))\n"
            "print(','.join(bad))")
    p = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == ""


@pytest.mark.parametrize("text", ['{"runtimes": [1, 2]}', '{"runtimes": {"onnxruntime": 3}}', "[]", "{"])
def test_a_corrupt_calibration_file_is_an_error_naming_it(tmp_path, text):
    path = tmp_path / "l.calibration.json"
    path.write_text(text)
    with pytest.raises(ValueError, match="not a calibration file") as exc:
        read_calibration(path, "onnxruntime")
    assert str(path) in str(exc.value) and not isinstance(exc.value, CalibrationMismatch)
