"""Dynamic ops and the supernet API: extract(cfg)(x) == supernet(cfg)(x), counts, elastic
kernel/depth/expand/BN behaviour."""

from __future__ import annotations

import random

import pytest
import torch

from supernet import ops
from supernet.dynamic import DynamicDepthwiseConv2d
from supernet.ofa import Choices, OFASupernet
from supernet.space import get_space


def _perturb(net: OFASupernet, seed: int = 0) -> OFASupernet:
    """Random BN statistics/affine and non-identity kernel transforms, so equality tests
    cannot pass by accident."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g))
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.randn(m.num_features, generator=g))
                m.bias.copy_(torch.randn(m.num_features, generator=g))
            if isinstance(m, DynamicDepthwiseConv2d):
                for p in m.transforms.values():
                    p.add_(0.05 * torch.randn(p.shape, generator=g))
    return net


def _configs(space, n_random=3, seed=0):
    rng = random.Random(seed)
    return [space.max_subnet(), space.min_subnet(), space.max_subnet(w=max(space.width_mults))] + [
        space.sample(rng, widths=space.width_mults) for _ in range(n_random)
    ]


@pytest.mark.parametrize("space_name", ["tiny", "fmnist"])
@pytest.mark.parametrize("bn", ["shared", "switchable"])
def test_extract_matches_supernet(space_name, bn):
    space = get_space(space_name)
    net = _perturb(OFASupernet(space, bn=bn)).eval()
    g = torch.Generator().manual_seed(1)
    for cfg in _configs(space, n_random=3 if space_name == "tiny" else 1):
        x = torch.randn(2, space.in_channels, cfg.r, cfg.r, generator=g)
        net.set_active(cfg)
        sub = net.extract(cfg).eval()
        with torch.no_grad():
            diff = (net(x) - sub(x)).abs().max().item()
        assert diff <= 1e-5, (cfg, diff)
        # the extracted subnet is the profiler's builder, block for block
        assert [type(m) for m in sub] == [type(m) for m in ops.build_network(space, cfg)]


@pytest.mark.parametrize("space_name", ["tiny", "fmnist"])
def test_extracted_params_and_macs_match_space_counts(space_name):
    space = get_space(space_name)
    net = OFASupernet(space)
    from supernet.info import summarise  # what `python -m supernet.info` prints

    for cfg in _configs(space, n_random=3 if space_name == "tiny" else 1, seed=2):
        sub = net.extract(cfg)
        blocks = space.blocks(cfg)
        assert ops.count_params(sub) == sum(b.params() for b in blocks)
        assert ops.count_macs(sub, (1, space.in_channels, cfg.r, cfg.r)) == sum(b.macs() for b in blocks)
        got = summarise(space, cfg)
        assert got["params"] == ops.count_params(sub)
        assert got["macs"] == ops.count_macs(sub, (1, space.in_channels, cfg.r, cfg.r))


def test_ofa_space_counts_and_kernel_transform_params():
    space = get_space("ofa_mbv3")
    net = OFASupernet(space)
    for cfg, params in ((space.max_subnet(), 7_664_760), (space.min_subnet(), 3_410_792)):
        assert ops.count_params(net.extract(cfg)) == params
    # 25x25 (7 to 5) + 9x9 (5 to 3) per elastic layer
    per_layer = {sum(p.numel() for p in b.depthwise.transforms.values()) for b in net.blocks}
    assert per_layer == {706}


def test_kernel_transform_starts_as_centre_crop():
    conv = DynamicDepthwiseConv2d(6, (3, 5, 7))
    w7 = conv.conv.weight
    assert torch.equal(conv.weight(6, 5), w7[:, :, 1:6, 1:6])
    assert torch.equal(conv.weight(4, 3), w7[:4, :, 2:5, 2:5])
    with torch.no_grad():
        conv.transforms["5to3"].mul_(2.0)
    assert torch.allclose(conv.weight(6, 3), 2 * w7[:, :, 2:5, 2:5])
    assert torch.equal(conv.weight(6, 5), w7[:, :, 1:6, 1:6])  # 7 to 5 untouched


def test_elastic_depth_keeps_first_blocks():
    space = get_space("tiny")
    net = _perturb(OFASupernet(space)).eval()
    cfg = space.min_subnet()  # depth 1 per stage
    x = torch.randn(2, 3, cfg.r, cfg.r)
    net.set_active(cfg)
    with torch.no_grad():
        before = net(x)
        for i in range(len(space.stages)):
            for p in net.blocks[i * space.max_depth + 1].parameters():  # skipped slots
                p.add_(1.0)
        assert torch.equal(before, net(x))
        for p in net.blocks[0].parameters():  # a kept slot
            p.add_(1.0)
        assert not torch.equal(before, net(x))


def test_channel_sorting_keeps_function_and_orders_importance():
    space = get_space("fmnist")
    net = _perturb(OFASupernet(space), seed=3).eval()
    cfg = net.choices_max()
    x = torch.randn(2, 1, cfg.r, cfg.r)
    net.set_active(cfg)
    with torch.no_grad():
        before = net(x)
        net.sort_channels()
        assert (before - net(x)).abs().max().item() <= 1e-5
        for b in net.blocks:
            imp = b.project.conv.weight.abs().sum((0, 2, 3))
            assert torch.all(imp[:-1] >= imp[1:])
        # a later sort keeps already-trained expand prefixes (here e=4 at width 1.5)
        kept = []
        for b in net.blocks:
            n4 = space.middle_channels(b.expand.conv.weight.size(1), 4)
            with torch.no_grad():
                b.project.conv.weight[:, n4 - 1].mul_(0.01)  # make a kept channel unimportant
                b.project.conv.weight[:, -1].mul_(100.0)  # and an outside one important
            kept.append((n4, set(b.project.conv.weight[:, :n4].abs().sum((0, 2, 3)).tolist())))
        before = net(x)
        net.sort_channels(keep_expands=(4,))
        assert (before - net(x)).abs().max().item() <= 1e-4
    for b, (n4, group) in zip(net.blocks, kept):
        assert set(b.project.conv.weight[:, :n4].abs().sum((0, 2, 3)).tolist()) == group


def test_dynamic_bn_updates_only_active_prefix_and_switchable_bn_is_private():
    space = get_space("tiny")
    net = OFASupernet(space, bn="switchable").train()
    cfg = space.min_subnet()  # width 1.0 -> BN index 0
    net.set_active(cfg)
    bn = net.final_expand.bn
    active = space.widths(1.0).final_expand
    net(torch.randn(4, 3, cfg.r, cfg.r))
    assert torch.all(bn.bns[0].running_mean[:active] != 0)
    assert torch.all(bn.bns[0].running_mean[active:] == 0)
    assert torch.all(bn.bns[1].running_mean == 0)  # the width-1.5 BN is untouched
    shared = OFASupernet(space, bn="shared")
    assert len(shared.final_expand.bn.bns) == 1


def test_sample_is_driven_by_rng_and_respects_choices():
    space = get_space("fmnist")
    net = OFASupernet(space)
    ch = Choices(kernels=(7,), expands=(4, 6), depths=(3, 4))
    a = [net.sample(random.Random(5), ch) for _ in range(3)]
    assert a[0] == a[1] == a[2]
    cfgs = [net.sample(random.Random(s), ch) for s in range(30)]
    for c in cfgs:
        c.validate(space)
        assert set(c.ks) == {7} and set(c.e) <= {4, 6} and set(c.d) <= {3, 4} and c.w == 1.0
    with pytest.raises(ValueError, match="kernels"):
        Choices(kernels=(9,)).resolve(space)


def test_relu6_space_supernet_equals_extracted_subnets():
    """A ReLU6 space (every activation relu6): the supernet clips at 6 exactly as the static
    builder's ``nn.ReLU6`` does (it used to run relu6 as the identity)."""
    from dataclasses import replace

    base = get_space("tiny")
    space = replace(base, name="tiny-relu6", stages=tuple(replace(s, act="relu6") for s in base.stages),
                    first_conv_act="relu6", first_block_act="relu6", head_act="relu6")
    relu = replace(space, name="tiny-relu", stages=tuple(replace(s, act="relu") for s in base.stages),
                   first_conv_act="relu", first_block_act="relu", head_act="relu")
    net = _perturb(OFASupernet(space)).eval()
    as_relu = OFASupernet(relu).eval()
    as_relu.load_state_dict(net.state_dict())
    g = torch.Generator().manual_seed(2)
    clip_effect = 0.0
    for cfg in _configs(space, n_random=2):
        x = 20 * torch.randn(2, space.in_channels, cfg.r, cfg.r, generator=g)  # activations well above 6
        net.set_active(cfg)
        as_relu.set_active(cfg)
        with torch.no_grad():
            y, y_static, y_relu = net(x), net.extract(cfg).eval()(x), as_relu(x)
        assert (y - y_static).abs().max().item() <= 1e-4 * max(1.0, y.abs().max().item()), cfg
        clip_effect = max(clip_effect, (y - y_relu).abs().max().item())
    assert clip_effect > 1e-2  # the clip is really active on these inputs
