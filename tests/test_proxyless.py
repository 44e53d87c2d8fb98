"""ProxylessNAS (issue 9): its spaces, the shipped Pixel 1 table, the mixed-op network's gates
and gradients, the latency loss, and the search as a user runs it."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import DATA, REPO, run_cli

from supernet.proxyless import ProxylessSupernet, expected_cost, zero_index
from supernet.space import BlockSpec, SubnetConfig, get_space

PF = get_space("proxyless_fmnist")
PM = get_space("proxyless_mobile")
PIXEL1 = REPO / "luts" / "pixel1.csv"


def pseudo_latency(space, resolutions) -> dict[str, float]:
    """A cost table for tests (not a device): a block's MACs in millions plus 1 us."""
    return {str(b): b.macs() / 1e6 + 0.001 for b in space.all_blocks(resolutions)}


def write_lut(path, space, resolutions):
    from profiler.lut import record_space, write_rows_atomic

    write_rows_atomic(path, [{"key": k, "runtime": "onnxruntime", "status": "ok", "median_ms": v, "device": "local"}
                             for k, v in pseudo_latency(space, resolutions).items()])
    record_space(path, space.name)
    return path


# --------------------------------------------------------------------------- spaces, table


def test_mobile_space_is_the_papers():
    assert [s.width for s in PM.stages] == [24, 40, 80, 96, 192, 320]
    assert PM.full_depths == (4, 4, 4, 4, 4, 1)
    assert PM.kernels == (3, 5, 7) and PM.expands == (3, 6) and PM.resolutions == (224,)
    blocks = PM.blocks(PM.max_subnet())
    assert all(b.act == "relu6" and not b.se for b in blocks if b.kind == "mbconv")
    assert [b.kind for b in blocks[-3:]] == ["final_expand", "pool", "classifier"]  # no feature mix
    assert blocks[-3].out_c == 1280 and blocks[0].out_c == 32 and blocks[1].out_c == 16
    with pytest.raises(ValueError, match=r"d\[5\] = 2 .*allowed for stage 5: 1"):
        SubnetConfig(PM.max_subnet().ks, PM.max_subnet().e, (4, 4, 4, 4, 4, 2), 224).validate(PM)
    rng = __import__("random").Random(0)
    assert all(PM.sample(rng).d[5] == 1 for _ in range(50))


def test_relu6_keys_round_trip():
    b = PM.all_blocks()[3]
    assert b.act == "relu6" and BlockSpec.parse(str(b)) == b


def test_pixel1_table_covers_every_block_of_the_space_and_nothing_is_guessed(tmp_path):
    out = tmp_path / "pixel1.csv"
    p = run_cli("profiler.import_lut", "--format", "proxyless", DATA / "proxylessnas" / "mobile_trim.yaml",
                "--out", out)
    assert p.returncode == 0, p.stderr

    def rows(path):
        with open(path) as fh:
            return [{k: v for k, v in r.items() if k != "measured_at"} for r in csv.DictReader(fh)]

    assert rows(out) == rows(PIXEL1)  # the shipped table is the import of the published one
    keys = {r["key"] for r in rows(PIXEL1)}
    ours = {str(b) for b in PM.all_blocks()}
    assert ours <= keys
    # the only published rows no architecture of the paper's space uses: the first block at k5/k7
    extra = {BlockSpec.parse(k) for k in keys - ours}
    assert {(b.in_c, b.out_c, b.kernel) for b in extra} == {(32, 16, 5), (32, 16, 7)}


def test_search_latency_prices_max_and_min_from_the_pixel1_table():
    import yaml

    pub = yaml.safe_load((DATA / "proxylessnas" / "mobile_trim.yaml").read_text())

    def published(cfg):  # the published means summed by hand over the architecture's blocks
        total = pub["Conv-input:224x224x3-output:112x112x32"]["mean"]
        total += pub["expanded_conv-input:112x112x32-output:112x112x16-expand:1-kernel:3-stride:1-idskip:0"]["mean"]
        for b in PM.blocks(cfg):
            if b.kind == "mbconv" and b.in_c != 32:
                total += pub[f"expanded_conv-input:{b.in_h}x{b.in_w}x{b.in_c}-output:{b.out_h}x{b.out_w}x{b.out_c}"
                             f"-expand:{b.mid // b.in_c}-kernel:{b.kernel}-stride:{b.stride}-idskip:{int(b.residual)}"]["mean"]
        return total + pub["Conv_1-input:7x7x320-output:7x7x1280"]["mean"] + pub["Logits-input:7x7x1280-output:1000"]["mean"]

    for which in ("max", "min"):
        p = run_cli("search.latency", "--lut", PIXEL1, "--subnet", which, "--json")
        assert p.returncode == 0, p.stderr
        got = json.loads(p.stdout)
        assert got["subnet"]["d"] == ([4, 4, 4, 4, 4, 1] if which == "max" else [1] * 6)
        assert got["latency_ms"] == pytest.approx(published(PM.max_subnet() if which == "max" else PM.min_subnet()), abs=1e-3)


def test_ofa_supernet_refuses_a_proxyless_space():
    from supernet.ofa import OFASupernet

    with pytest.raises(ValueError, match="search.proxyless"):
        OFASupernet(PF)


# --------------------------------------------------------------------------- the mixed-op network


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return ProxylessSupernet(PF, 40)


def test_candidates_and_zero_paths(net):
    # the first block of every stage changes shape: no zero path there; every later block has one
    for m in net.mixed:
        assert (zero_index(m) is not None) == (m.position > 0)
        specs = [p.spec for p in m.paths if not p.zero]
        assert len(set(specs)) == len(specs)  # an inert kernel is not a second path
    assert len(net.mixed[1]) == 7  # 3 kernels x 2 expands + zero where nothing collapses


def test_gate_sampling_matches_softmax_frequencies(net):
    m = net.mixed[1]
    with torch.no_grad():
        m.alpha.copy_(torch.tensor([1.0, 0.0, -1.0, 0.5, 2.0, -0.5, 0.0]))
    p = m.probs().detach().numpy()
    gen = torch.Generator().manual_seed(0)
    n = 6000
    counts = np.zeros(len(m))
    for _ in range(n):
        m.sample("sample", gen)
        counts[m.active] += 1
    chi2 = float(((counts - n * p) ** 2 / (n * p)).sum())
    assert chi2 < 22.5  # 6 degrees of freedom: p = 0.001
    # 'two': both drawn paths are distinct, and the active one is drawn by the pair's renormalised probabilities
    pairs = []
    for _ in range(400):
        m.sample("two", gen)
        a, b = m.pair
        assert a != b and m.active == a
        pairs.append((a, b))
    assert len(set(pairs)) > 10
    with torch.no_grad():
        m.alpha.zero_()


def test_two_path_gradient_equals_the_binaryconnect_formula(net):
    m = net.mixed[4]
    torch.manual_seed(1)
    with torch.no_grad():
        m.alpha.copy_(torch.randn(len(m)))
    m.mode, m.pair, m.active = "two", (2, 5), 2
    x = torch.randn(3, m.ops[0].expand.conv.in_channels if m.ops[0].expand is not None else 24, 10, 10)
    w = torch.randn_like(m.ops[2](x))
    m.eval()
    m.alpha.grad = None
    loss = (m(x) * w).sum()
    loss.backward()
    with torch.no_grad():
        o = [m.ops[i](x) for i in (2, 5)]
        assert torch.allclose(m(x), o[0])  # the value is the active path's output
        dg = torch.stack([(oi * w).sum() for oi in o])
        p = torch.softmax(m.alpha[[2, 5]], 0)
        want = torch.zeros(len(m))
        for i, oi in enumerate((2, 5)):
            want[oi] = sum(dg[j] * p[j] * ((1.0 if i == j else 0.0) - p[i]) for j in range(2))
    assert torch.allclose(m.alpha.grad, want, atol=1e-4, rtol=1e-4)
    assert (m.alpha.grad[[0, 1, 3, 4, 6]] == 0).all()  # paths not drawn get nothing
    m.train()


def test_rescale_keeps_the_other_paths_probabilities(net):
    m = net.mixed[4]
    with torch.no_grad():
        m.alpha.copy_(torch.randn(len(m)))
    m.pair = (1, 3)
    before = m.probs().detach().clone()
    old = m.alpha.detach().clone()
    with torch.no_grad():
        m.alpha[1] += 0.7
        m.alpha[3] -= 0.2
    m.rescale(old)
    after = m.probs().detach()
    others = [i for i in range(len(m)) if i not in (1, 3)]
    assert torch.allclose(after[others], before[others], atol=1e-6)
    assert after[1] > before[1] and after[3] < before[3]


def test_zero_path_really_skips_the_block(net):
    m = net.mixed[1]
    z = zero_index(m)
    m.mode, m.active = "fixed", z
    x = torch.randn(2, 16, 10, 10)
    assert torch.equal(m(x), x)
    cfg = net.derive([zero_index(mm) if mm.stage == 0 and mm.position > 0 else 0 for mm in net.mixed])
    assert cfg.d[0] == 1


def test_derive_packs_kept_blocks_and_round_trips(net, tmp_path):
    idx = [0] * len(net.mixed)
    stage0 = [i for i, m in enumerate(net.mixed) if m.stage == 0]
    idx[stage0[1]] = zero_index(net.mixed[stage0[1]])  # zero in the middle
    idx[stage0[2]] = 5                                 # k7 e6 after it
    cfg = net.derive(idx)
    assert cfg.d[0] == 2 and cfg.ks[1] == 7 and cfg.e[1] == 6
    f = tmp_path / "arch.json"
    f.write_text(cfg.to_json())
    p = run_cli("supernet.info", "--space", "proxyless_fmnist", "--subnet", f, "--check", "--json")
    assert p.returncode == 0, p.stderr
    info = json.loads(p.stdout)
    assert info["subnet"] == cfg.to_dict() and info["module_params"] == info["params"]
    lut = write_lut(tmp_path / "pf.csv", PF, [40])
    p = run_cli("search.latency", "--lut", lut, "--subnet", f, "--json")
    assert p.returncode == 0, p.stderr
    table = pseudo_latency(PF, [40])
    assert json.loads(p.stdout)["latency_ms"] == pytest.approx(sum(table[str(b)] for b in PF.blocks(cfg)), abs=1e-3)


def test_expected_latency_is_exact_and_pushes_towards_cheaper_paths(net, tmp_path):
    from profiler.costmodel import LatencyModel
    from search.proxyless import path_costs

    model = LatencyModel(PF, pseudo_latency(PF, [40]))
    base, costs = path_costs(net, model, 40)
    with torch.no_grad():
        for m in net.mixed:
            m.alpha.zero_()
    # with one path certain per block, E[latency] is the derived architecture's LUT latency
    idx = [len(m) - 1 for m in net.mixed]
    with torch.no_grad():
        for m, i in zip(net.mixed, idx):
            m.alpha[i] = 60.0
    assert float(expected_cost(net, costs, base).detach()) == pytest.approx(float(model.cost([net.derive(idx)])[0]), rel=1e-6)
    with torch.no_grad():
        for m in net.mixed:
            m.alpha.zero_()
            m.alpha.grad = None
    e = expected_cost(net, costs, base)
    e.backward()
    for m, c in zip(net.mixed, costs):
        g = m.alpha.grad
        assert int(g.argmin()) == int(c.argmin()) and int(g.argmax()) == int(c.argmax())
        m.alpha.grad = None


# --------------------------------------------------------------------------- the search


@pytest.fixture(scope="module")
def small_data():
    from supernet.data import load_data

    return load_data("fmnist", valid_size=500, train_limit=1600, seed=0)


def _search(small_data, **kw):
    from profiler.costmodel import LatencyModel
    from search.proxyless import Search, SearchConfig

    model = LatencyModel(PF, pseudo_latency(PF, [32]))
    cfg = SearchConfig(**{"warmup_epochs": 0.0, "search_epochs": 0.6, "batch_size": 32, "arch_images": 320,
                          "log_every": 10, "arch_lr": 0.05, **kw})
    s = Search(PF, 32, small_data, model, cfg, torch.device("cpu"))
    s.run(progress=False)
    return s, float(model.cost([s.derived()])[0])


def test_a_larger_latency_weight_derives_a_faster_architecture(small_data):
    _, free = _search(small_data, latency_loss="add", lambda_latency=0.0, search_epochs=0.3)
    s, heavy = _search(small_data, latency_loss="add", lambda_latency=20.0, search_epochs=0.3)
    assert heavy < free
    assert s.history[-1]["expected_ms"] < s.history[0]["expected_ms"]


def test_reinforce_mode_moves_alpha_towards_the_latency_target(small_data):
    """REINFORCE under a target far below every path (0.5 ms): the expected latency falls
    during the search and the derived network is cheap (1.04 ms here; with the policy
    gradient's sign flipped the expected latency rose and the derived network took 2.13 ms)."""
    s, derived = _search(small_data, latency_loss="target", latency_ms=0.5, grad_mode="reinforce", search_epochs=0.4)
    assert any(float(m.alpha.detach().abs().max()) > 0 for m in s.net.mixed)
    assert s.history[-1]["expected_ms"] < s.history[0]["expected_ms"] and derived < 1.5


def test_cli_end_to_end_and_bad_input(tmp_path, capsys):
    from search.proxyless import main

    lut = write_lut(tmp_path / "pf.csv", PF, [32])
    out = tmp_path / "run"
    code = main([str(a) for a in ("--lut", lut, "--latency-ms", "2", "--train-limit", "640", "--warmup-epochs", "0.2",
                                  "--search-epochs", "0.4", "--retrain-epochs", "0.1", "--no-export", "--log-every", "2",
                                  "--valid-size", "200", "--out", out, "--no-progress")])
    cap = capsys.readouterr()
    assert code == 0, cap.err
    assert "E[latency]" in cap.out and "retrained from scratch" in cap.out
    res = json.loads((out / "result.json").read_text())
    cfg = SubnetConfig.from_dict(res["subnet"]).validated(PF)
    assert res["lut_latency_ms"] == pytest.approx(sum(pseudo_latency(PF, [32])[str(b)] for b in PF.blocks(cfg)), abs=1e-3)
    assert (out / "search.png").stat().st_size > 0
    with open(out / "search.csv") as fh:
        assert {r["phase"] for r in csv.DictReader(fh)} == {"warmup", "search"}

    def err(*argv):
        code = main([str(a) for a in argv])
        assert code == 2
        return capsys.readouterr().err

    # an existing folder is kept; a LUT of an OFA space, a missing budget, an unprofiled resolution: one line each
    assert "already exists" in err("--lut", lut, "--latency-ms", "2", "--out", out)
    from supernet.atomic import ExclusiveLock

    with ExclusiveLock(out, "x"):  # this process plays a search running there
        assert err("--lut", lut, "--latency-ms", "2", "--out", out, "--resume").startswith(
            f"error: search folder {out} is in use by another process (pid ")
        assert f"search folder {out} is in use by another process" in err("--lut", lut, "--latency-ms", "2", "--out",
                                                                          out, "--resume")
    assert "--lambda-latency" in err("--lut", lut)
    assert "nope.csv: no such LUT file" in err("--lut", tmp_path / "nope.csv", "--latency-ms", "2")
    assert "search.evolve" in err("--lut", REPO / "luts" / "note10.csv", "--latency-ms", "20", "--out", tmp_path / "x")
    assert "lacks" in err("--lut", lut, "--latency-ms", "2", "--resolution", "48", "--out", tmp_path / "y")
    # numbers that would divide by zero, make an empty architecture split or loop forever
    base = ("--lut", lut, "--latency-ms", "2", "--out", tmp_path / "z", "--valid-size", "200")
    for flag in ("--batch-size", "--arch-images", "--checkpoint-every"):
        assert f"{flag} must be at least 1" in err(*base, flag, "0")
    assert "give no full batch of 64" in err(*base, "--train-limit", "64")
    # nan, inf, zero or negative rates, weights and epochs: one line before any work (nan and
    # inf got past the range checks and failed deep in the run; --lr -1 was SGD's traceback)
    for flag, value, words in (("--lr", "nan", "--lr must be a finite number, got nan"),
                               ("--search-epochs", "inf", "--search-epochs must be a finite number"),
                               ("--warmup-epochs", "nan", "--warmup-epochs must be a finite number"),
                               ("--latency-ms", "inf", "--latency-ms must be a finite number"),
                               ("--arch-lr", "-1", "--arch-lr must be > 0, got -1"),
                               ("--retrain-lr", "0", "--retrain-lr must be > 0"),
                               ("--weight-decay", "-0.0001", "--weight-decay must be >= 0"),
                               ("--beta", "-1", "--beta must be >= 0"),
                               ("--train-limit", "0", "--train-limit must be at least 1, got 0"),
                               ("--resolution", "0", "--resolution must be at least 1, got 0"),
                               ("--resolution", "33", "resolution 33 is not in space 'proxyless_fmnist'")):
        assert words in err(*base, flag, value), (flag, value)
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    assert "exists and is not a folder" in err("--lut", lut, "--latency-ms", "2", "--out", blocker,
                                              "--train-limit", "640", "--valid-size", "200")
    assert not (tmp_path / "z").exists() and blocker.read_text() == "x"


def test_grayscale_data_is_fitted_to_the_pixel1_network(small_data):
    """Fashion-MNIST on the Pixel 1 table's space: each batch's channel repeated to 3, the
    10 classes on the first 10 of the 1000 outputs the table priced; what cannot be fitted
    is refused with a line naming it."""
    from search.proxyless import adapt_data_note
    from supernet.data import DataError, train_batches

    space = get_space("proxyless_mobile")
    note = adapt_data_note(small_data, space, "fmnist")
    assert "3 channels" in note and "first 10 of the space's 1000 outputs" in note
    rgb = small_data.with_channels(3)
    assert rgb.channels == 3 and rgb.num_classes == 10 and small_data.channels == 1
    _, x, _ = next(iter(train_batches(rgb.train, 8, 0, 0)))
    _, x1, _ = next(iter(train_batches(small_data.train, 8, 0, 0)))
    assert x.shape[1] == 3 and torch.equal(x[:, 0], x[:, 2]) and torch.equal(x[:, :1], x1)
    assert adapt_data_note(small_data, PF, "fmnist") is None
    with pytest.raises(DataError, match="1-channel"):
        rgb.with_channels(4)
    wide = get_space("proxyless_fmnist")
    ten = type(small_data)(**{**small_data.__dict__, "num_classes": 11})
    with pytest.raises(ValueError, match="11 classes"):
        adapt_data_note(ten, wide, "x")


def test_search_evolve_on_the_pixel1_table_names_what_searches_it(tmp_path):
    """The design card's ``search.evolve --lut luts/pixel1.csv`` on a fresh clone: no
    supernet or predictor of that space exists, so one line names the commands that use
    the table (and a predictor of another space in runs/ is not taken for it)."""
    from search.evolve import default_predictor

    proc = run_cli("search.evolve", "--lut", REPO / "luts" / "pixel1.csv", cwd=tmp_path)
    assert proc.returncode == 2
    line = proc.stderr.strip().splitlines()[-1]
    assert "proxyless_mobile" in line and "search.proxyless" in line and "search.latency" in line
    (tmp_path / "runs" / "other").mkdir(parents=True)
    from test_search_evolve import random_predictor

    random_predictor().save(tmp_path / "runs" / "other" / "predictor.pt")  # a real one, of another space
    (tmp_path / "runs" / "corrupt").mkdir()
    (tmp_path / "runs" / "corrupt" / "predictor.pt").write_bytes(b"not a predictor")
    import os

    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        with pytest.raises(ValueError, match="search.proxyless"):
            default_predictor("proxyless_mobile")
        assert default_predictor("tiny") == str(Path("runs") / "other" / "predictor.pt")
    finally:
        os.chdir(cwd)


def test_ctrl_c_stops_the_search_with_a_checkpoint_and_resume_finishes_it(tmp_path, capsys, monkeypatch):
    import os
    import signal

    from search import proxyless

    lut = write_lut(tmp_path / "pf.csv", PF, [32])
    args = [str(a) for a in ("--lut", lut, "--latency-ms", "2", "--train-limit", "640", "--warmup-epochs", "0.2",
                             "--search-epochs", "0.4", "--no-export", "--valid-size", "200", "--out", tmp_path / "run",
                             "--no-progress")]
    run = proxyless.Search.run

    def interrupted(self, *a, **k):  # Ctrl-C arrives during the first step
        os.kill(os.getpid(), signal.SIGINT)
        return run(self, *a, **k)

    monkeypatch.setattr(proxyless.Search, "run", interrupted)
    assert proxyless.main(args) == 130
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("search.proxyless: SIGINT: stopped at step 1 of ") and last.endswith(" --resume")
    assert (tmp_path / "run" / "search.ckpt.pt").is_file() and not (tmp_path / "run" / "result.json").exists()
    monkeypatch.setattr(proxyless.Search, "run", run)
    assert proxyless.main([*args, "--resume"]) == 0
    assert "resuming" in capsys.readouterr().err and (tmp_path / "run" / "result.json").is_file()


def test_a_killed_search_resumes_to_the_same_architecture(small_data, tmp_path):
    """Checkpoints every few steps; a search stopped mid-way and restored into a fresh
    process state ends with the same alphas and weights as an uninterrupted one; a
    checkpoint of other settings or a corrupt one is refused naming the file."""
    from profiler.costmodel import LatencyModel
    from search.proxyless import Search, SearchConfig

    model = LatencyModel(PF, pseudo_latency(PF, [32]))
    cfg = SearchConfig(warmup_epochs=0.1, search_epochs=0.2, batch_size=32, arch_images=320, log_every=5,
                       latency_loss="target", latency_ms=0.5)
    whole = Search(PF, 32, small_data, model, cfg, torch.device("cpu"))
    assert whole.run(progress=False)
    ck = tmp_path / "search.ckpt.pt"
    first = Search(PF, 32, small_data, model, cfg, torch.device("cpu"))
    assert not first.run(progress=False, checkpoint=ck, every=3, stop_after=7)  # warm-up ends at step 4
    again = Search(PF, 32, small_data, model, cfg, torch.device("cpu"))
    state = again.restore(ck)
    assert state["step"] == 7
    assert again.run(progress=False, checkpoint=ck, every=3, resume=state)
    for a, b in zip(whole.net.arch_parameters(), again.net.arch_parameters()):
        assert torch.equal(a, b)
    for (n, a), (_, b) in zip(whole.net.state_dict().items(), again.net.state_dict().items()):
        assert torch.equal(a, b), n
    assert [r["step"] for r in again.history] == [r["step"] for r in whole.history]
    # a signal (Ctrl-C, SIGTERM: supernet.trainer.stop_requests records it) stops after the
    # step it arrives in, with the checkpoint there, and --resume ends at the same place
    signalled = Search(PF, 32, small_data, model, cfg, torch.device("cpu"))
    assert not signalled.run(progress=False, checkpoint=ck, every=3, asked={"signal": "SIGINT"})
    assert signalled.stopped_at[0] == 1 and again.restore(ck)["step"] == 1
    last = Search(PF, 32, small_data, model, cfg, torch.device("cpu"))
    assert last.run(progress=False, checkpoint=ck, every=3, resume=last.restore(ck))
    assert all(torch.equal(a, b) for a, b in zip(whole.net.arch_parameters(), last.net.arch_parameters()))
    other = Search(PF, 32, small_data, model, SearchConfig(**{**cfg.__dict__, "seed": 1}), torch.device("cpu"))
    with pytest.raises(ValueError, match="other settings.*seed"):
        other.restore(ck)
    # the same settings on other data or another LUT: refused too, naming what differs
    first.inputs = {"train_limit": 2000, "lut_sha256": "aa"}
    first.run(progress=False, checkpoint=ck, every=3, stop_after=4)
    again = Search(PF, 32, small_data, model, cfg, torch.device("cpu"))
    again.inputs = {"train_limit": None, "lut_sha256": "bb"}
    with pytest.raises(ValueError, match=r"other settings \(.*lut_sha256, train_limit\)"):
        again.restore(ck)
    ck.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a search.proxyless checkpoint"):
        other.restore(ck)


def test_training_alone_on_less_than_a_batch_is_an_error_not_an_endless_loop(small_data):
    """supernet.standalone (ProxylessNAS's retraining, the benches' networks trained alone):
    a training split smaller than one batch draws no batch, so it is refused at once."""
    from dataclasses import replace

    from supernet.ops import build_network
    from supernet.standalone import Recipe, train_standalone

    tiny = replace(small_data, train=small_data.train.subset(torch.arange(10)))
    net = build_network(PF, PF.min_subnet(r=32))
    with pytest.raises(ValueError, match="10 training images give no full batch of 64"):
        train_standalone(net, tiny, 32, Recipe(epochs=1.0, batch_size=64), torch.device("cpu"), progress=False)
