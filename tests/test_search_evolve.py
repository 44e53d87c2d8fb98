"""Evolutionary search invariants on spaces small enough to check by enumeration.

- the vectorized cost (``CostArrays``) equals the LUT sum over ``space.blocks(subnet)``,
  with and without calibration;
- ``cheapest()`` is the exact minimum over every architecture;
- mutation and crossover stay inside the space;
- every returned subnet fits its budget (many random budgets, tight ones included), and on an
  enumerable space the search returns the true optimum;
- infeasible budgets are refused; tight ones are reported when sampling hits its cap;
- the CLI keeps its JSON contract and fails with one clear line on bad input.
"""

from __future__ import annotations

import itertools
import json
import zlib

import numpy as np
import pytest

from search.encoding import Choices, Population, canonicalize, gene_sizes, random_population
from search.evolve import (CostArrays, EvolutionParams, InfeasibleBudget, MemoScore, _crossover, _mutate,
                           covered_choices, evolve, main)
from search.latency import LatencyModel, MissingKeysError
from search.predictor import AccuracyPredictor, build_mlp
from search.encoding import Encoder
from supernet.space import TINY

CH = Choices(TINY, TINY.resolutions, TINY.width_mults)


def synthetic_table(space=TINY) -> dict[str, float]:
    """A deterministic LUT: MACs-proportional with per-key jitter (not monotone in anything)."""
    out = {}
    for b in space.all_blocks(widths=space.width_mults):
        jitter = (zlib.crc32(str(b).encode()) % 1000) / 1000
        out[str(b)] = 0.02 + b.macs() / 2e6 * (0.7 + 0.6 * jitter)
    return out


def random_predictor(space=TINY, seed=0) -> AccuracyPredictor:
    import torch

    torch.manual_seed(seed)
    enc = Encoder.for_space(space, space.resolutions, space.width_mults)
    net = build_mlp(enc.n_dim, (32, 32))
    state = {k: v.detach().numpy().copy() for k, v in net.state_dict().items()}
    return AccuracyPredictor(enc, (32, 32), state, 0.5, tuple(space.width_mults), space_name=space.name)


def all_architectures(ch: Choices) -> Population:
    """Every distinct (canonical) architecture of ``ch``."""
    sp = ch.space
    per_stage = []
    for di, d in enumerate(sp.depths):
        for combo in itertools.product(range(len(sp.kernels) * len(sp.expands)), repeat=d):
            per_stage.append((di, combo))
    rows = []
    for stages in itertools.product(per_stage, repeat=len(sp.stages)):
        k = [0] * sp.num_blocks
        e = [0] * sp.num_blocks
        d = []
        for i, (di, combo) in enumerate(stages):
            d.append(di)
            for j, ke in enumerate(combo):
                k[i * sp.max_depth + j], e[i * sp.max_depth + j] = divmod(ke, len(sp.expands))
        for r in range(len(ch.resolutions)):
            for w in range(len(ch.widths)):
                rows.append(k + e + d + [r, w])
    return Population(np.array(rows, dtype=np.int64), sp.num_blocks, len(sp.stages))


@pytest.fixture(scope="module")
def model():
    return LatencyModel(TINY, synthetic_table())


@pytest.fixture(scope="module")
def everything():
    return all_architectures(CH)


def test_vectorized_cost_equals_per_subnet_lut_sum(model):
    table = synthetic_table()
    pop = random_population(CH, 300, np.random.default_rng(0))
    subnets = pop.to_subnets(CH)
    manual = np.array([sum(table[str(b)] for b in TINY.blocks(c)) for c in subnets])
    np.testing.assert_allclose(CostArrays(model, CH)(pop), manual, rtol=1e-12)
    np.testing.assert_allclose(model.latency(subnets), manual, rtol=1e-12)
    calibrated = LatencyModel(TINY, table, calibration=(1.7, 0.3))
    np.testing.assert_allclose(CostArrays(calibrated, CH)(pop), 1.7 * manual + 0.3, rtol=1e-12)


def test_cheapest_is_the_exact_minimum(model, everything):
    costs = CostArrays(model, CH)
    floor, pop = costs.cheapest()
    assert len(everything) == 2400
    assert floor == pytest.approx(costs(everything).min(), rel=1e-12)
    assert costs(pop)[0] == pytest.approx(floor)
    # the floor profiler.validate guards its calibration with: the same minimum, from the model alone
    assert model.cheapest_block_sum() == pytest.approx(floor, rel=1e-12)


def test_the_cheapest_subnet_need_not_be_the_smallest_network(everything):
    """With a block of a larger kernel timed cheaper (a LUT row less its overhead probe can
    be), the cheapest subnet is not the space's smallest network, and the calibration guard
    must see the cheaper one."""
    table = synthetic_table()
    small = TINY.min_subnet(r=min(TINY.resolutions), w=min(TINY.width_mults))
    block = [b for b in TINY.blocks(small) if b.kind == "mbconv" and b.kernel == min(TINY.kernels)][-1]  # an elastic slot
    bigger = str(block).replace(f"kernel:{block.kernel}", f"kernel:{max(TINY.kernels)}")
    table[bigger] = table[str(block)] - 0.01
    model = LatencyModel(TINY, table)
    assert model.cheapest_block_sum() < float(model.latency([small])[0]) - 0.005
    assert model.cheapest_block_sum() == pytest.approx(CostArrays(model, CH)(everything).min(), rel=1e-12)


def test_mutation_and_crossover_stay_in_space():
    rng = np.random.default_rng(4)
    sizes = gene_sizes(CH)
    a, b = random_population(CH, 400, rng), random_population(CH, 400, rng)
    for child in (_mutate(a, 0.5, CH, rng), _mutate(a, 1.0, CH, rng), _crossover(a, b, rng)):
        assert ((child.g >= 0) & (child.g < sizes)).all()
        for cfg in child.to_subnets(CH):
            cfg.validate(TINY)
    cross = _crossover(a, b, rng)
    assert ((cross.g == a.g) | (cross.g == b.g)).all()
    assert (_mutate(a, 0.0, CH, rng).g == a.g).all()


def test_search_finds_the_true_optimum_and_fits_every_budget(model, everything):
    pred = random_predictor()
    costs = CostArrays(model, CH)
    all_cost = costs(everything)
    all_acc = pred.predict_population(everything, CH)
    score = lambda p: pred.predict_population(p, CH)  # noqa: E731
    floor, _ = costs.cheapest()
    params = EvolutionParams(population=50, generations=100)
    for i, q in enumerate((0.02, 0.1, 0.3, 0.6, 1.0)):
        budget = float(np.quantile(all_cost, q))
        res = evolve(budget, costs, score, params, np.random.default_rng(i), progress=False)
        res.subnet.validate(TINY)
        assert model.latency([res.subnet])[0] <= budget + 1e-12
        assert res.cost <= budget and all(c <= budget for c in res.population_cost)
        assert res.accuracy == pytest.approx(all_acc[all_cost <= budget].max(), abs=1e-6), f"budget quantile {q}"
        assert res.accuracy == pytest.approx(pred.predict([res.subnet], TINY)[0], abs=1e-6)


def test_random_budgets_always_fit(model):
    costs = CostArrays(model, CH)
    floor, _ = costs.cheapest()
    pred = random_predictor(seed=1)
    score = lambda p: pred.predict_population(p, CH)  # noqa: E731
    rng = np.random.default_rng(7)
    for i in range(12):
        budget = floor * (1 + rng.exponential(0.3)) if i % 3 else floor * 1.0001
        res = evolve(budget, costs, score, EvolutionParams(population=16, generations=8, max_draws=2000),
                     np.random.default_rng(i), progress=False)
        assert model.latency([res.subnet])[0] <= budget + 1e-12


def test_infeasible_budget_is_refused(model):
    costs = CostArrays(model, CH)
    floor, _ = costs.cheapest()
    with pytest.raises(InfeasibleBudget, match="below the smallest subnet's cost"):
        evolve(floor * 0.99, costs, lambda p: np.zeros(len(p)), EvolutionParams(), np.random.default_rng(0))


def test_tight_budget_hits_the_sampling_cap_and_says_so(model):
    costs = CostArrays(model, CH)
    floor, _ = costs.cheapest()
    res = evolve(floor * 1.001, costs, lambda p: -costs(p), EvolutionParams(population=20, generations=3, max_draws=300),
                 np.random.default_rng(0), progress=False)
    assert any("shrunk until they fit" in n for n in res.notes)
    assert res.cost <= floor * 1.001


def test_memo_score_matches_direct_scoring():
    pred = random_predictor()
    pop = random_population(CH, 300, np.random.default_rng(5))
    canonicalize(pop, CH)
    pop = Population.concat([pop, pop.take(np.arange(100))])
    memo = MemoScore(lambda p: pred.predict_population(p, CH))
    np.testing.assert_allclose(memo(pop), pred.predict_population(pop, CH), rtol=1e-6)
    np.testing.assert_allclose(memo(pop), pred.predict_population(pop, CH), rtol=1e-6)
    assert memo.evaluated == len(np.unique(pop.hashes()))


def test_covered_choices_skips_what_the_lut_lacks():
    table = {k: v for k, v in synthetic_table().items() if "input:48x48" not in k and "input:24x24" not in k}
    m = LatencyModel(TINY, table)
    ch = covered_choices(m, TINY, random_predictor().supports)
    assert 48 not in ch.resolutions and set(ch.resolutions) == {32, 40}
    with pytest.raises(MissingKeysError):
        covered_choices(m, TINY, None, resolutions=[48])


# --------------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from profiler.lut import write_rows_atomic

    d = tmp_path_factory.mktemp("evolve")
    lut = d / "toy.csv"
    write_rows_atomic(lut, [{"key": k, "runtime": "onnxruntime", "status": "ok", "median_ms": v, "device": "local"}
                            for k, v in synthetic_table().items()])
    pred = random_predictor().save(d / "predictor.pt")
    return d, lut, pred


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    return code, capsys.readouterr()


def test_cli_json_contract_several_budgets(files, capsys, model):
    d, lut, pred = files
    floor, _ = CostArrays(model, CH).cheapest()
    budgets = [round(floor * f, 3) for f in (1.2, 1.6, 3.0)]
    code, out = run_cli(capsys, "--lut", lut, "--predictor", pred, "--latency-ms", ",".join(map(str, budgets)),
                        "--seed", 3, "--generations", 20, "--population", 20, "--samples", 50,
                        "--out", d / "out", "--json")
    assert code == 0
    obj = json.loads(out.out)
    assert [r["budget"] for r in obj["results"]] == sorted(budgets)
    for r in obj["results"]:
        from supernet.space import SubnetConfig
        cfg = SubnetConfig.from_dict(r["subnet"])
        cfg.validate(TINY)
        assert set(r["subnet"]) == {"ks", "e", "d", "r", "w"}
        assert r["predicted_latency_ms"] <= r["budget"] + 1e-9
        assert r["predicted_latency_ms"] == pytest.approx(model.latency([cfg])[0], abs=1e-4)
        assert 0 < r["predicted_accuracy"] < 1.5
    for name in ("search.json", "pareto.csv", "pareto.png"):
        assert (d / "out" / name).stat().st_size > 0
    assert len(list((d / "out").glob("budget_*ms.json"))) == 3


def test_cli_terminal_table(files, capsys, model):
    d, lut, pred = files
    floor, _ = CostArrays(model, CH).cheapest()
    code, out = run_cli(capsys, "--lut", lut, "--predictor", pred, "--latency-ms", f"{floor * 2:.3f}",
                        "--generations", 5, "--population", 10, "--samples", 20, "--out", d / "out2")
    assert code == 0 and "pred.acc%" in out.out and "wrote" in out.out


@pytest.mark.parametrize("case, message", [
    ("infeasible", "below the smallest subnet's latency"),
    ("missing_lut", "no such LUT file"),
    ("missing_lut_no_predictor", "no such LUT file"),  # not "no predictor": the default predictor follows the LUT
    ("corrupt_predictor", "not a readable predictor file"),
    ("unknown_space", "unknown search space"),
    ("no_budget", "give exactly one of"),
    ("nothing", "give --lut LUT"),
])
def test_cli_bad_input_is_one_clear_line(files, capsys, tmp_path, case, message):
    d, lut, pred = files
    argv = ["--lut", lut, "--predictor", pred, "--latency-ms", "1000", "--generations", 1, "--out", tmp_path]
    if case == "infeasible":
        argv[5] = "0.001,1000"
    elif case == "missing_lut":
        argv[1] = tmp_path / "nope.csv"
    elif case == "missing_lut_no_predictor":
        argv = [argv[0], tmp_path / "nope.csv"] + argv[4:]
    elif case == "corrupt_predictor":
        bad = tmp_path / "bad.pt"
        bad.write_bytes(b"\x00garbage" * 10)
        argv[3] = bad
    elif case == "unknown_space":
        argv += ["--space", "nope"]
    elif case == "no_budget":  # two kinds of budget (none at all, with a LUT, spreads latency budgets)
        argv += ["--macs-m", "5"]
    elif case == "nothing":
        argv = argv[2:4]
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in argv])
    assert exc.value.code != 0
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert message in err, err


def test_auto_calibration_only_for_its_runtime(files, capsys, tmp_path, model):
    import shutil

    d, lut, pred = files
    lut2 = tmp_path / "toy.csv"
    shutil.copy(lut, lut2)
    floor, _ = CostArrays(model, CH).cheapest()
    budget = round(4 * floor + 0.5, 3)     # fits with and without the calibration below
    args = ["--lut", lut2, "--predictor", pred, "--latency-ms", f"{budget}", "--generations", 3,
            "--population", 8, "--samples", 0, "--out", tmp_path / "o", "--json"]
    (tmp_path / "toy.calibration.json").write_text(json.dumps({"a": 2.0, "b": 0.5, "runtime": "tflite"}))
    code, out = run_cli(capsys, *args)
    assert code == 0 and json.loads(out.out)["results"][0]["calibration"] is None
    assert "is for runtime 'tflite'" in out.err
    (tmp_path / "toy.calibration.json").write_text(json.dumps({"a": 2.0, "b": 0.5, "runtime": "onnxruntime"}))
    code, out = run_cli(capsys, *args)
    r = json.loads(out.out)["results"][0]
    assert r["calibration"] == {"a": 2.0, "b": 0.5}
    assert r["predicted_latency_ms"] == pytest.approx(2.0 * r["lut_sum_ms"] + 0.5, abs=1e-3)
    assert r["predicted_latency_ms"] <= budget + 1e-9


def test_verify_measures_the_chosen_subnet_on_the_luts_device(files, capsys, tmp_path, model, monkeypatch):
    """--verify exports the chosen subnet and measures it end to end on the LUT's device
    (``local`` from the repository's devices.yaml), printing predicted against measured."""
    from pathlib import Path

    d, lut, pred = files
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    monkeypatch.setenv("HWNAS_CACHE", str(tmp_path / "cache"))
    floor, _ = CostArrays(model, CH).cheapest()
    code, out = run_cli(capsys, "--lut", lut, "--predictor", pred, "--latency-ms", f"{floor * 1.5:.3f}",
                        "--resolutions", "32", "--widths", "1.0", "--generations", 3, "--population", 8,
                        "--samples", 0, "--out", tmp_path / "o", "--verify", "--json")
    assert code == 0
    rec = json.loads(out.out)["deploy"][0]
    assert rec["device"] == "local" and rec["runtime"] == "onnxruntime"
    assert rec["measured_latency_ms"] and rec["measured_latency_ms"] > 0, rec


def _two_precision_lut(path, int8_factor):
    """The synthetic table in fp32 and, scaled by ``int8_factor``, in int8."""
    from profiler.lut import write_rows_atomic

    rows = []
    for k, v in synthetic_table().items():
        rows.append({"key": k, "runtime": "onnxruntime", "status": "ok", "median_ms": v, "device": "local",
                     "precision": "fp32"})
        rows.append({"key": k, "runtime": "onnxruntime", "status": "ok", "median_ms": v * int8_factor,
                     "device": "local", "precision": "int8"})
    write_rows_atomic(path, rows)
    return path


@pytest.mark.parametrize("int8_factor, drop, expected", [(0.5, 0.0, "int8"), (2.0, 0.0, "fp32"),
                                                           (0.5, 100.0, "fp32")])
def test_search_across_precisions_picks_the_precision_per_budget(files, capsys, tmp_path, model,
                                                                  int8_factor, drop, expected):
    """Issue 16: --precision fp32,int8 searches each precision with its own LUT rows; int8 wins
    where it is cheaper at no accuracy cost, fp32 where int8 is dearer or its measured drop is
    large; each result is priced in the precision it is to be deployed in."""
    d, _, pred = files
    lut = _two_precision_lut(tmp_path / "two.csv", int8_factor)
    floor, _ = CostArrays(model, CH).cheapest()
    budget = round(floor * 2.5, 4)  # both precisions have subnets under it
    code, out = run_cli(capsys, "--lut", lut, "--predictor", pred, "--latency-ms", budget, "--precision", "fp32,int8",
                        "--int8-drop", drop, "--generations", 40, "--population", 20, "--samples", 10,
                        "--out", tmp_path / "o", "--json")
    assert code == 0, out.err
    (row,) = json.loads(out.out)["results"]
    assert row["precision"] == expected
    from supernet.space import SubnetConfig

    cfg = SubnetConfig.from_dict(row["subnet"])
    factor = int8_factor if expected == "int8" else 1.0
    assert row["predicted_latency_ms"] == pytest.approx(factor * float(model.latency([cfg])[0]), abs=1e-4)
    assert row["predicted_latency_ms"] <= budget + 1e-9
    alt = row["alternative"]
    assert alt["precision"] != expected
    assert row["predicted_accuracy"] >= alt["predicted_accuracy"] - drop / 100 - 1e-9  # the better one won
    # an int8 budget below int8's cheapest subnet: fp32 alone, said in a note
    if int8_factor == 2.0:
        code, out = run_cli(capsys, "--lut", lut, "--predictor", pred, "--latency-ms", round(floor * 1.2, 4),
                            "--precision", "fp32,int8", "--int8-drop", 0, "--generations", 3, "--population", 10,
                            "--samples", 10, "--out", tmp_path / "o2", "--json")
        (row,) = json.loads(out.out)["results"]
        assert row["precision"] == "fp32" and row["alternative"] is None
        assert any("int8: no subnet under" in n for n in row["notes"])


def test_search_across_precisions_without_a_drop_model_is_one_clear_line(files, capsys, tmp_path):
    d, _, pred = files
    lut = _two_precision_lut(tmp_path / "two.csv", 0.5)
    with pytest.raises(SystemExit) as exc:
        run_cli(capsys, "--lut", lut, "--predictor", pred, "--latency-ms", 1.0, "--precision", "fp32,int8",
                "--out", tmp_path / "o")
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no measured int8 accuracy drop" in err[0] and "search.int8_drop" in err[0]


def test_int8_only_search_reports_int8_accuracy_where_the_drop_is_known(files, capsys, tmp_path, model):
    """--precision int8 prices from int8 rows; with a drop it reports the int8 accuracy (the
    same choice, 1 point lower for a drop of 1), without one it says the accuracy is fp32's."""
    d, _, pred = files
    lut = _two_precision_lut(tmp_path / "two.csv", 0.5)
    floor, _ = CostArrays(model, CH).cheapest()
    base = ["--lut", lut, "--predictor", pred, "--latency-ms", round(floor, 4), "--precision", "int8",
            "--generations", 5, "--population", 10, "--samples", 0, "--seed", 1, "--json"]
    code, out = run_cli(capsys, *base, "--out", tmp_path / "a")
    plain = json.loads(out.out)
    assert plain["int8_drop"] is None and "no measured int8 drop" in plain["notes"][0]
    code, out = run_cli(capsys, *base, "--int8-drop", 1.0, "--out", tmp_path / "b")
    dropped = json.loads(out.out)
    (a,), (b,) = plain["results"], dropped["results"]
    assert a["subnet"] == b["subnet"] and b["predicted_accuracy"] == pytest.approx(a["predicted_accuracy"] - 0.01, abs=1e-5)
    assert b["predicted_latency_ms"] <= round(floor, 4) + 1e-9  # int8 rows: half the fp32 floor fits


def test_cli_macs_and_params_budgets_run_to_results(files, capsys):
    """--macs-m and --params-m (no LUT): every result fits its budget in the unit asked for,
    its cost is that of the subnet it names, and a budget below the cheapest is refused."""
    from search.latency import MacsModel, ParamsModel
    from supernet.space import SubnetConfig

    d, _lut, pred = files
    for flag, unit, cm in (("--macs-m", "M MACs", MacsModel(TINY)), ("--params-m", "M params", ParamsModel(TINY))):
        floor, _ = CostArrays(cm, CH).cheapest()
        budgets = [round(floor * 1.3, 4), round(floor * 3, 4)]
        code, out = run_cli(capsys, "--predictor", pred, flag, ",".join(map(str, budgets)), "--generations", 10,
                            "--population", 16, "--samples", 40, "--out", d / f"cost{flag}", "--json")
        assert code == 0, out.err
        results = json.loads(out.out)["results"]
        assert [r["budget"] for r in results] == budgets
        for r in results:
            cost = float(cm.cost([SubnetConfig.from_dict(r["subnet"])])[0])
            assert r["unit"] == unit and r["cost"] == pytest.approx(cost, rel=1e-3, abs=1e-3) and cost <= r["budget"]
        with pytest.raises(SystemExit) as exc:
            run_cli(capsys, "--predictor", pred, flag, round(floor * 0.5, 4), "--out", d / "below")
        assert exc.value.code == 2 and "below the smallest subnet's" in capsys.readouterr().err


def test_a_predictor_of_another_space_is_named_as_such(tmp_path):
    """A predictor trained on one space against another's LUT says which two spaces, not
    only how their encodings differ."""
    from search.predictor import load_predictor
    from supernet.space import get_space

    fm = get_space("fmnist")
    path = random_predictor(space=fm).save(tmp_path / "predictor.pt")
    pred = load_predictor(path)
    pred.check_space(fm)  # its own space passes
    with pytest.raises(ValueError) as exc:
        pred.check_space(get_space("ofa_mbv3"))
    assert str(exc.value) == (f"the predictor ({path}) is of space 'fmnist', not 'ofa_mbv3' "
                              "(the space of the LUT or of --space)")
