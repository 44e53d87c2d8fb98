"""The whole Pareto front of (predicted accuracy, cost) in one run.

``pareto_front`` returns the non-dominated subnets over the cost model's whole range with a
fixed number of predictor evaluations, the cost a real search pays for: in the main job a
predictor call stands for a supernet evaluation, and OFA's predictor is an MLP.  The
cost of a subnet (a LUT sum) is free by comparison, and the search spends it freely:

1. **A start spread over the range.**  ``pool`` random subnets are priced (no prediction),
   the cost range from the cheapest to the dearest subnet (both exact, from the tables) is
   cut into ``bins``, and ``init`` subnets are taken round-robin over the bins, with the
   cheapest subnet and the largest one.  Uniform sampling alone crowds the middle of the
   range: a random MobileNetV3 subnet is rarely very small or very large.
2. **Rounds of screened children.**  Each round fits a ridge regression (a linear
   surrogate on one-hot genes: each active slot's (kernel, expand) pair, each stage's
   depth, the resolution and the width) to every subnet evaluated so far, breeds
   ``children`` candidates per front member (mutation, and crossover with its neighbours
   on the front), prices them all, and predicts them with the surrogate.  Only ``batch``
   candidates are then evaluated: the ones the surrogate expects to rise furthest above
   the current front at their cost, at most a few per cost bin, so that the whole front
   moves and not only its easiest stretch (a LINAS-style screen: the surrogate is cheap
   and only ranks, the predictor decides).
3. **Stop** when the evaluations are spent, or after ``patience`` rounds in which the
   front's hypervolume did not grow.

The front is every evaluated subnet that no other evaluated subnet beats in both cost and
accuracy.  ``hypervolume`` is the area the front dominates up to a reference point (cost
at most the dearest subnet's, accuracy at least the reference accuracy), the measure the
bench compares with NSGA-II.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from supernet.space import SubnetConfig

from .encoding import Choices, Population, active_mask, canonicalize, gene_sizes, random_population


@dataclass(frozen=True)
class ParetoParams:
    """Front search settings."""

    evaluations: int = 2000   # predictor evaluations at most (distinct subnets)
    bins: int = 48            # cost bins over [cheapest, dearest]
    init: int = 96            # subnets of the start, spread over the bins
    pool: int = 20_000        # random subnets priced (not predicted) for the start
    batch: int = 48           # subnets evaluated per round
    per_bin: int = 2          # of them at most this many in one cost bin (first pass)
    children: int = 64        # candidates bred per front member per round ...
    max_candidates: int = 4096  # ... and at most this many in all
    mutation_prob: float = 0.15
    ridge: float = 1.0        # surrogate's L2 penalty
    patience: int = 4         # rounds without hypervolume growth before stopping

    def __post_init__(self) -> None:
        if self.evaluations < 2 or self.init < 2 or self.batch < 1 or self.bins < 1:
            raise ValueError("evaluations and init must be >= 2, batch and bins >= 1")
        if not 0 <= self.mutation_prob <= 1:
            raise ValueError(f"mutation probability must be in [0, 1], got {self.mutation_prob}")


@dataclass
class FrontResult:
    """The non-dominated subnets, by ascending cost."""

    subnets: list[SubnetConfig]
    accuracy: np.ndarray
    cost: np.ndarray
    raw_cost: np.ndarray
    evaluations: int
    rounds: int
    seconds: float
    cost_range: tuple[float, float]
    history: list[tuple[int, float]]   # (evaluations so far, hypervolume) after each round
    ref_accuracy: float
    notes: list[str] = field(default_factory=list)


def nondominated(cost: np.ndarray, acc: np.ndarray) -> np.ndarray:
    """Indices of the points no other point beats (cost <= and accuracy >=, one strictly),
    by ascending cost; of equal points the first."""
    order = np.lexsort((-acc, cost))  # cost ascending, then accuracy descending
    keep, best = [], -math.inf
    for i in order:
        if acc[i] > best:
            keep.append(i)
            best = acc[i]
    return np.asarray(keep, dtype=np.int64)


def hypervolume(cost: np.ndarray, acc: np.ndarray, ref_cost: float, ref_acc: float) -> float:
    """Area dominated by the points within the reference box (cost <= ref_cost, accuracy >=
    ref_acc), in cost units x accuracy units."""
    cost, acc = np.asarray(cost, float), np.asarray(acc, float)
    ok = (cost <= ref_cost) & (acc >= ref_acc)
    if not ok.any():
        return 0.0
    c, a = cost[ok], acc[ok]
    idx = nondominated(c, a)
    c, a = c[idx], a[idx]
    nxt = np.append(c[1:], ref_cost)
    return float(((nxt - c) * (a - ref_acc)).sum())


def front_at(cost: np.ndarray, front_cost: np.ndarray, front_acc: np.ndarray, floor: float) -> np.ndarray:
    """The front's accuracy at each cost: the best accuracy of a front point costing no more
    (``floor`` below the cheapest point)."""
    i = np.searchsorted(front_cost, cost, side="right") - 1
    return np.where(i >= 0, front_acc[np.maximum(i, 0)], floor)


class Surrogate:
    """Ridge regression on one-hot genes (active slots' (kernel, expand) pairs, depths,
    resolution, width), refitted each round; it only ranks candidates."""

    def __init__(self, choices: Choices, penalty: float):
        sp = choices.space
        self.choices = choices
        self.penalty = penalty
        self.nke = len(sp.kernels) * len(sp.expands)
        self.ne = len(sp.expands)
        self.sizes = gene_sizes(choices)
        self.nb, self.ns = sp.num_blocks, len(sp.stages)
        self.n_dim = self.nb * self.nke + int(self.sizes[2 * self.nb: 2 * self.nb + self.ns].sum()) + \
            int(self.sizes[-2]) + int(self.sizes[-1]) + 1
        self.coef: np.ndarray | None = None

    def features(self, pop: Population) -> np.ndarray:
        n = len(pop)
        x = np.zeros((n, self.n_dim))
        act = active_mask(pop, self.choices)
        rows, slots = np.nonzero(act)
        x[rows, slots * self.nke + pop.k[rows, slots] * self.ne + pop.e[rows, slots]] = 1.0
        off = self.nb * self.nke
        for s in range(self.ns):
            x[np.arange(n), off + pop.d[:, s]] = 1.0
            off += int(self.sizes[2 * self.nb + s])
        x[np.arange(n), off + pop.r] = 1.0
        off += int(self.sizes[-2])
        x[np.arange(n), off + pop.w] = 1.0
        x[:, -1] = 1.0  # intercept
        return x

    def fit(self, pop: Population, acc: np.ndarray) -> None:
        x = self.features(pop)
        reg = self.penalty * np.eye(x.shape[1])
        reg[-1, -1] = 0.0  # the intercept is not penalised
        self.coef = np.linalg.solve(x.T @ x + reg, x.T @ (acc - acc.mean()))
        self.mean = float(acc.mean())

    def __call__(self, pop: Population) -> np.ndarray:
        return self.features(pop) @ self.coef + self.mean


def _largest(choices: Choices) -> Population:
    sizes = gene_sizes(choices)
    return Population((sizes - 1)[None, :].astype(np.int64), choices.space.num_blocks, len(choices.space.stages))


def pareto_front(costs, score: Callable[[Population], np.ndarray], params: ParetoParams,
                 rng: np.random.Generator, ref_accuracy: float | None = None,
                 progress: bool | None = None) -> FrontResult:
    """The non-dominated (cost, predicted accuracy) subnets over ``costs``'s whole range.

    Args:
        costs: ``search.evolve.CostArrays`` of the search's choices (calibrated if it is).
        score: predicted accuracy of a population (deterministic).
        params: budget of predictor evaluations and the search's settings.
        rng: the only randomness.
        ref_accuracy: the hypervolume's reference accuracy (default: the lowest accuracy of
            the start, so that every point of the front counts).
    """
    from tqdm import tqdm

    t0 = time.perf_counter()
    choices = costs.choices
    lo, cheapest = costs.cheapest()
    hi = costs.dearest()
    width = max(hi - lo, 1e-12)
    n_bins = params.bins

    def bin_of(c: np.ndarray) -> np.ndarray:
        return np.clip(((c - lo) / width * n_bins).astype(np.int64), 0, n_bins - 1)

    seen = np.zeros(0, dtype=np.int64)  # sorted hashes of the evaluated architectures
    arch = Population.empty(choices)
    acc = np.zeros(0)
    cost = np.zeros(0)

    def evaluate(pop: Population) -> int:
        nonlocal arch, acc, cost, seen
        pop = canonicalize(pop.copy(), choices)
        h = pop.hashes()
        _, first = np.unique(h, return_index=True)
        fresh = np.sort(first)
        fresh = fresh[~np.isin(h[fresh], seen)][: max(0, params.evaluations - len(acc))]
        if not len(fresh):
            return 0
        new = pop.take(fresh)
        a = np.asarray(score(new), dtype=np.float64)
        seen = np.union1d(seen, h[fresh])
        arch = Population.concat([arch, new])
        acc = np.concatenate([acc, a])
        cost = np.concatenate([cost, costs(new)])
        return len(fresh)

    # 1. the start: the two extremes and a spread over the cost bins
    pool = random_population(choices, params.pool, rng)
    pool_bins = bin_of(costs(pool))
    order = rng.permutation(len(pool))
    by_bin = [order[pool_bins[order] == b] for b in range(n_bins)]
    pick, depth = [], 0
    while len(pick) < params.init - 2 and any(len(b) > depth for b in by_bin):
        pick.extend(int(b[depth]) for b in by_bin if len(b) > depth)
        depth += 1
    start = Population.concat([cheapest, _largest(choices), pool.take(np.asarray(pick[: params.init - 2], dtype=np.int64))])
    evaluate(start)
    ref = float(acc.min()) if ref_accuracy is None else float(ref_accuracy)

    def front() -> np.ndarray:
        return nondominated(cost, acc)

    hv = hypervolume(cost, acc, hi, ref)
    history = [(len(acc), hv)]
    surrogate = Surrogate(choices, params.ridge)
    rounds = stale = 0
    sizes = gene_sizes(choices)
    nb = choices.space.num_blocks
    bar = tqdm(total=params.evaluations, initial=len(acc), desc="pareto front", unit="eval", leave=False,
               disable=(None if progress is None else not progress))
    while len(acc) < params.evaluations and stale < params.patience:
        rounds += 1
        surrogate.fit(arch, acc)
        f = front()
        f_cost, f_acc = cost[f], acc[f]
        # 2. children of the front: mutation, and crossover with a neighbour on the front
        per = max(2, min(params.children, params.max_candidates // len(f)))
        par = arch.take(np.repeat(f, per))
        n = len(par)
        hit = rng.random((n, len(sizes) - nb)) < params.mutation_prob
        mask = np.concatenate([hit[:, :nb], hit], axis=1)  # one draw moves a slot's kernel and expand
        fresh = (rng.random(par.g.shape) * sizes).astype(np.int64)
        kids = np.where(mask, fresh, par.g)
        pos = np.repeat(np.arange(len(f)), per)
        mate = np.clip(pos + rng.choice([-2, -1, 1, 2], n), 0, len(f) - 1)
        cross = rng.random(n) < 0.5
        take_mate = (rng.random(par.g.shape) < 0.5) & cross[:, None]
        kids = np.where(take_mate, arch.g[f[mate]], kids)
        cand = canonicalize(Population(kids, nb, par.ns), choices)
        h = cand.hashes()
        _, first = np.unique(h, return_index=True)
        first = first[~np.isin(h[first], seen)]
        if not len(first):
            stale += 1
            continue
        cand = cand.take(first)
        c_cost = costs(cand)
        gain = surrogate(cand) - front_at(c_cost, f_cost, f_acc, ref)
        # 3. the most promising, at most per_bin a bin first, then the rest by promise
        order = np.argsort(-gain, kind="stable")
        bins = bin_of(c_cost[order])
        by_bin = np.argsort(bins, kind="stable")  # within a bin still by promise
        rank = np.empty(len(order), dtype=np.int64)
        starts = np.searchsorted(bins[by_bin], bins[by_bin], side="left")
        rank[by_bin] = np.arange(len(order)) - starts  # place of each candidate within its bin
        first_pass = rank < params.per_bin
        chosen = np.concatenate([order[first_pass], order[~first_pass]])[: params.batch]
        added = evaluate(cand.take(chosen))
        bar.update(added)
        new_hv = hypervolume(cost, acc, hi, ref)
        stale = stale + 1 if new_hv <= hv * (1 + 1e-9) else 0
        hv = new_hv
        history.append((len(acc), hv))
    bar.close()
    notes = []
    if stale >= params.patience and len(acc) < params.evaluations:
        notes.append(f"stopped after {params.patience} rounds without hypervolume growth, "
                     f"{len(acc)} of {params.evaluations} evaluations used")
    f = front()
    return FrontResult(
        subnets=arch.take(f).to_subnets(choices), accuracy=acc[f], cost=cost[f],
        raw_cost=costs.raw(arch.take(f)), evaluations=len(acc), rounds=rounds,
        seconds=time.perf_counter() - t0, cost_range=(float(lo), float(hi)), history=history,
        ref_accuracy=ref, notes=notes,
    )
