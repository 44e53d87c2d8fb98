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

import contextlib
import functools
import math
import time
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from . import ops
from .space import BlockSpec, se_channels


def _act(x: torch.Tensor, name: str) -> torch.Tensor:
    """The activation ``ops.make_act(name)`` builds, as a function (every name of
    ``space.ACTIVATIONS``; an unknown one is an error, never an identity).  ReLU and ReLU6 in
    place: every caller hands it a fresh BN or convolution output that nothing else reads
    (their backward passes need their inputs, not their outputs), which saves an allocation
    and a pass over memory per layer.  Hard-swish out of place: its backward needs its
    input, so autograd would clone the input before an in-place one."""
    if name == "relu":
        return F.relu(x, inplace=True)
    if name == "relu6":
        return F.relu6(x, inplace=True)
    if name == "hswish":
        return F.hardswish(x)
    if name == "none":
        return x
    raise ValueError(f"unknown activation {name!r}")


def _conv(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, stride: int = 1, padding: int = 0) -> torch.Tensor:
    """``F.conv2d``; a 1x1 convolution of a 1x1 map (the feature mix after pooling, the
    squeeze-and-excite layers) as the matrix product it is, which oneDNN's convolution takes
    3-5x longer over, forward and backward (bench/train_throughput.py's smallest subnet)."""
    if w.size(-1) == 1 and w.size(-2) == 1 and x.size(-1) == 1 and x.size(-2) == 1:
        return F.linear(x.flatten(1), w.flatten(1), b).view(x.size(0), -1, 1, 1)
    return F.conv2d(x, w, b, stride, padding)


class _Pool(torch.autograd.Function):
    """Global average pooling whose gradient keeps the input's memory format (the gradient
    of ``mean`` comes back NCHW for a channels-last input, and the layers below then mix the
    two formats: 3x slower batch-norm backward on the head's 960 channels)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return x.mean((2, 3), keepdim=True)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        (x,) = ctx.saved_tensors
        return torch.empty_like(x, dtype=g.dtype).copy_(g.expand(x.shape)).div_(x.size(2) * x.size(3))


def pool(x: torch.Tensor) -> torch.Tensor:
    """Global average pooling to a 1x1 map (``mean`` over height and width)."""
    if torch.is_grad_enabled() and x.requires_grad:
        return _Pool.apply(x)
    return x.mean((2, 3), keepdim=True)


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
        y = _conv(x, self.weight(x.size(1), out_c), None, self.stride, self.padding)
        if self.bn is not None:
            y = self.bn(y, bn_idx)
        return _act(y, self.act)

    def load_into(self, static: ops.ConvBNAct, bn_idx: int = 0) -> None:
        conv = static.conv
        with torch.no_grad():
            _copy_(conv.weight, self.weight(conv.in_channels, conv.out_channels))
        if self.bn is not None:
            self.bn.load_into(static.bn, bn_idx)


FAST_WGRAD_MIN_KERNEL = 5  # 3x3: oneDNN's own weight gradient is 3-7x faster than the forward form
# (batch, channels, height, width, kernel, stride) -> the weight-gradient kernel found faster
# for that shape on this machine (``wgrad_choice``)
_WGRAD_CHOICE: dict[tuple[int, ...], str] = {}
DETERMINISTIC_FAST_MAX_PIXELS = 64  # the fixed rule under torch.use_deterministic_algorithms


def depthwise_weight_grad(x: torch.Tensor, gy: torch.Tensor, kernel: int, stride: int, padding: int) -> torch.Tensor:
    """The weight gradient of a depthwise convolution (``F.conv2d(x, w, None, stride,
    padding, 1, C)``, ``w`` of shape ``(C, 1, kernel, kernel)``) given its output gradient
    ``gy``, computed as one depthwise convolution *forward*:

        dw[c, i, j] = sum over b, h, w of gy[b, c, h, w] * xpad[b, c, stride*h + i, stride*w + j]

    is, for every (b, c), the correlation of the padded input with the output gradient, i.e.
    a convolution of ``x`` (``B*C`` channels, batch 1) with ``gy`` as a ``B*C``-channel
    depthwise kernel of size ``Ho x Wo``, dilated by the stride, then summed over the batch.
    The same sums in another order (float32: about 1e-6 relative to the kernel's own)."""
    b, c, h, w = x.shape
    ho, wo = gy.shape[-2:]
    xin = x.contiguous().view(1, b * c, h, w)
    kern = gy.contiguous().view(b * c, 1, ho, wo)
    out = F.conv2d(xin, kern, None, 1, padding, stride, b * c)
    return out.view(b, c, out.size(-2), out.size(-1))[:, :, :kernel, :kernel].sum(0).unsqueeze(1)


def _own_grads(x: torch.Tensor, gy: torch.Tensor, w: torch.Tensor, s: int, p: int, mask: list[bool]):
    return torch.ops.aten.convolution_backward(gy, x, w, None, [s, s], [p, p], [1, 1], False, [0, 0], x.size(1),
                                               mask + [False])


def wgrad_choice(x: torch.Tensor, gy: torch.Tensor, w: torch.Tensor, s: int, p: int) -> str:
    """``"forward"`` (``depthwise_weight_grad``) or ``"own"`` (PyTorch's kernel) for this
    shape.  Neither wins everywhere on this machine's oneDNN (bench/depthwise_grad.py: the
    forward form 1.4-20x faster on most 5x5 and 7x7 layers, 0.6x on some 12x12 maps), so the
    first backward of each shape times both (the fastest of three runs each) and the choice is
    kept for the process.  Under ``torch.use_deterministic_algorithms`` a fixed rule decides
    instead (output maps of at most ``DETERMINISTIC_FAST_MAX_PIXELS``), so a resumed run
    computes exactly what an uninterrupted one did."""
    key = (*x.shape, w.size(-1), s)
    choice = _WGRAD_CHOICE.get(key)
    if choice is not None:
        return choice
    if torch.are_deterministic_algorithms_enabled():
        return "forward" if gy.size(-2) * gy.size(-1) <= DETERMINISTIC_FAST_MAX_PIXELS else "own"
    k = w.size(-1)
    runs = {"forward": lambda: depthwise_weight_grad(x, gy, k, s, p),
            "own": lambda: _own_grads(x, gy, w, s, p, [False, True])}
    best = {}
    for _ in range(3):
        for name, fn in runs.items():
            t = time.perf_counter()
            fn()
            best[name] = min(best.get(name, math.inf), time.perf_counter() - t)
    choice = _WGRAD_CHOICE[key] = min(best, key=best.get)
    return choice


class _DepthwiseConv2d(torch.autograd.Function):
    """``F.conv2d`` of a depthwise convolution whose backward takes the weight gradient from
    ``depthwise_weight_grad`` or PyTorch's own kernel, whichever ``wgrad_choice`` says."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, w: torch.Tensor, stride: int, padding: int) -> torch.Tensor:
        ctx.save_for_backward(x, w)
        ctx.stride, ctx.padding = stride, padding
        return F.conv2d(x, w, None, stride, padding, 1, x.size(1))

    @staticmethod
    def backward(ctx, gy: torch.Tensor):
        x, w = ctx.saved_tensors
        s, p = ctx.stride, ctx.padding
        need_x, need_w = ctx.needs_input_grad[:2]
        if need_w and wgrad_choice(x, gy, w, s, p) == "forward":
            gx = _own_grads(x, gy, w, s, p, [True, False])[0] if need_x else None
            return gx, depthwise_weight_grad(x, gy, w.size(-1), s, p), None, None
        gx, gw, _ = _own_grads(x, gy, w, s, p, [need_x, need_w])
        return gx, gw, None, None


_CUDNN_DEPTHWISE = True  # set_cudnn_depthwise(False): depthwise convolutions on CUDA skip cuDNN


def set_cudnn_depthwise(enabled: bool) -> None:
    """Whether depthwise convolutions on CUDA may use cuDNN (``supernet.device.apply_cudnn``,
    ``--cudnn no-depthwise``): cuDNN 9.10+ is reported to compile an execution plan for each
    new depthwise shape (NVIDIA/cudnn-frontend#1066), and a supernet meets new shapes with
    nearly every subnet and resolution; PyTorch's own depthwise kernel compiles nothing."""
    global _CUDNN_DEPTHWISE
    _CUDNN_DEPTHWISE = bool(enabled)


@contextlib.contextmanager
def _cudnn_disabled():
    # torch.backends.cudnn.flags() would also reset benchmark and deterministic
    was = torch._C._get_cudnn_enabled()
    torch._C._set_cudnn_enabled(False)
    try:
        yield
    finally:
        torch._C._set_cudnn_enabled(was)


class _NativeDepthwiseConv2d(torch.autograd.Function):
    """A depthwise convolution on CUDA through PyTorch's own kernels, forward and backward
    (cuDNN disabled around both), in the autocast dtype when autocast is on."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, w: torch.Tensor, stride: int, padding: int) -> torch.Tensor:
        dtype = torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else x.dtype
        xc, wc = x.to(dtype), w.to(dtype)
        ctx.save_for_backward(xc, wc)
        ctx.stride, ctx.padding, ctx.dtypes = stride, padding, (x.dtype, w.dtype)
        with torch.autocast("cuda", enabled=False), _cudnn_disabled():
            return F.conv2d(xc, wc, None, stride, padding, 1, x.size(1))

    @staticmethod
    def backward(ctx, gy: torch.Tensor):
        xc, wc = ctx.saved_tensors
        need_x, need_w = ctx.needs_input_grad[:2]
        with _cudnn_disabled():
            gx, gw, _ = _own_grads(xc, gy.to(xc.dtype), wc, ctx.stride, ctx.padding, [need_x, need_w])
        return (gx.to(ctx.dtypes[0]) if need_x else None, gw.to(ctx.dtypes[1]) if need_w else None, None, None)


def depthwise_conv2d(x: torch.Tensor, w: torch.Tensor, stride: int, padding: int) -> torch.Tensor:
    """A depthwise convolution (``w``: ``(C, 1, k, k)``).  On the CPU in float32, when a
    weight gradient is needed and the kernel is 5x5 or larger, the backward picks the faster
    weight-gradient kernel for the shape (``wgrad_choice``): oneDNN's own depthwise weight
    gradient is several times slower than a forward convolution on most of this project's
    training shapes (the largest part of a training step of the Fashion-MNIST space).  On
    CUDA after ``set_cudnn_depthwise(False)`` it runs PyTorch's own depthwise kernels."""
    if x.is_cuda and not _CUDNN_DEPTHWISE:
        return _NativeDepthwiseConv2d.apply(x, w, stride, padding)
    if (x.device.type == "cpu" and x.dtype == torch.float32 and w.dtype == torch.float32
            and w.size(-1) >= FAST_WGRAD_MIN_KERNEL and torch.is_grad_enabled() and w.requires_grad
            and not torch.is_autocast_enabled("cpu")):
        return _DepthwiseConv2d.apply(x, w, stride, padding)
    return F.conv2d(x, w, None, stride, padding, 1, x.size(1))


@contextlib.contextmanager
def fast_depthwise(net: nn.Module):
    """Within the block, every depthwise ``nn.Conv2d`` of ``net`` (a static network, e.g. one
    trained alone) runs through ``depthwise_conv2d``, as the supernet's depthwise op does,
    so that a network trained alone gets the same weight-gradient kernel; restored on exit
    (an exported module is plain ``nn.Conv2d``)."""
    patched = []
    for m in net.modules():
        if (type(m) is nn.Conv2d and m.groups == m.in_channels == m.out_channels and m.kernel_size[0] > 1
                and m.kernel_size[0] == m.kernel_size[1] and m.bias is None and m.dilation == (1, 1)
                and m.stride[0] == m.stride[1] and m.padding == (m.kernel_size[0] // 2,) * 2
                and m.padding_mode == "zeros"):
            m.forward = functools.partial(_depthwise_forward, m)
            patched.append(m)
    try:
        yield net
    finally:
        for m in patched:
            del m.forward


def _depthwise_forward(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    return depthwise_conv2d(x, conv.weight, conv.stride[0], conv.padding[0])


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
        return depthwise_conv2d(x, self.weight(x.size(1), k), self.stride, k // 2)


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
        y = pool(x)
        y = F.relu(_conv(y, self.reduce.weight[:h, :c], self.reduce.bias[:h]), inplace=True)
        y = F.hardsigmoid(_conv(y, self.expand.weight[:c, :h], self.expand.bias[:c]))
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
        if not spec.residual:
            return y
        # in place on the projection's fresh BN output (its backward needs only its input)
        return y.add_(x) if y.dtype == x.dtype else x + y

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
        group = torch.zeros(mid, dtype=torch.long, device=w_proj.device)
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
