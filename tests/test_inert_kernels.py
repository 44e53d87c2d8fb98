"""Issue 17: a kernel larger than the feature map it runs on computes what its centre
computes; the space collapses it, so no key, subnet or feature vector names a kernel that
does nothing, and no two distinct (canonical) subnets are the same network."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from supernet.space import TINY, OFA_MBV3, SearchSpace, StageSpec, effective_kernel, get_space

FMNIST = get_space("fmnist")


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("kernel", [3, 5, 7])
def test_a_kernel_equals_its_centre_on_a_small_map_and_no_smaller_one(size, stride, kernel):
    """The equivalence the collapse relies on, and that ``effective_kernel`` is tight."""
    g = torch.Generator().manual_seed(size * 100 + stride * 10 + kernel)
    c = 6
    x = torch.randn(2, c, size, size, generator=g)
    w = torch.randn(c, 1, kernel, kernel, generator=g)
    full = F.conv2d(x, w, None, stride, kernel // 2, 1, c)
    eff = effective_kernel(kernel, size)
    start = (kernel - eff) // 2
    centre = w[:, :, start:start + eff, start:start + eff]
    assert torch.equal(full, F.conv2d(x, centre, None, stride, eff // 2, 1, c))  # bit for bit
    if eff >= 3:  # one size smaller loses taps that do touch the map
        s2 = (kernel - (eff - 2)) // 2
        smaller = w[:, :, s2:s2 + eff - 2, s2:s2 + eff - 2]
        assert not torch.allclose(full, F.conv2d(x, smaller, None, stride, (eff - 2) // 2, 1, c))


def test_fmnist_space_at_32_and_48_px_names_only_effective_kernels():
    """No block of the LUT the main job measures has a kernel larger than its input map
    allows (the issue's 'done when'), and the collapsed kernels are the ones stated."""
    for r in (32, 48):
        for b in FMNIST.all_blocks([r], widths=FMNIST.width_mults):
            if b.kind == "mbconv":
                assert b.kernel <= 2 * b.in_h - 1, (r, str(b))
    # slots 9..15 (the last three blocks of stage 3 and all of stage 4) see 2x2 maps at 32 px
    # and 3x3 maps at 36..48 px
    assert FMNIST.kernel_caps(32) == (7,) * 9 + (3,) * 7
    for r in (36, 40, 44, 48):
        assert FMNIST.kernel_caps(r) == (7,) * 9 + (5,) * 7
    assert FMNIST.inert_kernels([32, 48]) == {32: {s: [5, 7] for s in range(9, 16)},
                                              48: {s: [7] for s in range(9, 16)}}
    # fewer distinct blocks to measure: the main job's 32 and 48 px LUT
    assert len(FMNIST.all_blocks([32, 48])) == 127


def test_published_and_test_spaces_have_no_inert_kernels():
    assert OFA_MBV3.inert_kernels() == {}
    assert TINY.inert_kernels() == {}


def test_canonical_is_idempotent_keeps_blocks_and_separates_networks():
    """``canonical`` never changes the network; distinct canonical subnets are distinct
    networks (different block lists), equal networks have one canonical subnet."""
    rng = random.Random(0)
    by_blocks: dict[tuple, set] = {}
    for _ in range(400):
        cfg = FMNIST.sample(rng, resolutions=(32, 48), widths=FMNIST.width_mults)
        can = FMNIST.canonical(cfg)
        assert FMNIST.canonical(can) == can
        assert FMNIST.blocks(can) == FMNIST.blocks(cfg)
        by_blocks.setdefault(tuple(FMNIST.blocks(cfg)), set()).add(can)
    assert all(len(v) == 1 for v in by_blocks.values())
    # an explicit pair: 7x7 and 3x3 in a 2x2 slot at 32 px are one network; at 48 px 7 is 5
    mx = FMNIST.max_subnet(r=32)
    ks = list(mx.ks)
    ks[12] = 3
    other = type(mx)(tuple(ks), mx.e, mx.d, 32, mx.w)
    assert FMNIST.canonical(other) == FMNIST.canonical(mx)
    assert FMNIST.canonical(FMNIST.max_subnet(r=48)).ks == (7,) * 9 + (5,) * 7


def test_a_space_with_a_kernel_between_choices_keeps_the_next_larger_one():
    """With kernels 3 and 7 a 7x7 on a 3x3 map needs 5x5 taps: 7 stays (3 would lose taps)."""
    sp = SearchSpace(name="gap", stages=(StageSpec(16, 2, "relu", False),), kernels=(3, 7), expands=(3,),
                     depths=(1, 2), resolutions=(12, 16), width_mults=(1.0,), first_conv_width=8,
                     first_block_width=8, final_expand_width=32, feature_mix_width=32, num_classes=10)
    # 12 px: 6 after the stem, 3 after the stage's stride
    assert sp.slot_sizes(12) == (6, 3)
    assert sp.collapse_kernel(7, 3) == 7 and sp.collapse_kernel(7, 2) == 3 and sp.collapse_kernel(3, 1) == 3


def test_supernet_and_extracted_subnet_agree_on_collapsed_kernels():
    """The supernet runs the collapsed kernel (the same function for both spellings) and the
    extracted network, built from the same blocks, equals it."""
    from supernet.ofa import OFASupernet

    torch.manual_seed(0)
    net = OFASupernet(FMNIST).eval()
    x = torch.randn(2, 1, 32, 32)
    mx = FMNIST.max_subnet(r=32)
    with torch.no_grad():
        net.set_active(mx)
        y_max = net(x)
        net.set_active(FMNIST.canonical(mx))
        y_can = net(x)
        y_ext = net.extract(mx).eval()(x)
    assert torch.equal(y_max, y_can)
    assert torch.allclose(y_ext, y_max, atol=1e-5)
    ext = net.extract(mx)
    kernels = [m.depthwise.conv.kernel_size[0] for m in ext if hasattr(m, "depthwise")]
    assert kernels[-7:] == [3] * 7  # what is deployed is the 3x3, not a padded 7x7


def test_population_canonicalize_and_encoder_collapse_inert_kernels():
    """Search and predictor see one spelling: ``canonicalize`` on arrays equals
    ``SearchSpace.canonical``, hashes merge the two spellings, features are equal."""
    from search.encoding import Choices, Encoder, Population, canonicalize, random_population

    ch = Choices(FMNIST, (32, 48), (1.0,))
    pop = random_population(ch, 300, np.random.default_rng(1))
    subnets = pop.to_subnets(ch)  # canonical by construction
    raw = [type(s)(tuple(pop_k), s.e, s.d, s.r, s.w) for s, pop_k in
           zip(subnets, (tuple(int(FMNIST.kernels[i]) for i in row) for row in pop.k))]
    canon = canonicalize(pop.copy(), ch)
    assert canon.to_subnets(ch) == [FMNIST.canonical(c) for c in raw] == subnets
    enc = Encoder.for_space(FMNIST, (32, 48))
    assert np.array_equal(enc.encode(pop, ch), enc.encode(canon, ch))
    assert np.array_equal(enc.encode_subnets(raw, FMNIST), enc.encode_subnets(subnets, FMNIST))
    # the two spellings of the largest subnet hash equal after canonicalize
    two = Population.from_subnets([FMNIST.max_subnet(r=32), FMNIST.canonical(FMNIST.max_subnet(r=32))], ch)
    h = canonicalize(two, ch).hashes()
    assert h[0] == h[1]


def test_info_names_the_collapsed_slots(capsys):
    """``supernet.info`` shows the subnet as built and which slots collapsed; the JSON
    form carries the canonical subnet; the OFA space prints no such line."""
    import json

    from supernet.info import main

    assert main(["--space", "fmnist", "--subnet", "max", "--resolution", "32"]) == 0
    text = capsys.readouterr().out
    assert "slot 9: 7 -> 3" in text and "slot 15: 7 -> 3" in text and "slot 8:" not in text
    assert main(["--space", "fmnist", "--subnet", "max", "--resolution", "48", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["canonical"]["ks"] == [7] * 9 + [5] * 7
    assert main(["--subnet", "max"]) == 0
    assert "compute their centre" not in capsys.readouterr().out
