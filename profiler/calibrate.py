"""Real-image calibration of int8 blocks (issue 16, ``profiler.run --data``).

Without ``--data`` every int8 block is calibrated on seeded random inputs of its input shape
(``profiler.quantize.calibration_inputs``).  With ``--data SPEC`` each block is calibrated on
what it sees in a network: real images of the dataset's training split, carried to the
block's input by the stem and the earlier blocks of the space's **largest subnet** at the
block's resolution and width (a block of another kernel or expand ratio at the same place
sees the same input: its input depends only on the blocks before it, taken from the largest
subnet, which is the approximation).  Whose weights carry them:

- ``--calib-run RUN``: the trained supernet of a ``supernet.train`` run folder (its space
  must be the profiled one), its largest subnet extracted and its BatchNorm recalibrated on
  the run's recalibration images, as ``supernet.eval`` does;
- without it: a freshly initialised supernet (seeded), its BatchNorm statistics set on 256
  real images, so that each layer's activations have a trained network's scale (normalised
  per channel) though not its features.

A block is matched to the largest subnet's block of the same kind, input shape, stride and
residual (then kind and input shape, then input shape alone: the overhead probes); a block
nothing matches (and every ``stream`` probe) keeps random calibration, and its row says so.  The activations are computed
once, in the parent process, and stored in the artifact cache under
``calib/<id>/<block>.npy`` beside a ``label.txt``; the int8 artifacts' cache version carries
the id (``-cal<id>``), so random- and real-calibrated artifacts never share a cache entry.
``quant_calibration`` in each LUT row names what the block was calibrated on.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

CALIB_DIR = "calib"
BN_IMAGES = 256  # real images that set an untrained supernet's BN statistics


class CalibrationError(ValueError):
    """A dataset or run that cannot calibrate the profiled space; one line naming it."""


def calibration_id(data: str | None, run: Path | None, n: int, seed: int) -> str:
    """A short, stable name of one calibration source (part of the int8 cache version)."""
    what = f"{data or ''}|{Path(run).resolve() if run else ''}|{n}|{seed}"
    if run is not None:  # a retrained run in the same folder is another calibration
        f = Path(run) / "supernet.pt"
        if f.is_file():
            st = f.stat()
            what += f"|{st.st_size}|{st.st_mtime_ns}"
    return hashlib.sha256(what.encode()).hexdigest()[:12]


def calibration_file(artifact: Path) -> Path | None:
    """For an int8 artifact ``<cache>/<format>/<version>/<stem>.<ext>`` whose version carries a
    calibration id (``...-cal<id>``): ``<cache>/calib/<id>/<stem>.npy``; None for random
    calibration."""
    artifact = Path(artifact)
    version = artifact.parent.name
    if "-cal" not in version:
        return None
    cal = version.rsplit("-cal", 1)[1]
    return artifact.parents[2] / CALIB_DIR / cal / f"{artifact.stem}.npy"


def load_calibration(artifact: Path) -> tuple[list[np.ndarray], str] | None:
    """(one NCHW float32 array of batch 1 per sample, label) stored for ``artifact``'s block,
    or None (random calibration: none stored, or no real activation matched the block)."""
    f = calibration_file(artifact)
    if f is None or not f.is_file():
        return None
    arr = np.load(f, allow_pickle=False)
    label = (f.parent / "label.txt").read_text().strip()
    return [np.ascontiguousarray(arr[i:i + 1], dtype=np.float32) for i in range(len(arr))], label


def _carrier(space, data_spec: str | None, run: Path | None, n: int, seed: int):
    """``at(r, w) -> (static network of the largest subnet at (r, w) with real BN statistics,
    n images at r)``, the run and the dataset loaded once."""
    import torch

    from supernet.data import DataError, resize
    from supernet.evaluation import CheckpointError, load_run, recalibrate_bn

    if run is not None:
        try:
            sup, evaluator, _ckpt = load_run(Path(run), data=data_spec, device="cpu", amp="off", allocator="system")
        except (CheckpointError, DataError) as exc:
            raise CalibrationError(f"--calib-run {run}: {exc}") from None

        def at_run(r: int, w: float):
            cfg = space.max_subnet(r=r, w=w)
            try:
                got = [str(b) for b in sup.space.blocks(sup.space.max_subnet(r=r, w=w))]
            except ValueError:
                got = None
            if got != [str(b) for b in space.blocks(cfg)]:
                raise CalibrationError(f"--calib-run {run}: its space {sup.space.name} is not the profiled space "
                                       f"{space.name} (their largest subnets differ at {r} px, width {w})")
            return evaluator.subnet(cfg).float().cpu().eval(), torch.from_numpy(evaluator.calibration_array(r, n))

        return at_run
    from supernet.ofa import OFASupernet

    if not data_spec:
        raise CalibrationError("real-image calibration needs --data (or --calib-run, whose dataset it uses)")
    base = _recal_images(space, data_spec, n, seed, BN_IMAGES)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        sup = OFASupernet(space)

    def at_fresh(r: int, w: float):
        batches = [resize(x, r) for x in base]
        net = sup.extract(space.max_subnet(r=r, w=w)).float()
        with torch.no_grad():
            recalibrate_bn(net, batches)
        return net.eval(), torch.cat(batches)[:n]

    return at_fresh


def _signatures(spec) -> list[tuple]:
    """How a profiled block is matched to a block of the largest subnet, most specific first
    (none for a ``stream`` probe: a chain of orthogonal layers that no network holds keeps
    its seeded random calibration, whatever shares its input shape)."""
    if spec.kind == "stream":
        return []
    shape = (spec.in_h, spec.in_w, spec.in_c)
    return [(spec.kind, *shape, spec.stride, spec.residual), (spec.kind, *shape), shape]


def block_activations(space, specs: Sequence, data_spec: str | None, run: Path | None = None, n: int = 8,
                      seed: int = 0) -> tuple[dict[str, np.ndarray], str]:
    """``{block key: n x C x H x W float32 array}`` of the real inputs of ``specs`` (those a
    largest subnet's block matches) and the label of this calibration.  Raises
    CalibrationError."""
    import torch

    if n < 1:
        raise CalibrationError("--calib-images must be at least 1")
    # every (resolution, width) the profiled blocks come from
    found: dict[tuple, np.ndarray] = {}
    resolutions = sorted({s.in_h for s in specs if s.kind == "first_conv"}) or list(space.resolutions)
    widths = _widths_of(space, specs)
    at = _carrier(space, data_spec, run, n, seed)
    for r in resolutions:
        for w in widths:
            net, images = at(r, w)
            x = images.float()
            with torch.no_grad():
                for block, module in zip(space.blocks(space.max_subnet(r=r, w=w)), net):
                    new = [sig for sig in _signatures(block) if sig not in found]
                    if new:  # one copy per block, shared by its signatures
                        arr = x.numpy().copy()
                        found.update((sig, arr) for sig in new)
                    x = module(x)
    out = {}
    for s in specs:
        for sig in _signatures(s):
            if sig in found:
                out[str(s)] = found[sig]
                break
    source = f"supernet run {Path(run).name}" if run is not None else "an untrained supernet (BN set on real images)"
    label = f"real images n={n} ({data_spec or 'the run dataset'}) through the largest subnet of {source}"
    return out, label


def _recal_images(space, data_spec: str, n: int, seed: int, batch: int) -> list:
    """The first ``max(BN_IMAGES, n)`` images of the dataset's seeded recalibration split
    (its channels repeated to the space's), in batches of ``batch``, unaugmented.  Raises
    CalibrationError naming ``--data``."""
    from supernet.data import DataError, eval_batches, load_data

    try:
        data = load_data(data_spec, valid_size=1000, recal_size=max(BN_IMAGES, n), seed=seed,
                         base_resolution=max(space.resolutions)).with_channels(space.in_channels)
        return [x for x, _ in eval_batches(data.recal, batch, max(BN_IMAGES, n))]
    except DataError as exc:
        raise CalibrationError(f"--data {data_spec}: {exc}") from None


def network_inputs(space, data_spec: str, n: int, resolutions: Iterable[int],
                   seed: int = 0) -> tuple[dict[int, list[np.ndarray]], str]:
    """Real calibration inputs of whole networks (``profiler.validate --precision int8
    --data``): the first ``n`` images of the dataset's recalibration split (the same seeded
    split ``block_activations`` draws from), at each resolution, as one NCHW float32 array of
    batch 1 per image, with the calibration's label.  A network's input is the image itself,
    so nothing carries them.  Raises CalibrationError."""
    from supernet.data import resize

    if n < 1:
        raise CalibrationError("--calib-images must be at least 1")
    x = _recal_images(space, data_spec, n, seed, n)[0]  # the first n
    out = {}
    for r in sorted(set(resolutions)):
        arr = resize(x.float(), r).numpy()
        out[r] = [np.ascontiguousarray(arr[i:i + 1], dtype=np.float32) for i in range(len(arr))]
    return out, f"real images n={len(x)} ({data_spec}) as the network's input"


def _widths_of(space, specs: Iterable) -> list[float]:
    """The width multipliers whose first convolution's channels appear among ``specs``."""
    firsts = {s.out_c for s in specs if s.kind == "first_conv"}
    ws = [w for w in space.width_mults if space.widths(w).first_conv in firsts]
    return ws or [space.default_width]


def write_calibration(cache_root: Path, cal_id: str, acts: dict[str, np.ndarray], label: str,
                      asked: Iterable[str] = ()) -> Path:
    """Store ``acts`` under ``<cache>/calib/<cal_id>/`` (atomically, file by file), then a
    manifest of the blocks asked for and those matched (``stored``)."""
    from supernet.atomic import atomic_write_bytes, atomic_write_text

    from .export import _file_stem

    d = Path(cache_root) / CALIB_DIR / cal_id
    d.mkdir(parents=True, exist_ok=True)
    for key, arr in acts.items():
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(arr, dtype=np.float32), allow_pickle=False)
        atomic_write_bytes(d / f"{_file_stem(key)}.npy", buf.getvalue())
    atomic_write_text(d / "label.txt", label + "\n")
    old = stored(cache_root, cal_id)
    manifest = {"label": label, "asked": sorted(set(asked) | set(old[0] if old else ())),
                "matched": sorted(set(acts) | set(old[1] if old else ()))}
    atomic_write_text(d / "manifest.json", json.dumps(manifest) + "\n")
    return d


def stored(cache_root: Path, cal_id: str) -> tuple[set[str], set[str], str] | None:
    """(blocks asked for, blocks matched, label) of a stored calibration, or None."""
    f = Path(cache_root) / CALIB_DIR / cal_id / "manifest.json"
    try:
        m = json.loads(f.read_text())
        return set(m["asked"]), set(m["matched"]), str(m["label"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


__all__ = ["CalibrationError", "calibration_id", "calibration_file", "load_calibration", "block_activations",
           "network_inputs",
           "write_calibration", "stored", "CALIB_DIR"]
