"""Hardware-aware evolutionary search: the most accurate subnet whose cost fits a budget.

The algorithm is OFA's ``EvolutionFinder`` (population 100, parent ratio 0.25, mutation
probability 0.1, mutation ratio 0.5, 500 generations), with three changes:

- whole populations at once: subnets are index arrays (``search.encoding.Population``), the
  cost is an array sum over the cost model's ``tables(r, w)``, and the predictor runs once
  per generation on the encoded population;
- every sampling loop is capped.  A budget below the smallest subnet's cost is refused up
  front (the exact minimum, computed from the tables); a child that still misses the budget
  after ``max_tries`` rounds is replaced by its parent, and an initial population that random
  sampling cannot fill is completed by shrinking random subnets until they fit.  Both are
  counted and reported;
- parents are distinct architectures (duplicates do not take several parent places), and
  each distinct architecture is scored once (a cache keyed by architecture);
- after the last generation a short greedy local search (one-gene and random two-slot
  moves that fit the budget) polishes the best subnet; its extra predictions are counted
  and reported in the notes (``polish_steps=0`` turns it off).

Every returned subnet satisfies the budget under the same cost model (asserted).

CLI (contract)::

    python -m search.evolve --lut PATH [--predictor ofa|RUN_OR_FILE|ofa:PATH] [--latency-ms 15,20] \
        [--seed S] [--json]
    python -m search.evolve --lut PATH --pareto [--evaluations 2000]   # the whole front in one run

Without ``--predictor``, a LUT of the ``ofa_mbv3`` space (as its ``.space.json`` records) is
searched with OFA's published predictor (``ofa``, shipped in ``search/data``), any other
with the newest ``runs/*/predictor.pt``.  Without a budget, four latency budgets are spread
geometrically over the LUT's range, from the cheapest to the dearest subnet.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from profiler.costmodel import cheapest_by_blocks
from supernet.atomic import atomic_write_text, ensure_writable_folder
from supernet.cliargs import run_main, seed_arg
from supernet.space import SearchSpace, SubnetConfig, get_space

from .encoding import Choices, Population, active_mask, gene_sizes, random_population
from .encoding import canonicalize as _canonical


class InfeasibleBudget(ValueError):
    """The budget is below the cheapest subnet's cost."""


# --------------------------------------------------------------------------- costs


def covered_choices(model, space: SearchSpace, supports: Callable[[int, float], bool] | None = None,
                    resolutions: Sequence[int] | None = None,
                    widths: Sequence[float] | None = None) -> Choices:
    """The (resolution, width) pairs the cost model has tables for and the predictor supports.

    With explicit ``resolutions``/``widths`` a missing table is an error (MissingKeysError
    listing the keys); otherwise pairs the LUT lacks are skipped.  Raises ValueError when
    nothing is left.
    """
    from .latency import MissingKeysError

    explicit = resolutions is not None or widths is not None
    res = list(resolutions) if resolutions is not None else list(space.resolutions)
    wid = list(widths) if widths is not None else list(space.width_mults)
    ok_r: set[int] = set()
    ok_w: set[float] = set()
    pairs: list[tuple[int, float]] = []
    first_missing: MissingKeysError | None = None
    for r in res:
        for w in wid:
            if supports is not None and not supports(r, w):
                continue
            try:
                model.tables(r, w)
            except MissingKeysError as exc:
                if explicit:
                    raise
                first_missing = first_missing or exc
                continue
            pairs.append((r, w))
            ok_r.add(r)
            ok_w.add(w)
    if not pairs:
        hint = f"; e.g. {first_missing.message(limit=3)}" if first_missing else ""
        raise ValueError(
            f"{getattr(model, 'where', 'the cost model')} covers no resolution/width of space "
            f"{space.name!r} that the predictor supports{hint}"
        )
    # a search over a product of resolutions and widths needs every pair
    for r in ok_r:
        for w in ok_w:
            if (r, w) not in pairs:
                raise ValueError(
                    f"{getattr(model, 'where', 'the cost model')} covers resolution {r} and width {w:g} "
                    f"but not together; choose with --resolutions/--widths"
                )
    return Choices(space, tuple(sorted(ok_r)), tuple(sorted(ok_w)))


class CostArrays:
    """A cost model's tables stacked over the search's choices, for array sums.

    ``base[ri, wi]`` and ``slot[ri, wi, slot, k, e]`` (uncalibrated); the cost of a population
    is ``a * (base + sum of active slots) + b`` when the model carries a calibration (a, b).
    """

    def __init__(self, model, choices: Choices):
        self.model = model
        self.choices = choices
        sp = choices.space
        nr, nw = len(choices.resolutions), len(choices.widths)
        self.base = np.zeros((nr, nw))
        self.slot = np.zeros((nr, nw, sp.num_blocks, len(sp.kernels), len(sp.expands)))
        for ri, r in enumerate(choices.resolutions):
            for wi, w in enumerate(choices.widths):
                b, s = model.tables(r, w)
                self.base[ri, wi] = b
                self.slot[ri, wi] = s
        # a whole network's weight cost (weight streaming, profiler.costmodel): not additive
        # over blocks, so priced per subnet from its blocks' parameters and footprints
        has_weight = getattr(model, "has_weight_cost", lambda _r: False)
        self._weighted = [ri for ri, r in enumerate(choices.resolutions) if has_weight(r)]
        if self._weighted:
            tabs = [[model.param_tables(r, w) for w in choices.widths] for r in choices.resolutions]
            self.pbase = np.array([[t[0] for t in row] for row in tabs])   # (nr, nw, fixed blocks)
            self.sbase = np.array([[t[1] for t in row] for row in tabs])
            self.pslot = np.array([[t[2] for t in row] for row in tabs])   # like slot
            self.sslot = np.array([[t[3] for t in row] for row in tabs])
            self._pflat, self._sflat = self.pslot.reshape(-1), self.sslot.reshape(-1)
        cal = getattr(model, "calibration", None)
        self.a, self.b = (float(cal[0]), float(cal[1])) if cal else (1.0, 0.0)
        # flat indexing: slot[ri, wi, s, k, e] = flat[(ri*nw + wi)*per_rw + s*nk*ne + k*ne + e]
        nk, ne = len(sp.kernels), len(sp.expands)
        self._flat = self.slot.reshape(-1)
        self._rw_off = (np.arange(nr)[:, None] * nw + np.arange(nw)[None, :]) * (sp.num_blocks * nk * ne)
        self._slot_off = np.arange(sp.num_blocks) * nk * ne
        self._ne = ne

    def raw(self, pop: Population) -> np.ndarray:
        """Uncalibrated table sums, (N,)."""
        idx = (self._rw_off[pop.r, pop.w][:, None] + self._slot_off) + pop.k * self._ne + pop.e
        active = active_mask(pop, self.choices)
        out = self.base[pop.r, pop.w] + (self._flat[idx] * active).sum(axis=1)
        for ri in self._weighted:
            sel = pop.r == ri
            if sel.any():
                params = np.concatenate([self.pbase[ri, pop.w[sel]], self._pflat[idx[sel]] * active[sel]], axis=1)
                solo = np.concatenate([self.sbase[ri, pop.w[sel]], self._sflat[idx[sel]] * active[sel]], axis=1)
                out[sel] += self.model.weight_cost(params, solo, self.choices.resolutions[ri])
        return out

    def __call__(self, pop: Population) -> np.ndarray:
        return self.a * self.raw(pop) + self.b

    def dearest(self) -> float:
        """The exact maximum cost over the choices: every slot at its dearest (kernel, expand),
        every stage at full depth (block costs are not negative); with a weight term (weight
        streaming), an upper bound: every block's dearest term at the excess of the network
        that touches most (the term grows with what a run touches)."""
        nr, nw = self.base.shape
        total = self.base + self.slot.reshape(nr, nw, self.slot.shape[2], -1).max(axis=-1).sum(axis=-1)
        for ri in self._weighted:  # per width: the excess of the network touching most, on every block's dearest case
            r = self.choices.resolutions[ri]
            for wi in range(nw):
                most = self.sbase[ri, wi].sum() + self.sslot[ri, wi].reshape(self.slot.shape[2], -1).max(axis=-1).sum()
                blocks = np.concatenate([self.pbase[ri, wi], self.pslot[ri, wi].reshape(-1)])
                solo = np.concatenate([self.sbase[ri, wi], self.sslot[ri, wi].reshape(-1)])
                per = self.model.weight_terms(most, blocks, solo, r)
                nf = len(self.pbase[ri, wi])
                total[ri, wi] += per[:nf].sum() + per[nf:].reshape(self.slot.shape[2], -1).max(axis=-1).sum()
        return float((self.a * total + self.b).max())

    def cheapest(self) -> tuple[float, Population]:
        """The exact minimum cost over the choices and one subnet attaining it.

        Per stage the cheapest depth given the cheapest (kernel, expand) of every slot; then
        the cheapest (resolution, width).  Exact because slots are independent given (r, w).
        With a weight term (not additive) the subnet is the cheapest by its blocks and the
        cost returned is its own, term included.
        """
        sp = self.choices.space
        total, best_ke, di = cheapest_by_blocks(sp, self.base, self.slot)
        ri, wi = np.unravel_index(int(np.argmin(self.a * total)), total.shape)
        ke = best_ke[ri, wi]
        pop = Population.of((ke // len(sp.expands))[None, :], (ke % len(sp.expands))[None, :],
                            di[ri, wi][None, :], np.array([ri]), np.array([wi]))
        return float(self(pop)[0]), pop


# --------------------------------------------------------------------------- evolution


@dataclass(frozen=True)
class EvolutionParams:
    """Evolution settings (defaults: OFA's ``EvolutionFinder``), and the loop caps."""

    population: int = 100
    parent_ratio: float = 0.25
    mutation_prob: float = 0.1
    mutation_ratio: float = 0.5
    generations: int = 500
    max_tries: int = 50          # rounds of re-drawing children that miss the budget (4 draws each)
    max_draws: int = 200_000     # random subnets drawn for the initial population, at most
    distinct_parents: bool = True
    hidden_genes: bool = True    # keep the genes of skipped slots (as OFA does) for later depth changes
    polish_steps: int = 10       # local search on the best subnet after evolution (0: off)
    polish_pairs: int = 1000     # random two-gene moves tried per local-search step

    def __post_init__(self) -> None:
        if self.population < 2:
            raise ValueError(f"population must be >= 2, got {self.population}")
        if not 0 < self.parent_ratio <= 1:
            raise ValueError(f"parent ratio must be in (0, 1], got {self.parent_ratio}")
        if not 0 <= self.mutation_prob <= 1 or not 0 <= self.mutation_ratio <= 1:
            raise ValueError("mutation probability and ratio must be in [0, 1]")
        if self.generations < 0 or self.max_tries < 1 or self.max_draws < 1:
            raise ValueError("generations must be >= 0 and the caps >= 1")


@dataclass
class SearchResult:
    """The outcome of one search under one budget."""

    budget: float
    subnet: SubnetConfig
    accuracy: float
    cost: float
    raw_cost: float
    history: list[float]               # best accuracy after each generation
    population: list[SubnetConfig]     # the final parents
    population_acc: np.ndarray
    population_cost: np.ndarray
    evaluations: int                   # distinct subnets the predictor scored
    ranked: int                        # subnets ranked (initial population + all children)
    seconds: float
    notes: list[str] = field(default_factory=list)
    precision: str = ""                # --precision fp32,int8: the precision to deploy it in
    alternative: dict | None = None    # and the other precision's best under the same budget


def _mutate(parents: Population, prob: float, choices: Choices, rng: np.random.Generator) -> Population:
    """Each slot's (kernel, expand) pair, each stage's depth, the resolution and the width is
    redrawn uniformly with probability ``prob`` (OFA's ``mutate_sample``)."""
    sizes = gene_sizes(choices)
    n, nb, ns = len(parents), parents.nb, parents.ns
    hit = rng.random((n, nb + ns + 2)) < prob
    mask = np.concatenate([hit[:, :nb], hit], axis=1)   # one draw decides kernel and expand
    fresh = (rng.random(parents.g.shape) * sizes).astype(np.int64)
    return Population(np.where(mask, fresh, parents.g), nb, ns)


def _crossover(p1: Population, p2: Population, rng: np.random.Generator) -> Population:
    """Every gene taken from either parent with probability 1/2 (OFA's ``crossover_sample``)."""
    return Population(np.where(rng.random(p1.g.shape) < 0.5, p1.g, p2.g), p1.nb, p1.ns)


def _shrink_until_fits(pop: Population, costs: CostArrays, budget: float,
                       rng: np.random.Generator) -> tuple[Population, int]:
    """Lower random genes one step (choices are ascending) until each row fits; rows that
    still do not fit when nothing can be lowered become the cheapest subnet.  Returns the
    population and how many rows needed the cheapest subnet."""
    out = pop.copy()
    for _ in range(int(out.g.sum()) + 1):
        over = costs(out) > budget
        room = (out.g > 0) & over[:, None]
        movable = room.any(axis=1)
        if not movable.any():
            break
        pick = np.argmax(rng.random(room.shape) * room, axis=1)
        rows = np.nonzero(movable)[0]
        out.g[rows, pick[rows]] -= 1
    bad = costs(out) > budget
    if bad.any():
        _, cheapest = costs.cheapest()
        out.put(bad, cheapest.take(np.zeros(int(bad.sum()), dtype=np.int64)))
    return out, int(bad.sum())


def initial_population(n: int, costs: CostArrays, budget: float, max_draws: int,
                       rng: np.random.Generator) -> tuple[Population, list[str]]:
    """``n`` random subnets that fit the budget: rejection sampling in batches, at most
    ``max_draws`` draws; the rest (if any) are random subnets shrunk until they fit."""
    choices = costs.choices
    kept: list[Population] = []
    have = drawn = 0
    batch = max(4 * n, 256)
    while have < n and drawn < max_draws:
        cand = random_population(choices, min(batch, max_draws - drawn), rng)
        drawn += len(cand)
        ok = costs(cand) <= budget
        if ok.any():
            kept.append(cand.take(ok))
            have += int(ok.sum())
    notes = []
    pop = Population.concat(kept).take(np.arange(min(n, have))) if kept else Population.empty(choices)
    if have < n:
        missing = n - have
        shrunk, cheapest = _shrink_until_fits(random_population(choices, missing, rng), costs, budget, rng)
        pop = Population.concat([pop, shrunk])
        notes.append(
            f"random sampling found {have} of {n} subnets within {budget:g} in {drawn} draws (cap "
            f"{max_draws}); {missing} more were random subnets shrunk until they fit"
            + (f" ({cheapest} became the cheapest subnet)" if cheapest else "")
        )
    return pop, notes


def _children(make: Callable[[np.ndarray], Population], fallback: Population, costs: CostArrays,
              budget: float, max_tries: int, fan: int = 4) -> tuple[Population, int]:
    """Children from ``make(rows)`` (rows: which children to draw, repeats allowed).

    Rejection sampling as in OFA, batched: each round draws ``fan`` candidates for every
    child still missing the budget and keeps the first that fits (the same distribution as
    drawing one at a time).  After ``max_tries`` rounds the rest become ``fallback`` (the
    parent, which fits).  Returns the children and how many fell back.
    """
    n = len(fallback)
    out = fallback.copy()
    pending = np.arange(n)
    for _ in range(max_tries):
        if not len(pending):
            break
        cand = make(np.repeat(pending, fan))
        ok = (costs(cand) <= budget).reshape(len(pending), fan)
        hit = ok.any(axis=1)
        src = np.nonzero(hit)[0] * fan + ok.argmax(axis=1)[hit]
        out.put(pending[hit], cand.take(src))
        pending = pending[~hit]
    return out, len(pending)


def _select(pop: Population, acc: np.ndarray, n: int, distinct: bool, choices: Choices) -> np.ndarray:
    """Indices of the ``n`` most accurate rows (distinct architectures when ``distinct``)."""
    order = np.argsort(-acc, kind="stable")
    if not distinct:
        return order[:n]
    _, first = np.unique(_canonical(pop.copy(), choices).hashes()[order], return_index=True)
    uniq = order[np.sort(first)]
    if len(uniq) >= n:
        return uniq[:n]
    rest = np.setdiff1d(order, uniq, assume_unique=True)
    return np.concatenate([uniq, rest[: n - len(uniq)]])


class MemoScore:
    """``score`` with a cache keyed by architecture hash: each distinct subnet is scored once
    (the predictor is deterministic, so ranking is unchanged).  ``evaluated`` counts the
    subnets actually scored."""

    def __init__(self, score: Callable[[Population], np.ndarray], choices: Choices | None = None):
        self.score = score
        self.choices = choices  # given: populations may hold genes of skipped slots
        self.cache: dict[int, float] = {}
        self.evaluated = 0

    def __call__(self, pop: Population) -> np.ndarray:
        h = pop.hashes() if self.choices is None else _canonical(pop.copy(), self.choices).hashes()
        uniq, first, inv = np.unique(h, return_index=True, return_inverse=True)
        keys = uniq.tolist()
        vals = np.array([self.cache.get(k, np.nan) for k in keys])
        miss = np.nonzero(np.isnan(vals))[0]
        if len(miss):
            fresh = np.asarray(self.score(pop.take(first[miss])), dtype=np.float64)
            vals[miss] = fresh
            self.cache.update(zip((keys[i] for i in miss), fresh.tolist()))
            self.evaluated += len(miss)
        return vals[inv.reshape(-1)]


def polish(best: Population, best_acc: float, costs: CostArrays, score: Callable[[Population], np.ndarray],
           budget: float, steps: int, pairs: int, rng: np.random.Generator) -> tuple[Population, float, int]:
    """Greedy local search from ``best``: every one-gene change (a slot's kernel-and-expand
    pair, a stage's depth, the resolution, the width) plus ``pairs`` random two-slot
    changes; move to the most accurate neighbour that fits the budget while it improves, at
    most ``steps`` moves.  Returns (subnet, accuracy, moves made)."""
    choices = costs.choices
    sp = choices.space
    nb, ns, ne = sp.num_blocks, len(sp.stages), len(sp.expands)
    n_ke = len(sp.kernels) * ne
    moves = 0
    for _ in range(steps):
        g = best.g[0]
        rows = []
        for slot in range(nb):  # one slot's (kernel, expand)
            for ke in range(n_ke):
                row = g.copy()
                row[slot], row[nb + slot] = divmod(ke, ne)
                rows.append(row)
        for col, size in [(2 * nb + i, len(sp.depths)) for i in range(ns)] + \
                         [(2 * nb + ns, len(choices.resolutions)), (2 * nb + ns + 1, len(choices.widths))]:
            for v in range(size):
                row = g.copy()
                row[col] = v
                rows.append(row)
        pair = np.repeat(g[None, :], pairs, axis=0)  # two slots' (kernel, expand) at once
        for _ in range(2):
            slot = rng.integers(0, nb, pairs)
            ke = rng.integers(0, n_ke, pairs)
            pair[np.arange(pairs), slot], pair[np.arange(pairs), nb + slot] = ke // ne, ke % ne
        cand = _canonical(Population(np.concatenate([np.array(rows), pair]), nb, ns), choices)
        cand = cand.take(costs(cand) <= budget)
        if not len(cand):
            break
        acc = score(cand)
        i = int(np.argmax(acc))
        if acc[i] <= best_acc + 1e-12:
            break
        best, best_acc = cand.take(np.array([i])), float(acc[i])
        moves += 1
    return best, best_acc, moves


def evolve(
    budget: float,
    costs: CostArrays,
    score: Callable[[Population], np.ndarray],
    params: EvolutionParams,
    rng: np.random.Generator,
    progress: bool | None = None,
    desc: str = "",
) -> SearchResult:
    """Regularized evolution under ``costs(pop) <= budget``.

    Args:
        budget: the cost budget (in the cost model's unit, calibrated if it is).
        costs: the stacked cost tables of the search's choices.
        score: predicted accuracy of a population (one batched call per generation).
        params: evolution settings and caps.
        rng: the only randomness.
        progress: tqdm bar (None: only on a terminal).
    Returns:
        The best subnet found, its accuracy and cost, the per-generation history and the
        final parents.  Raises InfeasibleBudget when nothing fits.
    """
    from tqdm import tqdm

    t0 = time.perf_counter()
    choices = costs.choices
    canon = lambda p: _canonical(p, choices)  # noqa: E731
    floor, _ = costs.cheapest()
    if budget < floor:
        raise InfeasibleBudget(
            f"budget {budget:g} is below the smallest subnet's cost {floor:.3f} "
            f"({getattr(costs.model, 'where', 'cost model')}); nothing fits"
        )
    n = params.population
    n_par = max(1, int(round(params.parent_ratio * n)))
    n_mut = int(round(params.mutation_ratio * n))
    pop, notes = initial_population(n, costs, budget, params.max_draws, rng)
    if not params.hidden_genes:
        canon(pop)
    memo = MemoScore(score, choices)
    acc = memo(pop)
    ranked = len(pop)
    history: list[float] = []
    fallbacks = 0
    best_acc, best = -math.inf, None
    bar = tqdm(range(params.generations), desc=desc or f"search <= {budget:g}", leave=False,
               disable=(None if progress is None else not progress))
    for _ in bar:
        sel = _select(pop, acc, n_par, params.distinct_parents, choices)
        parents, parents_acc = pop.take(sel), acc[sel]
        if parents_acc[0] > best_acc:
            best_acc, best = float(parents_acc[0]), parents.take(np.array([0]))
        history.append(best_acc)
        bar.set_postfix(acc=f"{best_acc:.4f}")
        # mutation
        pick = rng.integers(0, n_par, n_mut)
        mut, fb1 = _children(lambda rows: _mutate(parents.take(pick[rows]), params.mutation_prob, choices, rng),
                             parents.take(pick), costs, budget, params.max_tries)
        # crossover
        a, b = rng.integers(0, n_par, n - n_mut), rng.integers(0, n_par, n - n_mut)
        cross, fb2 = _children(lambda rows: _crossover(parents.take(a[rows]), parents.take(b[rows]), rng),
                               parents.take(a), costs, budget, params.max_tries)
        fallbacks += fb1 + fb2
        kids = Population.concat([mut, cross])
        if not params.hidden_genes:
            canon(kids)
        kids_acc = memo(kids)
        ranked += len(kids)
        pop = Population.concat([parents, kids])
        acc = np.concatenate([parents_acc, kids_acc])
    sel = _select(pop, acc, n_par, params.distinct_parents, choices)
    parents, parents_acc = pop.take(sel), acc[sel]
    if parents_acc[0] > best_acc or best is None:
        best_acc, best = float(parents_acc[0]), parents.take(np.array([0]))
    history.append(best_acc)
    if params.polish_steps:
        before = memo.evaluated
        best, best_acc, moves = polish(best, best_acc, costs, memo, budget, params.polish_steps, params.polish_pairs, rng)
        if moves:
            notes.append(f"local search after evolution improved the best subnet in {moves} move(s), "
                         f"+{100 * (best_acc - history[-1]):.3f} pp ({memo.evaluated - before} extra predictions)")
        history.append(best_acc)
    if fallbacks:
        notes.append(
            f"{fallbacks} children missed the budget after {params.max_tries} redraws and were "
            f"replaced by their parents"
        )
    cost = float(costs(best)[0])
    if not cost <= budget:  # cannot happen: every member fits by construction
        raise AssertionError(f"search returned a subnet of cost {cost} over budget {budget}")
    par_cost = costs(parents)
    return SearchResult(
        budget=float(budget), subnet=best.to_subnets(choices)[0], accuracy=best_acc, cost=cost,
        raw_cost=float(costs.raw(best)[0]), history=history, population=parents.to_subnets(choices),
        population_acc=parents_acc, population_cost=par_cost, evaluations=memo.evaluated,
        ranked=ranked, seconds=time.perf_counter() - t0, notes=notes,
    )


# --------------------------------------------------------------------------- CLI helpers


def parse_budgets(text: str, what: str) -> list[float]:
    """``"15,20,25"`` -> [15.0, 20.0, 25.0]; raises ValueError naming the flag."""
    out = []
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        try:
            v = float(part)
        except ValueError:
            raise ValueError(f"{what}: {part!r} is not a number") from None
        if not math.isfinite(v) or v <= 0:
            raise ValueError(f"{what}: budgets must be positive, got {part}")
        out.append(v)
    if not out:
        raise ValueError(f"{what}: no budget given")
    return sorted(set(out))


def spread_budgets(lo: float, hi: float, n: int = 4) -> list[float]:
    """``n`` budgets spread geometrically strictly between the cheapest subnet's cost ``lo``
    and the dearest's ``hi``, each rounded up to two significant digits (while below ``hi``)."""
    out = []
    for b in np.geomspace(lo, hi, n + 2)[1:-1]:
        step = 10.0 ** (math.floor(math.log10(b)) - 1)
        up = math.ceil(b / step) * step
        out.append(round(up if up < hi else b, 9))
    return sorted(set(out))


def default_predictor(space: str | None = None) -> str:
    """``ofa`` (OFA's published predictor) for the ``ofa_mbv3`` space, otherwise the newest
    ``runs/*/predictor.pt`` of ``space``; raises ValueError when there is none (for a
    ProxylessNAS space, naming the commands that search it instead)."""
    if space == "ofa_mbv3":
        return "ofa"
    from .predictor import load_predictor

    found = []
    for p in sorted(Path("runs").glob("*/predictor.pt"), key=lambda p: p.stat().st_mtime):
        try:
            if space is None or load_predictor(p).space_name in (space, ""):
                found.append(p)
        except ValueError:
            continue  # a corrupt or foreign file is not a default; named when given explicitly
    if not found:
        if space and space.startswith("proxyless"):
            raise ValueError(
                f"no accuracy predictor for space {space!r}: ProxylessNAS spaces are searched on the target task, "
                "not in a trained supernet. Search with python -m search.proxyless --lut LUT --latency-ms T "
                "[--data imagefolder:PATH]; price architectures with python -m search.latency --lut LUT --subnet max|min|FILE")
        raise ValueError(f"no --predictor given and no runs/*/predictor.pt found for space {space or 'unknown'!r} "
                         "(train one with python -m search.predictor; --predictor ofa for the ofa_mbv3 space)")
    return str(found[-1])


def export_and_verify(results: Sequence[SearchResult], space: SearchSpace, latency, args,
                      out_dir: Path, latency8=None) -> list[dict[str, Any]]:
    """``--export``: each chosen subnet extracted from the supernet run (``--run``), its BN
    recalibrated, its held-out top-1 measured, written as ONNX and TFLite; a subnet to deploy
    in int8 (``--precision int8``, or chosen so by ``fp32,int8``) also as ``.int8.tflite`` and
    ``.int8.onnx``, quantized as the profiler quantizes blocks but calibrated on 128 real
    training images, with the int8 model's held-out top-1 in the LUT's runtime.  ``--verify``:
    each chosen subnet exported and measured end to end on the LUT's device and runtime in its
    precision (the profiler's fidelity path), printed against the predicted latency.

    Returns one record per budget (paths, measured top-1, measured latency)."""
    from tqdm import tqdm

    from profiler.export import export_network

    default = getattr(latency, "precision", "fp32") if latency is not None else "fp32"
    precisions = [r.precision or default for r in results]
    records: list[dict[str, Any]] = [{"budget": r.budget, "subnet": r.subnet.to_dict(), "precision": p}
                                     for r, p in zip(results, precisions)]
    if args.export:
        if not args.run:
            raise SystemExit("error: --export needs --run RUN (the supernet run folder to extract the subnets from)")
        from supernet.evaluation import CheckpointError, load_run

        try:
            net, evaluator, _ = load_run(Path(args.run))
        except (CheckpointError, ValueError) as exc:
            raise SystemExit(f"error: --run {args.run}: {exc}") from None
        for res, rec in zip(tqdm(results, desc="export", disable=args.json), records):
            cfg = res.subnet
            sub = evaluator.subnet(cfg)  # extracted with the supernet's weights, BN recalibrated
            rec["held_out_top1"] = round(evaluator.evaluate(cfg), 3)
            rec["predicted_accuracy"] = res.accuracy
            for fmt in ("onnx", "tflite"):
                path = out_dir / f"subnet_{res.budget:g}.{fmt}"
                try:
                    export_network(net.space, cfg, fmt, path, module=sub)
                    rec[fmt] = str(path)
                except Exception as exc:  # noqa: BLE001 - one failed format is reported, not fatal
                    rec[fmt] = None
                    rec[f"{fmt}_error"] = f"{type(exc).__name__}: {exc}"[:300]
            if rec["precision"] == "int8":
                _export_int8(rec, evaluator, cfg, out_dir / f"subnet_{res.budget:g}",
                             getattr(latency, "runtime", None) or "tflite")
    if args.verify:
        if latency is None:
            raise SystemExit("error: --verify needs --lut (the device to measure on is the LUT's)")
        for prec in dict.fromkeys(precisions):
            model = latency8 if prec == "int8" and latency8 is not None else latency
            idx = [i for i, p in enumerate(precisions) if p == prec]
            try:
                measured = verify_on_device(model, space, [results[i].subnet for i in idx], progress=not args.json)
            except ValueError as exc:
                raise SystemExit(f"error: --verify: {exc}") from None
            for i, m in zip(idx, measured):
                records[i].update(m)
    atomic_write_text(out_dir / "deploy.json", json.dumps(records, indent=2) + "\n")
    if not args.json:
        for rec in records:
            parts = [f"budget {rec['budget']:g}:"]
            if "held_out_top1" in rec:
                parts.append(f"held-out top-1 {rec['held_out_top1']:.2f}% (predicted {100 * rec['predicted_accuracy']:.2f}%),"
                             f" onnx {rec.get('onnx') or 'failed'}, tflite {rec.get('tflite') or 'failed'}")
            if rec.get("int8_held_out_top1") is not None:
                parts.append(f"int8 ({rec['int8_runtime']}) top-1 {rec['int8_held_out_top1']:.2f}%, "
                             f"{rec.get('int8_tflite') or 'tflite failed'}, {rec.get('int8_onnx') or 'onnx failed'}")
            if "predicted_latency_ms" in rec:
                m = rec["measured_latency_ms"]
                parts.append(f"{rec['device']}/{rec['runtime']}: predicted {rec['predicted_latency_ms']:.2f} ms, "
                             + (f"measured {m:.2f} ms ({rec['error_pct']:+.1f}%)" if m is not None
                                else f"measurement failed: {rec['measure_error']}"))
            print(" ".join(parts))
        print(f"wrote {out_dir / 'deploy.json'}")
    return records


def _export_int8(rec: dict[str, Any], evaluator, cfg: SubnetConfig, stem: Path, runtime: str) -> None:
    """Quantize the record's fp32 exports to ``<stem>.int8.tflite`` / ``.int8.onnx`` on real
    calibration images and measure the ``runtime`` one's held-out top-1 (into ``rec``)."""
    from profiler.export import format_for_runtime
    from profiler.quantize import file_top1, quantize_with_data

    calib = evaluator.calibration_array(cfg.r)
    rec.update(int8_calibration=f"{len(calib)} real images", int8_runtime=runtime, int8_held_out_top1=None)
    for fmt in ("tflite", "onnx"):
        if not rec.get(fmt):
            continue
        path = Path(f"{stem}.int8.{fmt}")
        try:
            quantize_with_data(Path(rec[fmt]), path, calib)
            rec[f"int8_{fmt}"] = str(path)
            if fmt == format_for_runtime(runtime):
                rec["int8_held_out_top1"] = round(file_top1(path, *evaluator.held_out_arrays(cfg.r)), 3)
        except Exception as exc:  # noqa: BLE001 - one failed format is reported, not fatal
            rec[f"int8_{fmt}"] = None
            rec[f"int8_{fmt}_error"] = f"{type(exc).__name__}: {exc}"[:300]


def verify_on_device(latency, space: SearchSpace, subnets: Sequence[SubnetConfig],
                     progress: bool = True) -> list[dict[str, Any]]:
    """Export ``subnets`` as whole networks and measure them on the LUT's device and runtime
    (the profiler's fidelity path, ``profiler.validate.measure_networks``).  One record per
    subnet: device, runtime, predicted and measured ms, error %, the measurement's error.
    Raises ValueError when the device is unknown or cannot be reached."""
    from profiler.devices import DEFAULT_DEVICES_FILE, load_devices, select_devices
    from profiler.export import ArtifactCache, format_for_runtime
    from profiler.validate import measure_networks

    device_name = (latency.device or "").split(",")[0]
    try:
        device = select_devices(load_devices(DEFAULT_DEVICES_FILE), device_name, DEFAULT_DEVICES_FILE)[0]
    except ValueError as exc:
        raise ValueError(f"the LUT's device {device_name!r}: {exc}") from None
    fmt = format_for_runtime(latency.runtime, getattr(latency, "precision", "fp32"))
    cache = ArtifactCache(None)
    out = measure_networks(device, latency.runtime, space, list(subnets), fmt,
                           cache.root / "networks" / fmt / cache.version(fmt), progress=progress)
    if isinstance(out, str):
        raise ValueError(out)
    meas, rows = out
    records = []
    for cfg, m, row in zip(subnets, meas, rows):
        pred_ms = float(latency.latency([cfg])[0])
        records.append({"device": device.name, "runtime": latency.runtime,
                        "precision": getattr(latency, "precision", "fp32"), "predicted_latency_ms": round(pred_ms, 4),
                        "measured_latency_ms": None if np.isnan(m) else round(float(m), 4),
                        "error_pct": None if np.isnan(m) else round((pred_ms - m) / m * 100, 2),
                        "measure_error": row["error"] or None})
    return records


@contextlib.contextmanager
def _stdout_to_stderr():
    """Send stdout (Python's and file descriptor 1) to stderr inside the block."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def int8_drop(arg: str | None, predictor_path: str | None, runtime: str) -> tuple[float, str]:
    """(drop in points, where it came from): ``arg`` as a number or an ``int8_drop.json``
    (``search.int8_drop``), else the predictor's run folder's ``int8_drop.json``, its mean
    drop for ``runtime``.  A measured mean below zero (int8 scoring higher than fp32 on the
    evaluated subnets, which is evaluation noise: quantization adds error) is taken as 0, so
    that int8 is never preferred for a gain it does not have; a number given as ``arg`` is
    taken as given.  Raises ValueError naming what is missing."""
    if arg is not None:
        try:
            value = float(arg)
        except ValueError:
            path = Path(arg)
        else:
            if not math.isfinite(value) or abs(value) > 100:
                raise ValueError(f"--int8-drop: points between -100 and 100, got {arg!r}")
            return value, "--int8-drop"
    else:
        path = Path(predictor_path).parent / "int8_drop.json" if predictor_path else None
    if path is None or not path.is_file():
        raise ValueError(f"no measured int8 accuracy drop{' at ' + str(path) if path else ''}: run python -m "
                         f"search.int8_drop --run RUN (RUN: the predictor's run folder), or give --int8-drop POINTS")
    try:
        entry = json.loads(path.read_text(encoding="utf-8"))["runtimes"][runtime]
        value = float(entry["mean_drop_pp"])
    except KeyError:
        raise ValueError(f"{path}: no int8 drop measured for runtime {runtime} (search.int8_drop --runtime "
                         f"{runtime})") from None
    except (OSError, ValueError, TypeError, OverflowError) as exc:
        raise ValueError(f"{path}: not an int8_drop.json ({exc.__class__.__name__}: {exc})") from None
    if not math.isfinite(value):
        raise ValueError(f"{path}: mean_drop_pp for {runtime} is not a number")
    if value < 0:
        return 0.0, f"{path}, measured {value:+.2f} and taken as 0: int8 is not credited with a gain"
    return value, str(path)


def evolve_both(budget: float, costs: CostArrays, costs8: CostArrays, score, drop_pp: float,
                params: EvolutionParams, rng: np.random.Generator, quiet: bool, desc: str) -> SearchResult:
    """The better of an fp32 and an int8 search under ``budget``: each with its precision's
    LUT costs, int8 candidates scored at the predicted accuracy less ``drop_pp`` (the measured
    drop model); the higher predicted accuracy wins, a tie the lower latency.  The result
    carries the precision to deploy it in and the other precision's best as ``alternative``
    (None where that precision has no subnet under the budget)."""
    score8 = lambda p: score(p) - drop_pp / 100.0  # noqa: E731
    found = {}
    for prec, c, sc in (("fp32", costs, score), ("int8", costs8, score8)):
        if budget >= c.cheapest()[0]:
            found[prec] = evolve(budget, c, sc, params, rng, progress=None if not quiet else False,
                                 desc=f"{desc} {prec}")
    order = sorted(found, key=lambda p: (-round(found[p].accuracy, 9), found[p].cost))
    chosen = found[order[0]]
    chosen.precision = order[0]
    other = found.get(order[1]) if len(order) > 1 else None
    chosen.alternative = None if other is None else {
        "precision": order[1], "subnet": other.subnet.to_dict(), "predicted_accuracy": round(float(other.accuracy), 5),
        "predicted_latency_ms": round(float(other.cost), 4)}
    if other is None:
        chosen.notes.append(f"{'int8' if order[0] == 'fp32' else 'fp32'}: no subnet under {budget:g} ms")
    return chosen


def _calibration_arg(text: str):
    return {"auto": "auto", "none": None}.get(text, text)


def main(argv: list[str] | None = None) -> int:
    from profiler.lut import LutError, lut_spaces

    from . import report
    from .latency import LatencyModel, MacsModel, MissingKeysError, ParamsModel
    from .predictor import load_predictor

    ap = argparse.ArgumentParser(prog="python -m search.evolve", description=__doc__.split("\n\n")[0])
    ap.add_argument("--lut", help="latency LUT CSV (the device to search for)")
    ap.add_argument("--predictor", help="ofa (OFA's published one, the default for a LUT of the ofa_mbv3 space), "
                    "RUN folder, predictor file, or ofa:PATH (default otherwise: the newest runs/*/predictor.pt)")
    ap.add_argument("--latency-ms", help="latency budget(s) in ms, comma separated (needs --lut; default: four "
                    "spread over the LUT's range)")
    ap.add_argument("--macs-m", help="MACs budget(s) in millions instead of latency")
    ap.add_argument("--params-m", help="parameter budget(s) in millions instead of latency")
    ap.add_argument("--space", help="search space (default: the LUT's, else the predictor's)")
    ap.add_argument("--runtime", help="LUT runtime, when the LUT holds several")
    ap.add_argument("--precision", default="fp32",
                    help="fp32, int8 (price from the LUT's rows of that precision only), or fp32,int8: per budget "
                         "the better of an fp32 and an int8 search and the precision to deploy it in")
    ap.add_argument("--int8-drop", default=None,
                    help="the int8 accuracy drop (points) that ranks int8 against fp32 candidates: a number, or "
                         "an int8_drop.json of search.int8_drop (default: the predictor's run folder's)")
    ap.add_argument("--calibration", default="auto",
                    help="auto (use <lut>.calibration.json when present), none, or a calibration JSON")
    ap.add_argument("--resolutions", help="resolutions to search, comma separated (default: all the LUT covers)")
    ap.add_argument("--widths", help="width multipliers to search (default: all the LUT and predictor cover)")
    ap.add_argument("--method", choices=["evolution", "relaxation"], default="evolution",
                    help="evolution (OFA's) or relaxation (a softmax relaxation over the predictor, "
                         "search.relaxation; ProxylessNAS itself is search.proxyless)")
    ap.add_argument("--pareto", action="store_true",
                    help="the whole Pareto front of (predicted accuracy, cost) over the LUT's range in one run "
                         "(search.pareto), instead of one subnet per budget")
    ap.add_argument("--evaluations", type=int, default=2000,
                    help="--pareto: predictor evaluations (distinct subnets) at most")
    ap.add_argument("--steps", type=int, default=300, help="relaxation method: Adam steps per resolution/width")
    ap.add_argument("--population", type=int, default=100)
    ap.add_argument("--parent-ratio", type=float, default=0.25)
    ap.add_argument("--mutation-prob", type=float, default=0.1)
    ap.add_argument("--mutation-ratio", type=float, default=0.5)
    ap.add_argument("--generations", type=int, default=500)
    ap.add_argument("--seed", type=seed_arg, default=0)
    ap.add_argument("--samples", type=int, default=2000, help="random subnets drawn for the plot's context")
    ap.add_argument("--out", help="folder for the per-budget JSON, Pareto CSV/JSON and PNG (default out/search/<lut>)")
    ap.add_argument("--run", help="supernet run folder (for --export)")
    ap.add_argument("--export", action="store_true", help="write the chosen subnets as ONNX and TFLite")
    ap.add_argument("--verify", action="store_true", help="measure the chosen subnets on the LUT's device")
    ap.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    args = ap.parse_args(argv)

    try:
        # what to constrain
        given = [(f, getattr(args, f.replace("-", "_"))) for f in ("latency-ms", "macs-m", "params-m")]
        given = [(f, v) for f, v in given if v] or ([("latency-ms", "")] if args.lut else [])
        if not given:
            raise ValueError("give --lut LUT (latency budgets default to its range), or --macs-m or --params-m")
        if len(given) != 1:
            raise ValueError("give exactly one of --latency-ms, --macs-m, --params-m")
        flag, text = given[0]
        if args.pareto:
            if text:
                raise ValueError(f"--pareto searches the whole range: give no budget (--{flag} {text})")
            if args.method != "evolution" or args.export or args.verify:
                raise ValueError("--pareto takes neither --method relaxation nor --export/--verify "
                                 "(search a budget from the front for those)")
            if args.evaluations < 2:
                raise ValueError(f"--evaluations must be >= 2, got {args.evaluations}")
        if args.method == "relaxation" and args.steps < 1:
            raise ValueError(f"--steps must be >= 1, got {args.steps}")
        if args.samples < 0:
            raise ValueError(f"--samples must be >= 0, got {args.samples}")
        budgets = parse_budgets(text, f"--{flag}") if text else []  # none: spread over the LUT's range
        if flag == "latency-ms" and not args.lut:
            raise ValueError("--latency-ms needs --lut")
        precisions = [p.strip() for p in args.precision.split(",") if p.strip()]
        if not precisions or any(p not in ("fp32", "int8") for p in precisions) or len(set(precisions)) < len(precisions):
            raise ValueError(f"--precision: fp32, int8 or fp32,int8, got {args.precision!r}")
        both = len(precisions) == 2
        if both and (flag != "latency-ms" or args.pareto or args.method != "evolution"):
            raise ValueError("--precision fp32,int8 compares latencies: it needs --lut, the evolution method and "
                             "no --pareto (search each precision's front with --precision fp32 or int8)")
        if args.lut and not Path(args.lut).is_file():
            raise LutError(f"{args.lut}: no such LUT file")  # before the predictor, whose default follows the LUT's space
        lut_space = lut_spaces(Path(args.lut)) if args.lut else []
        space_name = args.space or (lut_space[0] if len(lut_space) == 1 else None)
        pred = load_predictor(args.predictor or default_predictor(space_name))
        space = get_space(space_name or pred.space_name or "ofa_mbv3")
        pred.check_space(space)
        latency = None
        if args.lut:
            cal = _calibration_arg(args.calibration)
            latency = LatencyModel.from_lut(args.lut, space, args.runtime, calibration=cal,
                                            precision="fp32" if both else precisions[0])
            if latency.calibration_skipped:
                print(f"note: {latency.calibration_skipped}: using the plain LUT sum", file=sys.stderr)
        latency8, drop = None, None
        if both:
            latency8 = LatencyModel.from_lut(args.lut, space, args.runtime, calibration=cal, precision="int8")
            drop = int8_drop(args.int8_drop, pred.path, latency.runtime)
        elif precisions == ["int8"] and latency is not None:
            try:  # an int8-only search reports int8 accuracy where the drop was measured or given
                drop = int8_drop(args.int8_drop, pred.path, latency.runtime)
            except ValueError:
                if args.int8_drop is not None:
                    raise
        model = {"latency-ms": latency, "macs-m": MacsModel(space), "params-m": ParamsModel(space)}[flag]
        res = [int(x) for x in args.resolutions.split(",")] if args.resolutions else None
        wid = [float(x) for x in args.widths.split(",")] if args.widths else None
        choices = covered_choices(latency or model, space, pred.supports, res, wid)
        costs = CostArrays(model, choices)
        floor, _ = costs.cheapest()
        costs8 = CostArrays(latency8, choices) if both else None
        if both:  # the budgets span both precisions' ranges; a budget one of them cannot meet is the other's
            floor8 = costs8.cheapest()[0]
            budgets = budgets or spread_budgets(min(floor, floor8), max(costs.dearest(), costs8.dearest()))
            floor = min(floor, floor8)
        budgets = budgets or spread_budgets(floor, costs.dearest())
        low = [b for b in budgets if b < floor]
        if low:
            raise InfeasibleBudget(
                f"budget {', '.join(f'{b:g}' for b in low)} {report.UNITS[flag]} is below the smallest "
                f"subnet's {report.NAMES[flag]} {floor:.2f} {report.UNITS[flag]} "
                f"({getattr(model, 'where', flag)}, resolutions {', '.join(map(str, choices.resolutions))})"
            )
        params = EvolutionParams(args.population, args.parent_ratio, args.mutation_prob,
                                 args.mutation_ratio, args.generations)
        out_dir = ensure_writable_folder(
            Path(args.out) if args.out else Path("out/search") / (Path(args.lut).stem if args.lut else flag), "--out folder")
    except MissingKeysError as exc:
        ap.exit(2, "error: " + str(exc).replace("\n", " ") + "\n")
    except (ValueError, OSError) as exc:  # LutError is a ValueError
        ap.exit(2, f"error: {exc}\n")

    score = lambda p: pred.predict_population(p, choices)  # noqa: E731
    if drop is not None and not both:  # --precision int8: the int8 accuracy (a constant shift: same choices)
        score = lambda p: pred.predict_population(p, choices) - drop[0] / 100.0  # noqa: E731
    if args.pareto:
        from .pareto import ParetoParams, pareto_front

        pp = ParetoParams(evaluations=args.evaluations, init=min(ParetoParams.init, args.evaluations))
        front = pareto_front(costs, score, pp, np.random.default_rng([args.seed, 7]),
                             progress=None if not args.json else False)
        context = report.random_context(choices, costs, score, args.samples, np.random.default_rng([args.seed, 999]))
        latency_costs = CostArrays(latency, choices) if latency is not None else None
        summary = report.write_front(out_dir, front, flag, latency_costs, pred, choices, context, pp,
                                     args.seed, lut=args.lut)
        if args.json:
            print(json.dumps(summary))
        else:
            report.print_front(summary)
        return 0
    results = []
    for i, b in enumerate(budgets):
        rng = np.random.default_rng([args.seed, i])
        desc = f"{args.method} <= {b:g} {report.UNITS[flag]}"
        if args.method == "relaxation":
            from .relaxation import relaxation_search
            results.append(relaxation_search(b, costs, pred, rng, steps=args.steps, progress=None if not args.json else False, desc=desc))
        elif both:
            results.append(evolve_both(b, costs, costs8, score, drop[0], params, rng, args.json, desc))
        else:
            results.append(evolve(b, costs, score, params, rng, progress=None if not args.json else False, desc=desc))
    context = report.random_context(choices, costs, score, args.samples, np.random.default_rng([args.seed, 999]))
    latency_costs = CostArrays(latency, choices) if latency is not None else None
    summary = report.write_search(out_dir, results, flag, costs, latency_costs, pred, choices, context,
                                  params, args.seed, lut=args.lut, method=args.method, latency_costs_int8=costs8)
    if both or precisions == ["int8"]:
        if both:
            summary["precision"] = "fp32,int8"
        summary["int8_drop"] = {"pp": drop[0], "source": drop[1]} if drop is not None else None
        if drop is None:
            summary["notes"] = ["predicted accuracy is the fp32 predictor's: no measured int8 drop "
                                "(python -m search.int8_drop --run RUN)"]
        atomic_write_text(out_dir / "search.json", json.dumps(summary, indent=2) + "\n")
    if not args.json:
        report.print_search(summary)
    if args.export or args.verify:
        # exporters print progress on stdout; with --json stdout holds only the JSON object
        with (_stdout_to_stderr() if args.json else contextlib.nullcontext()):
            summary["deploy"] = export_and_verify(results, space, latency, args, out_dir, latency8=latency8)
        atomic_write_text(out_dir / "search.json", json.dumps(summary, indent=2) + "\n")
    if args.json:
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    run_main(main, "search.evolve", "nothing is written before every budget is searched (a search takes seconds: run it again)")
