"""OFA's published predictor (search/data) and Note10 LUT (luts/note10.csv), used through hwnas.

What was verified about the bit order (search/data/README.md points here):

1. Layout: our ``Encoder.ofa()`` equals, bit for bit on 300 random subnets, a loop-for-loop
   re-implementation of OFA's tutorial ``spec2feats`` including its ``list(set(keys))`` maps
   (tests/test_search_encoding.py), i.e. kernels (3, 5, 7) then expands (3, 4, 6) per slot,
   skipped slots zero, resolution bin (r - 112) // 16.
2. Behaviour of the published weights under that order: with every other choice fixed,
   predicted accuracy rises with resolution (160 -> 224), with expand ratio (3 < 4 < 6) and
   with depth (2 < 3 < 4), and kernel 7 beats kernel 3, at every resolution.  A permuted
   expand or resolution order, or a reversed kernel order, breaks these orderings.
3. Anchors (regression values of this file): the largest subnet at 224 px predicts 0.8359,
   the smallest at 160 px 0.7531, ImageNet-plausible top-1 for the w1.2 supernet.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from supernet.space import OFA_MBV3, SubnetConfig

from search.predictor import OFA_PREDICTOR as PTH

NOTE10 = Path(__file__).resolve().parent / "data" / "ofa" / "note10"


@pytest.fixture(scope="module")
def pred():
    from search.predictor import load_predictor

    return load_predictor(f"ofa:{PTH}", OFA_MBV3)


def uniform(k, e, d, r):
    return SubnetConfig((k,) * 20, (e,) * 20, (d,) * 5, r, 1.2)


def test_known_anchors(pred):
    assert pred.predict([OFA_MBV3.max_subnet(224, 1.2)], OFA_MBV3)[0] == pytest.approx(0.8359, abs=2e-4)
    assert pred.predict([OFA_MBV3.min_subnet(160, 1.2)], OFA_MBV3)[0] == pytest.approx(0.7531, abs=2e-4)


def test_published_weights_order_the_choices_as_expected(pred):
    p = lambda cfgs: pred.predict(cfgs, OFA_MBV3)  # noqa: E731
    for r in (160, 176, 192, 208, 224):
        assert np.all(np.diff(p([uniform(5, e, 4, r) for e in (3, 4, 6)])) > 0), f"expand order at {r}"
        assert np.all(np.diff(p([uniform(5, 4, d, r) for d in (2, 3, 4)])) > 0), f"depth order at {r}"
        k3, k7 = p([uniform(3, 4, 4, r), uniform(7, 4, 4, r)])
        assert k7 > k3, f"kernel order at {r}"
    for k, e, d in ((3, 3, 2), (7, 6, 4), (5, 4, 3)):
        assert np.all(np.diff(p([uniform(k, e, d, r) for r in (160, 176, 192, 208, 224)])) > 0)


def test_only_w12_and_the_ofa_space(pred):
    from search.predictor import load_predictor
    from supernet.space import TINY

    assert pred.supports(224, 1.2) and not pred.supports(224, 1.0) and not pred.supports(100, 1.2)
    with pytest.raises(ValueError, match="is of space 'ofa_mbv3', not 'tiny'"):
        load_predictor(f"ofa:{PTH}", TINY)


def test_search_on_note10_fits_and_matches_the_lut(pred, tmp_path):
    import subprocess
    import sys

    from search.evolve import CostArrays, EvolutionParams, covered_choices, evolve
    from search.latency import LatencyModel

    lut = tmp_path / "note10.csv"
    subprocess.run([sys.executable, "-m", "profiler.import_lut", "--format", "ofa",
                    *map(str, sorted(NOTE10.glob("*.yaml"))), "--out", str(lut)], check=True, timeout=120,
                   capture_output=True)
    model = LatencyModel.from_lut(lut, OFA_MBV3)
    ch = covered_choices(model, OFA_MBV3, pred.supports)
    assert ch.resolutions == (160, 176, 192, 208, 224) and ch.widths == (1.2,)
    costs = CostArrays(model, ch)
    # the README's sanity figures
    assert model.latency([OFA_MBV3.max_subnet(224, 1.2)])[0] == pytest.approx(92.40, abs=0.01)
    floor, _ = costs.cheapest()
    assert 9.5 < floor < 10.5
    score = lambda pop: pred.predict_population(pop, ch)  # noqa: E731
    prev = 0.0
    for b in (15, 25):
        res = evolve(b, costs, score, EvolutionParams(generations=40), np.random.default_rng(0), progress=False)
        assert model.latency([res.subnet])[0] <= b
        assert res.accuracy > prev
        prev = res.accuracy
