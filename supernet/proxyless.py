"""The ProxylessNAS over-parameterized network: one mixed operation per searchable block.

Cai, Zhu, Han, "ProxylessNAS: Direct Neural Architecture Search on Target Task and
Hardware" (ICLR 2019), Sec. 3.  Unlike the OFA supernet, every candidate path has its own
weights, and real-valued architecture parameters ``alpha`` (one per path) say how likely
each path is.  Binary gates pick the paths that run:

- ``sample`` (weight steps): one path per block drawn from ``softmax(alpha)``; only that
  path is computed, in the forward and the backward pass, so a weight step costs the memory
  and time of one compact network.
- ``two`` (architecture steps, the paper's BinaryConnect estimate): two paths drawn from
  ``softmax(alpha)`` without replacement, one of them active by their renormalised
  probabilities.  The block's output is ``sum_j g_j o_j`` with the binary gates ``g`` (so its
  value is the active path's output), and ``alpha`` receives
  ``dL/dalpha_i = sum_j dL/dg_j p_j (delta_ij - p_i)`` over the two, where
  ``dL/dg_j = <o_j, dL/dout>``; the inactive path runs without a graph.  After the update,
  ``rescale`` shifts the two ``alpha`` so that the paths not drawn keep their probability.
- ``max``: the most probable path of every block (the derived architecture).
- ``full``: every path, weighted by ``softmax(alpha)`` (a DARTS-style mixture; only for the
  memory comparison, ``bench/proxyless_memory.py``).

A block's candidates are the distinct blocks of ``space.kernels x space.expands`` at the
network's resolution (a kernel that only sees padding is the smaller one it computes, so it
is one path, not two), plus the zero path where the block's input and output shapes match
(every block of a stage but the first): it skips the block (the block's residual carries
the input).  A stage's depth is its number of non-zero blocks; since the blocks after the
first all have the same shapes, ``derive`` packs the kept blocks to the front and the
result is an ordinary ``SubnetConfig`` of the space, built by ``supernet.ops.build_network``.

Nothing here imports ``search``; the expected latency is ``expected_cost`` with per-path
costs the caller takes from the device's LUT.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .ops import build_block
from .space import BlockSpec, SearchSpace, SubnetConfig

MODES = ("sample", "two", "max", "full", "fixed")


@dataclass(frozen=True)
class Path:
    """One candidate of a mixed block: ``(kernel, expand)`` and its block, or the zero path."""

    kernel: int = 0
    expand: float = 0.0
    spec: BlockSpec | None = None

    @property
    def zero(self) -> bool:
        return self.spec is None

    def __str__(self) -> str:
        return "zero" if self.zero else f"k{self.kernel} e{self.expand:g}"


class MixedOp(nn.Module):
    """One searchable block: its candidate paths, their ``alpha`` and the binary gates."""

    def __init__(self, paths: list[Path], stage: int, position: int):
        super().__init__()
        self.paths = list(paths)
        self.stage, self.position = stage, position
        self.ops = nn.ModuleList(nn.Identity() if p.zero else build_block(p.spec) for p in self.paths)
        self.alpha = nn.Parameter(torch.zeros(len(self.paths)))
        self.mode = "max"
        self.active = 0
        self.pair: tuple[int, int] | None = None

    def __len__(self) -> int:
        return len(self.paths)

    def probs(self) -> torch.Tensor:
        return F.softmax(self.alpha, dim=0)

    def sample(self, mode: str, gen: torch.Generator) -> None:
        """Draw the gates for ``mode`` (``sample``: one path; ``two``: a pair, first active)."""
        p = self.probs().detach().cpu()
        if mode == "two" and len(self.paths) > 1:
            pair = torch.multinomial(p, 2, replacement=False, generator=gen)
            q = F.softmax(self.alpha.detach().cpu()[pair], dim=0)
            c = int(torch.multinomial(q, 1, generator=gen))
            self.active, other = int(pair[c]), int(pair[1 - c])
            self.pair = (self.active, other)
        else:
            self.active = int(torch.multinomial(p, 1, generator=gen))
            self.pair = None
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode in ("sample", "fixed"):
            return self.ops[self.active](x)
        if self.mode == "max":
            return self.ops[int(self.alpha.argmax())](x)
        if self.mode == "full":
            p = self.probs()
            return sum(p[i] * op(x) for i, op in enumerate(self.ops))
        if self.mode == "two":
            if self.pair is None:  # one candidate: nothing to choose
                return self.ops[self.active](x)
            a, b = self.pair
            idx = torch.tensor([a, b], device=self.alpha.device)
            p = F.softmax(self.alpha[idx], dim=0)
            # binary gates (1, 0) in value; their gradient reaches alpha through p:
            # dL/dalpha_i = sum_j dL/dg_j * dp_j/dalpha_i = sum_j dL/dg_j p_j (delta_ij - p_i)
            g = torch.tensor([1.0, 0.0], device=p.device, dtype=p.dtype) + p - p.detach()
            out_a = self.ops[a](x)
            with torch.no_grad():
                out_b = self.ops[b](x)
            return g[0].to(out_a.dtype) * out_a + g[1].to(out_a.dtype) * out_b
        raise ValueError(f"mixed-op mode {self.mode!r} is not one of {', '.join(MODES)}")

    @torch.no_grad()
    def rescale(self, old_alpha: torch.Tensor) -> None:
        """After an architecture step in ``two`` mode: shift the two drawn ``alpha`` so that
        their total probability mass, and so every other path's probability, is unchanged
        (the paper's ``rescale_updated_arch_param``)."""
        if self.pair is None:
            return
        idx = torch.tensor(self.pair, device=self.alpha.device)
        offset = torch.logsumexp(self.alpha[idx], 0) - torch.logsumexp(old_alpha[idx], 0)
        self.alpha[idx] -= offset


class ProxylessSupernet(nn.Module):
    """Stem, one ``MixedOp`` per searchable block, head, for ``space`` at resolution ``r``
    (width 1.0).  ``mixed`` lists the mixed blocks in network order."""

    def __init__(self, space: SearchSpace, r: int, dropout: float | None = None):
        super().__init__()
        space.require_resolution(r)
        self.space, self.r = space, r
        dropout = space.dropout if dropout is None else dropout
        nb, w = space.num_blocks, space.default_width
        full = space.full_depths
        slots = [(i, j) for i, d in enumerate(full) for j in range(d)]
        per_choice = {}
        for k in space.kernels:
            for x in space.expands:
                per_choice[(k, x)] = space._blocks(r, w, (k,) * nb, (x,) * nb, full)
        any_blocks = next(iter(per_choice.values()))
        self.stem = nn.Sequential(build_block(any_blocks[0]), build_block(any_blocks[1]))
        mixed = []
        for n, (i, j) in enumerate(slots):
            paths, seen = [], set()
            for (k, x), blocks in per_choice.items():
                spec = blocks[2 + n]
                if spec not in seen:  # an inert kernel is the smaller one: one path
                    seen.add(spec)
                    paths.append(Path(spec.kernel, x, spec))
            first = paths[0].spec
            if j > 0 and first.input_shape == first.output_shape and first.stride == 1:
                paths.append(Path())
            mixed.append(MixedOp(paths, i, j))
        self.mixed = nn.ModuleList(mixed)
        self.head = nn.Sequential(*(build_block(b, dropout) for b in any_blocks[2 + len(slots):]))

    # parameters --------------------------------------------------------------------
    def arch_parameters(self) -> list[nn.Parameter]:
        return [m.alpha for m in self.mixed]

    def weight_parameters(self) -> list[nn.Parameter]:
        arch = {id(p) for p in self.arch_parameters()}
        return [p for p in self.parameters() if id(p) not in arch]

    def named_weight_parameters(self):
        return [(n, p) for n, p in self.named_parameters() if not n.endswith(".alpha")]

    # gates ---------------------------------------------------------------------------
    def set_mode(self, mode: str, gen: torch.Generator | None = None) -> None:
        """``sample`` / ``two``: draw new gates from ``gen``; ``max`` / ``full``: no draw."""
        if mode not in MODES:
            raise ValueError(f"mode {mode!r} is not one of {', '.join(MODES)}")
        for m in self.mixed:
            if mode in ("sample", "two"):
                m.sample(mode, gen)
            else:
                m.mode = mode

    def set_paths(self, indices: list[int]) -> None:
        """Run exactly these paths (``fixed`` mode), e.g. a sampled architecture."""
        for m, i in zip(self.mixed, indices):
            m.mode, m.active, m.pair = "fixed", int(i), None

    def active_paths(self) -> list[int]:
        return [m.active for m in self.mixed]

    def argmax_paths(self) -> list[int]:
        return [int(m.alpha.detach().argmax()) for m in self.mixed]

    def log_prob(self, indices: list[int]) -> torch.Tensor:
        """log P(architecture) = sum of each block's log softmax(alpha)[path] (REINFORCE)."""
        return sum(F.log_softmax(m.alpha, 0)[i] for m, i in zip(self.mixed, indices))

    @torch.no_grad()
    def rescale(self, old: list[torch.Tensor]) -> None:
        for m, a in zip(self.mixed, old):
            m.rescale(a)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for m in self.mixed:
            x = m(x)
        return self.head(x)

    # architecture ------------------------------------------------------------------------
    def derive(self, indices: list[int] | None = None) -> SubnetConfig:
        """The architecture of ``indices`` (default: the most probable path of every block)
        as a ``SubnetConfig``: per stage the non-zero blocks in order, depth their number."""
        sp = self.space
        indices = self.argmax_paths() if indices is None else list(indices)
        kept: dict[int, list[Path]] = {i: [] for i in range(len(sp.stages))}
        for m, i in zip(self.mixed, indices):
            path = m.paths[i]
            if not path.zero:
                kept[m.stage].append(path)
        ks, e = [sp.kernels[0]] * sp.num_blocks, [sp.expands[0]] * sp.num_blocks
        d = []
        for i in range(len(sp.stages)):
            paths = kept[i]
            for j, p in enumerate(paths):
                ks[i * sp.max_depth + j] = p.kernel
                e[i * sp.max_depth + j] = p.expand
            d.append(len(paths))
        cfg = SubnetConfig(ks=tuple(ks), e=tuple(e), d=tuple(d), r=self.r, w=sp.default_width)
        return sp.canonical(cfg.validated(sp))

    def path_table(self) -> list[dict]:
        """Per mixed block: stage, position, paths and their probabilities (for reports)."""
        return [{"stage": m.stage, "position": m.position, "paths": [str(p) for p in m.paths],
                 "probs": [round(float(v), 4) for v in m.probs().detach().cpu()]} for m in self.mixed]


def expected_cost(net: ProxylessSupernet, path_costs: list[torch.Tensor], base: float) -> torch.Tensor:
    """E[cost] = base + sum over blocks of sum over paths softmax(alpha) * cost(path), exact
    because the gates of different blocks are independent; differentiable in ``alpha``.
    ``path_costs[n]`` is the cost of each path of mixed block ``n`` (the zero path 0)."""
    total = torch.zeros((), dtype=torch.float64, device=net.mixed[0].alpha.device)
    for m, c in zip(net.mixed, path_costs):
        total = total + (m.probs().double() * c.to(total.device)).sum()
    return total + base


def sampled_cost(net: ProxylessSupernet, path_costs: list[torch.Tensor], base: float,
                 indices: list[int]) -> float:
    """The cost of one architecture (one path per block), by the same per-path costs."""
    return float(base + sum(float(c[i]) for c, i in zip(path_costs, indices)))


def zero_index(m: MixedOp) -> int | None:
    return next((i for i, p in enumerate(m.paths) if p.zero), None)


__all__ = ["MODES", "Path", "MixedOp", "ProxylessSupernet", "expected_cost", "sampled_cost", "zero_index"]


def _check() -> None:  # pragma: no cover - a quick manual look: python -m supernet.proxyless
    from .space import get_space

    net = ProxylessSupernet(get_space("proxyless_fmnist"), 40)
    print(len(net.mixed), "mixed blocks;", [len(m) for m in net.mixed])
    net.set_mode("sample", torch.Generator().manual_seed(0))
    print(net(torch.zeros(2, 1, 40, 40)).shape, net.derive().to_json())
    print(math.fsum(p.numel() for p in net.weight_parameters()))


if __name__ == "__main__":  # pragma: no cover
    _check()
