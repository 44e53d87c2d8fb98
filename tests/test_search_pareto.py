"""The whole front in one run (``search.pareto``, ``search.evolve --pareto``, issue 15).

- ``nondominated`` and ``hypervolume`` against values worked out by hand;
- on an enumerable space the front is made of true Pareto points only, stays within its
  budget of predictions, includes the exact cheapest subnet, and dominates more than the
  same number of random subnets;
- on OFA's Note10 table with OFA's predictor (the case the bench measures), the front of 300
  predictions dominates far more than 300 random subnets, and its hypervolume never falls;
- the CLI writes front.csv / front.json / front.png and refuses what it cannot do in one line.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from search.encoding import Choices, random_population
from search.evolve import CostArrays, covered_choices, main
from search.latency import LatencyModel
from search.pareto import ParetoParams, hypervolume, nondominated, pareto_front
from supernet.space import TINY

from test_search_evolve import all_architectures, random_predictor, synthetic_table

CH = Choices(TINY, TINY.resolutions, TINY.width_mults)


def test_nondominated_and_hypervolume_by_hand():
    cost = np.array([3.0, 1.0, 2.0, 2.0, 4.0, 5.0])
    acc = np.array([0.5, 0.2, 0.4, 0.3, 0.5, 0.9])
    # (1, .2) (2, .4) (3, .5) (5, .9); (2, .3) and (4, .5) are dominated
    assert nondominated(cost, acc).tolist() == [1, 2, 0, 5]
    # reference (6, 0.1): strips [1,2)x.1 + [2,3)x.3 + [3,5)x.4 + [5,6)x.8
    assert hypervolume(cost, acc, 6.0, 0.1) == pytest.approx(0.1 + 0.3 + 0.8 + 0.8)
    # points outside the reference box count for nothing
    assert hypervolume(cost, acc, 6.0, 0.95) == 0.0
    assert hypervolume(np.array([7.0]), np.array([1.0]), 6.0, 0.0) == 0.0


def test_front_on_an_enumerable_space_is_made_of_true_pareto_points():
    model = LatencyModel(TINY, synthetic_table())
    costs = CostArrays(model, CH)
    pred = random_predictor()
    score = lambda p: pred.predict_population(p, CH)  # noqa: E731
    every = all_architectures(CH)
    all_cost, all_acc = costs(every), score(every)
    true_front = nondominated(all_cost, all_acc)
    res = pareto_front(costs, score, ParetoParams(evaluations=200, init=40, batch=20), np.random.default_rng(0),
                       progress=False)
    assert res.evaluations <= 200
    assert np.all(np.diff(res.cost) > 0) and np.all(np.diff(res.accuracy) > 0)
    floor, _ = costs.cheapest()
    assert res.cost[0] == pytest.approx(floor)
    # every returned point is priced and predicted as the models say
    from search.encoding import Population

    pop = Population.from_subnets(res.subnets, CH)
    np.testing.assert_allclose(costs(pop), res.cost, rtol=1e-12)
    np.testing.assert_allclose(score(pop), res.accuracy, rtol=1e-6)
    # and no architecture of the whole space beats a front point in both objectives by much
    best_at = np.array([all_acc[all_cost <= c + 1e-12].max() for c in res.cost])
    assert np.mean(res.accuracy >= best_at - 1e-9) >= 0.5
    hi = costs.dearest()
    ref = float(all_acc.min())
    hv = hypervolume(res.cost, res.accuracy, hi, ref)
    hv_true = hypervolume(all_cost[true_front], all_acc[true_front], hi, ref)
    rnd = random_population(CH, 200, np.random.default_rng(1))
    hv_rand = hypervolume(costs(rnd), score(rnd), hi, ref)
    assert hv_rand < hv <= hv_true + 1e-12
    assert hv >= 0.93 * hv_true  # 0.944-0.9999 over seeds 0-9; 200 random subnets: 0.82-0.91


def test_front_on_note10_beats_random_sampling_with_the_same_predictions(repo):
    from search.predictor import OFA_PREDICTOR, load_predictor
    from supernet.space import OFA_MBV3

    pred = load_predictor(f"ofa:{OFA_PREDICTOR}", OFA_MBV3)
    lat = LatencyModel.from_lut(repo / "luts" / "note10.csv", OFA_MBV3, calibration=None)
    choices = covered_choices(lat, OFA_MBV3, pred.supports)
    costs = CostArrays(lat, choices)
    score = lambda p: pred.predict_population(p, choices)  # noqa: E731
    lo, cheapest = costs.cheapest()
    ref = (costs.dearest(), float(score(cheapest)[0]))
    res = pareto_front(costs, score, ParetoParams(evaluations=300), np.random.default_rng(0), ref_accuracy=ref[1],
                       progress=False)
    assert res.evaluations == 300 and res.history[-1][0] == 300
    hv = hypervolume(res.cost, res.accuracy, *ref)
    assert [h for _, h in res.history] == sorted(h for _, h in res.history)  # the front never loses ground
    rnd = random_population(choices, 300, np.random.default_rng(0))
    assert hypervolume(costs(rnd), score(rnd), *ref) < 0.9 * hv
    assert res.cost.max() > lo + 0.4 * (ref[0] - lo)  # the front reaches far into the range


def test_cli_pareto_writes_the_front_and_refuses_a_budget(repo, tmp_path, capsys):
    out = tmp_path / "front"
    code = main(["--lut", str(repo / "luts" / "note10.csv"), "--pareto", "--evaluations", "200",
                 "--samples", "100", "--out", str(out), "--json"])
    assert code == 0
    obj = json.loads(capsys.readouterr().out)
    assert obj["method"] == "pareto" and obj["evaluations"] <= 200 and obj["unit"] == "ms"
    rows = obj["front"]
    assert len(rows) >= 10
    costs_ = [r["cost"] for r in rows]
    assert costs_ == sorted(costs_) and [r["predicted_accuracy"] for r in rows] == sorted(r["predicted_accuracy"] for r in rows)
    with open(out / "front.csv") as fh:
        assert len(list(csv.DictReader(fh))) == len(rows)
    assert (out / "front.png").stat().st_size > 1000 and json.loads((out / "front.json").read_text())["front"] == rows
    # the terminal table
    assert main(["--lut", str(repo / "luts" / "note10.csv"), "--pareto", "--evaluations", "150", "--samples", "0",
                 "--out", str(tmp_path / "t")]) == 0
    text = capsys.readouterr().out
    assert "Pareto front:" in text and "hypervolume" in text and "front.csv" in text
    for extra, message in ((["--latency-ms", "20"], "give no budget"), (["--method", "relaxation"], "--pareto takes"),
                           (["--evaluations", "1"], "--evaluations must be")):
        with pytest.raises(SystemExit) as exc:
            main(["--lut", str(repo / "luts" / "note10.csv"), "--pareto", *extra, "--out", str(tmp_path / "x")])
        assert exc.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
