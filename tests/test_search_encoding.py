"""Encoding invariants: population round trips, the active mask, and our vectorized encoder
against a literal re-implementation of OFA's published ``spec2feats``."""

from __future__ import annotations

import random

import numpy as np
import pytest

from search.encoding import Choices, Encoder, Population, active_mask, gene_sizes, random_population
from supernet.space import OFA_MBV3, TINY, SubnetConfig

OFA_RES = (160, 176, 192, 208, 224)


def ofa_spec2feats(ks, e, d, r):
    """OFA's tutorial encoder (ofa/tutorial/accuracy_predictor.py), loop for loop: the maps
    come from ``list(set(keys))`` as OFA builds them, skipped slots are zeroed, then one-hot."""
    def construct_maps(keys):
        out = {}
        for k in list(set(keys)):
            out.setdefault(k, len(out))
        return out

    ks_map, ex_map = construct_maps((3, 5, 7)), construct_maps((3, 4, 6))
    ks, e = list(ks), list(e)
    start, end = 0, 4
    for depth in d:
        for j in range(start + depth, end):
            ks[j] = 0
            e[j] = 0
        start += 4
        end += 4
    k1, e1, r1 = [0] * 60, [0] * 60, [0] * 8
    for i in range(20):
        if ks[i] != 0:
            k1[i * 3 + ks_map[ks[i]]] = 1
        if e[i] != 0:
            e1[i * 3 + ex_map[e[i]]] = 1
    r1[(r - 112) // 16] = 1
    return np.array(k1 + e1 + r1, dtype=np.float32)


def test_ofa_encoder_matches_ofa_spec2feats_bit_for_bit():
    rng = random.Random(0)
    subnets = [OFA_MBV3.sample(rng, resolutions=OFA_RES + (128, 140, 236 - 12), widths=(1.2,)) for _ in range(300)]
    ours = Encoder.ofa().encode_subnets(subnets, OFA_MBV3)
    ref = np.stack([ofa_spec2feats(c.ks, [int(x) for x in c.e], c.d, c.r) for c in subnets])
    assert ours.shape == (300, 128)
    np.testing.assert_array_equal(ours, ref)


def test_population_round_trip_is_canonical_and_valid():
    rng = np.random.default_rng(1)
    for space, res, wid in ((TINY, TINY.resolutions, TINY.width_mults), (OFA_MBV3, OFA_RES, (1.2,))):
        ch = Choices(space, tuple(res), tuple(wid))
        pop = random_population(ch, 200, rng)
        subnets = pop.to_subnets(ch)
        for cfg in subnets:
            cfg.validate(space)
            assert cfg == space.canonical(cfg)
        back = Population.from_subnets(subnets, ch)
        assert back.to_subnets(ch) == subnets
        assert (pop.g < gene_sizes(ch)).all() and (pop.g >= 0).all()


def test_active_mask_matches_space_active_blocks():
    ch = Choices(OFA_MBV3, OFA_RES, (1.2,))
    pop = random_population(ch, 50, np.random.default_rng(2))
    mask = active_mask(pop, ch)
    for row, cfg in zip(mask, pop.to_subnets(ch)):
        assert set(np.nonzero(row)[0]) == {slot for _, _, slot in OFA_MBV3.active_blocks(cfg)}


def test_own_encoder_layout_and_width_one_hot():
    enc = Encoder.for_space(TINY, TINY.resolutions, TINY.width_mults)
    nb = TINY.num_blocks
    assert enc.n_dim == nb * 2 + nb * 2 + 3 + 2
    cfg = SubnetConfig(ks=(5, 3, 3, 5), e=(3, 2, 2, 2), d=(1, 2), r=40, w=1.5)
    x = enc.encode_subnets([cfg], TINY)[0]
    # one kernel bit and one expand bit per active slot (3 active), none for the skipped one
    assert x[: nb * 2].sum() == 3 and x[nb * 2: nb * 4].sum() == 3
    assert x[2 * 0 + 1] == 1 and x[2 * 1: 2 * 2].sum() == 0     # slot 0 kernel 5; slot 1 skipped
    assert list(x[nb * 4: nb * 4 + 3]) == [0, 1, 0]             # r = 40
    assert list(x[-2:]) == [0, 1]                               # w = 1.5
    with pytest.raises(ValueError, match="outside the predictor's range"):
        Encoder.ofa().res_index(np.array([100]))


def test_hashes_equal_iff_architectures_equal():
    ch = Choices(TINY, TINY.resolutions, TINY.width_mults)
    pop = random_population(ch, 500, np.random.default_rng(3))
    from search.encoding import canonicalize
    canonicalize(pop, ch)
    subs = pop.to_subnets(ch)
    h = pop.hashes()
    for i in range(0, 500, 7):
        for j in range(i + 1, min(500, i + 40)):
            assert (h[i] == h[j]) == (subs[i] == subs[j])


def test_resolution_interactions_repeat_the_choices_times_the_scaled_resolution():
    """``res_interactions``: the kernel and expand one-hots again, times the resolution scaled
    to -1..1 over the bins (appended after the width one-hot); the layout round-trips through
    the predictor file's dict, and an encoder without the field reads as without them."""
    from search.encoding import Encoder
    from supernet.space import TINY

    base = Encoder.for_space(TINY, [32, 40, 48])
    inter = base.with_interactions()
    assert inter.n_dim == base.n_dim + base.n_arch and Encoder.from_dict(inter.to_dict()) == inter
    assert Encoder.from_dict({k: v for k, v in base.to_dict().items() if k != "res_interactions"}) == base
    rng = random.Random(0)
    subs = [TINY.sample(rng, resolutions=[32, 40, 48]) for _ in range(12)]
    xb, xi = base.encode_subnets(subs, TINY), inter.encode_subnets(subs, TINY)
    np.testing.assert_array_equal(xi[:, :base.n_dim], xb)
    scale = np.array([{32: -1.0, 40: 0.0, 48: 1.0}[s.r] for s in subs], dtype=np.float32)
    np.testing.assert_allclose(xi[:, base.n_dim:], xb[:, :base.n_arch] * scale[:, None])


def test_own_predictors_support_only_the_resolutions_they_were_trained_on():
    """Our encoder has one bin per trained resolution: a resolution between two of them was
    never seen and must not be scored as the bin below it; OFA's 16-px bins are ranges."""
    from search.evolve import covered_choices
    from search.latency import MacsModel
    from supernet.space import FMNIST

    enc = Encoder.for_space(FMNIST, [32, 48])
    assert enc.one_bin_per_resolution and not Encoder.ofa().one_bin_per_resolution
    assert [r for r in FMNIST.resolutions if enc.supports_resolution(r)] == [32, 48]
    assert list(enc.res_index(np.array([32, 48]))) == [0, 1]
    with pytest.raises(ValueError, match="resolution 40 is not one the predictor was trained on"):
        enc.res_index(np.array([32, 40]))
    assert all(Encoder.ofa().supports_resolution(r) for r in OFA_MBV3.resolutions)  # 128..224 in 16-px bins
    choices = covered_choices(MacsModel(FMNIST), FMNIST, lambda r, w: enc.supports_resolution(r))
    assert sorted(choices.resolutions) == [32, 48]
