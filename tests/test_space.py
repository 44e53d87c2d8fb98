"""The shared search space: specs, keys, subnets, counts (issue 2, section 2)."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from dataclasses import replace

import pytest

from supernet.space import (OFA_MBV3, TINY, BlockSpec, SubnetConfig, get_space, make_divisible,
                            parse_subnet, register_space)


def test_import_is_light():
    code = "import sys, supernet.space; print('torch' in sys.modules, 'numpy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_make_divisible_matches_reference_rule():
    assert [make_divisible(c * 1.2) for c in (16, 24, 40, 80, 112, 160, 960, 1280)] == \
        [24, 32, 48, 96, 136, 192, 1152, 1536]
    assert make_divisible(3) == 8  # never below the divisor
    assert make_divisible(19.2) == 24  # 16 would be more than 10% down


def test_width_multiplier_1_2_widths():
    w = OFA_MBV3.widths(1.2)
    assert (w.first_conv, w.first_block) == (24, 24)
    assert w.stages == (32, 48, 96, 136, 192)
    assert (w.final_expand, w.feature_mix) == (1152, 1536)


def test_default_space_is_published_ofa_mbv3():
    s = OFA_MBV3
    assert [st.width for st in s.stages] == [24, 40, 80, 112, 160]
    assert [st.stride for st in s.stages] == [2, 2, 2, 1, 2]
    assert [st.act for st in s.stages] == ["relu", "relu", "hswish", "hswish", "hswish"]
    assert [st.se for st in s.stages] == [False, True, False, True, True]
    assert (s.kernels, s.expands, s.depths) == ((3, 5, 7), (3, 4, 6), (2, 3, 4))
    assert s.resolutions == tuple(range(128, 225, 4))
    assert s.num_blocks == 20


def test_all_blocks_96_per_resolution_and_keys_round_trip():
    for r in (128, 160, 224):
        blocks = OFA_MBV3.all_blocks([r])
        assert len(blocks) == 96
        kinds = [b.kind for b in blocks]
        assert kinds.count("first_conv") == 1 and kinds.count("classifier") == 1
        assert kinds.count("mbconv") == 1 + 5 * 18
    every = OFA_MBV3.all_blocks(widths=[1.0, 1.2])
    assert len(every) == len(set(every))
    for b in every:
        assert BlockSpec.parse(str(b)) == b


def test_all_blocks_covers_every_subnet():
    rng = random.Random(1)
    every = set(OFA_MBV3.all_blocks([160, 224]))
    for _ in range(200):
        cfg = OFA_MBV3.sample(rng, resolutions=[160, 224])
        assert set(OFA_MBV3.blocks(cfg)) <= every


@pytest.mark.parametrize("bad", [
    "",
    "mbconv",
    "mbconv-input:56x56x24-output:28x28x40-mid:72-kernel:5-stride:2-res:0-se:1",  # no act
    "mbconv-input:56x56x24-output:28x28x40-mid:72-kernel:5-stride:2-res:0-se:1-act:gelu",
    "conv3d-input:56x56x24-output:28x28x40-mid:0-kernel:1-stride:1-res:0-se:0-act:none",
    "mbconv-input:56x56-output:28x28x40-mid:72-kernel:5-stride:2-res:0-se:1-act:relu",
    "mbconv-input:56x56x24-output:28x28x40-mid:72-kernel:4-stride:2-res:0-se:1-act:relu",  # even kernel
    "mbconv-input:56x56x24-output:28x28x40-mid:72-kernel:5-stride:2-res:1-se:1-act:relu",  # residual + stride
    "pool-input:7x7x960-output:1x1x960-mid:5-kernel:1-stride:1-res:0-se:0-act:none",       # pool with mid
    "mbconv-input:56x56x24-output:28x28x40-mid:72-kernel:5-stride:2-res:0-se:1-act:relu-extra:1",
])
def test_malformed_keys_raise_value_error(bad):
    with pytest.raises(ValueError):
        BlockSpec.parse(bad)


def test_subnet_json_round_trip_and_ofa_naming():
    rng = random.Random(0)
    for _ in range(50):
        cfg = OFA_MBV3.sample(rng, widths=[1.0, 1.2])
        data = json.loads(cfg.to_json())
        assert set(data) == {"ks", "e", "d", "r", "w"}
        assert len(data["ks"]) == 20 and len(data["e"]) == 20 and len(data["d"]) == 5
        assert SubnetConfig.from_json(cfg.to_json()) == cfg
        assert hash(SubnetConfig.from_json(cfg.to_json())) == hash(cfg)


def test_deeply_nested_subnet_json_is_a_value_error():
    for text in ("[" * 200_000 + "]" * 200_000, '{"ks":' * 200_000 + "1" + "}" * 200_000):
        with pytest.raises(ValueError, match="^subnet JSON is nested too deeply$"):
            SubnetConfig.from_json(text)


def test_skipped_entries_are_ignored():
    cfg = OFA_MBV3.min_subnet()
    ks = list(cfg.ks)
    ks[3] = 7  # slot 3 of stage 0 is skipped at depth 2
    other = replace(cfg, ks=tuple(ks))
    assert OFA_MBV3.blocks(other) == OFA_MBV3.blocks(cfg)
    assert OFA_MBV3.canonical(other) == OFA_MBV3.canonical(cfg)


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.update(ks=d["ks"][:19]), "19 kernels"),
    (lambda d: d.update(e=[3] * 19 + [5]), "e[19] = 5"),
    (lambda d: d.update(d=[4, 4, 4, 4, 1]), "d[4] = 1"),
    (lambda d: d.update(r=225), "resolution 225"),
    (lambda d: d.update(w=0.75), "width multiplier 0.75"),
    (lambda d: d.update(ks=[3.5] * 20), "list of integers"),
    (lambda d: d.pop("r"), "lacks r"),
    (lambda d: d.update(extra=1), "unknown fields extra"),
])
def test_subnet_validation_names_the_field(mutate, message):
    data = OFA_MBV3.max_subnet().to_dict()
    mutate(data)
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        SubnetConfig.from_dict(data).validate(OFA_MBV3)


def test_parse_subnet_forms(tmp_path):
    assert parse_subnet("max", OFA_MBV3) == OFA_MBV3.max_subnet()
    assert parse_subnet("min", OFA_MBV3, r=160).r == 160
    cfg = OFA_MBV3.sample(random.Random(3))
    assert parse_subnet(cfg.to_json(), OFA_MBV3) == cfg
    f = tmp_path / "s.json"
    f.write_text(cfg.to_json())
    assert parse_subnet(str(f), OFA_MBV3) == cfg
    with pytest.raises(ValueError, match="neither max, min"):
        parse_subnet("largest", OFA_MBV3)
    with pytest.raises(ValueError, match="not valid JSON"):
        parse_subnet("{ks", OFA_MBV3)


def test_registry_rejects_duplicates_and_lists_names():
    with pytest.raises(ValueError, match="already registered"):
        register_space(replace(TINY))
    with pytest.raises(ValueError, match="known: .*ofa_mbv3"):
        get_space("nope")


def test_param_and_mac_counts_match_the_reference():
    """Figures of the reference implementation (OFA), 1000 classes, 224 px, width 1.0."""
    big = OFA_MBV3.blocks(OFA_MBV3.max_subnet())
    small = OFA_MBV3.blocks(OFA_MBV3.min_subnet())
    assert sum(b.params() for b in big) == 7_664_760
    assert round(sum(b.macs() for b in big) / 1e6, 1) == 566.2
    assert sum(b.params() for b in small) == 3_410_792
    assert round(sum(b.macs() for b in small) / 1e6, 1) == 121.3


def test_built_modules_have_the_counted_params_and_macs():
    """The one builder: module parameters and hook-counted MACs equal the spec arithmetic."""
    from supernet.ops import build_network, count_macs, count_params

    rng = random.Random(7)
    cfgs = [OFA_MBV3.max_subnet(), OFA_MBV3.min_subnet(),
            OFA_MBV3.sample(rng, widths=[1.2]), OFA_MBV3.sample(rng)]
    for cfg in cfgs:
        net = build_network(OFA_MBV3, cfg)
        blocks = OFA_MBV3.blocks(cfg)
        assert count_params(net) == sum(b.params() for b in blocks)
        assert count_macs(net, (1, 3, cfg.r, cfg.r)) == sum(b.macs() for b in blocks)


def test_block_output_shapes_match_specs():
    import torch

    from supernet.ops import build_block

    for b in TINY.all_blocks(widths=[1.0, 1.5]):
        with torch.no_grad():
            y = build_block(b).eval()(torch.zeros(b.input_shape))
        assert tuple(y.shape) == b.output_shape, str(b)


def test_info_cli(tmp_path):
    from conftest import run_cli

    p = run_cli("supernet.info", "--subnet", "max", "--json")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["params"] == 7_664_760 and out["macs"] == 566_179_312
    p = run_cli("supernet.info", "--subnet", "min", "--classes", "10", "--resolution", "160", "--width", "1.2", "--json")
    out = json.loads(p.stdout)
    assert out["subnet"]["r"] == 160 and out["subnet"]["w"] == 1.2 and out["classes"] == 10
    p = run_cli("supernet.info", "--subnet", "max", "--resolution", "100")
    assert p.returncode == 2 and "resolution 100 is not in space" in p.stderr


def test_a_subnet_file_that_is_not_utf8_names_the_file(tmp_path):
    from supernet.space import parse_subnet

    bad = tmp_path / "subnet.json"
    bad.write_bytes(b'{"ks": [\xff\xfe]}')
    with pytest.raises(ValueError, match="subnet.json is not UTF-8"):
        parse_subnet(str(bad), get_space("tiny"))
