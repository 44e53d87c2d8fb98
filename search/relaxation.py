"""Relaxation search: a differentiable relaxation over the accuracy predictor with the
expected LUT latency as a penalty (``search.evolve --method relaxation``).

This is not ProxylessNAS: no network is trained and no path is sampled; it optimises
categorical distributions against an already-trained predictor (and MLP(E[x]) is not
E[MLP(x)]).  ProxylessNAS itself, binarized paths trained on the target task with a latency
loss, is ``search.proxyless``.

For each (resolution, width) the search holds categorical distributions (logits) over every
slot's kernel and expand ratio and every stage's depth.  A slot is active with probability
``P(depth > position)``; the predictor sees the *expected* one-hot features (active
probability times the kernel / expand probabilities), and the expected block sum is exact,
because it is a sum over slots of independent choices::

    E[cost] = a * (base + sum_slot P(active) * sum_{k,e} p_k p_e slot[k, e]) + b

The LUT's weight-streaming term (``profiler.costmodel``, when the LUT has stream probes)
depends on the whole network's weights, not on one slot, so the penalty leaves it out: the
relaxation may aim slightly over budget, and the real cost (term included) is what decides
which proposals fit, below.

The loss is ``-predicted accuracy + lam * max(0, E[cost] / budget - 1)``, minimised with Adam
while ``lam`` grows by dual ascent whenever the expected cost is over budget (as in a
Lagrangian relaxation) and the temperature anneals so the distributions sharpen.

Honesty: the relaxation only proposes.  The returned subnet is the best, by the real
predictor, of the distributions' argmax and ``samples`` subnets drawn from them that fit the
budget under the real cost tables (the same arrays evolution uses; half the samples at the
final temperature, half at twice it); when none of them fits,
the argmax is shrunk until it fits (``search.evolve._shrink_until_fits``).  So every result
satisfies the budget, and its accuracy is a real prediction, never the relaxed one.

CLI: ``python -m search.relaxation`` takes the same options as ``python -m search.evolve`` and
writes the same files and JSON.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Sequence

import numpy as np

from .encoding import Choices, Population
from .evolve import CostArrays, InfeasibleBudget, MemoScore, SearchResult, _canonical, _shrink_until_fits


def _probabilities(logits, tau, depth_mask=None):
    """Softmax of each logit table at temperature ``tau``; ``depth_mask`` (ns, n_depths) adds
    -inf where a stage cannot take a depth (``SearchSpace.stage_depths``)."""
    import torch

    out = [torch.softmax(x / tau, dim=-1) for x in logits]
    if depth_mask is not None:
        out[2] = torch.softmax(logits[2] / tau + depth_mask, dim=-1)
    return out


def expected_features_and_cost(pk, pe, pd, ri: int, wi: int, choices: Choices, encoder, costs: CostArrays):
    """Expected encoder features (1, n_dim) and expected calibrated cost (scalar tensor) of
    the distributions ``pk`` (nb, nk), ``pe`` (nb, ne), ``pd`` (ns, n_depths) at resolution
    index ``ri`` and width index ``wi``."""
    import torch

    sp = choices.space
    depths = torch.tensor(sp.depths)
    pos = torch.arange(sp.max_depth)
    # P(slot j of stage i active) = P(depth_i > j)
    p_act = (pd[:, None, :] * (depths[None, None, :] > pos[None, :, None])).sum(-1).reshape(-1)  # (nb,)
    slot = torch.from_numpy(costs.slot[ri, wi]).to(pk.dtype)                                     # (nb, nk, ne)
    per_slot = torch.einsum("sk,se,ske->s", pk, pe, slot)
    cost = costs.a * (float(costs.base[ri, wi]) + (p_act * per_slot).sum()) + costs.b
    r = choices.resolutions[ri]
    res_hot = torch.zeros(len(encoder.res_bins), dtype=pk.dtype)
    res_hot[int(encoder.res_index(np.array([r]))[0])] = 1.0
    arch = [(p_act[:, None] * pk).reshape(-1), (p_act[:, None] * pe).reshape(-1)]
    parts = [*arch, res_hot]
    if encoder.widths:
        w_hot = torch.zeros(len(encoder.widths), dtype=pk.dtype)
        w_hot[[i for i, w in enumerate(encoder.widths) if abs(w - choices.widths[wi]) < 1e-9][0]] = 1.0
        parts.append(w_hot)
    if encoder.res_interactions:
        parts += [a * float(encoder.res_scale(r)) for a in arch]
    return torch.cat(parts)[None, :], cost


def relaxation_search(
    budget: float,
    costs: CostArrays,
    pred,
    rng: np.random.Generator,
    steps: int = 300,
    lr: float = 0.1,
    samples: int = 512,
    tau: tuple[float, float] = (1.0, 0.2),
    progress: bool | None = None,
    desc: str = "",
) -> SearchResult:
    """Relaxed search over each (resolution, width), then the best real subnet proposed.

    Args:
        budget: cost budget (calibrated unit of ``costs``).
        costs: stacked cost tables (as for evolution).
        pred: an ``AccuracyPredictor`` (its torch module is differentiated).
        rng: the only randomness (initial logits, samples).
        steps, lr: Adam steps and learning rate per (resolution, width).
        samples: subnets drawn from each final distribution.
        tau: temperature at the first and the last step (geometric schedule).
    Returns:
        A ``SearchResult`` (``population`` holds the best proposals).  Raises InfeasibleBudget.
    """
    import torch
    from tqdm import tqdm

    from .predictor import one_torch_thread

    if steps < 1:
        raise ValueError(f"relaxation needs at least 1 step, got {steps}")
    t0 = time.perf_counter()
    choices = costs.choices
    sp = choices.space
    floor, _ = costs.cheapest()
    if budget < floor:
        raise InfeasibleBudget(f"budget {budget:g} is below the smallest subnet's cost {floor:.3f}; nothing fits")
    net = pred.module()
    for prm in net.parameters():
        prm.requires_grad_(False)
    gen = torch.Generator().manual_seed(int(rng.integers(2**31)))
    memo = MemoScore(lambda p: pred.predict_population(p, choices))
    proposals: list[Population] = []
    pairs = [(ri, wi) for ri in range(len(choices.resolutions)) for wi in range(len(choices.widths))]
    bar = tqdm(total=len(pairs) * steps, desc=desc or f"relaxation <= {budget:g}", leave=False,
               disable=(None if progress is None else not progress))
    history: list[float] = []
    depth_mask = torch.tensor([[0.0 if d in sp.stage_depths(i) else -math.inf for d in sp.depths]
                               for i in range(len(sp.stages))], dtype=torch.float64)
    with one_torch_thread():
        for ri, wi in pairs:
            logits = [(0.01 * torch.randn(shape, generator=gen, dtype=torch.float64)).requires_grad_(True)
                      for shape in ((sp.num_blocks, len(sp.kernels)), (sp.num_blocks, len(sp.expands)),
                                    (len(sp.stages), len(sp.depths)))]
            opt = torch.optim.Adam(logits, lr=lr)
            lam = 1.0
            for step in range(steps):
                t = tau[0] * (tau[1] / tau[0]) ** (step / max(1, steps - 1))
                pk, pe, pd = _probabilities(logits, t, depth_mask)
                x, cost = expected_features_and_cost(pk, pe, pd, ri, wi, choices, pred.encoder, costs)
                acc = net(x.float())[0, 0].double() + pred.offset
                over = torch.relu(cost / budget - 1.0)
                loss = -acc + lam * over
                opt.zero_grad()
                loss.backward()
                opt.step()
                lam = max(0.0, lam + 0.5 * float(cost.detach() / budget - 1.0))
                bar.update(1)
            with torch.no_grad():  # sample at the final temperature and at a warmer one
                for t in (tau[1], 2 * tau[1]):
                    pk, pe, pd = (p.numpy() for p in _probabilities(logits, t, depth_mask))
                    proposals.append(_proposals(pk, pe, pd, ri, wi, samples // 2, choices, rng))
            history.append(float(acc.detach()))
    bar.close()
    pop = _canonical(Population.concat(proposals), choices)
    fits = costs(pop) <= budget
    notes = []
    if not fits.any():
        shrunk, _ = _shrink_until_fits(pop.take(np.arange(0, len(pop), samples // 2 + 1)), costs, budget, rng)
        pop, fits = _canonical(shrunk, choices), np.ones(len(shrunk), bool)
        notes.append("no proposal fitted the budget; the argmax subnets were shrunk until they fit")
    pop = pop.take(fits)
    acc = memo(pop)
    order = np.argsort(-acc, kind="stable")
    _, first = np.unique(pop.hashes()[order], return_index=True)
    top = order[np.sort(first)][:25]
    best = pop.take(top[:1])
    cost = float(costs(best)[0])
    assert cost <= budget
    return SearchResult(
        budget=float(budget), subnet=best.to_subnets(choices)[0], accuracy=float(acc[top[0]]), cost=cost,
        raw_cost=float(costs.raw(best)[0]), history=history, population=pop.take(top).to_subnets(choices),
        population_acc=acc[top], population_cost=costs(pop.take(top)), evaluations=memo.evaluated,
        ranked=len(pop), seconds=time.perf_counter() - t0, notes=notes,
    )


def _proposals(pk: np.ndarray, pe: np.ndarray, pd: np.ndarray, ri: int, wi: int, n: int,
               choices: Choices, rng: np.random.Generator) -> Population:
    """The argmax subnet and ``n`` subnets sampled from the distributions, at (ri, wi)."""
    def draw(p: np.ndarray) -> np.ndarray:  # (rows, choices) -> (n, rows) samples
        c = p.cumsum(axis=1)
        u = rng.random((n, p.shape[0], 1))
        return np.minimum((u > c[None, :, :]).sum(axis=2), p.shape[1] - 1)

    k = np.concatenate([pk.argmax(1)[None, :], draw(pk)])
    e = np.concatenate([pe.argmax(1)[None, :], draw(pe)])
    d = np.concatenate([pd.argmax(1)[None, :], draw(pd)])
    m = n + 1
    return Population.of(k, e, d, np.full(m, ri), np.full(m, wi))


def main(argv: Sequence[str] | None = None) -> int:
    from .evolve import main as evolve_main

    argv = list(sys.argv[1:] if argv is None else argv)
    return evolve_main(argv + ["--method", "relaxation"])


if __name__ == "__main__":
    sys.exit(main())
