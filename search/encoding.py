"""Subnets as arrays: populations for vectorized search and fixed-length predictor features.

A population of N subnets is stored as integer index arrays (``Population``): kernel and
expand index per block slot, depth index per stage, resolution and width index into the
search's ``Choices``.  Mutation, crossover, cost sums and encoding all work on whole arrays.

``Encoder`` turns a population into the accuracy predictor's features, in the layout of
OFA's tutorial predictor (``ofa/tutorial/accuracy_predictor.py``, ``spec2feats``):

    [kernel one-hot of slot 0 .. slot nb-1] [expand one-hot of slot 0 .. slot nb-1]
    [resolution one-hot] [width one-hot, only when the encoder knows several widths]
    [kernel and expand one-hots again, times the resolution scaled to -1..1; only with
     ``res_interactions``, which our own predictors choose by cross-validation]

with all zeros for the slots that depth skips, and a kernel that is inert on its slot's
feature map encoded as the kernel it computes (``SearchSpace.canonical``), so that two
spellings of one network get one feature vector.  ``Encoder.ofa()`` is exactly OFA's 128-wide
layout (kernels 3/5/7, expands 3/4/6, 20 slots, resolution bin ``(r - 112) // 16`` of 8).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Sequence

import numpy as np

from supernet.space import SearchSpace, SubnetConfig


def _index_of(values: Sequence[float], x: float, what: str) -> int:
    for i, v in enumerate(values):
        if math.isclose(v, x):
            return i
    raise ValueError(f"{what} {x:g} is not one of {', '.join(f'{v:g}' for v in values)}")


@dataclass(frozen=True)
class Choices:
    """What a search may pick: the space's kernels, expands and depths, and the resolutions
    and width multipliers the cost model and the predictor both cover (ascending)."""

    space: SearchSpace
    resolutions: tuple[int, ...]
    widths: tuple[float, ...]

    def __post_init__(self) -> None:
        if not self.resolutions or not self.widths:
            raise ValueError("a search needs at least one resolution and one width")
        for r in self.resolutions:
            if r not in self.space.resolutions:
                raise ValueError(f"resolution {r} is not in space {self.space.name!r}")
        for w in self.widths:
            _index_of(self.space.width_mults, w, f"width multiplier (space {self.space.name!r})")
        object.__setattr__(self, "resolutions", tuple(sorted(self.resolutions)))
        object.__setattr__(self, "widths", tuple(sorted(self.widths)))

    @property
    def stage_of_slot(self) -> np.ndarray:
        return np.arange(self.space.num_blocks) // self.space.max_depth

    @property
    def pos_in_stage(self) -> np.ndarray:
        return np.arange(self.space.num_blocks) % self.space.max_depth


class Population:
    """N subnets as one integer gene matrix ``g`` of shape (N, 2*num_blocks + num_stages + 2).

    Column blocks (views, writable): ``k``, ``e``: (N, num_blocks) indices into
    ``space.kernels`` / ``space.expands``; ``d``: (N, num_stages) indices into
    ``space.depths`` (a stage with fewer depths takes a prefix of them); ``r``, ``w``: (N,) indices into ``choices.resolutions`` /
    ``choices.widths``.  All choice lists are ascending, so a lower index is a smaller choice.
    """

    __slots__ = ("g", "nb", "ns")

    def __init__(self, g: np.ndarray, nb: int, ns: int):
        self.g, self.nb, self.ns = g, nb, ns

    @classmethod
    def of(cls, k, e, d, r, w) -> "Population":
        """From the five index arrays."""
        k, d = np.asarray(k), np.asarray(d)
        g = np.concatenate([k, np.asarray(e), d, np.asarray(r)[:, None], np.asarray(w)[:, None]],
                           axis=1).astype(np.int64)
        return cls(g, k.shape[1], d.shape[1])

    k = property(lambda self: self.g[:, : self.nb])
    e = property(lambda self: self.g[:, self.nb: 2 * self.nb])
    d = property(lambda self: self.g[:, 2 * self.nb: 2 * self.nb + self.ns])
    r = property(lambda self: self.g[:, -2])
    w = property(lambda self: self.g[:, -1])

    def __len__(self) -> int:
        return len(self.g)

    def take(self, idx) -> "Population":
        """The rows ``idx`` (an index array or boolean mask), as a new population."""
        return Population(self.g[idx], self.nb, self.ns)

    def copy(self) -> "Population":
        return Population(self.g.copy(), self.nb, self.ns)

    def put(self, rows, other: "Population") -> None:
        """Overwrite the rows selected by ``rows`` (boolean mask or index array) with the
        rows of ``other``, in order."""
        self.g[rows] = other.g

    @staticmethod
    def concat(pops: Sequence["Population"]) -> "Population":
        return Population(np.concatenate([p.g for p in pops]), pops[0].nb, pops[0].ns)

    @staticmethod
    def empty(choices: Choices) -> "Population":
        sp = choices.space
        return Population(np.zeros((0, 2 * sp.num_blocks + len(sp.stages) + 2), np.int64),
                          sp.num_blocks, len(sp.stages))

    # conversion --------------------------------------------------------------------
    @staticmethod
    def from_subnets(subnets: Sequence[SubnetConfig], choices: Choices) -> "Population":
        """Index arrays of ``subnets``; raises ValueError for a value outside ``choices``."""
        sp = choices.space
        pop = Population(np.zeros((len(subnets), 2 * sp.num_blocks + len(sp.stages) + 2), np.int64),
                         sp.num_blocks, len(sp.stages))
        kidx = {k: i for i, k in enumerate(sp.kernels)}
        for i, cfg in enumerate(subnets):
            cfg.validate(sp)
            pop.k[i] = [kidx[k] for k in cfg.ks]
            pop.e[i] = [_index_of(sp.expands, x, "expand") for x in cfg.e]
            pop.d[i] = [sp.depths.index(d) for d in cfg.d]
            if cfg.r not in choices.resolutions:
                raise ValueError(
                    f"resolution {cfg.r} is not among the searched resolutions "
                    f"({', '.join(map(str, choices.resolutions))})"
                )
            pop.r[i] = choices.resolutions.index(cfg.r)
            pop.w[i] = _index_of(choices.widths, cfg.w, "width multiplier")
        return pop

    def to_subnets(self, choices: Choices) -> list[SubnetConfig]:
        """The population's subnets as ``SubnetConfig``s (canonical: skipped slots at the
        smallest choice)."""
        sp = choices.space
        ks, es, ds = np.asarray(sp.kernels), np.asarray(sp.expands), np.asarray(sp.depths)
        out = []
        for i in range(len(self)):
            cfg = SubnetConfig(
                ks=tuple(int(x) for x in ks[self.k[i]]),
                e=tuple(float(x) for x in es[self.e[i]]),
                d=tuple(int(x) for x in ds[self.d[i]]),
                r=int(choices.resolutions[self.r[i]]),
                w=float(choices.widths[self.w[i]]),
            )
            out.append(sp.canonical(cfg))
        return out

    def keys(self) -> np.ndarray:
        """The gene matrix; after ``canonicalize`` equal architectures have equal rows."""
        return self.g

    def hashes(self) -> np.ndarray:
        """(N,) int64: a random linear 64-bit hash of each row of ``keys()`` (equal rows,
        equal hashes; distinct rows collide with probability about 2**-64 per pair)."""
        return self.g @ _hash_weights(self.g.shape[1])


_HASH: dict[int, np.ndarray] = {}


def _hash_weights(n: int) -> np.ndarray:
    if n not in _HASH:
        _HASH[n] = np.random.default_rng(0x5EA5C4).integers(1, 2**62, n, dtype=np.int64)
    return _HASH[n]


def gene_sizes(choices: Choices) -> np.ndarray:
    """Number of choices per gene column (for uniform redraws)."""
    sp = choices.space
    return np.array([len(sp.kernels)] * sp.num_blocks + [len(sp.expands)] * sp.num_blocks
                    + [len(sp.stage_depths(i)) for i in range(len(sp.stages))]
                    + [len(choices.resolutions), len(choices.widths)])


def depth_values(pop: Population, space: SearchSpace) -> np.ndarray:
    """(N, num_stages) depths (not indices)."""
    return np.asarray(space.depths)[pop.d]


def active_mask(pop: Population, choices: Choices) -> np.ndarray:
    """(N, num_blocks) bool: slot ``i*max_depth + j`` is active iff ``j < d[i]``."""
    sp = choices.space
    table = np.arange(sp.max_depth)[None, :] < np.asarray(sp.depths)[:, None]  # (n_depths, max_depth)
    return table[pop.d].reshape(len(pop), sp.num_blocks)


def kernel_cap_index(choices: Choices) -> np.ndarray:
    """(n_resolutions, num_blocks): per searched resolution and block slot, the index of the
    largest kernel that is not inert there (``SearchSpace.kernel_caps``); a larger index
    collapses to it."""
    cached = choices.__dict__.get("_kernel_cap_index")
    if cached is None:
        sp = choices.space
        cached = np.array([[sp.kernels.index(k) for k in sp.kernel_caps(r)] for r in choices.resolutions],
                          dtype=np.int64)
        cached.setflags(write=False)
        object.__setattr__(choices, "_kernel_cap_index", cached)  # Choices is frozen; a cache, not a field
    return cached


def collapsed_kernels(pop: Population, choices: Choices) -> np.ndarray:
    """(N, num_blocks) kernel indices with every inert kernel collapsed to the one it
    computes (``SearchSpace.collapse_kernel``); ``pop.k`` itself where no kernel is inert."""
    caps = kernel_cap_index(choices)
    if (caps < len(choices.space.kernels) - 1).any():
        return np.minimum(pop.k, caps[pop.r])
    return pop.k


def canonicalize(pop: Population, choices: Choices) -> Population:
    """``SearchSpace.canonical`` on the whole population, in place (returns ``pop``):
    skipped slots set to index 0, inert kernels collapsed to the kernel they compute."""
    act = active_mask(pop, choices)
    pop.k[:] = collapsed_kernels(pop, choices)
    pop.k[~act] = 0
    pop.e[~act] = 0
    return pop


def random_population(choices: Choices, n: int, rng: np.random.Generator) -> Population:
    """``n`` uniformly random subnets over ``choices``."""
    sp = choices.space
    sizes = gene_sizes(choices)
    g = (rng.random((n, len(sizes))) * sizes).astype(np.int64)
    return Population(g, sp.num_blocks, len(sp.stages))


# --------------------------------------------------------------------------- Encoder


@dataclass(frozen=True)
class Encoder:
    """Fixed-length one-hot features of subnets (see the module docstring for the layout).

    ``res_bins`` are the lower edges of the resolution bins: resolution ``r`` goes to bin
    ``i`` with ``res_bins[i] <= r < res_bins[i+1]`` (the last bin ends at ``res_end``).  For
    our own predictors the bins are the trained resolutions themselves and nothing between
    them is supported (``one_bin_per_resolution``); for OFA's they are 112, 128, ..., 224,
    i.e. ``(r - 112) // 16``.
    """

    kernels: tuple[int, ...]
    expands: tuple[float, ...]
    depths: tuple[int, ...]
    num_blocks: int
    max_depth: int
    res_bins: tuple[int, ...]
    res_end: int
    widths: tuple[float, ...] = ()
    # every kernel and expand feature again, times the resolution centred and scaled to
    # -1..1 over the bins: a block's choice may matter more at one resolution than another
    res_interactions: bool = False

    @classmethod
    def for_space(cls, space: SearchSpace, resolutions: Sequence[int] | None = None,
                  widths: Sequence[float] | None = None) -> "Encoder":
        """Our layout for ``space``: one bin per resolution (``resolutions`` default: the
        space's), a width one-hot only when ``widths`` holds more than one value."""
        res = tuple(sorted(resolutions or space.resolutions))
        w = tuple(sorted(widths)) if widths is not None and len(widths) > 1 else ()
        return cls(space.kernels, tuple(space.expands), space.depths, space.num_blocks,
                   space.max_depth, res, res[-1] + 1, w)

    @classmethod
    def ofa(cls) -> "Encoder":
        """OFA's published 128-wide layout (search/data/README.md, OFA's ``spec2feats``)."""
        return cls((3, 5, 7), (3.0, 4.0, 6.0), (2, 3, 4), 20, 4, tuple(range(112, 225, 16)), 240)

    @property
    def n_arch(self) -> int:
        """The kernel and expand features (the first ``n_arch`` columns)."""
        return self.num_blocks * (len(self.kernels) + len(self.expands))

    @property
    def n_dim(self) -> int:
        return self.n_arch * (2 if self.res_interactions else 1) + len(self.res_bins) + len(self.widths)

    def res_scale(self, r) -> np.ndarray:
        """The resolution centred on the bins' range and scaled to -1..1 (0 for one bin)."""
        lo, hi = self.res_bins[0], self.res_bins[-1]
        r = np.asarray(r, dtype=np.float64)
        return np.zeros_like(r) if hi == lo else (2 * r - lo - hi) / (hi - lo)

    def with_interactions(self) -> "Encoder":
        return replace(self, res_interactions=True)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kernels": list(self.kernels), "expands": list(self.expands), "depths": list(self.depths),
            "num_blocks": self.num_blocks, "max_depth": self.max_depth,
            "res_bins": list(self.res_bins), "res_end": self.res_end, "widths": list(self.widths),
            "res_interactions": self.res_interactions,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Encoder":
        return cls(tuple(d["kernels"]), tuple(float(x) for x in d["expands"]), tuple(d["depths"]),
                   int(d["num_blocks"]), int(d["max_depth"]), tuple(d["res_bins"]), int(d["res_end"]),
                   tuple(float(x) for x in d.get("widths", ())), bool(d.get("res_interactions", False)))

    # compatibility ------------------------------------------------------------------
    def check_space(self, space: SearchSpace) -> None:
        """Raise ValueError unless ``space`` has this encoder's elastic choices."""
        mine = (self.kernels, tuple(self.expands), self.depths, self.num_blocks, self.max_depth)
        theirs = (space.kernels, tuple(float(x) for x in space.expands), space.depths,
                  space.num_blocks, space.max_depth)
        if mine != theirs:
            raise ValueError(
                f"the predictor encodes kernels {list(self.kernels)}, expands "
                f"{[f'{x:g}' for x in self.expands]}, depths {list(self.depths)} over {self.num_blocks} "
                f"slots; space {space.name!r} has kernels {list(space.kernels)}, expands "
                f"{[f'{x:g}' for x in space.expands]}, depths {list(space.depths)} over {space.num_blocks}"
            )

    @property
    def one_bin_per_resolution(self) -> bool:
        """Our layout (``for_space``): each bin is one trained resolution, and a resolution
        between two of them was never seen (OFA's bins are 16-px ranges)."""
        return self.res_end == self.res_bins[-1] + 1

    def supports_resolution(self, r: int) -> bool:
        if self.one_bin_per_resolution:
            return int(r) in self.res_bins
        return self.res_bins[0] <= r < self.res_end

    def supports_width(self, w: float) -> bool:
        return not self.widths or any(math.isclose(w, x) for x in self.widths)

    # encoding ---------------------------------------------------------------------------
    def res_index(self, r: np.ndarray) -> np.ndarray:
        r = np.asarray(r)
        if self.one_bin_per_resolution:
            bad = ~np.isin(r, np.asarray(self.res_bins))
            if bad.any():
                raise ValueError(f"resolution {int(r[bad].flat[0])} is not one the predictor was trained on "
                                 f"({', '.join(map(str, self.res_bins))})")
        bad = (r < self.res_bins[0]) | (r >= self.res_end)
        if bad.any():
            raise ValueError(
                f"resolution {int(r[bad].flat[0])} is outside the predictor's range "
                f"{self.res_bins[0]}..{self.res_end - 1}"
            )
        return np.searchsorted(np.asarray(self.res_bins), r, side="right") - 1

    def encode(self, pop: Population, choices: Choices) -> np.ndarray:
        """(N, n_dim) float32 features of a population (vectorized)."""
        nb, nk, ne = self.num_blocks, len(self.kernels), len(self.expands)
        n = len(pop)
        x = np.zeros((n, self.n_dim), dtype=np.float32)
        act = active_mask(pop, choices)
        rows, slots = np.nonzero(act)
        k = collapsed_kernels(pop, choices)  # inert kernels encode as what they compute
        x[rows, slots * nk + k[rows, slots]] = 1.0
        x[rows, nb * nk + slots * ne + pop.e[rows, slots]] = 1.0
        res = np.asarray(choices.resolutions)[pop.r]
        x[np.arange(n), nb * (nk + ne) + self.res_index(res)] = 1.0
        if self.widths:
            wmap = np.array([_index_of(self.widths, w, "width multiplier") for w in choices.widths])
            x[np.arange(n), nb * (nk + ne) + len(self.res_bins) + wmap[pop.w]] = 1.0
        if self.res_interactions:  # the last n_arch columns
            x[:, self.n_dim - self.n_arch:] = x[:, :self.n_arch] * self.res_scale(res)[:, None].astype(np.float32)
        return x

    def encode_subnets(self, subnets: Sequence[SubnetConfig], space: SearchSpace) -> np.ndarray:
        """Features of a list of subnets (any resolutions and widths of ``space``)."""
        if not subnets:
            return np.zeros((0, self.n_dim), dtype=np.float32)
        choices = Choices(space, tuple(sorted({c.r for c in subnets})),
                          tuple(sorted({float(c.w) for c in subnets})))
        return self.encode(Population.from_subnets(subnets, choices), choices)
