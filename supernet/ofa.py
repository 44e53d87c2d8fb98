"""The OFA supernet: one elastic MobileNetV3 holding every subnet of a ``SearchSpace``.

API (issue 4):

- ``OFASupernet(space, bn="shared"|"switchable")``: weights of the largest subnet at the
  largest width multiplier;
- ``set_active(cfg)``: later ``forward`` calls run subnet ``cfg`` (state on the instance);
- ``sample(rng, choices=None)``: a random ``SubnetConfig`` drawn with ``rng`` only, optionally
  restricted to the choices of a training phase (``Choices``);
- ``extract(cfg)``: ``ops.build_network(space, cfg)`` with the supernet's weights copied in,
  i.e. exactly the module the profiler measures;
- ``sort_channels(keep_expands)``: channel sorting before an expand phase.

``forward`` walks ``space.blocks(cfg)`` and hands each ``BlockSpec`` to the dynamic module of
its slot, so structure is decided in one place for the supernet, the extracted subnet and the
latency tables.
"""

from __future__ import annotations

import math
import random
from typing import Sequence

import torch
from torch import nn

from . import ops
from .dynamic import DynamicClassifier, DynamicConvBNAct, DynamicMBConv, pool
from .space import BlockSpec, Choices, SearchSpace, SubnetConfig

BN_MODES = ("shared", "switchable")


def _he_fout_init(module: nn.Module) -> None:
    """OFA's ``init_models(net, 'he_fout')``: conv weights N(0, sqrt(2 / (k*k*out))), BN
    weight 1 / bias 0, linear uniform(+-1/sqrt(in)) with zero bias; transformation
    matrices stay identity."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / n))
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            stdv = 1.0 / math.sqrt(m.weight.size(1))
            nn.init.uniform_(m.weight, -stdv, stdv)
            nn.init.zeros_(m.bias)


class OFASupernet(nn.Module):
    """Elastic MobileNetV3 over ``space``.

    Args:
        space: the search space (``supernet.space.get_space``).
        bn: ``"shared"`` (one BN sliced for every width) or ``"switchable"`` (one private BN
            per width multiplier, picked by the active ``w``).
        dropout: classifier dropout; the space's by default.
    """

    def __init__(self, space: SearchSpace, bn: str = "shared", dropout: float | None = None):
        super().__init__()
        if bn not in BN_MODES:
            raise ValueError(f"bn mode {bn!r} is not one of {', '.join(BN_MODES)}")
        if not space.has_feature_mix or space.full_depths != (space.max_depth,) * len(space.stages):
            raise ValueError(
                f"search space {space.name!r} is a ProxylessNAS-style space (no feature-mix conv or a stage "
                "capped below the space's depth); the OFA supernet holds OFA MobileNetV3 spaces only "
                "(search it with python -m search.proxyless)")
        self.space = space
        self.bn_mode = bn
        self.dropout = space.dropout if dropout is None else dropout
        n_bn = len(space.width_mults) if bn == "switchable" else 1
        widths = [space.widths(w) for w in space.width_mults]
        wmax = space.widths(max(space.width_mults))

        self.first_conv = DynamicConvBNAct(space.in_channels, wmax.first_conv, space.first_conv_kernel,
                                           space.first_conv_stride, space.first_conv_act, n_bn=n_bn)
        self.first_block = DynamicMBConv(wmax.first_conv, wmax.first_conv, wmax.first_block, (3,), 1,
                                         space.first_block_act, se=False, has_expand=False, n_bn=n_bn)
        blocks = []
        for i, stage in enumerate(space.stages):
            for j in range(space.max_depth):
                def in_c(wd):
                    if j > 0:
                        return wd.stages[i]
                    return wd.first_block if i == 0 else wd.stages[i - 1]
                max_in = in_c(wmax)
                max_mid = max(space.middle_channels(in_c(wd), e) for wd in widths for e in space.expands)
                has_expand = any(space.middle_channels(in_c(wd), e) != in_c(wd)
                                 for wd in widths for e in space.expands)
                blocks.append(DynamicMBConv(max_in, max_mid, wmax.stages[i], space.kernels,
                                            stage.stride if j == 0 else 1, stage.act, stage.se,
                                            has_expand=has_expand, n_bn=n_bn))
        self.blocks = nn.ModuleList(blocks)
        self.final_expand = DynamicConvBNAct(wmax.stages[-1], wmax.final_expand, 1, act=space.head_act, n_bn=n_bn)
        self.feature_mix = DynamicConvBNAct(wmax.final_expand, wmax.feature_mix, 1, act=space.head_act, bn=False)
        self.classifier = DynamicClassifier(wmax.feature_mix, space.num_classes, self.dropout)
        _he_fout_init(self)
        self.active: SubnetConfig = space.max_subnet()

    # ------------------------------------------------------------------ choosing subnets
    def set_active(self, cfg: SubnetConfig) -> None:
        """Run ``cfg`` in later forward calls (validated against the space)."""
        cfg.validate(self.space)
        self.active = cfg

    def sample(self, rng: random.Random, choices: Choices | None = None) -> SubnetConfig:
        """A random subnet drawn with ``rng`` (within ``choices`` when given)."""
        return (choices or Choices()).sample(self.space, rng)

    def bn_index(self, w: float) -> int:
        if self.bn_mode == "shared":
            return 0
        return next(i for i, x in enumerate(self.space.width_mults) if math.isclose(x, w))

    def _plan(self, cfg: SubnetConfig) -> list[tuple[nn.Module | None, BlockSpec]]:
        """The dynamic module of each of ``space.blocks(cfg)``, in network order (the last
        config's plan is kept: a training step runs one config forward and backward)."""
        cached = self.__dict__.get("_plan_cache")
        if cached is not None and cached[0] == cfg:
            return cached[1]
        specs = self.space.blocks(cfg)
        mods: list[nn.Module | None] = [self.first_conv, self.first_block]
        mods += [self.blocks[slot] for _, _, slot in self.space.active_blocks(cfg)]
        mods += [self.final_expand, None, self.feature_mix, self.classifier]
        if len(mods) != len(specs):  # the block list of space.py changed shape
            raise RuntimeError(f"supernet expects {len(mods)} blocks, space gives {len(specs)}")
        plan = list(zip(mods, specs))
        self.__dict__["_plan_cache"] = (cfg, plan)
        return plan

    # ------------------------------------------------------------------ running
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cfg = self.active
        bn_idx = self.bn_index(cfg.w)
        for mod, spec in self._plan(cfg):
            if spec.kind == "mbconv":
                x = mod(x, spec, bn_idx)
            elif spec.kind == "pool":
                x = pool(x)
            elif spec.kind == "classifier":
                x = mod(x)
            else:
                x = mod(x, spec.out_c, bn_idx)
        return x

    def extract(self, cfg: SubnetConfig | None = None) -> nn.Sequential:
        """``ops.build_network(space, cfg)`` with this supernet's weights copied in (the
        active subnet when ``cfg`` is None); same train/eval mode as the supernet."""
        cfg = self.active if cfg is None else cfg
        with torch.random.fork_rng(devices=[]):  # the builder's init must not move the global RNG
            net = ops.build_network(self.space, cfg, self.dropout)
        bn_idx = self.bn_index(cfg.w)
        for static, (mod, spec) in zip(net, self._plan(cfg)):
            if spec.kind == "mbconv":
                mod.load_into(static, spec, bn_idx)
            elif spec.kind == "classifier":
                mod.load_into(static)
            elif mod is not None:
                mod.load_into(static, bn_idx)
        return net.train(self.training)

    # ------------------------------------------------------------------ training helpers
    @torch.no_grad()
    def sort_channels(self, keep_expands: Sequence[float] = ()) -> None:
        """Sort the middle channels of every elastic block by importance, keeping the
        channels of the expand ratios in ``keep_expands`` (already trained) inside their
        prefixes.  The largest subnet at the largest width computes the same function."""
        widths = [self.space.widths(w) for w in self.space.width_mults]
        for i, _stage in enumerate(self.space.stages):
            for j in range(self.space.max_depth):
                block = self.blocks[i * self.space.max_depth + j]
                if block.expand is None:
                    continue
                keep = set()
                for wd in widths:
                    in_c = wd.stages[i] if j > 0 else (wd.first_block if i == 0 else wd.stages[i - 1])
                    keep.update(self.space.middle_channels(in_c, e) for e in keep_expands)
                block.sort_channels(sorted(keep))

    def choices_max(self) -> SubnetConfig:
        """The largest subnet of the supernet (largest width multiplier)."""
        return self.space.max_subnet(w=max(self.space.width_mults))


__all__ = ["BN_MODES", "Choices", "OFASupernet"]
