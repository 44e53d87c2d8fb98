"""Issue 11: weight streaming.  The profiler's stream probes (chains of matrix-vector
products of 0.25-8 MiB of weights) give the device's time per weight byte as the weights
outgrow its caches; the latency model charges a network for the weights it reads from
further away than its blocks did when each was timed alone."""

from __future__ import annotations

import random

import numpy as np
import pytest

from profiler.costmodel import LatencyModel, read_calibration, solo_bytes, write_calibration
from profiler.run import with_overhead_probes
from search.encoding import Choices, Population
from search.evolve import CostArrays
from supernet import ops
from supernet.space import STREAM_LAYERS, STREAM_MORE, TINY, BlockSpec, get_space, stream_layers, stream_probes

R = 32
MB = 1e6
HOT, COLD, KNEE = 10e-6, 40e-6, 1.0 * MB  # ms per byte below the knee, beyond 2x the knee


def _per_byte(wbytes: float) -> float:
    """A device whose time per weight byte is HOT up to the knee, COLD from twice it."""
    return HOT + (COLD - HOT) * float(np.clip((wbytes - KNEE) / KNEE, 0.0, 1.0))


def _table(stream=True, block_scale=1e-4, space=TINY):
    t = {}
    for b in space.all_blocks([R], [space.default_width]):
        t[str(b)] = 0.05 + block_scale * b.params() / 1e3
    specs = space.all_blocks([R], [space.default_width]) + (stream_probes() if stream else [])
    for p in (s for s in with_overhead_probes(specs) if s.kind == "overhead"):
        t[str(p)] = 0.004
    if stream:
        for s in stream_probes():
            w = s.params() * 4
            t[str(s)] = 0.004 + _per_byte(w) * w
    return t


def test_stream_probes_are_chains_of_matrix_vector_products_keyed_like_blocks():
    probes = stream_probes()
    assert [p.mid for p in probes] == list(STREAM_LAYERS)
    assert [p.params() * 4 / 2**20 for p in probes] == [n / 4 for n in STREAM_LAYERS]  # 0.25 to 8 MiB
    for p in probes:
        assert BlockSpec.parse(str(p)) == p and p.input_shape == p.output_shape == (1, 256, 1, 1)
        net = ops.build_block(p)
        assert sum(x.numel() for x in net.parameters()) == p.params()
        import torch

        x = torch.randn(1, 256, 1, 1)
        assert torch.allclose(net(x).norm(), x.norm(), rtol=1e-3)  # orthogonal layers: no vanishing, no denormals
    for bad in (dict(mid=0), dict(in_h=2, out_h=2), dict(act="relu"), dict(out_c=128)):
        kw = dict(kind="stream", in_h=1, in_w=1, in_c=256, out_h=1, out_w=1, out_c=256, mid=4)
        kw.update(bad)
        with pytest.raises(ValueError, match="stream probe"):
            BlockSpec(**kw)


def test_stream_probes_reach_what_the_largest_network_touches():
    """The curve is held flat beyond its largest probe, so the probes must reach what the
    largest network profiled touches in a run (its blocks' weights and activations): the
    fmnist space's fit in the base set, the OFA space's 224-px networks (about 70 MiB at
    width 1.0, 31 MiB of it weights) need probes to 96 MiB."""
    mib = 2**20
    assert stream_layers(0) == stream_layers(8 * mib) == STREAM_LAYERS
    assert stream_layers(8 * mib + 1) == STREAM_LAYERS + (48,)
    assert stream_layers(30 * mib) == STREAM_LAYERS + (48, 64, 96, 128)
    assert stream_layers(10**12) == STREAM_LAYERS + STREAM_MORE  # capped: 128 MiB
    for name, r, w in (("fmnist", 48, 1.0), ("ofa_mbv3", 224, 1.0), ("ofa_mbv3", 224, 1.2)):
        space = get_space(name)
        largest = sum(solo_bytes(b) for b in space.blocks(space.max_subnet(r, w)))
        assert largest > sum(b.params() for b in space.blocks(space.max_subnet(r, w))) * 4
        layers = stream_layers(largest)
        assert layers[-1] * 256 * 256 * 4 >= largest
        assert len(layers) == len(STREAM_LAYERS) or layers[-2] * 256 * 256 * 4 < largest  # no probe beyond need
    assert stream_layers(sum(solo_bytes(b) for b in get_space("fmnist").blocks(get_space("fmnist").max_subnet(48)))) \
        == STREAM_LAYERS
    ofa = get_space("ofa_mbv3")
    assert stream_layers(sum(solo_bytes(b) for b in ofa.blocks(ofa.max_subnet(224)))) == STREAM_LAYERS + STREAM_MORE[:7]


def test_stream_curve_is_the_excess_time_per_byte_above_its_minimum():
    m = LatencyModel(TINY, _table())
    wb, excess = m.stream_curve(R)
    assert list(wb) == sorted(wb) and len(wb) == len(STREAM_LAYERS)
    want = [_per_byte(w) - HOT for w in wb]
    assert np.allclose(excess, want, atol=1e-12)
    assert np.all(np.diff(excess) >= 0)
    # a dip in the measurements (noise) does not make the excess fall again
    t = _table()
    dip = stream_probes()[-1]
    t[str(dip)] = 0.004 + 0.9 * (t[str(dip)] - 0.004)
    assert np.all(np.diff(LatencyModel(TINY, t).stream_curve(R)[1]) >= 0)
    # the per-invocation overhead comes off each probe before dividing by its bytes
    t = _table()
    for s in stream_probes():
        t[str(s)] += 0.5
    assert LatencyModel(TINY, t).stream_curve(R)[1][0] == 0.0


def test_weight_cost_charges_each_block_the_networks_excess_above_its_own():
    m = LatencyModel(TINY, _table())
    curve = m.stream_curve(R)
    e = lambda x: float(np.interp(x, *curve))  # noqa: E731
    # a heavy network: every block pays e(F) - e(its solo working set) per weight byte, F
    # being what a run touches (every block's weights and activations: 4 MB here, of which
    # 2 MB are weights)
    params = np.array([[200_000.0, 300_000.0, 0.0]])
    solo = np.array([[0.9 * MB, 3.0 * MB, 0.1 * MB]])  # the second block overflowed the caches alone
    got = m.weight_cost(params, solo, R)[0]
    net = e(4.0 * MB)
    want = max(0.0, net - e(0.9 * MB)) * 0.8 * MB + max(0.0, net - e(3.0 * MB)) * 1.2 * MB
    assert got == pytest.approx(want) and got > 0
    # a light network pays nothing, and activations count: two blocks whose weights fit pay
    # nothing beside a block without weights that touches little, and pay once that block's
    # activations push a run past the caches
    light = np.array([[25_000.0, 25_000.0, 0.0]])  # 0.2 MB of weights
    assert m.weight_cost(light, np.array([[0.2 * MB, 0.2 * MB, 0.05 * MB]]), R)[0] == 0.0
    pushed = m.weight_cost(light, np.array([[0.2 * MB, 0.2 * MB, 2.0 * MB]]), R)[0]
    assert pushed == pytest.approx(2 * (e(2.4 * MB) - e(0.2 * MB)) * 0.1 * MB) and pushed > 0
    # no stream rows, or stream=False: no term
    assert not LatencyModel(TINY, _table(stream=False)).has_weight_cost(R)
    assert not LatencyModel(TINY, _table(), stream=False).has_weight_cost(R)
    b = TINY.all_blocks([R])[3]
    assert solo_bytes(b) == 4 * (b.params() + b.in_h * b.in_w * b.in_c + b.out_h * b.out_w * b.out_c
                                 + (b.in_h * b.in_w + b.out_h * b.out_w) * b.mid)


def test_every_sum_of_the_model_prices_the_same_weight_term():
    """raw_sum (per block), cost (the tables) and search.evolve's CostArrays agree, so the
    search and profiler.validate price a network alike; dearest() bounds every subnet."""
    space = get_space("fmnist")  # its networks hold 1.4-2.9 MB of weights: across the knee
    t = _table(space=space)
    m, bare = LatencyModel(space, t), LatencyModel(space, t, stream=False)
    rng = random.Random(1)
    subnets = [space.sample(rng, resolutions=[R]) for _ in range(20)] + [space.max_subnet(r=R), space.min_subnet(r=R)]
    raw = np.array([m.raw_sum(c) for c in subnets])
    terms = raw - np.array([bare.raw_sum(c) for c in subnets])
    assert terms.max() > 1e-3 and terms.min() >= 0  # the term is really exercised
    assert np.allclose(m.cost(subnets, calibrated=False), raw)
    choices = Choices(space, (R,), (space.default_width,))
    arrays = CostArrays(m, choices)
    pop = Population.from_subnets(subnets, choices)
    assert np.allclose(arrays.raw(pop), raw)
    assert arrays.dearest() >= raw.max() - 1e-12


def test_a_calibration_applies_only_to_the_same_kind_of_sum(tmp_path):
    path = tmp_path / "x.calibration.json"
    write_calibration(path, "onnxruntime", {"a": 1.1, "b": 0.0, "overhead": True, "stream": False})
    assert read_calibration(path, "onnxruntime", overhead=True, stream=False) == (1.1, 0.0)
    with pytest.raises(ValueError, match="weight-streaming"):
        read_calibration(path, "onnxruntime", overhead=True, stream=True)




def test_profiler_run_measures_stream_probes_in_each_precision(tmp_path):
    """A warm run of the whole space measures the probes (``--stream-probes auto``); with
    --limit they are asked for (``on``); an int8 table gets the same chains quantized (each
    within its depth's error bound) and its model prices int8 weights from them, a byte a
    parameter; a rotation refuses them."""
    from conftest import run_cli
    from profiler.lut import LutTable
    from profiler.quantize import error_bound

    lut = tmp_path / "s.csv"
    args = ["--device", "local", "--runtime", "onnxruntime", "--space", "tiny", "--resolutions", "32", "--limit", "2",
            "--precision", "fp32,int8", "--repeats", "3", "--min-time", "0", "--cache", tmp_path / "c", "--lut", lut,
            "--no-progress"]
    p = run_cli("profiler.run", *args, "--stream-probes", "on")
    assert p.returncode == 0, p.stderr[-2000:]
    table = LutTable.load(lut)
    streams = {(k[0], k[3]) for k, row in table.rows.items() if row["kind"] == "stream" and row["status"] == "ok"}
    assert streams == {(str(s), p) for s in stream_probes() for p in ("fp32", "int8")}
    for k, row in table.rows.items():
        if row["kind"] == "stream" and k[3] == "int8":
            bound = error_bound("stream", k[0])
            assert float(row["quant_bound"]) == bound and 0 < float(row["quant_error"]) <= bound
    deep, shallow = (str(stream_probes(layers=(n,))[0]) for n in (128, 1))
    assert error_bound("stream", deep) > error_bound("stream", shallow)  # rounding adds up along a chain
    stream_input = BlockSpec("overhead", 1, 1, 256, 1, 1, 256, act="relu")
    assert {k[3] for k in table.rows if k[0] == str(stream_input)} == {"fp32", "int8"}
    fp32 = LatencyModel.from_lut(lut, TINY, "onnxruntime")
    int8 = LatencyModel.from_lut(lut, TINY, "onnxruntime", precision="int8")
    w32, _ = fp32.stream_curve(R)
    w8, _ = int8.stream_curve(R)
    assert np.allclose(w32, 4 * w8)  # the same chains: four bytes a weight in fp32, one in int8
    p = run_cli("profiler.run", *args[:-1], "--context", "round-robin", "--stream-probes", "on")
    assert p.returncode == 2 and "--stream-probes on needs --context warm" in p.stderr
