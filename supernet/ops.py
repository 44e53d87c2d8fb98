"""Static PyTorch modules for ``BlockSpec``s: the one builder.

The profiler exports what ``build_block`` returns, and the supernet's extracted subnets are
``build_network`` filled with the supernet's weights, so what is measured is what is
deployed.  Layer layout follows OFA's MobileNetV3 (``MBConvLayer``, ``SEModule``,
``ConvLayer``, ``LinearLayer``) so parameter and MAC counts match the reference.
"""

from __future__ import annotations

import copy
from collections import OrderedDict

import torch
from torch import nn

from .space import BlockSpec, SearchSpace, SubnetConfig, se_channels


def make_act(name: str) -> nn.Module:
    if name == "relu":
        return nn.ReLU()
    if name == "relu6":
        return nn.ReLU6()
    if name == "hswish":
        return nn.Hardswish()
    if name == "none":
        return nn.Identity()
    raise ValueError(f"unknown activation {name!r}")


class ConvBNAct(nn.Sequential):
    """Convolution (no bias), optional BN, activation."""

    def __init__(self, in_c: int, out_c: int, kernel: int, stride: int = 1, groups: int = 1,
                 act: str = "none", bn: bool = True):
        layers: dict[str, nn.Module] = {
            "conv": nn.Conv2d(in_c, out_c, kernel, stride, kernel // 2, groups=groups, bias=False)
        }
        if bn:
            layers["bn"] = nn.BatchNorm2d(out_c)
        if act != "none":
            layers["act"] = make_act(act)
        super().__init__(OrderedDict(layers))


def fold_bn(net: nn.Module) -> nn.Module:
    """An evaluation copy of ``net`` (eval mode) in which each ``ConvBNAct``'s BatchNorm is
    folded into its convolution (``torch.nn.utils.fusion.fuse_conv_bn_eval``: the same
    function of the input, one pass over memory less per layer; 13% less time to evaluate a
    Fashion-MNIST subnet on 2 cores; and what ``profiler.export`` hands both exporters, whose
    graphs fold it anyway: litert-torch converts it 1.5x faster).  ``net`` itself is left as
    it is; layers of other kinds are copied unchanged."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    out = copy.deepcopy(net).eval()
    for m in out.modules():
        if isinstance(m, ConvBNAct) and isinstance(m._modules.get("bn"), nn.BatchNorm2d):
            m.conv = fuse_conv_bn_eval(m.conv, m.bn)
            m.bn = nn.Identity()
    return out


class SqueezeExcite(nn.Module):
    """Squeeze-excite as in MobileNetV3: mean, 1x1 reduce (bias), ReLU, 1x1 expand (bias),
    hard sigmoid gate."""

    def __init__(self, channels: int):
        super().__init__()
        hidden = se_channels(channels)
        self.reduce = nn.Conv2d(channels, hidden, 1, bias=True)
        self.relu = nn.ReLU()
        self.expand = nn.Conv2d(hidden, channels, 1, bias=True)
        self.gate = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.mean((2, 3), keepdim=True)
        y = self.gate(self.expand(self.relu(self.reduce(y))))
        return x * y


class MBConv(nn.Module):
    """Inverted residual block (MobileNetV2/V3)."""

    def __init__(self, spec: BlockSpec):
        super().__init__()
        # expand
        self.expand = (
            ConvBNAct(spec.in_c, spec.mid, 1, act=spec.act) if spec.has_expand else None
        )
        # depthwise
        self.depthwise = ConvBNAct(spec.mid, spec.mid, spec.kernel, spec.stride,
                                   groups=spec.mid, act=spec.act)
        self.se = SqueezeExcite(spec.mid) if spec.se else None
        # project
        self.project = ConvBNAct(spec.mid, spec.out_c, 1, act="none")
        self.residual = spec.residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if self.expand is not None:
            y = self.expand(y)
        y = self.depthwise(y)
        if self.se is not None:
            y = self.se(y)
        y = self.project(y)
        return x + y if self.residual else y


class GlobalAvgPool(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean((2, 3), keepdim=True)


class Classifier(nn.Module):
    """Flatten, dropout, linear (OFA's ``LinearLayer`` with dropout)."""

    def __init__(self, in_c: int, num_classes: int, dropout: float = 0.0):
        super().__init__()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.linear = nn.Linear(in_c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.dropout(torch.flatten(x, 1)))


def build_block(spec: BlockSpec, dropout: float = 0.0) -> nn.Module:
    """The static module for one block; input NCHW of ``spec.input_shape``."""
    if spec.kind == "first_conv":
        return ConvBNAct(spec.in_c, spec.out_c, spec.kernel, spec.stride, act=spec.act)
    if spec.kind == "mbconv":
        return MBConv(spec)
    if spec.kind == "final_expand":
        return ConvBNAct(spec.in_c, spec.out_c, 1, act=spec.act)
    if spec.kind == "pool":
        return GlobalAvgPool()
    if spec.kind == "feature_mix":
        return ConvBNAct(spec.in_c, spec.out_c, 1, act=spec.act, bn=False)
    if spec.kind == "classifier":
        return Classifier(spec.in_c, spec.out_c, dropout)
    if spec.kind == "overhead":
        return nn.ReLU()
    if spec.kind == "boundary":  # depthwise 1x1 with a bias, as a folded conv-BN is
        return nn.Sequential(*[nn.Conv2d(spec.in_c, spec.in_c, 1, groups=spec.in_c) for _ in range(spec.mid)])
    if spec.kind == "stream":
        layers = [nn.Conv2d(spec.in_c, spec.in_c, 1, bias=False) for _ in range(spec.mid)]
        for layer in layers:  # orthogonal: the signal keeps its scale through any depth (no denormals)
            nn.init.orthogonal_(layer.weight.view(spec.in_c, spec.in_c))
        return nn.Sequential(*layers)
    raise ValueError(f"no builder for block kind {spec.kind!r}")


def build_network(space: SearchSpace, cfg: SubnetConfig, dropout: float | None = None) -> nn.Sequential:
    """The static subnet ``cfg`` of ``space``: one module per ``space.blocks(cfg)`` entry."""
    dropout = space.dropout if dropout is None else dropout
    return nn.Sequential(*(build_block(b, dropout) for b in space.blocks(cfg)))


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def count_macs(module: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates by forward hooks, counted as OFA's ``count_net_flops``:
    convolutions ``out elements * (in/groups * k*k + has_bias)``, linear ``out * in``."""
    total = 0

    def conv_hook(m: nn.Conv2d, _inp, out):
        nonlocal total
        per_out = m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
        total += out.numel() * (per_out + (1 if m.bias is not None else 0))

    def linear_hook(m: nn.Linear, _inp, out):
        nonlocal total
        total += out.numel() * m.in_features

    handles = []
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            module(torch.zeros(input_shape))
    finally:
        for h in handles:
            h.remove()
        module.train(was_training)
    return total
