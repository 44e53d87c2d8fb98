"""Accuracy predictor: an MLP over ``search.encoding.Encoder`` features.

Two sources:

- our own, trained on collected (subnet, accuracy) rows (``search.collect``): a train split
  with nested cross-validation (every row predicted by a model that did not see it; or one
  seeded held-out split), RMSE and Kendall tau on the held-out rows printed and saved in the
  model file and in a JSON twin next to it;
- OFA's published ImageNet predictor (``acc_predictor.pth``, a state dict of
  ``Linear(128, 400), ReLU, Linear(400, 400), ReLU, Linear(400, 400), ReLU, Linear(400, 1)``
  over OFA's 128-wide encoding, output a fraction), loaded with ``ofa:PATH``.  It was trained
  for the OFA MobileNetV3 supernet at width multiplier 1.2.

Searches call ``predict_population`` (a numpy forward pass over a whole population); the
relaxation search uses ``module`` (torch).

CLI (train)::

    python -m search.predictor --data RUN/accuracy.csv --space fmnist --out RUN/predictor.pt
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from supernet.atomic import atomic_write_bytes, atomic_write_text, ensure_writable_folder
from supernet.cliargs import run_main, seed_arg
from supernet.space import SearchSpace, SubnetConfig, get_space

from .collect import parse_row, read_csv_rows
from .encoding import Choices, Encoder, Population

FORMAT = "hwnas-accuracy-predictor"
FORMAT_VERSION = 1
OFA_WIDTH = 1.2  # OFA's published predictor belongs to the w1.2 supernet
OFA_PREDICTOR = Path(__file__).resolve().parent / "data" / "ofa_acc_predictor.pth"  # shipped copy (README there)


@contextlib.contextmanager
def one_torch_thread():
    """Run torch on one thread inside the block, then restore the setting.  The predictor's
    matmuls are small (batches of ~100 x 400): a second thread only adds synchronisation,
    and on a busy 2-core machine it makes them an order of magnitude slower."""
    import torch

    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(prev)


def build_mlp(n_in: int, hidden: Sequence[int]):
    """``nn.Sequential(Linear, ReLU, ..., Linear(.., 1))``: the layout of OFA's predictor, so
    its state dict (keys ``0.*``, ``2.*``, ``4.*``, ``6.*``) loads directly."""
    from torch import nn

    layers: list[nn.Module] = []
    prev = n_in
    for h in hidden:
        layers += [nn.Linear(prev, h), nn.ReLU()]
        prev = h
    layers.append(nn.Linear(prev, 1))
    return nn.Sequential(*layers)


@dataclass
class AccuracyPredictor:
    """An MLP accuracy predictor with its encoder.

    Attributes:
        encoder: the feature layout.
        hidden: hidden layer sizes.
        state: the MLP's weights (name -> numpy array, float32).
        offset: added to the MLP output (the training mean of our own predictors; 0 for OFA's).
        widths: width multipliers the predictor is valid for (empty: any).
        source: "ofa" or "hwnas"; ``path`` where it was loaded from.
        metrics: held-out RMSE, Kendall tau and split sizes (our own predictors).
    """

    encoder: Encoder
    hidden: tuple[int, ...]
    state: dict[str, np.ndarray]
    offset: float = 0.0
    widths: tuple[float, ...] = ()
    space_name: str = ""
    source: str = "hwnas"
    path: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._module = None

    # support --------------------------------------------------------------------------
    def supports(self, r: int, w: float) -> bool:
        ok_w = not self.widths or any(math.isclose(w, x) for x in self.widths)
        return ok_w and self.encoder.supports_resolution(r) and self.encoder.supports_width(w)

    def check_space(self, space: SearchSpace) -> None:
        """ValueError unless the predictor encodes ``space``'s choices; the message leads with
        the two spaces' names when the predictor records its own."""
        try:
            self.encoder.check_space(space)
        except ValueError as exc:
            if self.space_name and self.space_name != space.name:
                where = f" ({self.path})" if self.path else ""
                raise ValueError(f"the predictor{where} is of space {self.space_name!r}, not {space.name!r} "
                                 "(the space of the LUT or of --space)") from None
            raise

    def describe(self) -> str:
        if self.source == "ofa":
            return f"OFA's published ImageNet predictor ({self.path})"
        m = self.metrics
        extra = f", held-out RMSE {m['rmse']:.4f}, Kendall tau {m['kendall_tau']:.3f}" if m else ""
        return f"hwnas predictor {self.path or '(in memory)'}{extra}"

    # prediction ---------------------------------------------------------------------------
    def predict_features(self, x: np.ndarray) -> np.ndarray:
        """Predicted accuracy (fraction) for an (N, n_dim) feature array: one batched forward
        pass (torch, one thread)."""
        import torch

        if self._module is None:  # (W^T, b) per layer: addmm without nn.Module call overhead
            self._module = [(torch.from_numpy(np.ascontiguousarray(self.state[f"{2 * i}.weight"].T, dtype=np.float32)),
                             torch.from_numpy(np.asarray(self.state[f"{2 * i}.bias"], dtype=np.float32)))
                            for i in range(len(self.hidden) + 1)]
        with torch.inference_mode(), one_torch_thread():
            h = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
            for i, (wt, b) in enumerate(self._module):
                h = torch.addmm(b, h, wt)
                if i < len(self._module) - 1:
                    h.relu_()
        return h[:, 0].double().numpy() + self.offset

    def predict_population(self, pop: Population, choices: Choices) -> np.ndarray:
        """Predicted accuracy of every subnet of a population (one batched pass)."""
        return self.predict_features(self.encoder.encode(pop, choices))

    def predict(self, subnets: Sequence[SubnetConfig], space: SearchSpace) -> np.ndarray:
        """Predicted accuracy of a list of subnets."""
        return self.predict_features(self.encoder.encode_subnets(subnets, space))

    def module(self):
        """The MLP as a torch ``nn.Sequential`` (float32, eval mode) with these weights;
        add ``offset`` to its output."""
        import torch

        net = build_mlp(self.encoder.n_dim, self.hidden)
        net.load_state_dict({k: torch.from_numpy(np.asarray(v, dtype=np.float32)) for k, v in self.state.items()})
        return net.eval()

    # files --------------------------------------------------------------------------------
    def save(self, path: Path | str) -> Path:
        """Write the model (torch file of tensors and plain data, loadable with
        ``weights_only=True``) and its metrics as ``<path>.json`` beside it."""
        import torch

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        blob = {
            "format": FORMAT, "version": FORMAT_VERSION, "space": self.space_name,
            "encoder": self.encoder.to_dict(), "hidden": list(self.hidden), "offset": float(self.offset),
            "widths": list(self.widths), "metrics": self.metrics,
            "state_dict": {k: torch.from_numpy(np.asarray(v, dtype=np.float32)) for k, v in self.state.items()},
        }
        buf = io.BytesIO()
        torch.save(blob, buf)
        atomic_write_bytes(path, buf.getvalue())
        meta = {k: v for k, v in blob.items() if k != "state_dict"}
        atomic_write_text(path.with_suffix(".json"), json.dumps(meta, indent=2) + "\n")
        self.path = str(path)
        return path


# --------------------------------------------------------------------------- loading


def _torch_load(path: Path):
    from supernet.safeload import UnreadableFile, load_weights_only

    if not path.is_file():
        raise ValueError(f"{path}: no such predictor file")
    try:
        return load_weights_only(path)
    except UnreadableFile as exc:
        raise ValueError(f"{path}: not a readable predictor file: it {'' if exc.unsafe else 'is '}{exc.reason}") from None


def check_mlp_state(sd: Any, n_in: int, hidden: tuple[int, ...], path: Path | str) -> dict[str, np.ndarray]:
    """The weights of ``build_mlp(n_in, hidden)`` from a loaded state dict, as float32 numpy:
    exactly its keys, each a floating-point tensor of the layer's shape, every value finite.
    Raises ValueError naming ``path``."""
    import torch

    sizes = (n_in, *hidden, 1)
    expected = {}
    for i in range(len(sizes) - 1):
        expected[f"{2 * i}.weight"] = (sizes[i + 1], sizes[i])
        expected[f"{2 * i}.bias"] = (sizes[i + 1],)
    if not isinstance(sd, dict) or set(sd) != set(expected):
        got = sorted(map(str, sd))[:12] if isinstance(sd, dict) else type(sd).__name__
        raise ValueError(f"{path}: weights do not fit the {'-'.join(map(str, sizes))} MLP "
                         f"(expected {sorted(expected)}, got {got})")
    state = {}
    for k, shape in expected.items():
        v = sd[k]
        if not isinstance(v, torch.Tensor) or not v.is_floating_point():
            raise ValueError(f"{path}: weight {k} is not a floating-point tensor ({getattr(v, 'dtype', type(v).__name__)})")
        if tuple(v.shape) != shape:
            raise ValueError(f"{path}: weight {k} has shape {tuple(v.shape)}, the "
                             f"{'-'.join(map(str, sizes))} MLP needs {shape}")
        if not bool(torch.isfinite(v).all()):
            raise ValueError(f"{path}: weight {k} holds NaN or infinite values")
        state[k] = v.float().numpy()
    return state


def _is_ofa_state(obj: Any) -> bool:
    return (isinstance(obj, dict) and "0.weight" in obj and "6.weight" in obj
            and tuple(obj["0.weight"].shape) == (400, 128))


def load_ofa_predictor(path: Path | str) -> AccuracyPredictor:
    """OFA's published predictor (``acc_predictor.pth``).  Raises ValueError naming the file."""
    path = Path(path)
    sd = _torch_load(path)
    if isinstance(sd, dict) and "state_dict" in sd and not _is_ofa_state(sd):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or "0.weight" not in sd or tuple(getattr(sd["0.weight"], "shape", ())) != (400, 128):
        got = {k: tuple(getattr(v, "shape", ())) for k, v in sd.items()} if isinstance(sd, dict) else type(sd).__name__
        raise ValueError(f"{path}: not OFA's predictor (expected the 128-400-400-400-1 MLP, got {str(got)[:200]})")
    state = check_mlp_state(sd, 128, (400, 400, 400), path)
    return AccuracyPredictor(Encoder.ofa(), (400, 400, 400), state, 0.0, (OFA_WIDTH,),
                             space_name="ofa_mbv3", source="ofa", path=str(path))


def load_predictor(spec: str | Path, space: SearchSpace | None = None) -> AccuracyPredictor:
    """A predictor from ``ofa`` (the shipped copy of OFA's), ``ofa:PATH``, a run folder
    (``RUN/predictor.pt``) or a file.

    A file holding OFA's bare state dict is recognised without the ``ofa:`` prefix.  With
    ``space``, checks that the predictor encodes that space's choices.  Raises ValueError
    with one line naming what and where.
    """
    text = f"ofa:{OFA_PREDICTOR}" if str(spec) == "ofa" else str(spec)
    if text.startswith("ofa:"):
        pred = load_ofa_predictor(text[4:])
    else:
        path = Path(text)
        if path.is_dir():
            path = path / "predictor.pt"
            if not path.is_file():
                raise ValueError(f"{spec}: run folder has no predictor.pt (train one with python -m search.predictor)")
        blob = _torch_load(path)
        if _is_ofa_state(blob):
            pred = load_ofa_predictor(path)
        elif not isinstance(blob, dict) or blob.get("format") != FORMAT:
            raise ValueError(f"{path}: not an hwnas predictor file (no format {FORMAT!r}); for OFA's use ofa:PATH")
        else:
            try:
                enc = Encoder.from_dict(blob["encoder"])
                hidden = blob["hidden"]
                if (not isinstance(hidden, (list, tuple)) or not 0 <= len(hidden) <= 16
                        or not all(isinstance(h, int) and not isinstance(h, bool) and 1 <= h <= 1 << 16 for h in hidden)):
                    raise ValueError(f"hidden must be a list of layer sizes, got {str(hidden)[:80]}")
                state = check_mlp_state(blob["state_dict"], enc.n_dim, tuple(hidden), path)
                offset = float(blob["offset"])
                widths = tuple(float(x) for x in blob.get("widths", ()))
                if not all(math.isfinite(x) for x in (offset, *widths)):
                    raise ValueError("offset and widths must be finite numbers")
                pred = AccuracyPredictor(enc, tuple(hidden), state, offset, widths,
                                         space_name=str(blob.get("space", "")), source="hwnas",
                                         path=str(path), metrics=dict(blob.get("metrics", {})))
            except (KeyError, TypeError, AttributeError, ValueError, OverflowError) as exc:
                msg = str(exc)
                if msg.startswith(f"{path}: "):
                    raise ValueError(msg) from None
                raise ValueError(f"{path}: corrupt hwnas predictor file ({type(exc).__name__}: {msg[:200]})") from None
    if space is not None:
        try:
            pred.check_space(space)
        except ValueError as exc:
            raise ValueError(f"{spec}: {exc}") from None
    return pred


# --------------------------------------------------------------------------- training


def kendall_tau(a: Sequence[float], b: Sequence[float]) -> float:
    """Kendall's tau-b between two sequences (O(n^2) in numpy chunks; fine for n <= 20k)."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    n = len(x)
    if n < 2:
        return float("nan")
    conc = ties_x = ties_y = 0.0
    total = 0.0
    for start in range(0, n, 1024):
        xs, ys = x[start:start + 1024, None], y[start:start + 1024, None]
        dx, dy = np.sign(xs - x[None, :]), np.sign(ys - y[None, :])
        conc += float((dx * dy).sum())
        ties_x += float((dx == 0).sum())
        ties_y += float((dy == 0).sum())
        total += dx.size
    # every pair counted twice and the diagonal n times
    n0 = (total - n) / 2
    n1 = (ties_x - n) / 2
    n2 = (ties_y - n) / 2
    denom = math.sqrt((n0 - n1) * (n0 - n2))
    return float(conc / 2 / denom) if denom > 0 else float("nan")


def read_accuracy_csv(path: Path | str, space: SearchSpace) -> tuple[list[SubnetConfig], np.ndarray]:
    """Rows (subnet JSON, accuracy) of a ``search.collect`` CSV (columns ``subnet``, ``acc``).
    Raises ValueError naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such accuracy CSV")
    rows = read_csv_rows(path)
    if not rows:
        raise ValueError(f"{path}: no accuracy rows")
    header = set(rows[0][1])
    if not {"subnet", "acc"} <= header:
        raise ValueError(f"{path}: needs columns subnet and acc (has {sorted(header)})")
    subnets, accs, seen = [], [], {}
    for where, row in rows:
        cfg, acc = parse_row(row, where)
        if "index" in row:
            first = seen.setdefault(row["index"], where)
            if first != where:
                raise ValueError(f"{where}: duplicate index {row['index'][:20]} (first at {first})")
        if acc is None:
            continue
        try:
            cfg.validate(space)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
        subnets.append(cfg)
        accs.append(acc)
    if not subnets:
        raise ValueError(f"{path}: no accuracy rows")
    return subnets, np.asarray(accs)


def split_indices(n: int, test_frac: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A seeded (train, held-out) split of ``range(n)``; at least one row in each part."""
    perm = rng.permutation(n)
    n_test = min(n - 1, max(1, int(round(n * test_frac))))
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])


MODELS = ("auto", "ridge", "mlp")
RIDGE_LAMBDAS = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0)  # penalties tried by cross-validation


def fit_ridge(x: np.ndarray, y: np.ndarray, lam: float) -> dict[str, np.ndarray]:
    """Ridge regression of ``y`` (already centred by the caller's offset) on ``x`` with an
    unpenalised intercept, in closed form, as the weights of ``build_mlp(n, ())`` (one
    Linear layer: ``0.weight`` of shape (1, n), ``0.bias`` of shape (1,))."""
    x = np.asarray(x, dtype=np.float64)
    mx, my = x.mean(0), float(np.mean(y))
    xc = x - mx
    w = np.linalg.solve(xc.T @ xc + lam * np.eye(x.shape[1]), xc.T @ (np.asarray(y, dtype=np.float64) - my))
    return {"0.weight": w[None, :].astype(np.float32), "0.bias": np.array([my - mx @ w], dtype=np.float32)}


def fit_mlp(x: np.ndarray, y: np.ndarray, hidden: Sequence[int], epochs: int, lr: float, weight_decay: float,
            batch_size: int, seed: int, progress: bool = False) -> dict[str, np.ndarray]:
    """An MLP (``build_mlp``) fitted to ``y`` (centred) with Adam and a cosine schedule,
    initialised and shuffled from ``seed`` only.  Returns its weights as float32 numpy."""
    return fit_mlp_many([(x, y)], hidden, epochs, lr, weight_decay, batch_size, seed, progress)[0]


def fit_mlp_many(jobs: Sequence[tuple[np.ndarray, np.ndarray]], hidden: Sequence[int], epochs: int, lr: float,
                 weight_decay: float, batch_size: int, seed: int,
                 progress: bool = False) -> list[dict[str, np.ndarray]]:
    """``fit_mlp`` for every ``(x, y)`` job, the jobs trained side by side: one batched
    matrix product per layer and one Adam step for all of them, instead of a Python loop
    of tiny steps per job (the nested cross-validation of the main job fits the MLP 30 times:
    44 s one at a time on the AVX2 host).  Each job is what ``fit_mlp`` alone computes: the
    same initial weights (from ``seed``), its own generator for the batch order, its own
    mean-squared loss (padding rows masked out), and Adam, which is elementwise, over its own
    slice of the stacked weights.  Jobs that take a different number of batches per epoch
    train in separate groups, so every job steps exactly as often as alone.  The batched
    products use the process's torch threads (a second thread halves them on 2 cores, where
    the small products of one fit gained nothing from it)."""
    from tqdm import tqdm

    if not jobs:
        return []
    out: list[dict[str, np.ndarray] | None] = [None] * len(jobs)
    groups: dict[int, list[int]] = {}
    for j, (x, _) in enumerate(jobs):
        groups.setdefault(max(1, math.ceil(len(x) / batch_size)), []).append(j)
    bar = tqdm(total=epochs * len(groups), desc="train predictor", disable=not progress, leave=False)
    for steps, idx in groups.items():
        for j, st in zip(idx, _fit_group([jobs[j] for j in idx], hidden, epochs, lr, weight_decay, batch_size,
                                         seed, steps, bar)):
            out[j] = st
    bar.close()
    return out  # type: ignore[return-value]


def _fit_group(jobs, hidden, epochs, lr, weight_decay, batch_size, seed, steps, bar) -> list[dict[str, np.ndarray]]:
    import torch

    k, n_in = len(jobs), jobs[0][0].shape[1]
    gen = torch.Generator().manual_seed(seed)
    sizes = [n_in, *hidden, 1]
    params = []
    with torch.no_grad():  # PyTorch's default Linear init, U(-1/sqrt(fan_in), 1/sqrt(fan_in)), from our generator
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
            bound = 1.0 / math.sqrt(fan_in)
            for shape in ((fan_out, fan_in), (fan_out,)):
                init = (torch.rand(shape, generator=gen) * 2 - 1) * bound
                params.append(init.expand(k, *shape).clone().requires_grad_())
    gens = []
    for _ in range(k):  # each job's batch order continues from the state its own init left
        g = torch.Generator()
        g.set_state(gen.get_state())
        gens.append(g)
    xs = [torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)) for x, _ in jobs]
    ys = [torch.from_numpy(np.asarray(y, dtype=np.float32)) for _, y in jobs]
    width = min(batch_size, max(len(x) for x in xs))
    opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, epochs))
    xb = torch.zeros(k, width, n_in)
    yb, mask = torch.zeros(k, width), torch.zeros(k, width)
    for _ in range(epochs):
        perms = [torch.randperm(len(x), generator=g) for x, g in zip(xs, gens)]
        total = 0.0
        for s in range(steps):
            xb.zero_(), yb.zero_(), mask.zero_()
            for j, (x, y, perm) in enumerate(zip(xs, ys, perms)):
                b = perm[s * batch_size:(s + 1) * batch_size]
                xb[j, :len(b)], yb[j, :len(b)], mask[j, :len(b)] = x[b], y[b], 1.0
            h = xb
            for i in range(0, len(params), 2):
                h = torch.baddbmm(params[i + 1].unsqueeze(1), h, params[i].transpose(1, 2))
                if i < len(params) - 2:
                    h = h.relu()
            err = (h[..., 0] - yb) ** 2 * mask
            loss = (err.sum(1) / mask.sum(1).clamp(min=1)).sum()  # each job's own mean
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach())
        sched.step()
        bar.update(1)
        bar.set_postfix(rmse=f"{math.sqrt(max(0.0, total / (k * steps))):.4f}")
    names = [f"{2 * i}.{p}" for i in range(len(sizes) - 1) for p in ("weight", "bias")]
    return [{name: prm[j].detach().numpy().copy() for name, prm in zip(names, params)} for j in range(k)]


EVALUATIONS = ("cv", "split")


def train_predictor(
    subnets: Sequence[SubnetConfig],
    accs: Sequence[float],
    space: SearchSpace,
    rng: np.random.Generator,
    hidden: Sequence[int] = (400, 400, 400),
    epochs: int = 300,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    batch_size: int = 256,
    test_frac: float = 0.2,
    progress: bool = True,
    model: str = "auto",
    folds: int = 5,
    resplits: int = 10,
    evaluation: str = "cv",
) -> AccuracyPredictor:
    """Train a predictor; held-out RMSE and Kendall tau go into ``metrics``.

    ``model`` is ``mlp`` (the MLP ``hidden``, OFA's layout), ``ridge`` (ridge regression on
    the same features, stored as a one-layer MLP) or ``auto``: whichever of the MLP and
    ridge at each penalty of ``RIDGE_LAMBDAS`` has the lowest ``folds``-fold cross-validated
    RMSE on the rows it may learn from (with the ~100 rows a CPU collects, the 400-wide MLP
    overfits and a linear model ranks better; with thousands of rows the MLP wins).

    ``evaluation``:

    - ``cv`` (default): nested cross-validation.  The rows are dealt into ``round(1 /
      test_frac)`` outer folds; for each, the whole procedure (the model choice by its own
      inner cross-validation, then the fit) runs on the other folds and predicts the fold.
      Every row is thus predicted by a model that never saw it, and RMSE and Kendall tau are
      taken over all rows (against predicting each fold by the mean of the others).  The
      returned predictor is then chosen and fitted the same way on all rows.  On the ~100
      rows of the main job one 20-row split's tau moves by +-0.1 from split to split; over
      all rows the estimate is steadier, and the deployed model learns from every row.
    - ``split``: one seeded train / held-out split (``test_frac`` held out); the predictor
      learns from the train rows only, and the chosen model is refitted on ``resplits`` more
      random splits to report the spread of its held-out figures (``metrics["resplits"]``).

    Args:
        subnets, accs: the collected rows (accuracy as a fraction).
        space: the space the subnets belong to.
        rng: the only randomness (folds, split, init, batches).
        hidden, epochs, lr, weight_decay, batch_size: MLP and Adam settings.
        test_frac: the held-out fraction (``split``); one outer fold's share (``cv``).
        model, folds: the model choice (above).
        resplits: ``split`` only (above).
        evaluation: ``cv`` or ``split`` (above).
    Returns:
        The trained predictor (call ``save`` to write it).
    """
    if model not in MODELS:
        raise ValueError(f"model {model!r} is not one of {', '.join(MODELS)}")
    if evaluation not in EVALUATIONS:
        raise ValueError(f"evaluation {evaluation!r} is not one of {', '.join(EVALUATIONS)}")
    if not 0.0 < test_frac < 1.0:
        raise ValueError(f"--test-frac must be between 0 and 1, got {test_frac}")
    if len(subnets) < 4:
        raise ValueError(f"need at least 4 accuracy rows to train a predictor, got {len(subnets)}")
    accs = np.asarray(accs, dtype=np.float64)
    n = len(accs)
    base = Encoder.for_space(space, sorted({c.r for c in subnets}), sorted({float(c.w) for c in subnets}))
    encs = {"": base}
    if len(base.res_bins) > 1:  # resolution interactions: a linear candidate (an MLP finds them itself)
        encs["res"] = base.with_interactions()
    xs_all = {k: e.encode_subnets(list(subnets), space).astype(np.float64) for k, e in encs.items()}
    mlp_seed = int(rng.integers(2**31))
    t0 = time.time()

    def mlp_fits(jobs: list[tuple[np.ndarray, np.ndarray]], show: bool = False) -> list[dict[str, np.ndarray]]:
        return fit_mlp_many(jobs, hidden, epochs, lr, weight_decay, batch_size, mlp_seed, show)

    def hidden_of(cand: tuple) -> tuple[int, ...]:
        return () if cand[0] == "ridge" else tuple(hidden)

    def enc_of(cand: tuple) -> str:
        return cand[2] if len(cand) > 2 else ""

    cands = ([("mlp",)] if model in ("auto", "mlp") else []) + \
            ([("ridge", lam, k) for k in encs for lam in RIDGE_LAMBDAS] if model in ("auto", "ridge") else [])

    def inner_folds(rows: np.ndarray) -> np.ndarray | None:
        """The inner cross-validation's fold of each of ``rows`` (None: one candidate, no choice)."""
        if len(cands) == 1:
            return None
        return rng.permutation(len(rows)) % max(2, min(folds, len(rows)))

    def inner_jobs(rows: np.ndarray, fold_of: np.ndarray | None) -> list[tuple[np.ndarray, np.ndarray]]:
        """The MLP fits ``choose(rows, fold_of)`` needs, one per inner fold (none without an MLP
        candidate or a choice)."""
        if fold_of is None or ("mlp",) not in cands:
            return []
        y, x = accs[rows] - accs[rows].mean(), xs_all[""][rows]
        trains = [fold_of != f for f in range(int(fold_of.max()) + 1)]
        return [(x[tr], y[tr] - y[tr].mean()) for tr in trains]

    def choose(rows: np.ndarray, fold_of: np.ndarray | None,
               mlp_states: list[dict[str, np.ndarray]]) -> tuple[tuple, dict[str, float]]:
        """The candidate with the lowest cross-validated RMSE on ``rows`` only (folds
        ``fold_of``; the MLP's fits per fold given, from ``inner_jobs``)."""
        if fold_of is None:
            return cands[0], {}
        y = accs[rows] - accs[rows].mean()
        cv: dict[str, float] = {}
        for cand in cands:
            err = np.empty(len(rows))
            x = xs_all[enc_of(cand)][rows]
            for f in range(int(fold_of.max()) + 1):
                tr, va = fold_of != f, fold_of == f
                mu = y[tr].mean()
                st = mlp_states[f] if cand[0] == "mlp" else fit_ridge(x[tr], y[tr] - mu, cand[1])
                p = AccuracyPredictor(encs[enc_of(cand)], hidden_of(cand), st, mu).predict_features(x[va])
                err[va] = p - y[va]
            cv[_cand_name(cand)] = _rmse(err, 0.0)
        return min(cands, key=lambda c: cv[_cand_name(c)]), cv

    def chosen_for(row_sets: list[np.ndarray]) -> list[tuple[tuple, dict[str, float]]]:
        """``choose`` on each row set, every MLP fit of all of them trained side by side; the
        inner folds are drawn in the order of ``row_sets``."""
        fold_ofs = [inner_folds(rows) for rows in row_sets]
        jobs = [inner_jobs(rows, fo) for rows, fo in zip(row_sets, fold_ofs)]
        states = mlp_fits([j for js in jobs for j in js])
        out, at = [], 0
        for rows, fo, js in zip(row_sets, fold_ofs, jobs):
            out.append(choose(rows, fo, states[at:at + len(js)]))
            at += len(js)
        return out

    def fitted_many(pairs: list[tuple[tuple, np.ndarray]], show: bool = False) -> list[AccuracyPredictor]:
        """Each ``(candidate, rows)`` fitted on its rows; the MLP ones side by side."""
        mus = [float(accs[rows].mean()) for _, rows in pairs]
        mlp = [i for i, (cand, _) in enumerate(pairs) if cand[0] == "mlp"]
        states = dict(zip(mlp, mlp_fits([(xs_all[""][pairs[i][1]], accs[pairs[i][1]] - mus[i]) for i in mlp], show)))
        return [AccuracyPredictor(encs[enc_of(cand)], hidden_of(cand),
                                  states[i] if i in states else fit_ridge(xs_all[enc_of(cand)][rows],
                                                                          accs[rows] - mus[i], cand[1]), mus[i])
                for i, (cand, rows) in enumerate(pairs)]

    def resplit(cand: tuple) -> dict[str, float] | None:
        """Held-out Kendall tau and RMSE / the mean's RMSE of ``cand`` refitted on
        ``resplits`` more random splits (mean, min, max), or None for fewer than 2."""
        if resplits < 2:
            return None
        splits = [split_indices(n, test_frac, rng) for _ in range(resplits)]
        taus, ratios = [], []
        for (_, te), fp in zip(splits, fitted_many([(cand, tr) for tr, _ in splits])):
            p, base = fp.predict_features(xs_all[enc_of(cand)][te]), _rmse(fp.offset, accs[te])
            taus.append(kendall_tau(p, accs[te]))
            ratios.append(_rmse(p, accs[te]) / base if base > 0 else float("nan"))
        return {"n": resplits, "kendall_tau_mean": float(np.mean(taus)), "kendall_tau_min": float(np.min(taus)),
                "kendall_tau_max": float(np.max(taus)), "rmse_ratio_mean": float(np.mean(ratios)),
                "rmse_ratio_min": float(np.min(ratios)), "rmse_ratio_max": float(np.max(ratios))}

    widths = tuple(sorted({float(c.w) for c in subnets}))
    if evaluation == "split":
        train_idx, test_idx = split_indices(n, test_frac, rng)
        [(best, cv)] = chosen_for([train_idx])
        [pred] = fitted_many([(best, train_idx)], progress)
        x = xs_all[enc_of(best)]
        p_test, p_train = pred.predict_features(x[test_idx]), pred.predict_features(x[train_idx])
        metrics = {
            "evaluation": "split",
            "rmse": _rmse(p_test, accs[test_idx]),
            "kendall_tau": kendall_tau(p_test, accs[test_idx]),
            "train_rmse": _rmse(p_train, accs[train_idx]),
            "baseline_rmse": _rmse(pred.offset, accs[test_idx]),
            "n_train": int(len(train_idx)), "n_test": int(len(test_idx)),
            "model": _cand_name(best), "cv_rmse": cv,
            "resplits": resplit(best),
        }
    else:
        k_out = max(2, min(n, int(round(1.0 / test_frac))))
        fold_of = rng.permutation(n) % k_out
        outer = [(np.flatnonzero(fold_of != f), np.flatnonzero(fold_of == f)) for f in range(k_out)]
        everything = np.arange(n)
        # every model choice (each outer fold's, then all rows') with its MLP fits at once,
        # then the chosen models' fits at once: the same draws and fits as one by one
        *choices, (best, cv) = chosen_for([tr for tr, _ in outer] + [everything])
        *fold_preds, pred = fitted_many([(cand, tr) for (cand, _), (tr, _) in zip(choices, outer)]
                                        + [(best, everything)], progress)
        oof, oof_mean = np.empty(n), np.empty(n)
        per_fold: list[dict[str, Any]] = []
        for (cand, _), (tr, te), fp in zip(choices, outer, fold_preds):
            oof[te] = fp.predict_features(xs_all[enc_of(cand)][te])
            oof_mean[te] = fp.offset
            per_fold.append({"rows": int(len(te)), "model": _cand_name(cand),
                             "kendall_tau": _finite_or_none(kendall_tau(oof[te], accs[te]))})
        p_all = pred.predict_features(xs_all[enc_of(best)])
        taus = [r["kendall_tau"] for r in per_fold if r["kendall_tau"] is not None]
        metrics = {
            "evaluation": f"{k_out}-fold nested cross-validation",
            "rmse": _rmse(oof, accs),
            "kendall_tau": kendall_tau(oof, accs),
            "train_rmse": _rmse(p_all, accs),
            "baseline_rmse": _rmse(oof_mean, accs),
            "n_train": int(n), "n_test": int(n),
            "model": _cand_name(best), "cv_rmse": cv,
            "folds": {"k": k_out, "per_fold": per_fold,
                      "kendall_tau_mean": float(np.mean(taus)) if taus else None,
                      "kendall_tau_min": float(np.min(taus)) if taus else None,
                      "kendall_tau_max": float(np.max(taus)) if taus else None},
        }
    pred.widths, pred.space_name = widths, space.name
    pred.metrics = {**metrics, "epochs": int(epochs), "train_seconds": round(time.time() - t0, 2)}
    return pred


def _finite_or_none(v: float) -> float | None:
    """``v``, or None where it is NaN or infinite (a fold of one row has no tau): JSON-safe."""
    return float(v) if math.isfinite(v) else None


def _rmse(p: np.ndarray | float, y: np.ndarray) -> float:
    """Root mean square of ``p - y``."""
    return float(np.sqrt(np.mean((p - y) ** 2)))


def _cand_name(cand: tuple) -> str:
    if cand[0] == "mlp":
        return "mlp"
    return f"ridge(lambda={cand[1]:g}{', x resolution' if len(cand) > 2 and cand[2] else ''})"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m search.predictor", description="Train an accuracy predictor on collected (subnet, accuracy) rows.")
    ap.add_argument("--data", required=True, help="accuracy CSV from search.collect (columns subnet, acc), or a run folder holding accuracy.csv")
    ap.add_argument("--space", default=None, help="search space name (default: the run's, else fmnist)")
    ap.add_argument("--out", default=None, help="model file (default: predictor.pt beside the data)")
    ap.add_argument("--epochs", type=int, default=300)
    ap.add_argument("--hidden", default="400,400,400", help="hidden sizes, comma separated")
    ap.add_argument("--model", default="auto", choices=MODELS,
                    help="mlp, ridge, or auto: the lower cross-validated RMSE on the train split (default)")
    ap.add_argument("--evaluation", default="cv", choices=EVALUATIONS,
                    help="cv: nested cross-validation, every row predicted by a model that did not see it, and the "
                         "predictor then fitted on all rows (default); split: one seeded train / held-out split")
    ap.add_argument("--test-frac", type=float, default=0.2,
                    help="held-out fraction (split), one outer fold's share (cv; 0.2 = 5 folds)")
    ap.add_argument("--seed", type=seed_arg, default=0)
    ap.add_argument("--json", action="store_true", help="print the metrics as one JSON object")
    args = ap.parse_args(argv)
    if args.epochs < 1:
        ap.error(f"--epochs must be at least 1, got {args.epochs}")
    data = Path(args.data)
    if data.is_dir():
        data = data / "accuracy.csv"
    try:
        space = get_space(args.space or _space_of_run(data.parent) or "fmnist")
        try:
            hidden = tuple(int(h) for h in args.hidden.split(",") if h.strip())
            if not hidden or min(hidden) < 1:
                raise ValueError
        except ValueError:
            raise ValueError(f"--hidden must be a comma list of layer sizes of at least 1, got {args.hidden!r}") from None
        subnets, accs = read_accuracy_csv(data, space)
        out = Path(args.out) if args.out else data.parent / "predictor.pt"
        ensure_writable_folder(out.parent, "--out folder")
        pred = train_predictor(subnets, accs, space, np.random.default_rng(args.seed), hidden=hidden,
                               epochs=args.epochs, test_frac=args.test_frac, progress=not args.json,
                               model=args.model, evaluation=args.evaluation)
    except ValueError as exc:
        ap.error(str(exc))
    pred.save(out)
    m = pred.metrics
    if args.json:
        print(json.dumps({"predictor": str(out), **m}))
    else:
        print(f"{m['model']}: held-out RMSE {m['rmse'] * 100:.2f} pp (predicting the mean: {m['baseline_rmse'] * 100:.2f} pp), "
              f"Kendall tau {m['kendall_tau']:.3f}  [{held_out_words(m)}]")
        fo = m.get("folds")
        if fo and fo.get("kendall_tau_mean") is not None:
            print(f"per fold: Kendall tau {fo['kendall_tau_mean']:.3f} [{fo['kendall_tau_min']:.3f}, "
                  f"{fo['kendall_tau_max']:.3f}] over {fo['k']} folds of about {m['n_test'] // fo['k']} rows")
        rs = m.get("resplits")
        if rs:
            print(f"refitted on {rs['n']} other random splits: Kendall tau {rs['kendall_tau_mean']:.3f} "
                  f"[{rs['kendall_tau_min']:.3f}, {rs['kendall_tau_max']:.3f}], RMSE {rs['rmse_ratio_mean']:.3f}x "
                  f"[{rs['rmse_ratio_min']:.3f}, {rs['rmse_ratio_max']:.3f}] the mean's")
        print(f"wrote {out} and {out.with_suffix('.json')}")
    return 0


def held_out_words(m: dict[str, Any]) -> str:
    """How the held-out figures of metrics ``m`` were taken, in words."""
    if m.get("folds"):
        return (f"{m['evaluation']}: each of the {m['n_test']} rows predicted by a model that did not see it; "
                f"the predictor fitted on all {m['n_train']}")
    return f"{m['n_train']} train / {m['n_test']} held-out rows"


def _space_of_run(run: Path) -> str | None:
    """The space name recorded in a run folder's config, if any."""
    for name in ("accuracy.config.json", "config.json", "config.yaml", "config.yml"):
        p = run / name
        if p.is_file():
            try:
                if p.suffix == ".json":
                    cfg = json.loads(p.read_text())
                else:
                    import yaml

                    cfg = yaml.safe_load(p.read_text())
            except Exception:
                return None
            if isinstance(cfg, dict):
                sp = cfg.get("space")
                return sp if isinstance(sp, str) else None
    return None


if __name__ == "__main__":
    run_main(main, "search.predictor", "no predictor was written (an earlier one is kept as it was)")
