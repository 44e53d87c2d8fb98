"""Dynamic (elastic) operations of the OFA supernet.

Each op owns the weights of its largest setting and, in ``forward``, runs a smaller one
chosen by explicit arguments (no class-level mode flags, contrast OFA's
``DynamicSeparableConv2d.KERNEL_TRANSFORM_MODE``):

- elastic width: the active channels are a prefix of the stored ones (``weight[:out, :in]``);
- elastic kernel: a smaller depthwise kernel is the centre of the next larger one passed
  through a per-layer transformation matrix (``7to5`` is 25x25, ``5to3`` 9x9, initialised to
  identity, shared by all channels; Cai et al., "Once-for-All", Sec. 3.2 and Fig. 3);
- dynamic BN: running statistics and affine parameters are sliced to the active channels;
  switchable BN keeps one private BN per width multiplier (Yu et al., "Slimmable Neural
  Networks", Sec. 3.2) and the caller picks it by index;
- elastic expand ratio: ``DynamicMBConv.sort_channels`` reorders the middle channels by
  importance (L1 norm of their projection weights) consistently through expand conv, BN,
  depthwise conv, squeeze-excite and projection, so the full block computes the same function.

Every op can also copy its active slice into the static module that ``supernet.ops`` builds
for the same ``BlockSpec`` (``load_into``): that is how ``extract`` works.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from . import ops
from .space import BlockSpec, se_channels


def _act(x: torch.Tensor, name: str) -> torch.Tensor:
    """The activation ``ops.make_act(name)`` builds, as a function (every name of
    ``space.ACTIVATIONS``; an unknown one is an error, never an identity).  In place: every
    caller hands it a fresh BN or convolution output that nothing else reads (their
    backward passes need their inputs, not their outputs), which saves an allocation and a
    pass over memory per layer."""
    if name == "relu":
        return F.relu(x, inplace=True)
    if name == "relu6":
        return F.relu6(x, inplace=True)
    if name == "hswish":
        return F.hardswish(x, inplace=True)
    if name == "none":
        return x
    raise ValueError(f"unknown activation {name!r}")


def _copy_(dst: torch.Tensor, src: torch.Tensor) -> None:
    if dst.shape != src.shape:
        raise ValueError(f"cannot copy a {tuple(src.shape)} slice into a {tuple(dst.shape)} tensor")
    dst.copy_(src)


class DynamicBatchNorm2d(nn.Module):
    """BatchNorm over a prefix of ``max_c`` channels; ``n_private`` private BNs (switchable
    BN) of which ``forward(x, idx)`` uses number ``idx``.  Running statistics of the active
    prefix are updated in place (OFA's ``DynamicBatchNorm2d``)."""

    def __init__(self, max_c: int, n_private: int = 1):
        super().__init__()
        self.max_c = max_c
        self.bns = nn.ModuleList(nn.BatchNorm2d(max_c) for _ in range(n_private))

    def forward(self, x: torch.Tensor, idx: int = 0) -> torch.Tensor:
        bn = self.bns[idx]
        c = x.size(1)
        if c == self.max_c:
            return bn(x)
        return F.batch_norm(
            x, bn.running_mean[:c], bn.running_var[:c], bn.weight[:c], bn.bias[:c],
            self.training, bn.momentum, bn.eps,
        )

    def load_into(self, bn: nn.BatchNorm2d, idx: int = 0) -> None:
        src, c = self.bns[idx], bn.num_features
        with torch.no_grad():
            _copy_(bn.weight, src.weight[:c])
            _copy_(bn.bias, src.bias[:c])
            _copy_(bn.running_mean, src.running_mean[:c])
            _copy_(bn.running_var, src.running_var[:c])
            bn.num_batches_tracked.copy_(src.num_batches_tracked)

    def permute_(self, perm: torch.Tensor) -> None:
        """Reorder all channels (of every private BN) by ``perm``."""
        with torch.no_grad():
            for bn in self.bns:
                for t in (bn.weight, bn.bias, bn.running_mean, bn.running_var):
                    t.copy_(t[perm])


class DynamicConvBNAct(nn.Module):
    """A kxk convolution (no bias) whose input and output channels are prefixes, optional
    dynamic BN, activation.  Mirrors ``ops.ConvBNAct``."""

    def __init__(self, max_in: int, max_out: int, kernel: int = 1, stride: int = 1,
                 act: str = "none", bn: bool = True, n_bn: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(max_in, max_out, kernel, stride, kernel // 2, bias=False)
        self.bn = DynamicBatchNorm2d(max_out, n_bn) if bn else None
        self.act = act
        self.stride, self.padding = stride, kernel // 2

    def weight(self, in_c: int, out_c: int) -> torch.Tensor:
        w = self.conv.weight
        if out_c == w.size(0) and in_c == w.size(1):
            return w
        return w[:out_c, :in_c]

    def forward(self, x: torch.Tensor, out_c: int, bn_idx: int = 0) -> torch.Tensor:
        y = F.conv2d(x, self.weight(x.size(1), out_c), None, self.stride, self.padding)
        if self.bn is not None:
            y = self.bn(y, bn_idx)
        return _act(y, self.act)

    def load_into(self, static: ops.ConvBNAct, bn_idx: int = 0) -> None:
        conv = static.conv
        with torch.no_grad():
            _copy_(conv.weight, self.weight(conv.in_channels, conv.out_channels))
        if self.bn is not None:
            self.bn.load_into(static.bn, bn_idx)


class DynamicDepthwiseConv2d(nn.Module):
    """Depthwise convolution with elastic kernel size and channel count.

    The stored kernel is the largest; kernel ``k`` is obtained by repeatedly taking the
    centre of the next larger kernel and multiplying the flattened centre by that size
    pair's transformation matrix (``F.linear`` as OFA does, so OFA weights load as is)."""

    def __init__(self, max_c: int, kernels: Sequence[int], stride: int = 1):
        super().__init__()
        self.kernels = tuple(sorted(set(kernels)))
        kmax = self.kernels[-1]
        self.conv = nn.Conv2d(max_c, max_c, kmax, stride, kmax // 2, groups=max_c, bias=False)
        self.stride = stride
        self.transforms = nn.ParameterDict({
            f"{big}to{small}": nn.Parameter(torch.eye(small * small))
            for small, big in zip(self.kernels, self.kernels[1:])
        })

    def weight(self, c: int, k: int) -> torch.Tensor:
        if k not in self.kernels:
            raise ValueError(f"kernel {k} is not one of {self.kernels}")
        w = self.conv.weight[:c] if c != self.conv.weight.size(0) else self.conv.weight
        src = self.kernels[-1]
        for small in reversed(self.kernels[:-1]):
            if small < k:
                break
            start = (src - small) // 2
            centre = w[:, :, start:start + small, start:start + small].reshape(c, small * small)
            w = F.linear(centre, self.transforms[f"{src}to{small}"]).view(c, 1, small, small)
            src = small
        return w

    def forward(self, x: torch.Tensor, k: int) -> torch.Tensor:
        c = x.size(1)
        return F.conv2d(x, self.weight(c, k), None, self.stride, k // 2, 1, c)


class DynamicSE(nn.Module):
    """Squeeze-excite on a prefix of ``max_c`` channels; hidden width ``se_channels(c)``."""

    def __init__(self, max_c: int):
        super().__init__()
        hidden = se_channels(max_c)
        self.reduce = nn.Conv2d(max_c, hidden, 1, bias=True)
        self.expand = nn.Conv2d(hidden, max_c, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.size(1)
        h = se_channels(c)
        y = x.mean((2, 3), keepdim=True)
        y = F.relu(F.conv2d(y, self.reduce.weight[:h, :c], self.reduce.bias[:h]), inplace=True)
        y = F.hardsigmoid(F.conv2d(y, self.expand.weight[:c, :h], self.expand.bias[:c]), inplace=True)
        return x * y

    def load_into(self, static: ops.SqueezeExcite) -> None:
        c, h = static.reduce.in_channels, static.reduce.out_channels
        with torch.no_grad():
            _copy_(static.reduce.weight, self.reduce.weight[:h, :c])
            _copy_(static.reduce.bias, self.reduce.bias[:h])
            _copy_(static.expand.weight, self.expand.weight[:c, :h])
            _copy_(static.expand.bias, self.expand.bias[:c])


class DynamicMBConv(nn.Module):
    """Inverted residual block with elastic kernel, middle width and in/out width.

    What runs is decided by the ``BlockSpec`` passed to ``forward`` (the same spec that
    ``ops.build_block`` turns into the static block), so supernet and extracted subnet
    cannot disagree about structure."""

    def __init__(self, max_in: int, max_mid: int, max_out: int, kernels: Sequence[int],
                 stride: int, act: str, se: bool, has_expand: bool = True, n_bn: int = 1):
        super().__init__()
        # expand
        self.expand = DynamicConvBNAct(max_in, max_mid, 1, act=act, n_bn=n_bn) if has_expand else None
        # depthwise
        self.depthwise = DynamicDepthwiseConv2d(max_mid, kernels, stride)
        self.depthwise_bn = DynamicBatchNorm2d(max_mid, n_bn)
        self.se = DynamicSE(max_mid) if se else None
        # project
        self.project = DynamicConvBNAct(max_mid, max_out, 1, act="none", n_bn=n_bn)
        self.act = act

    def forward(self, x: torch.Tensor, spec: BlockSpec, bn_idx: int = 0) -> torch.Tensor:
        y = x
        # expand
        if spec.has_expand:
            y = self.expand(y, spec.mid, bn_idx)
        # depthwise
        y = _act(self.depthwise_bn(self.depthwise(y, spec.kernel), bn_idx), spec.act)
        if self.se is not None:
            y = self.se(y)
        # project
        y = self.project(y, spec.out_c, bn_idx)
        return x + y if spec.residual else y

    def load_into(self, static: ops.MBConv, spec: BlockSpec, bn_idx: int = 0) -> None:
        # expand
        if static.expand is not None:
            self.expand.load_into(static.expand, bn_idx)
        # depthwise
        with torch.no_grad():
            _copy_(static.depthwise.conv.weight, self.depthwise.weight(spec.mid, spec.kernel))
        self.depthwise_bn.load_into(static.depthwise.bn, bn_idx)
        if static.se is not None:
            self.se.load_into(static.se)
        # project
        self.project.load_into(static.project, bn_idx)

    @torch.no_grad()
    def sort_channels(self, keep: Sequence[int] = ()) -> torch.Tensor:
        """Reorder the middle channels by decreasing importance (L1 norm of each channel's
        projection weights, OFA's ``re_organize_middle_weights``), keeping every prefix
        ``[:n]`` for ``n`` in ``keep`` a prefix (channels already trained as a smaller
        expand ratio stay in its group).  The SE hidden units are sorted the same way.
        The block's function at full width is unchanged.  Returns the permutation."""
        w_proj = self.project.conv.weight
        mid = w_proj.size(1)
        importance = w_proj.abs().sum(dim=(0, 2, 3))
        group = torch.zeros(mid, dtype=torch.long)
        for n in sorted(set(keep)):
            if 0 < n < mid:
                group[n:] += 1
        perm = torch.sort(importance, descending=True, stable=True).indices
        perm = perm[torch.sort(group[perm], stable=True).indices]

        # project: input channels
        w_proj.copy_(w_proj[:, perm])
        # SE: reduce input channels, expand output channels, then its hidden units
        if self.se is not None:
            se = self.se
            se.reduce.weight.copy_(se.reduce.weight[:, perm])
            se.expand.weight.copy_(se.expand.weight[perm])
            se.expand.bias.copy_(se.expand.bias[perm])
            hid = torch.sort(se.expand.weight.abs().sum(dim=(0, 2, 3)), descending=True, stable=True).indices
            se.expand.weight.copy_(se.expand.weight[:, hid])
            se.reduce.weight.copy_(se.reduce.weight[hid])
            se.reduce.bias.copy_(se.reduce.bias[hid])
        # depthwise
        self.depthwise.conv.weight.copy_(self.depthwise.conv.weight[perm])
        self.depthwise_bn.permute_(perm)
        # expand
        if self.expand is not None:
            self.expand.conv.weight.copy_(self.expand.conv.weight[perm])
            self.expand.bn.permute_(perm)
        return perm


class DynamicClassifier(nn.Module):
    """Dropout and a linear layer over a prefix of the input features (``ops.Classifier``)."""

    def __init__(self, max_in: int, num_classes: int, dropout: float = 0.0):
        super().__init__()
        self.linear = nn.Linear(max_in, num_classes)
        self.dropout = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(x, 1)
        x = F.dropout(x, self.dropout, self.training)
        c = x.size(1)
        w = self.linear.weight if c == self.linear.in_features else self.linear.weight[:, :c]
        return F.linear(x, w, self.linear.bias)

    def load_into(self, static: ops.Classifier) -> None:
        lin = static.linear
        with torch.no_grad():
            _copy_(lin.weight, self.linear.weight[:, :lin.in_features])
            _copy_(lin.bias, self.linear.bias)
