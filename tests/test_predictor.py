"""Our own accuracy predictor: training on a split, held-out metrics, save/load, bad files."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from search.predictor import (fit_mlp, fit_mlp_many, kendall_tau, load_predictor, main, read_accuracy_csv, split_indices,
                              train_predictor)
from supernet.space import TINY


def synthetic_rows(n=400, seed=0):
    """Subnets of TINY with an accuracy that depends smoothly on the architecture."""
    rng = random.Random(seed)
    subnets = [TINY.sample(rng, widths=TINY.width_mults) for _ in range(n)]
    accs = []
    for c in subnets:
        act = [(i, j) for i, d in enumerate(c.d) for j in range(d)]
        s = sum(0.01 * c.ks[i * 2 + j] + 0.02 * c.e[i * 2 + j] for i, j in act)
        accs.append(0.5 + s + 0.001 * (c.r - 32) + 0.03 * (c.w - 1.0) + rng.gauss(0, 0.002))
    return subnets, np.array(accs)


def test_kendall_tau_known_values():
    assert kendall_tau([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # 5 concordant, 1 discordant pair -> (5 - 1) / 6
    assert kendall_tau([1, 2, 3, 4], [1, 2, 4, 3]) == pytest.approx(4 / 6)
    # tau-b with ties: scipy.stats.kendalltau([1,1,2,3],[1,2,2,3]) = 0.8
    assert kendall_tau([1, 1, 2, 3], [1, 2, 2, 3]) == pytest.approx(0.8)


def test_split_is_seeded_disjoint_and_complete():
    a = split_indices(50, 0.2, np.random.default_rng(0))
    b = split_indices(50, 0.2, np.random.default_rng(0))
    assert all((x == y).all() for x, y in zip(a, b))
    assert len(a[1]) == 10 and not set(a[0]) & set(a[1]) and set(a[0]) | set(a[1]) == set(range(50))


def test_mlps_fitted_side_by_side_equal_each_fitted_alone():
    """``fit_mlp_many`` trains its jobs in one batched model: each job must come out as
    ``fit_mlp`` gives it alone (its own loss, batch order and Adam state), also where jobs
    take different numbers of batches per epoch (30 and 31 rows: one batch of 32; 70: three)."""
    rng = np.random.default_rng(0)
    jobs = [(rng.random((n, 6)), rng.normal(0.0, 0.1, n) + 0.3 * (k - 1)) for k, n in enumerate((30, 31, 70))]
    kw = dict(hidden=(16, 16), epochs=25, lr=1e-2, weight_decay=1e-4, batch_size=32, seed=3)
    together = fit_mlp_many(jobs, **kw)
    alone = [fit_mlp(x, y, **kw) for x, y in jobs]
    assert fit_mlp_many([], **kw) == []
    for a, t in zip(alone, together):
        assert a.keys() == t.keys() == {"0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias"}
        for key in a:
            np.testing.assert_allclose(t[key], a[key], rtol=0, atol=1e-5, err_msg=key)
    # and the jobs did learn their own targets (offsets -0.3, 0, +0.3): no shared loss
    outs = [float(t["4.bias"][0]) for t in together]
    assert outs[0] < outs[1] < outs[2], outs


def test_train_reports_held_out_metrics_and_round_trips(tmp_path):
    subnets, accs = synthetic_rows()
    pred = train_predictor(subnets, accs, TINY, np.random.default_rng(0), hidden=(64, 64), epochs=60,
                           progress=False, model="mlp", evaluation="split")
    m = pred.metrics
    assert m["n_train"] == 320 and m["n_test"] == 80 and m["evaluation"] == "split"
    assert m["rmse"] < 0.5 * m["baseline_rmse"], m     # much better than predicting the mean
    assert m["kendall_tau"] > 0.7, m
    path = pred.save(tmp_path / "predictor.pt")
    again = load_predictor(tmp_path, TINY)              # a run folder works too
    np.testing.assert_allclose(again.predict(subnets, TINY), pred.predict(subnets, TINY), rtol=1e-6)
    assert again.metrics == m
    assert json.loads(path.with_suffix(".json").read_text())["metrics"]["rmse"] == m["rmse"]


def test_predictor_cli_trains_from_csv(tmp_path, capsys):
    import csv

    subnets, accs = synthetic_rows(120)
    data = tmp_path / "accuracy.csv"
    with data.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["subnet", "acc"])
        for c, a in zip(subnets, accs):
            w.writerow([c.to_json(), a])
    assert main(["--data", str(tmp_path), "--space", "tiny", "--epochs", "20", "--hidden", "32", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {"rmse", "kendall_tau", "predictor"} <= set(out)
    assert (tmp_path / "predictor.pt").is_file() and (tmp_path / "predictor.json").is_file()


def test_bad_files_fail_with_one_line(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a torch file")
    for spec, msg in ((bad, "not a readable predictor file"), (f"ofa:{bad}", "not a readable predictor file"),
                      (tmp_path / "missing.pt", "no such predictor file"),
                      (tmp_path, "run folder has no predictor.pt")):
        with pytest.raises(ValueError, match=msg) as exc:
            load_predictor(spec)
        assert "\n" not in str(exc.value)
    csv_bad = tmp_path / "acc.csv"
    csv_bad.write_text('subnet,acc\n{"ks":[3]},0.5\n')
    with pytest.raises(ValueError, match=r"acc.csv:2: subnet JSON lacks"):
        read_accuracy_csv(csv_bad, TINY)


def test_torch_file_of_the_wrong_kind_is_refused(tmp_path):
    import torch

    p = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, p)
    with pytest.raises(ValueError, match="not an hwnas predictor file"):
        load_predictor(p)
    with pytest.raises(ValueError, match="not OFA's predictor"):
        load_predictor(f"ofa:{p}")


def test_ridge_is_chosen_by_cross_validation_on_few_rows_and_round_trips(tmp_path):
    """With the ~100 rows a CPU collects, the 400-wide MLP overfits: ``auto`` compares it with
    ridge regression by cross-validation on the train split (never the held-out rows) and
    keeps the better; a ridge predictor is a one-layer MLP in the same file format."""
    subnets, accs = synthetic_rows(100, seed=3)
    auto = train_predictor(subnets, accs, TINY, np.random.default_rng(0), epochs=100, progress=False,
                           evaluation="split")
    m = auto.metrics
    lams = (0.1, 0.3, 1, 3, 10, 30, 100, 300)
    assert len({s.r for s in subnets}) > 1  # so the resolution-interaction candidates take part
    assert set(m["cv_rmse"]) == {"mlp"} | {f"ridge(lambda={lam:g})" for lam in lams} | \
        {f"ridge(lambda={lam:g}, x resolution)" for lam in lams}
    assert m["model"] == min(m["cv_rmse"], key=m["cv_rmse"].get)
    rs = m["resplits"]  # the chosen model refitted on 10 other splits: the spread of its held-out figures
    assert rs["n"] == 10 and rs["kendall_tau_min"] <= rs["kendall_tau_mean"] <= rs["kendall_tau_max"]
    assert 0 < rs["rmse_ratio_min"] <= rs["rmse_ratio_mean"] <= rs["rmse_ratio_max"] < 1
    assert m["rmse"] < 0.5 * m["baseline_rmse"] and m["kendall_tau"] > 0.7, m
    ridge = train_predictor(subnets, accs, TINY, np.random.default_rng(0), model="ridge", progress=False)
    assert ridge.hidden == () and ridge.metrics["model"].startswith("ridge")
    ridge.save(tmp_path / "predictor.pt")
    again = load_predictor(tmp_path / "predictor.pt", TINY)
    assert again.hidden == ()
    np.testing.assert_allclose(again.predict(subnets, TINY), ridge.predict(subnets, TINY), rtol=1e-6)
    # the torch module (the gradient search's view) agrees with the numpy path
    import torch

    x = torch.from_numpy(again.encoder.encode_subnets(subnets[:5], TINY).astype(np.float32))
    np.testing.assert_allclose(again.module()(x)[:, 0].detach().numpy() + again.offset,
                               again.predict(subnets[:5], TINY), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="model 'svm' is not one of auto, ridge, mlp"):
        train_predictor(subnets, accs, TINY, np.random.default_rng(0), model="svm", progress=False)


def test_nested_cross_validation_predicts_every_row_by_a_model_that_did_not_see_it():
    """The default evaluation: every row is predicted by a model chosen and fitted without it
    (accuracies that are pure noise must not look predictable), the per-fold figures are
    kept, and the returned predictor is chosen and fitted on all rows."""
    subnets, accs = synthetic_rows(100, seed=5)
    pred = train_predictor(subnets, accs, TINY, np.random.default_rng(0), hidden=(64, 64), epochs=100,
                           progress=False)
    m = pred.metrics
    assert m["evaluation"] == "5-fold nested cross-validation" and m["n_train"] == m["n_test"] == 100
    assert pred.offset == pytest.approx(float(np.mean(accs)))  # fitted on all rows
    fo = m["folds"]
    assert fo["k"] == 5 and [f["rows"] for f in fo["per_fold"]] == [20] * 5
    assert fo["kendall_tau_min"] <= fo["kendall_tau_mean"] <= fo["kendall_tau_max"]
    assert m["rmse"] < 0.5 * m["baseline_rmse"] and m["kendall_tau"] > 0.7, m
    assert "resplits" not in m
    # accuracies independent of the architecture: a leak of a row into its own prediction
    # would show as a ranking; the honest estimate finds none, while the fit on all rows does
    noise = np.random.default_rng(1).normal(0.8, 0.01, size=len(accs))
    for model in ("mlp", "ridge"):
        pn = train_predictor(subnets, noise, TINY, np.random.default_rng(0), hidden=(64, 64), epochs=200,
                             progress=False, model=model)
        mn = pn.metrics
        assert abs(mn["kendall_tau"]) < 0.2 and mn["rmse"] > 0.95 * mn["baseline_rmse"], (model, mn)
        assert mn["train_rmse"] < mn["rmse"], (model, mn)
    # four rows: folds of one row have no tau of their own; the metrics stay strict JSON
    few = train_predictor(subnets[:4], accs[:4], TINY, np.random.default_rng(0), model="ridge", progress=False)
    assert few.metrics["folds"]["k"] == 4 and few.metrics["folds"]["kendall_tau_mean"] is None
    json.dumps(few.metrics, allow_nan=False)
    with pytest.raises(ValueError, match="evaluation 'loo' is not one of cv, split"):
        train_predictor(subnets, accs, TINY, np.random.default_rng(0), evaluation="loo", progress=False)
    with pytest.raises(ValueError, match="--test-frac must be between 0 and 1"):
        train_predictor(subnets, accs, TINY, np.random.default_rng(0), test_frac=1.5, progress=False)
