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
    net(torch.randn(4, 3, cfg.r, cfg.r, generator=torch.Generator().manual_seed(0)))
    # the variance, not the mean: this BN follows a 1x1 convolution of zero-mean (batch-normed)
    # channels, so its batch mean is a rounding error that can be exactly 0 for a channel
    assert torch.all(bn.bns[0].running_var[:active] != 1)
    assert torch.all(bn.bns[0].running_var[active:] == 1)
    assert torch.all(bn.bns[0].running_mean[active:] == 0)
    assert torch.all(bn.bns[1].running_var == 1) and torch.all(bn.bns[1].running_mean == 0)  # width 1.5's is untouched
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


def test_switchable_bn_each_width_uses_its_own_bn():
    """Switchable BN: a subnet at width w runs (and extracts) the private BN of w only, so
    changing another width's BN leaves it unchanged and changing its own does not."""
    space = get_space("tiny")  # width multipliers 1.0 and 1.5
    net = _perturb(OFASupernet(space, bn="switchable")).eval()
    assert net.bn_index(1.0) != net.bn_index(1.5)
    x = torch.randn(2, space.in_channels, 40, 40, generator=torch.Generator().manual_seed(3))
    narrow, wide = space.max_subnet(r=40, w=1.0), space.max_subnet(r=40, w=1.5)

    def outputs():
        res = []
        for cfg in (narrow, wide):
            net.set_active(cfg)
            with torch.no_grad():
                y = net(x)
                assert (y - net.extract(cfg).eval()(x)).abs().max().item() <= 1e-5
            res.append(y)
        return res

    y_narrow, y_wide = outputs()
    with torch.no_grad():  # move only the wide width's private BNs
        for m in net.modules():
            if hasattr(m, "bns") and len(m.bns) == 2:
                m.bns[net.bn_index(1.5)].bias.add_(0.5)
    y_narrow2, y_wide2 = outputs()
    assert torch.equal(y_narrow, y_narrow2)
    assert (y_wide - y_wide2).abs().max().item() > 1e-3


@pytest.mark.parametrize("fmt", ["channels_last", "nchw"])
@pytest.mark.parametrize("b,c,hw,k,s", [(4, 8, 6, 7, 1), (3, 5, 7, 5, 2), (2, 6, 12, 3, 1), (2, 4, 3, 7, 1),
                                        (2, 4, 8, 7, 2), (1, 3, 16, 5, 1)])
def test_depthwise_conv_gradients_equal_pytorchs(b, c, hw, k, s, fmt):
    """``depthwise_conv2d`` (the supernet's depthwise op; its weight gradient computed as a
    forward convolution over the batch on small maps) has F.conv2d's output and both
    gradients, for odd and even maps, strides 1 and 2, both memory formats, and a weight
    that is a view (the supernet slices and transforms its kernels)."""
    from supernet.dynamic import _DepthwiseConv2d, depthwise_conv2d, depthwise_weight_grad

    g = torch.Generator().manual_seed(hw * 10 + k)
    mf = torch.channels_last if fmt == "channels_last" else torch.contiguous_format
    x0 = torch.randn(b, c, hw, hw, generator=g).contiguous(memory_format=mf)
    big = torch.randn(c + 2, 1, k + 2, k + 2, generator=g)
    gy = None
    grads = []
    for op in ("ours", "torch"):
        x = x0.clone().requires_grad_()
        w_full = big.clone().requires_grad_()
        w = w_full[:c, :, 1:k + 1, 1:k + 1] * 1.5  # a non-leaf view-derived weight
        y = (depthwise_conv2d(x, w, s, k // 2) if op == "ours"
             else torch.nn.functional.conv2d(x, w, None, s, k // 2, 1, c))
        if gy is None:
            gy = torch.randn(y.shape, generator=g)
        (y * gy).sum().backward()
        grads.append((y.detach(), x.grad, w_full.grad))
    for a, t in zip(*grads):
        torch.testing.assert_close(a, t, rtol=1e-5, atol=1e-5)
    # the weight gradient itself, through the autograd Function on any map size
    x = x0.clone().requires_grad_()
    w = big[:c, :, :k, :k].clone().requires_grad_()
    _DepthwiseConv2d.apply(x, w, s, k // 2).backward(gy)
    ref = torch.ops.aten.convolution_backward(gy, x0, w.detach(), None, [s, s], [k // 2] * 2, [1, 1], False, [0, 0],
                                              c, [True, True, False])
    torch.testing.assert_close(w.grad, ref[1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x.grad, ref[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(depthwise_weight_grad(x0, gy, k, s, k // 2), ref[1], rtol=1e-5, atol=1e-5)


def test_depthwise_conv_takes_the_custom_backward_only_where_it_should():
    """5x5 and larger kernels on the CPU with a weight that needs a gradient take the custom
    backward; no grad, a frozen weight, 1x1 and 3x3 kernels take F.conv2d as it is."""
    from supernet.dynamic import depthwise_conv2d

    w = torch.randn(4, 1, 5, 5, requires_grad=True)
    for hw in (8, 40):
        assert depthwise_conv2d(torch.randn(2, 4, hw, hw), w, 1, 2).grad_fn.name() == "_DepthwiseConv2dBackward"
    small = torch.randn(2, 4, 8, 8)
    assert depthwise_conv2d(small, w.detach(), 1, 2).grad_fn is None
    with torch.no_grad():
        assert depthwise_conv2d(small, w, 1, 2).grad_fn is None
    for k in (1, 3):  # below FAST_WGRAD_MIN_KERNEL
        assert depthwise_conv2d(small, torch.randn(4, 1, k, k, requires_grad=True), 1, k // 2).grad_fn.name() != \
            "_DepthwiseConv2dBackward"


def test_depthwise_weight_gradient_choice_is_made_once_per_shape_and_both_agree(monkeypatch):
    """The first backward of a shape times both weight-gradient kernels and keeps the faster;
    either choice gives the same gradients; under deterministic algorithms a fixed rule
    decides (nothing timed, nothing kept)."""
    from supernet import dynamic

    monkeypatch.setattr(dynamic, "_WGRAD_CHOICE", {})
    x = torch.randn(3, 6, 10, 10)
    w = torch.randn(6, 1, 7, 7)
    gy = torch.randn(3, 6, 10, 10)
    grads = {}
    for forced in ("own", "forward"):
        dynamic._WGRAD_CHOICE[(3, 6, 10, 10, 7, 1)] = forced
        xx, ww = x.clone().requires_grad_(), w.clone().requires_grad_()
        dynamic.depthwise_conv2d(xx, ww, 1, 3).backward(gy)
        grads[forced] = (xx.grad, ww.grad)
    torch.testing.assert_close(grads["own"][0], grads["forward"][0])
    torch.testing.assert_close(grads["own"][1], grads["forward"][1], rtol=1e-5, atol=1e-5)
    dynamic._WGRAD_CHOICE.clear()
    assert dynamic.wgrad_choice(x, gy, w, 1, 3) in ("own", "forward")
    assert list(dynamic._WGRAD_CHOICE) == [(3, 6, 10, 10, 7, 1)]
    dynamic._WGRAD_CHOICE.clear()
    monkeypatch.setattr(torch, "are_deterministic_algorithms_enabled", lambda: True)
    small, large = torch.randn(3, 6, 8, 8), torch.randn(3, 6, 9, 9)
    assert dynamic.wgrad_choice(small, torch.randn(3, 6, 8, 8), w, 1, 3) == "forward"  # 64 pixels
    assert dynamic.wgrad_choice(large, torch.randn(3, 6, 9, 9), w, 1, 3) == "own"
    assert not dynamic._WGRAD_CHOICE


def test_fast_depthwise_patches_a_static_network_only_inside_the_block():
    """A network trained alone (``supernet.standalone``) gets the supernet's depthwise op
    while it trains: same outputs and gradients, and plain ``nn.Conv2d`` again afterwards."""
    from supernet.dynamic import fast_depthwise

    space = get_space("tiny")
    torch.manual_seed(0)
    net = ops.build_network(space, space.max_subnet())
    x = torch.randn(2, space.in_channels, 32, 32)
    torch.manual_seed(1)  # the same dropout mask both times
    ref_out = net(x)
    ref_out.sum().backward()
    ref_grads = [p.grad.clone() for p in net.parameters()]
    net.zero_grad(set_to_none=True)
    dws = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d) and m.groups > 1]
    assert dws
    with fast_depthwise(net):
        assert all("forward" in vars(m) for m in dws)
        torch.manual_seed(1)
        out = net(x)
        out.sum().backward()
    assert not any("forward" in vars(m) for m in net.modules())
    torch.testing.assert_close(out, ref_out)
    for p, g in zip(net.parameters(), ref_grads):
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("space_name", ["tiny", "fmnist"])
@pytest.mark.parametrize("fmt", ["channels_last", "nchw"])
def test_training_step_gradients_match_extracted_subnet(space_name, fmt):
    """In training mode (batch statistics) the supernet's loss and gradients equal its
    extracted subnet's: the input's, the feature mix's (a matrix product in the supernet,
    a 1x1 convolution in the static network), the classifier's; so the supernet's fast
    paths (the feature mix and squeeze-excite as linear layers, global pooling whose
    gradient keeps the input's layout, hard-swish out of place, the residual added in
    place) compute what the plain network does.  In float64: with random BN parameters and
    batch statistics over a few values, float32 rounding is amplified up to 1e-3 relative
    in either network alike (measured against float64), so only float64 can tell a wrong
    gradient from rounding."""
    space = get_space(space_name)
    mf = torch.channels_last if fmt == "channels_last" else torch.contiguous_format
    net = _perturb(OFASupernet(space, dropout=0.0)).train().double().to(memory_format=mf)
    g = torch.Generator().manual_seed(4)
    for cfg in _configs(space, n_random=1)[:2] + _configs(space, n_random=1)[3:]:
        net.set_active(cfg)
        default = torch.get_default_dtype()
        torch.set_default_dtype(torch.float64)  # the static network built in float64, weights copied exactly
        try:
            sub = net.extract(cfg).train().to(memory_format=mf)
        finally:
            torch.set_default_dtype(default)
        x = torch.randn(4, space.in_channels, cfg.r, cfg.r, generator=g, dtype=torch.float64)
        x = x.contiguous(memory_format=mf)
        y = torch.randint(0, space.num_classes, (4,), generator=g)
        grads = []
        for model in (net, sub):
            model.zero_grad(set_to_none=True)
            xi = x.clone().requires_grad_(True)
            loss = torch.nn.functional.cross_entropy(model(xi), y)
            loss.backward()
            grads.append((loss.detach(), xi.grad))
        (l_net, gx_net), (l_sub, gx_sub) = grads
        assert abs(l_net.item() - l_sub.item()) <= 1e-10, cfg
        assert (gx_net - gx_sub).abs().max().item() <= 1e-8 * gx_sub.abs().max().item(), cfg
        mix, cls = sub[-2].conv.weight, sub[-1].linear.weight
        mix_net = net.feature_mix.conv.weight.grad[:mix.size(0), :mix.size(1)]
        cls_net = net.classifier.linear.weight.grad[:, :cls.size(1)]
        assert (mix_net - mix.grad).abs().max().item() <= 1e-8 * mix.grad.abs().max().item(), cfg
        assert (cls_net - cls.grad).abs().max().item() <= 1e-8 * cls.grad.abs().max().item(), cfg


def test_pool_gradient_keeps_the_inputs_memory_format():
    from supernet.dynamic import pool

    x = torch.randn(3, 8, 5, 5).contiguous(memory_format=torch.channels_last).requires_grad_(True)
    w = torch.randn(3, 8, 1, 1)
    (pool(x) * w).sum().backward()
    assert x.grad.is_contiguous(memory_format=torch.channels_last)
    ref = x.detach().clone().requires_grad_(True)
    (ref.mean((2, 3), keepdim=True) * w).sum().backward()
    assert torch.allclose(x.grad, ref.grad)
    with torch.no_grad():
        assert torch.equal(pool(x), x.mean((2, 3), keepdim=True))


def test_training_sgd_is_fused_and_computes_what_plain_sgd_does():
    """``supernet.optim.SGD`` runs PyTorch's fused kernel on the CPU and matches plain
    ``torch.optim.SGD`` step for step on a supernet whose active subnet changes, including
    parameters that get their first gradient after others already have momentum (the
    kernel transforms, unused by the largest subnet): fused SGD alone fails there."""
    from supernet.optim import SGD

    space = get_space("tiny")
    torch.manual_seed(0)
    nets = [OFASupernet(space, dropout=0.0).train() for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())

    def groups(net):
        decay = [p for p in net.parameters() if p.dim() > 1]
        return [{"params": decay, "weight_decay": 1e-3},
                {"params": [p for p in net.parameters() if p.dim() <= 1], "weight_decay": 0.0}]

    ours = SGD(groups(nets[0]), lr=0.05, momentum=0.9, nesterov=True)
    plain = torch.optim.SGD(groups(nets[1]), lr=0.05, momentum=0.9, nesterov=True)
    assert all(g["fused"] for g in ours.param_groups)
    rng = random.Random(5)
    cfgs = [space.max_subnet(), space.min_subnet()] + [space.sample(rng) for _ in range(3)]
    g = torch.Generator().manual_seed(6)
    for cfg in cfgs:
        x = torch.randn(4, space.in_channels, cfg.r, cfg.r, generator=g)
        y = torch.randint(0, space.num_classes, (4,), generator=g)
        for net, opt in zip(nets, (ours, plain)):
            net.set_active(cfg)
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(net(x), y).backward()
            opt.step()
    for (name, a), b in zip(nets[0].named_parameters(), nets[1].parameters()):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6), name
    transforms = [p for n, p in nets[0].named_parameters() if "transforms" in n]
    assert transforms and any(ours.state[p].get("momentum_buffer") is not None for p in transforms)


def test_bn_recalibration_is_the_exact_average_over_the_batches():
    """BN recalibration (every collected accuracy depends on it): the old running statistics
    are discarded and replaced by the cumulative average of the per-batch statistics, the
    momentum restored, the network left in eval mode."""
    import torch
    from torch import nn

    from supernet.evaluation import recalibrate_bn

    torch.manual_seed(0)
    conv, bn = nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4, momentum=0.3)
    net = nn.Sequential(conv, bn)
    bn.running_mean.fill_(123.0)
    bn.running_var.fill_(456.0)
    batches = [torch.randn(8, 1, 6, 6) * (1 + i) + i for i in range(3)]
    recalibrate_bn(net, batches)
    with torch.no_grad():
        feats = [conv(x) for x in batches]
    means = torch.stack([f.mean(dim=(0, 2, 3)) for f in feats]).mean(0)
    vars_ = torch.stack([f.var(dim=(0, 2, 3), unbiased=True) for f in feats]).mean(0)
    assert torch.allclose(bn.running_mean, means, atol=1e-5) and torch.allclose(bn.running_var, vars_, atol=1e-4)
    assert bn.momentum == 0.3 and not net.training and bn.num_batches_tracked == 3


@pytest.mark.parametrize("space_name", ["tiny", "fmnist"])
def test_folded_bn_computes_what_the_subnet_computes_and_leaves_it_alone(space_name):
    """``ops.fold_bn`` (the evaluation copy ``Evaluator.top1`` runs): the same outputs as
    the extracted subnet in eval mode with its (perturbed) BN statistics, no BatchNorm left
    in the copy, and the subnet itself untouched (still in training mode, its BNs kept)."""
    space = get_space(space_name)
    net = _perturb(OFASupernet(space))
    x = torch.randn(3, space.in_channels, 40, 40)
    for cfg in _configs(space, n_random=2):
        sub = net.extract(cfg).train()
        bns = sum(isinstance(m, torch.nn.BatchNorm2d) for m in sub.modules())
        folded = ops.fold_bn(sub)
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
        assert sub.training and bns > 0 and sum(isinstance(m, torch.nn.BatchNorm2d) for m in sub.modules()) == bns
        with torch.no_grad():
            torch.testing.assert_close(folded(x), sub.eval()(x), rtol=1e-4, atol=1e-4)
