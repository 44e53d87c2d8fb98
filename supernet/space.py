"""The search space, defined once and shared by the profiler, the supernet and the search.

Three frozen dataclasses carry everything:

- ``SearchSpace``: stages (base width, stride, activation, squeeze-excite), the elastic
  choices (kernels, expand ratios, depths, resolutions, width multipliers), the fixed stem
  and head.  ``OFA_MBV3`` is the published Once-for-All MobileNetV3 space (Cai et al.,
  "Once-for-All", ICLR 2020, Sec. 3.1 and the released ``OFAMobileNetV3``); small spaces for
  tests are the same class with other numbers.
- ``SubnetConfig(ks, e, d, r, w)``: one architecture of a space, in OFA's JSON naming.
- ``BlockSpec``: everything that decides a block's latency.  ``str(spec)`` is the LUT key
  and ``BlockSpec.parse(str(spec)) == spec``.

``space.blocks(subnet)`` lists a subnet's blocks in network order; ``space.all_blocks()``
lists every distinct block the space can produce.  The profiler measures ``all_blocks``,
the latency model sums LUT rows over ``blocks(subnet)``, and ``supernet.ops.build_block``
turns the same specs into the modules that are exported, measured and deployed.

This module imports nothing heavy: ``import supernet.space`` is instant.
"""

from __future__ import annotations

import json
import math
import random
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterable, Sequence

ACTIVATIONS = ("relu", "relu6", "hswish", "none")
KINDS = ("first_conv", "mbconv", "final_expand", "pool", "feature_mix", "classifier", "overhead", "boundary",
         "stream")
PROBE_KINDS = ("overhead", "boundary", "stream")  # the profiler's probes: in no network
DIVISOR = 8
SE_REDUCTION = 4


def make_divisible(value: float, divisor: int = DIVISOR, min_value: int | None = None) -> int:
    """Round ``value`` to the nearest multiple of ``divisor``, never more than 10% down.

    The rule of the MobileNet reference code (and OFA's ``make_divisible``).
    """
    min_value = divisor if min_value is None else min_value
    new = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new < 0.9 * value:
        new += divisor
    return int(new)


def se_channels(channels: int) -> int:
    """Hidden width of the squeeze-excite block on ``channels`` (OFA: reduction 4, divisor 8)."""
    return make_divisible(channels // SE_REDUCTION, DIVISOR)


def conv_out(size: int, kernel: int, stride: int) -> int:
    """Output size of a convolution with 'same' padding ``kernel // 2``."""
    return (size + 2 * (kernel // 2) - kernel) // stride + 1


def effective_kernel(kernel: int, size: int) -> int:
    """The part of a 'same'-padded ``kernel`` x ``kernel`` convolution that ever touches a
    ``size`` x ``size`` map: ``min(kernel, 2 * size - 1)``, whatever the stride.

    The first output pixel sits on input 0 and reaches input ``size - 1`` with tap offset
    ``size - 1``; no output reaches further, so taps beyond that offset only ever see the
    zero padding and the convolution equals the one with the central
    ``2 * size - 1`` x ``2 * size - 1`` of its kernel (a 7x7 depthwise kernel on a 2x2 map is
    its centre 3x3, on a 3x3 map its centre 5x5)."""
    return min(kernel, 2 * size - 1)


def _fmt_num(x: float) -> int | float:
    """An integral float as int (so JSON says 4, not 4.0)."""
    return int(x) if float(x).is_integer() else float(x)


# --------------------------------------------------------------------------- BlockSpec

_KEY_RE = re.compile(
    r"^(?P<kind>[a-z_]+)"
    r"-input:(?P<ih>\d+)x(?P<iw>\d+)x(?P<ic>\d+)"
    r"-output:(?P<oh>\d+)x(?P<ow>\d+)x(?P<oc>\d+)"
    r"-mid:(?P<mid>\d+)-kernel:(?P<k>\d+)-stride:(?P<s>\d+)"
    r"-res:(?P<res>[01])-se:(?P<se>[01])-act:(?P<act>[a-z0-9]+)$"
)


@dataclass(frozen=True)
class BlockSpec:
    """Everything that decides one block's latency.

    Kinds: ``first_conv`` (kxk conv, BN, act), ``mbconv`` (inverted residual: 1x1 expand
    unless ``mid == in_c``, kxk depthwise, optional squeeze-excite, 1x1 project, optional
    residual), ``final_expand`` (1x1 conv, BN, act), ``pool`` (global average pooling),
    ``feature_mix`` (1x1 conv without BN, act), ``classifier`` (dropout and linear), and
    ``overhead``: no block of a network but the profiler's probe of a runtime's fixed cost
    of one invocation at an input shape (one ReLU, output shape = input shape; see
    ``overhead_probe``), ``boundary``: the profiler's probe of what a runtime pays at the
    edges of a block run alone beyond that (``mid`` = 1 or 2 chained 1x1 depthwise
    convolutions, output shape = input shape; see ``boundary_probes``), and ``stream``: the
    profiler's probe of how fast a device reads
    weights that are no longer in its caches (``mid`` 1x1 convolutions of a 1x1 map with
    ``in_c`` channels in a chain; see ``stream_probes``).
    """

    kind: str
    in_h: int
    in_w: int
    in_c: int
    out_h: int
    out_w: int
    out_c: int
    mid: int = 0
    kernel: int = 1
    stride: int = 1
    residual: bool = False
    se: bool = False
    act: str = "none"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"block kind {self.kind!r} is not one of {', '.join(KINDS)}")
        if self.act not in ACTIVATIONS:
            raise ValueError(f"activation {self.act!r} is not one of {', '.join(ACTIVATIONS)}")
        for name in ("in_h", "in_w", "in_c", "out_h", "out_w", "out_c", "kernel", "stride"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"block field {name} must be a positive integer, got {value!r}")
        if not isinstance(self.mid, int) or self.mid < 0:
            raise ValueError(f"block field mid must be a non-negative integer, got {self.mid!r}")
        if self.kind == "mbconv":
            if self.mid < 1 or self.kernel % 2 == 0:
                raise ValueError(f"mbconv needs mid >= 1 and an odd kernel, got mid={self.mid} kernel={self.kernel}")
            if self.residual and (self.stride != 1 or self.in_c != self.out_c):
                raise ValueError("a residual mbconv needs stride 1 and in_c == out_c")
        elif self.kind == "stream":
            if (self.mid < 1 or self.residual or self.se or (self.in_h, self.in_w) != (1, 1)
                    or (self.in_h, self.in_w, self.in_c) != (self.out_h, self.out_w, self.out_c)
                    or self.kernel != 1 or self.stride != 1 or self.act != "none"):
                raise ValueError("a stream probe is mid >= 1 layers on a 1x1 map, output shape = input shape, "
                                 "kernel 1, stride 1, act none")
        elif self.kind == "boundary":
            if (self.mid not in (1, 2) or self.residual or self.se
                    or (self.in_h, self.in_w, self.in_c) != (self.out_h, self.out_w, self.out_c)
                    or self.kernel != 1 or self.stride != 1 or self.act != "none"):
                raise ValueError("a boundary probe is 1 or 2 (mid) depthwise 1x1 layers, output shape = input "
                                 "shape, kernel 1, stride 1, act none")
        elif self.mid or self.residual or self.se:
            raise ValueError(f"{self.kind} takes no mid, residual or se")
        if self.kind == "overhead" and ((self.in_h, self.in_w, self.in_c) != (self.out_h, self.out_w, self.out_c)
                                        or self.kernel != 1 or self.stride != 1 or self.act != "relu"):
            raise ValueError("an overhead probe has output shape = input shape, kernel 1, stride 1 and act relu")

    # string form ---------------------------------------------------------------
    def __str__(self) -> str:
        return (
            f"{self.kind}-input:{self.in_h}x{self.in_w}x{self.in_c}"
            f"-output:{self.out_h}x{self.out_w}x{self.out_c}"
            f"-mid:{self.mid}-kernel:{self.kernel}-stride:{self.stride}"
            f"-res:{int(self.residual)}-se:{int(self.se)}-act:{self.act}"
        )

    @property
    def key(self) -> str:
        return str(self)

    @classmethod
    def parse(cls, text: str) -> "BlockSpec":
        """Inverse of ``str``; raises ValueError naming the malformed key."""
        m = _KEY_RE.match(text.strip()) if isinstance(text, str) else None
        if m is None:
            raise ValueError(
                f"malformed block key {text!r}: expected "
                "KIND-input:HxWxC-output:HxWxC-mid:M-kernel:K-stride:S-res:0|1-se:0|1-act:ACT"
            )
        g = m.groupdict()
        return cls(
            kind=g["kind"],
            in_h=int(g["ih"]), in_w=int(g["iw"]), in_c=int(g["ic"]),
            out_h=int(g["oh"]), out_w=int(g["ow"]), out_c=int(g["oc"]),
            mid=int(g["mid"]), kernel=int(g["k"]), stride=int(g["s"]),
            residual=g["res"] == "1", se=g["se"] == "1", act=g["act"],
        )

    @property
    def input_shape(self) -> tuple[int, ...]:
        """NCHW input shape at batch 1 (every block, the classifier included, takes NCHW)."""
        return (1, self.in_c, self.in_h, self.in_w)

    @property
    def output_shape(self) -> tuple[int, ...]:
        """Output shape at batch 1: NCHW, or N x classes for the classifier."""
        if self.kind == "classifier":
            return (1, self.out_c)
        return (1, self.out_c, self.out_h, self.out_w)

    @property
    def has_expand(self) -> bool:
        return self.kind == "mbconv" and self.mid != self.in_c

    # cost ------------------------------------------------------------------------
    def params(self) -> int:
        """Trainable parameters of the block as built by ``supernet.ops.build_block``."""
        k, i, o, m = self.kernel, self.in_c, self.out_c, self.mid
        if self.kind in ("first_conv", "final_expand"):
            return k * k * i * o + 2 * o
        if self.kind == "feature_mix":
            return i * o
        if self.kind == "classifier":
            return i * o + o
        if self.kind in ("pool", "overhead"):
            return 0
        if self.kind == "stream":
            return m * i * i
        if self.kind == "boundary":
            return 2 * m * i  # weight and bias per channel and layer
        total = 0
        if self.has_expand:
            total += i * m + 2 * m
        total += m * k * k + 2 * m
        if self.se:
            s = se_channels(m)
            total += m * s + s + s * m + m
        total += m * o + 2 * o
        return total

    def macs(self) -> int:
        """Multiply-accumulates, counted as OFA's ``count_net_flops`` does.

        Convolutions count ``out elements * (in/groups * k * k + has_bias)``, linear layers
        ``out elements * in``; BN, activations, pooling and additions are free.
        """
        k, i, o, m = self.kernel, self.in_c, self.out_c, self.mid
        out_px = self.out_h * self.out_w
        if self.kind in ("first_conv", "final_expand", "feature_mix"):
            return out_px * o * i * k * k
        if self.kind == "classifier":
            return i * o
        if self.kind in ("pool", "overhead"):
            return 0
        if self.kind == "stream":
            return m * i * i
        if self.kind == "boundary":
            return self.in_h * self.in_w * m * i
        total = 0
        if self.has_expand:
            total += self.in_h * self.in_w * m * i
        total += out_px * m * k * k
        if self.se:
            s = se_channels(m)
            total += s * (m + 1) + m * (s + 1)
        total += out_px * o * m
        return total


def overhead_probe(block: BlockSpec) -> BlockSpec:
    """The probe that measures a runtime's fixed per-invocation cost at ``block``'s input
    shape: one ReLU from that shape to itself (no arithmetic worth the name, but the same
    call, input copy and output fetch a block pays).  A block's LUT time holds one such
    invocation that a whole network pays only once, so the latency model subtracts the
    probe's time from every block and adds the network input's probe once
    (``profiler.costmodel``)."""
    return BlockSpec("overhead", block.in_h, block.in_w, block.in_c, block.in_h, block.in_w, block.in_c, act="relu")


def boundary_probes(block: BlockSpec) -> tuple[BlockSpec, BlockSpec]:
    """The two probes that measure what a block run alone pays at its edges beyond the
    invocation itself, at ``block``'s input shape: one 1x1 depthwise convolution (``mid=1``)
    and two chained (``mid=2``).  ``2 t(one) - t(two)`` is everything the one-layer model
    pays once whatever its length: the invocation and, on a runtime that computes in a layout
    of its own, the conversion of the input into it and of the output back.  onnxruntime's
    CPU provider runs convolutions in a blocked layout (NCHWc) and converts at every model's
    edges; inside a network the blocks hand the blocked tensors on.  Measured on a 2-core AMD
    EPYC (onnxruntime 1.32, 2026-12-07): 9-13 us against 7.5-9 us for the ``overhead``
    probe at the Fashion-MNIST space's shapes, i.e. a few microseconds a block that a
    network does not pay; the latency model subtracts this instead of the overhead probe
    where the LUT has both (``profiler.costmodel``)."""
    h, w, c = block.in_h, block.in_w, block.in_c
    return (BlockSpec("boundary", h, w, c, h, w, c, mid=1), BlockSpec("boundary", h, w, c, h, w, c, mid=2))


STREAM_CHANNELS = 256  # a stream probe's layers: 256 x 256 weights, 256 KiB each in float32
STREAM_LAYERS = (1, 2, 4, 6, 8, 12, 16, 32)  # 0.25 to 8 MiB of float32 weights: every probe set has these
STREAM_MORE = (48, 64, 96, 128, 192, 256, 384, 512)  # 12 to 128 MiB: added up to a space's largest network


def stream_layers(touched_bytes: float = 0.0, channels: int = STREAM_CHANNELS,
                  bytes_per_param: int = 4) -> tuple[int, ...]:
    """The chain lengths of the stream probes for networks that touch up to ``touched_bytes``
    in a run (weights and activations, ``profiler.costmodel.solo_bytes`` summed over the
    largest network's blocks): ``STREAM_LAYERS``, then ``STREAM_MORE`` up to the first
    probe that holds at least that (the latency model reads the curve at what a network
    touches and holds its last value beyond the largest probe, so the probes must reach the
    largest network: on a 2-core EPYC VM with a 32 MiB L3 the time per weight byte was flat
    to 16 MiB, 1.7x at 32 MiB and 2.2x from 64 MiB, where ``ofa_mbv3``'s 224-px networks
    touch 40-70 MiB a run)."""
    layer = channels * channels * bytes_per_param
    out = list(STREAM_LAYERS)
    for n in STREAM_MORE:
        if out[-1] * layer >= touched_bytes:
            break
        out.append(n)
    return tuple(out)


def stream_probes(channels: int = STREAM_CHANNELS, layers: Sequence[int] = STREAM_LAYERS) -> list[BlockSpec]:
    """The probes that measure how a device's time per weight byte grows once a model's
    weights no longer fit its caches: chains of ``n`` 1x1 convolutions of a 1x1 map (a
    matrix-vector product each, so reading the weights is nearly all the work) for each
    ``n`` in ``layers`` (``stream_layers`` sizes them for a space).  A LUT row times one
    block again and again, its weights left in the caches by the run before; a whole
    network whose weights exceed the caches reads them from further away every run.  The
    latency model prices that from these rows (``profiler.costmodel``)."""
    return [BlockSpec("stream", 1, 1, channels, 1, 1, channels, mid=n) for n in layers]


# --------------------------------------------------------------------------- SearchSpace


@dataclass(frozen=True)
class StageSpec:
    """One elastic stage: base width (at width multiplier 1.0), first-block stride,
    activation and squeeze-excite; ``max_depth`` (0: the space's) caps the depths this stage
    may take to the space's depths up to it (ProxylessNAS's last stage is one block)."""

    width: int
    stride: int
    act: str
    se: bool
    max_depth: int = 0


@dataclass(frozen=True)
class Widths:
    """Channel counts of a space at one width multiplier."""

    first_conv: int
    first_block: int
    stages: tuple[int, ...]
    final_expand: int
    feature_mix: int


@dataclass(frozen=True)
class SearchSpace:
    """An OFA-style MobileNetV3 search space.

    The defaults are the published OFA MobileNetV3 space (MobileNetV3-Large widths, Table 1
    of Howard et al., "Searching for MobileNetV3", with OFA's elastic kernel, expand and depth).
    """

    name: str
    stages: tuple[StageSpec, ...]
    kernels: tuple[int, ...] = (3, 5, 7)
    expands: tuple[float, ...] = (3, 4, 6)
    depths: tuple[int, ...] = (2, 3, 4)
    resolutions: tuple[int, ...] = tuple(range(128, 225, 4))
    width_mults: tuple[float, ...] = (1.0, 1.2)
    first_conv_width: int = 16
    first_conv_kernel: int = 3
    first_conv_stride: int = 2
    first_conv_act: str = "hswish"
    first_block_width: int = 16
    first_block_act: str = "relu"
    final_expand_width: int = 960
    feature_mix_width: int = 1280
    head_act: str = "hswish"
    in_channels: int = 3
    num_classes: int = 1000
    dropout: float = 0.1

    def __post_init__(self) -> None:
        def fail(msg: str) -> None:
            raise ValueError(f"search space {self.name!r}: {msg}")

        if not self.stages:
            fail("needs at least one stage")
        for attr in ("kernels", "expands", "depths", "resolutions", "width_mults"):
            values = getattr(self, attr)
            if not values or list(values) != sorted(set(values)):
                fail(f"{attr} must be a non-empty, strictly increasing tuple, got {values!r}")
        if any(k % 2 == 0 or k < 1 for k in self.kernels):
            fail(f"kernels must be odd, got {self.kernels}")
        if min(self.depths) < 1:
            fail("depths must be >= 1")
        for s in self.stages:
            if s.act not in ACTIVATIONS:
                fail(f"stage activation {s.act!r} is not one of {ACTIVATIONS}")
            if s.max_depth and s.max_depth < min(self.depths):
                fail(f"a stage's max_depth {s.max_depth} is below the smallest depth {min(self.depths)}")
        if self.feature_mix_width < 0:
            fail("feature_mix_width must be >= 0 (0: no feature-mix conv)")

    # shape of the space ------------------------------------------------------------
    @property
    def max_depth(self) -> int:
        return max(self.depths)

    def stage_depths(self, i: int) -> tuple[int, ...]:
        """The depths stage ``i`` may take: the space's depths up to the stage's ``max_depth``
        (a prefix of ``depths``, so a depth index means the same in every stage)."""
        cap = self.stages[i].max_depth
        return tuple(d for d in self.depths if not cap or d <= cap)

    def stage_max_depth(self, i: int) -> int:
        return max(self.stage_depths(i))

    @property
    def full_depths(self) -> tuple[int, ...]:
        """Every stage at its deepest."""
        return tuple(self.stage_max_depth(i) for i in range(len(self.stages)))

    @property
    def has_feature_mix(self) -> bool:
        """OFA MobileNetV3's head has a 1x1 feature-mix conv after pooling; ProxylessNAS's
        (``feature_mix_width == 0``) goes from pooling straight to the classifier."""
        return self.feature_mix_width > 0

    @property
    def head_width(self) -> int:
        """Base width of the classifier's input (feature mix, else final expand)."""
        return self.feature_mix_width if self.has_feature_mix else self.final_expand_width

    @property
    def num_blocks(self) -> int:
        """Number of elastic block slots (OFA MobileNetV3: 5 stages x 4 = 20)."""
        return len(self.stages) * self.max_depth

    @property
    def default_resolution(self) -> int:
        return max(self.resolutions)

    @property
    def default_width(self) -> float:
        return self.width_mults[0]

    def widths(self, w: float) -> Widths:
        """Channel counts at width multiplier ``w`` (OFA: ``make_divisible(base * w, 8)``)."""
        md = lambda c: make_divisible(c * w, DIVISOR)  # noqa: E731
        return Widths(
            first_conv=md(self.first_conv_width),
            first_block=md(self.first_block_width),
            stages=tuple(md(s.width) for s in self.stages),
            final_expand=md(self.final_expand_width),
            feature_mix=md(self.feature_mix_width),
        )

    def middle_channels(self, in_c: int, expand: float) -> int:
        return make_divisible(round(in_c * expand), DIVISOR)

    def size(self) -> int:
        """Number of distinct architectures (kernel x expand per active block, depth, r, w)."""
        per_block = len(self.kernels) * len(self.expands)
        total = len(self.resolutions) * len(self.width_mults)
        for i in range(len(self.stages)):
            total *= sum(per_block**d for d in self.stage_depths(i))
        return total

    # subnets ---------------------------------------------------------------------------
    def uniform_subnet(self, kernel: int, expand: float, depth: int,
                       r: int | None = None, w: float | None = None) -> "SubnetConfig":
        """The same kernel, expand and depth everywhere (validated against the space; a stage
        that cannot be ``depth`` deep takes its deepest)."""
        return SubnetConfig(
            ks=(kernel,) * self.num_blocks,
            e=(expand,) * self.num_blocks,
            d=tuple(depth if depth in self.stage_depths(i) else self.stage_max_depth(i)
                    for i in range(len(self.stages))),
            r=self.default_resolution if r is None else r,
            w=self.default_width if w is None else w,
        ).validated(self)

    def max_subnet(self, r: int | None = None, w: float | None = None) -> "SubnetConfig":
        return self.uniform_subnet(max(self.kernels), max(self.expands), max(self.depths), r, w)

    def min_subnet(self, r: int | None = None, w: float | None = None) -> "SubnetConfig":
        return self.uniform_subnet(min(self.kernels), min(self.expands), min(self.depths), r, w)

    def sample(
        self,
        rng: random.Random,
        resolutions: Sequence[int] | None = None,
        widths: Sequence[float] | None = None,
    ) -> "SubnetConfig":
        """A uniformly random subnet; ``rng`` is the only source of randomness."""
        return SubnetConfig(
            ks=tuple(rng.choice(self.kernels) for _ in range(self.num_blocks)),
            e=tuple(rng.choice(self.expands) for _ in range(self.num_blocks)),
            d=tuple(rng.choice(self.stage_depths(i)) for i in range(len(self.stages))),
            r=rng.choice(list(resolutions or self.resolutions)),
            w=rng.choice(list(widths or (self.default_width,))),
        )

    def canonical(self, cfg: "SubnetConfig") -> "SubnetConfig":
        """The same network in one spelling, so that equal networks compare and hash equal:
        the entries that depth skips set to the smallest choice, and every kernel that is
        inert on its slot's feature map at ``cfg.r`` collapsed (``collapse_kernel``)."""
        ks, e = list(cfg.ks), list(cfg.e)
        sizes = self.slot_sizes(cfg.r)
        for i, d in enumerate(cfg.d):
            for j in range(self.max_depth):
                slot = i * self.max_depth + j
                if j >= d:
                    ks[slot] = self.kernels[0]
                    e[slot] = self.expands[0]
                else:
                    ks[slot] = self.collapse_kernel(ks[slot], sizes[slot])
        return replace(cfg, ks=tuple(ks), e=tuple(e))

    # inert kernels ---------------------------------------------------------------------
    def slot_sizes(self, r: int) -> tuple[int, ...]:
        """Side of the feature map each elastic block slot's depthwise convolution runs on
        at input resolution ``r`` (it does not depend on the depths)."""
        h = conv_out(r, self.first_conv_kernel, self.first_conv_stride)
        out = []
        for stage in self.stages:
            for j in range(self.max_depth):
                out.append(h)
                if j == 0:
                    h = conv_out(h, 1, stage.stride)
        return tuple(out)

    def collapse_kernel(self, kernel: int, size: int) -> int:
        """The smallest kernel of the space that computes what ``kernel`` computes on a
        ``size`` x ``size`` map (``effective_kernel``): ``kernel`` itself unless part of it only
        ever sees padding.  A 7x7 on a 2x2 map is a 3x3 (kernels 3/5/7), on a 3x3 map a 5x5."""
        need = effective_kernel(kernel, size)
        return min(k for k in self.kernels if k >= need) if need < kernel else kernel

    def kernel_caps(self, r: int) -> tuple[int, ...]:
        """Per block slot, the largest kernel that is not collapsed at resolution ``r``."""
        kmax = max(self.kernels)
        return tuple(self.collapse_kernel(kmax, s) for s in self.slot_sizes(r))

    def inert_kernels(self, resolutions: Iterable[int] | None = None) -> dict[int, dict[int, list[int]]]:
        """``{r: {slot: [kernels collapsed there]}}`` for the resolutions (default: all of the
        space's) where some kernel is inert; empty when every kernel matters everywhere."""
        out: dict[int, dict[int, list[int]]] = {}
        for r in (self.resolutions if resolutions is None else resolutions):
            sizes = self.slot_sizes(r)
            per = {slot: [k for k in self.kernels if self.collapse_kernel(k, s) != k]
                   for slot, s in enumerate(sizes)}
            per = {slot: ks for slot, ks in per.items() if ks}
            if per:
                out[r] = per
        return out

    def active_blocks(self, cfg: "SubnetConfig") -> list[tuple[int, int, int]]:
        """(stage, position in stage, block slot) of every block the subnet keeps."""
        return [
            (i, j, i * self.max_depth + j)
            for i, d in enumerate(cfg.d)
            for j in range(d)
        ]

    # blocks ------------------------------------------------------------------------------
    def blocks(self, cfg: "SubnetConfig") -> list[BlockSpec]:
        """The subnet's blocks in network order (the rows its latency is summed over)."""
        cfg.validate(self)
        return self._blocks(cfg.r, cfg.w, cfg.ks, cfg.e, cfg.d)

    def _blocks(self, r: int, w: float, ks, e, d) -> list[BlockSpec]:
        wd = self.widths(w)
        out: list[BlockSpec] = []
        h = conv_out(r, self.first_conv_kernel, self.first_conv_stride)
        out.append(BlockSpec("first_conv", r, r, self.in_channels, h, h, wd.first_conv,
                             kernel=self.first_conv_kernel, stride=self.first_conv_stride,
                             act=self.first_conv_act))
        c = wd.first_conv
        out.append(BlockSpec("mbconv", h, h, c, h, h, wd.first_block, mid=c, kernel=3, stride=1,
                             residual=c == wd.first_block, act=self.first_block_act))
        c = wd.first_block
        for i, stage in enumerate(self.stages):
            for j in range(d[i]):
                slot = i * self.max_depth + j
                stride = stage.stride if j == 0 else 1
                k = self.collapse_kernel(ks[slot], h)  # an inert kernel is priced and built as its centre
                ho = conv_out(h, k, stride)
                oc = wd.stages[i]
                out.append(BlockSpec(
                    "mbconv", h, h, c, ho, ho, oc,
                    mid=self.middle_channels(c, e[slot]), kernel=k, stride=stride,
                    residual=stride == 1 and c == oc, se=stage.se, act=stage.act,
                ))
                h, c = ho, oc
        out.append(BlockSpec("final_expand", h, h, c, h, h, wd.final_expand, act=self.head_act))
        out.append(BlockSpec("pool", h, h, wd.final_expand, 1, 1, wd.final_expand))
        c = wd.final_expand
        if self.has_feature_mix:
            out.append(BlockSpec("feature_mix", 1, 1, c, 1, 1, wd.feature_mix, act=self.head_act))
            c = wd.feature_mix
        out.append(BlockSpec("classifier", 1, 1, c, 1, 1, self.num_classes))
        return out

    def require_resolution(self, r: int, flag: str | None = None) -> None:
        """ValueError naming the allowed resolutions (and ``flag``, the option that gave
        ``r``, when there is one) unless ``r`` is one of them."""
        if r not in self.resolutions:
            raise ValueError(f"{f'{flag}: ' if flag else ''}resolution {r} is not in space {self.name!r} "
                             f"(allowed: {_ranges(self.resolutions)})")

    def require_width(self, w: float, flag: str | None = None) -> None:
        """ValueError naming the allowed width multipliers (and ``flag``, the option that
        gave ``w``, when there is one) unless ``w`` is one of them (nan and inf are none)."""
        if w not in self.width_mults:
            raise ValueError(f"{f'{flag}: ' if flag else ''}{w:g} is not a width multiplier of space {self.name!r} "
                             f"({', '.join(f'{x:g}' for x in self.width_mults)})")

    def all_blocks(
        self,
        resolutions: Iterable[int] | None = None,
        widths: Iterable[float] | None = None,
        by_network: bool = False,
    ) -> list[BlockSpec]:
        """Every distinct block of the space at these resolutions and width multipliers,
        in network order per resolution (96 per resolution for the OFA MobileNetV3 space):
        position by position, each position's (kernel, expand) variants together, or with
        ``by_network`` network by network (the deepest subnet with one (kernel, expand)
        everywhere, then the next, each block where it first appears), so that consecutive
        blocks are neighbours in a network (``profiler.run --context round-robin``)."""
        resolutions = list(self.resolutions if resolutions is None else resolutions)
        widths = list((self.default_width,) if widths is None else widths)
        for r in resolutions:
            self.require_resolution(r)
        for w in widths:
            self.require_width(w)
        seen: dict[BlockSpec, None] = {}
        nb = self.num_blocks
        for w in widths:
            for r in resolutions:
                # Every block slot sees the same input shape whatever the depth, and the
                # later blocks of a stage share one shape, so the deepest subnet with each
                # (kernel, expand) everywhere covers all blocks; interleaving the lists keeps
                # network order.
                per_choice = [
                    self._blocks(r, w, (k,) * nb, (x,) * nb, self.full_depths)
                    for k in self.kernels
                    for x in self.expands
                ]
                for group in (per_choice if by_network else zip(*per_choice)):
                    for spec in group:
                        seen.setdefault(spec)
        return list(seen)

    # misc --------------------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "stages": [{k: v for k, v in vars(s).items() if k != "max_depth" or v} for s in self.stages],
            "kernels": list(self.kernels),
            "expands": [_fmt_num(x) for x in self.expands],
            "depths": list(self.depths),
            "resolutions": list(self.resolutions),
            "width_mults": [_fmt_num(x) for x in self.width_mults],
            "num_classes": self.num_classes,
        }


def _ranges(values: Sequence[int]) -> str:
    v = list(values)
    if len(v) > 3:
        step = v[1] - v[0]
        if all(b - a == step for a, b in zip(v, v[1:])):
            return f"{v[0]} to {v[-1]} in steps of {step}"
    return ", ".join(map(str, v))


# --------------------------------------------------------------------------- SubnetConfig


@dataclass(frozen=True)
class SubnetConfig:
    """One architecture, in OFA's naming: kernel and expand ratio per block slot, depth per
    stage, input resolution, width multiplier.  Entries of slots that depth skips are kept
    but ignored."""

    ks: tuple[int, ...]
    e: tuple[float, ...]
    d: tuple[int, ...]
    r: int
    w: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "ks", tuple(self.ks))
        object.__setattr__(self, "e", tuple(self.e))
        object.__setattr__(self, "d", tuple(self.d))

    # JSON -------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "ks": list(self.ks),
            "e": [_fmt_num(x) for x in self.e],
            "d": list(self.d),
            "r": self.r,
            "w": _fmt_num(self.w),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: Any) -> "SubnetConfig":
        if not isinstance(data, dict):
            raise ValueError(f"a subnet must be a JSON object with ks, e, d, r, w; got {type(data).__name__}")
        missing = [k for k in ("ks", "e", "d", "r") if k not in data]
        if missing:
            raise ValueError(f"subnet JSON lacks {', '.join(missing)} (needs ks, e, d, r and optionally w)")
        extra = sorted(set(data) - {"ks", "e", "d", "r", "w"})
        if extra:
            raise ValueError(f"subnet JSON has unknown fields {', '.join(extra)} (allowed: ks, e, d, r, w)")

        def ints(name: str) -> tuple[int, ...]:
            v = data[name]
            if not isinstance(v, list) or not all(isinstance(x, int) and not isinstance(x, bool) for x in v):
                raise ValueError(f"subnet field {name} must be a list of integers, got {v!r}")
            return tuple(v)

        e = data["e"]
        if not isinstance(e, list) or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in e):
            raise ValueError(f"subnet field e must be a list of numbers, got {e!r}")
        r, w = data["r"], data.get("w", 1.0)
        if not isinstance(r, int) or isinstance(r, bool):
            raise ValueError(f"subnet field r must be an integer resolution, got {r!r}")
        if not isinstance(w, (int, float)) or isinstance(w, bool):
            raise ValueError(f"subnet field w must be a number, got {w!r}")
        return cls(ks=ints("ks"), e=tuple(e), d=ints("d"), r=r, w=float(w))

    @classmethod
    def from_json(cls, text: str) -> "SubnetConfig":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"subnet is not valid JSON: {exc}") from None
        except RecursionError:  # e.g. 200k nested lists: one clean line for every caller
            raise ValueError("subnet JSON is nested too deeply") from None
        return cls.from_dict(data)

    # validation -----------------------------------------------------------------------
    def validate(self, space: SearchSpace) -> None:
        """Raise ValueError naming the first field that does not fit ``space``."""
        nb, ns = space.num_blocks, len(space.stages)
        where = f"space {space.name!r}"
        if len(self.ks) != nb:
            raise ValueError(f"subnet has {len(self.ks)} kernels; {where} has {nb} block slots")
        if len(self.e) != nb:
            raise ValueError(f"subnet has {len(self.e)} expand ratios; {where} has {nb} block slots")
        if len(self.d) != ns:
            raise ValueError(f"subnet has {len(self.d)} depths; {where} has {ns} stages")
        for name, values, allowed in (
            ("ks", self.ks, space.kernels),
            ("e", self.e, space.expands),
        ):
            for idx, v in enumerate(values):
                if v not in allowed:
                    raise ValueError(
                        f"subnet {name}[{idx}] = {_fmt_num(v)} is not in {where} "
                        f"(allowed: {', '.join(str(_fmt_num(a)) for a in allowed)})"
                    )
        for idx, v in enumerate(self.d):
            allowed = space.stage_depths(idx)
            if v not in allowed:
                raise ValueError(
                    f"subnet d[{idx}] = {v} is not in {where} "
                    f"(allowed for stage {idx}: {', '.join(map(str, allowed))})"
                )
        if self.r not in space.resolutions:
            raise ValueError(
                f"subnet resolution {self.r} is not in {where} (allowed: {_ranges(space.resolutions)})"
            )
        if not any(math.isclose(self.w, x) for x in space.width_mults):
            raise ValueError(
                f"subnet width multiplier {self.w} is not in {where} "
                f"(allowed: {', '.join(str(_fmt_num(x)) for x in space.width_mults)})"
            )

    def validated(self, space: SearchSpace) -> "SubnetConfig":
        self.validate(space)
        return self


# --------------------------------------------------------------------------- registry

OFA_MBV3 = SearchSpace(
    name="ofa_mbv3",
    stages=(
        StageSpec(24, 2, "relu", False),
        StageSpec(40, 2, "relu", True),
        StageSpec(80, 2, "hswish", False),
        StageSpec(112, 1, "hswish", True),
        StageSpec(160, 2, "hswish", True),
    ),
)

# A space small enough that forward, backward and export take milliseconds (tests, demos).
TINY = SearchSpace(
    name="tiny",
    stages=(
        StageSpec(16, 2, "relu", False),
        StageSpec(24, 2, "hswish", True),
    ),
    kernels=(3, 5),
    expands=(2, 3),
    depths=(1, 2),
    resolutions=(32, 40, 48),
    width_mults=(1.0, 1.5),
    first_conv_width=8,
    first_block_width=8,
    final_expand_width=64,
    feature_mix_width=96,
    num_classes=10,
)

_SPACES: dict[str, SearchSpace] = {}


def register_space(space: SearchSpace) -> SearchSpace:
    """Add a space to the registry; a second space with the same name is an error."""
    if space.name in _SPACES:
        raise ValueError(f"search space {space.name!r} is already registered")
    _SPACES[space.name] = space
    return space


def get_space(name: str) -> SearchSpace:
    try:
        return _SPACES[name]
    except KeyError:
        raise ValueError(f"unknown search space {name!r} (known: {', '.join(sorted(_SPACES))})") from None


def space_names() -> list[str]:
    return sorted(_SPACES)


register_space(OFA_MBV3)
register_space(TINY)


def parse_subnet(text: str, space: SearchSpace, r: int | None = None, w: float | None = None) -> SubnetConfig:
    """A subnet from the command line: ``max``, ``min``, a JSON object, or a path to a JSON
    file.  ``r`` and ``w`` override the resolution and width when given.  Raises ValueError."""
    text = text.strip()
    if text in ("max", "min"):
        cfg = (space.max_subnet if text == "max" else space.min_subnet)(r=r, w=w)
    else:
        if not text.startswith("{"):
            path = Path(text)
            if not path.is_file():
                raise ValueError(f"--subnet {text!r} is neither max, min, a JSON object nor a file")
            try:
                text = path.read_text(encoding="utf-8")
            except OSError as exc:
                raise ValueError(f"cannot read subnet file {path}: {exc.strerror}") from None
            except UnicodeDecodeError:
                raise ValueError(f"subnet file {path} is not UTF-8 text") from None
            try:
                cfg = SubnetConfig.from_json(text)
            except ValueError as exc:
                raise ValueError(f"subnet file {path}: {exc}") from None
        else:
            cfg = SubnetConfig.from_json(text)
        if r is not None:
            cfg = replace(cfg, r=r)
        if w is not None:
            cfg = replace(cfg, w=float(w))
    cfg.validate(space)
    return cfg


@dataclass(frozen=True)
class Choices:
    """The part of a space a training phase samples from; ``None`` means every choice of the
    space (for ``widths``: the default width only)."""

    kernels: tuple[int, ...] | None = None
    expands: tuple[float, ...] | None = None
    depths: tuple[int, ...] | None = None
    resolutions: tuple[int, ...] | None = None
    widths: tuple[float, ...] | None = None

    def resolve(self, space: SearchSpace) -> "Choices":
        """Explicit lists, each checked against ``space``; raises ValueError."""
        out = {}
        for name, allowed, default in (
            ("kernels", space.kernels, space.kernels),
            ("expands", space.expands, space.expands),
            ("depths", space.depths, space.depths),
            ("resolutions", space.resolutions, space.resolutions),
            ("widths", space.width_mults, (space.default_width,)),
        ):
            values = getattr(self, name)
            values = tuple(sorted(default if values is None else values))
            bad = [v for v in values if not any(math.isclose(v, a) for a in allowed)]
            if bad or not values:
                raise ValueError(
                    f"phase {name} {list(values)} not in space {space.name!r} (allowed: {list(allowed)})"
                )
            out[name] = values
        return Choices(**out)

    def largest(self, space: SearchSpace, r: int | None = None, w: float | None = None) -> SubnetConfig:
        return self._uniform(space, max, r, w)

    def smallest(self, space: SearchSpace, r: int | None = None, w: float | None = None) -> SubnetConfig:
        return self._uniform(space, min, r, w)

    def _uniform(self, space: SearchSpace, pick, r: int | None, w: float | None) -> SubnetConfig:
        """``pick`` (max or min) of every choice, everywhere; ``r`` and ``w`` when given."""
        c = self.resolve(space)
        nb = space.num_blocks
        return SubnetConfig((pick(c.kernels),) * nb, (pick(c.expands),) * nb, (pick(c.depths),) * len(space.stages),
                            pick(c.resolutions) if r is None else r, pick(c.widths) if w is None else w)

    def sample(self, space: SearchSpace, rng: random.Random) -> SubnetConfig:
        c = self.resolve(space)
        return SubnetConfig(
            ks=tuple(rng.choice(c.kernels) for _ in range(space.num_blocks)),
            e=tuple(rng.choice(c.expands) for _ in range(space.num_blocks)),
            d=tuple(rng.choice(c.depths) for _ in space.stages),
            r=rng.choice(c.resolutions),
            w=rng.choice(c.widths),
        )


__all__ = [
    "Choices",
    "ACTIVATIONS", "KINDS", "BlockSpec", "SearchSpace", "StageSpec", "SubnetConfig", "Widths", "effective_kernel",
    "overhead_probe", "boundary_probes", "PROBE_KINDS", "STREAM_CHANNELS", "STREAM_LAYERS", "STREAM_MORE", "stream_layers", "stream_probes",
    "OFA_MBV3", "TINY", "make_divisible", "se_channels", "conv_out", "get_space",
    "register_space", "space_names", "parse_subnet",
]


# --------------------------------------------------------------------------- demo space
# The Fashion-MNIST demo space (issue 4): an OFA MobileNetV3-style space sized for 28x28
# grey images upsampled to 32..48 px and for training on a couple of CPU cores.  Same
# elastic choices as OFA (kernels 3/5/7, expands 3/4/6, depths 2/3/4) so the search has
# real choices; one input channel, ten classes; width 1.0 (default) and 1.5.
FMNIST = register_space(SearchSpace(
    name="fmnist",
    stages=(
        StageSpec(24, 2, "relu", False),
        StageSpec(32, 2, "relu", True),
        StageSpec(48, 2, "hswish", False),
        StageSpec(64, 1, "hswish", True),
    ),
    resolutions=(32, 36, 40, 44, 48),
    width_mults=(1.0, 1.5),
    first_conv_width=16,
    first_block_width=16,
    final_expand_width=256,
    feature_mix_width=512,
    in_channels=1,
    num_classes=10,
))
__all__.append("FMNIST")


# --------------------------------------------------------------------------- ProxylessNAS
# The ProxylessNAS mobile space (Cai, Zhu, Han, "ProxylessNAS: Direct Neural Architecture
# Search on Target Task and Hardware", ICLR 2019, Sec. 4 and its released mobile LUT): MBConv
# blocks with ReLU6 and no squeeze-excite, kernels 3/5/7, expand ratios 3/6, and a zero
# (skip) candidate in every block whose input and output shapes match, i.e. every block but
# the first of a stage.  Stages of 4 blocks at widths 24/40/80/96/192 and one block of 320;
# the stem is a 3x3 stride-2 conv to 32 channels and a fixed 3x3 MBConv1 to 16; the head is
# a 1x1 conv to 1280, pooling and the classifier (no feature-mix conv).  A stage's depth is
# its number of non-zero blocks: the blocks after the first all have the same shapes, so
# the zeros' positions do not change the network (``supernet.proxyless`` derives depth and
# the kept blocks in order).
PROXYLESS_MOBILE = register_space(SearchSpace(
    name="proxyless_mobile",
    stages=(
        StageSpec(24, 2, "relu6", False),
        StageSpec(40, 2, "relu6", False),
        StageSpec(80, 2, "relu6", False),
        StageSpec(96, 1, "relu6", False),
        StageSpec(192, 2, "relu6", False),
        StageSpec(320, 1, "relu6", False, max_depth=1),
    ),
    kernels=(3, 5, 7),
    expands=(3, 6),
    depths=(1, 2, 3, 4),
    resolutions=(224,),
    width_mults=(1.0,),
    first_conv_width=32,
    first_conv_act="relu6",
    first_block_width=16,
    first_block_act="relu6",
    final_expand_width=1280,
    feature_mix_width=0,
    head_act="relu6",
))

# Its small version for Fashion-MNIST (demos, tests, the README's search): the same kinds of
# choices at 32 to 48 px, one input channel, ten classes, stages of up to 3 blocks.
PROXYLESS_FMNIST = register_space(SearchSpace(
    name="proxyless_fmnist",
    stages=(
        StageSpec(16, 2, "relu6", False),
        StageSpec(24, 2, "relu6", False),
        StageSpec(40, 2, "relu6", False),
        StageSpec(48, 1, "relu6", False),
        StageSpec(64, 1, "relu6", False, max_depth=1),
    ),
    kernels=(3, 5, 7),
    expands=(3, 6),
    depths=(1, 2, 3),
    resolutions=(32, 40, 48),
    width_mults=(1.0,),
    first_conv_width=16,
    first_conv_act="relu6",
    first_block_width=8,
    first_block_act="relu6",
    final_expand_width=256,
    feature_mix_width=0,
    head_act="relu6",
    in_channels=1,
    num_classes=10,
))
__all__ += ["PROXYLESS_MOBILE", "PROXYLESS_FMNIST"]
