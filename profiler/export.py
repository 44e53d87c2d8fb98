"""Exporter: ``BlockSpec`` (or a whole subnet) to ONNX and TFLite, cached on disk.

- ONNX: ``torch.onnx.export`` with the TorchScript exporter (``dynamo=False``), NCHW in and
  out, one self-contained file, run with onnxruntime.  Chosen by measurement (issue 11):
  0.035 s a block against 1.29 s for ``dynamo=True`` on the same 10 fmnist blocks, one
  thread, idle machine, outputs equal to PyTorch's within 3e-7 either way
  (``ONNX_EXPORTER = "dynamo"`` brings the other back; the name is part of the artifact
  version, so the two never share a cache entry).
- TFLite: litert-torch converts PyTorch directly; inputs and outputs are NHWC
  (``litert_torch.to_channel_last_io``), so a block's graph has no TRANSPOSE, as a Keras
  model's would not.  Global pooling is written channel-last directly, because the layout
  pass leaves a transpose around a lone MEAN.  Up to ``TFLITE_BATCH`` blocks are converted
  in one call (one module, one input and output per block) and the result is split into
  one model per block (``profiler.tflite_split``): the same operators, weights and outputs
  as converting each alone, at a fraction of the time.

Both exporters are handed the module with each convolution's BatchNorm folded into it
(``supernet.ops.fold_bn``), as both runtimes' graphs have it anyway: the same operators and
constant buffers, bit for bit, in the .tflite (read from the flatbuffers), and a
litert-torch conversion 1.5x faster (26 s against 38.5 s for three Fashion-MNIST networks,
AVX2-only EPYC, 2026-12-07), since every BatchNorm it is given is decomposed and traced
three times before being folded.

int8 artifacts (formats ``onnx-int8`` and ``tflite-int8``, issue 16) are quantized from the
block's fp32 artifact by ``profiler.quantize``; their version adds the quantizer's.

Artifacts are cached by block key, format and exporter version
(``<cache>/<format>/<version>/<key>.<ext>``): a second run exports nothing.  Each file is
written to a temporary name and renamed, so a killed export never leaves a half file.

Weights are random but deterministic per key (latency does not depend on their values; the
seed keeps artifacts reproducible).  Heavy imports happen inside the functions.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

from supernet.atomic import mode_for
from supernet.cliargs import usable_cores
from supernet.space import BlockSpec, SearchSpace, SubnetConfig

EXPORTER_REV = 1
FORMATS = ("onnx", "tflite", "onnx-int8", "tflite-int8")
RUNTIME_FORMAT = {"onnxruntime": "onnx", "tflite": "tflite"}
ONNX_OPSET = 18
ONNX_EXPORTER = "torchscript"  # or "dynamo" (torch.onnx.export(dynamo=True)); see the docstring
# TFLite blocks converted in one litert-torch call and split apart (``profiler.tflite_split``):
# its cost is mostly per call, so blocks converted together cost about 0.9 s a block against
# about 1.5 s one by one (issue 11).  At most this many a call; a chunk that fails is converted
# block by block.
TFLITE_BATCH = 48


def default_cache_dir() -> Path:
    return Path(os.environ.get("HWNAS_CACHE", "cache")) / "artifacts"


def base_format(fmt: str) -> str:
    """``tflite-int8`` -> ``tflite``: the fp32 format an int8 one is quantized from, and the
    artifact's extension; an fp32 format is its own base."""
    return fmt.split("-", 1)[0]


def precision_of(fmt: str) -> str:
    return "int8" if fmt.endswith("-int8") else "fp32"


def format_for_runtime(runtime: str, precision: str = "fp32") -> str:
    """The artifact format ``runtime`` runs in ``precision`` (fp32 or int8)."""
    try:
        fmt = RUNTIME_FORMAT[runtime]
    except KeyError:
        raise ValueError(f"unknown runtime {runtime!r} (known: {', '.join(RUNTIME_FORMAT)})") from None
    if precision == "fp32":
        return fmt
    if precision == "int8":
        return f"{fmt}-int8"
    raise ValueError(f"unknown precision {precision!r} (known: fp32, int8)")


# the code that decides what an artifact holds: the block and network builder, the export and
# split, the quantization.  A change to any of them is a new cache version (a manual
# EXPORTER_REV bump was once forgotten, and old networks were reused after the builder changed)
_SOURCES = {"fp32": ("supernet/ops.py", "profiler/export.py", "profiler/tflite_split.py"),
            "int8": ("profiler/quantize.py", "profiler/calibrate.py")}


def source_rev(kind: str) -> str:
    """Short hash of the sources in ``_SOURCES[kind]`` (part of the cache version)."""
    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha1()
    for rel in _SOURCES[kind]:
        h.update((root / rel).read_bytes())
    return h.hexdigest()[:10]


def exporter_version(fmt: str) -> str:
    """A string that changes whenever an artifact of ``fmt`` could change: the converters'
    versions, the exporter settings and a hash of our own code that builds artifacts."""
    from importlib.metadata import version

    if precision_of(fmt) == "int8" and fmt in FORMATS:
        from .quantize import quantizer_version

        return f"{exporter_version(base_format(fmt))}-{quantizer_version(fmt)}-src{source_rev('int8')}"
    torch_v = version("torch")
    if fmt == "onnx":
        return f"torch{torch_v}-{ONNX_EXPORTER}-opset{ONNX_OPSET}-rev{EXPORTER_REV}-src{source_rev('fp32')}"
    if fmt == "tflite":
        return f"torch{torch_v}-litert_torch{version('litert-torch')}-rev{EXPORTER_REV}-src{source_rev('fp32')}"
    raise ValueError(f"unknown format {fmt!r} (known: {', '.join(FORMATS)})")


def _file_stem(key: str) -> str:
    stem = key.replace(":", "")
    if len(stem) > 180:  # keep names well under filesystem limits
        stem = stem[:120] + "-" + hashlib.sha1(key.encode()).hexdigest()[:16]
    return stem


def artifact_path(cache_dir: Path, key: str, fmt: str, version: str | None = None) -> Path:
    """``<cache>/<format>/<version>/<key>.<ext>``; the extension is the runtime's (``.tflite``
    for ``tflite-int8`` too)."""
    version = version or exporter_version(fmt)
    return Path(cache_dir) / fmt / version / f"{_file_stem(key)}.{base_format(fmt)}"


def fp32_twin(path: Path, key: str, fmt: str) -> Path:
    """The fp32 artifact in the same cache that the int8 artifact ``path`` (of ``key`` and
    ``fmt``) is quantized from."""
    path = Path(path)
    if path.parents[1].name != fmt:
        raise ValueError(f"{path}: not an artifact of format {fmt} in a cache")
    return artifact_path(path.parents[2], key, base_format(fmt))


@contextlib.contextmanager
def quiet_fds() -> Iterator[Path]:
    """Send file descriptors 1 and 2 (Python and C++ writers alike) to a temporary file for
    the duration; the converters print progress and absl logs there.  Yields the file's path
    so an error message can quote its tail (inside the block: the file is removed on the way
    out, so that thousands of exports and quantizations leave no logs behind in /tmp)."""
    with tempfile.NamedTemporaryFile("w+b", suffix=".log", delete=False) as log:
        path = Path(log.name)
    import sys

    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    try:
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        yield path
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for f in (fd, *saved):
            os.close(f)
        path.unlink(missing_ok=True)


def _tail(path: Path, n: int = 400) -> str:
    try:
        text = path.read_text(errors="replace").strip()
    except OSError:
        return ""
    return text[-n:].replace("\n", " | ")


def _seed_for(key: str) -> int:
    return int.from_bytes(hashlib.sha1(key.encode()).digest()[:4], "little")


def _random_bn_statistics(module) -> None:
    """Non-trivial BN statistics, so that a test comparing outputs exercises them, and so that
    no two folded biases are equal: at the default statistics every BN of a width folds to the
    same zero bias, the exporter shares one initializer between those convolutions, and
    onnxruntime's QDQ quantizer then leaves them in float (measured: 15 of 50 convolutions of a
    48-px fmnist network, 3x the int8 block sum)."""
    import torch

    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)


def block_module(spec: BlockSpec):
    """The block's module in eval mode, with deterministic weights and BN statistics."""
    import torch

    from supernet.ops import build_block

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_seed_for(str(spec)))
        module = build_block(spec).eval()
        _random_bn_statistics(module)
    return module


class _PoolNHWC:  # built lazily so that torch is imported only when exporting
    @staticmethod
    def make():
        import torch

        class PoolNHWC(torch.nn.Module):
            """Global average pooling of an NHWC tensor, keeping dims: (N,H,W,C) -> (N,1,1,C)."""

            def forward(self, x):
                return x.mean((1, 2), keepdim=True)

        return PoolNHWC().eval()


def _write_atomic(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, mode_for(path))  # mkstemp made it 0600; an artifact is an ordinary file
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def export_onnx(module, example, path: Path) -> None:
    """Export ``module`` traced on ``example`` (NCHW) to one self-contained ONNX file."""
    import torch

    from supernet.ops import fold_bn

    module = fold_bn(module)

    def write(tmp: Path) -> None:
        with quiet_fds() as log:
            try:
                if ONNX_EXPORTER == "dynamo":
                    torch.onnx.export(module, (example,), str(tmp), dynamo=True, external_data=False,
                                      opset_version=ONNX_OPSET, verify=False, report=False)
                else:
                    torch.onnx.export(module, (example,), str(tmp), dynamo=False, opset_version=ONNX_OPSET,
                                      input_names=["input"], output_names=["output"])
            except Exception as exc:
                raise RuntimeError(f"ONNX export failed: {exc.__class__.__name__}: {exc} [{_tail(log)}]") from None

    _write_atomic(path, write)


def export_tflite(module, example_nchw, path: Path, nhwc_module=None) -> None:
    """Convert ``module`` to TFLite with NHWC input and (for 4-D outputs) NHWC output.
    ``nhwc_module``, when given, is a module that already takes NHWC and is converted as is."""
    import litert_torch
    import torch

    from supernet.ops import fold_bn

    x_nhwc = example_nchw.permute(0, 2, 3, 1).contiguous()
    if nhwc_module is None:
        module = fold_bn(module)
        with torch.no_grad():
            out_dims = module(example_nchw).dim()
        nhwc_module = litert_torch.to_channel_last_io(
            module, args=[0], outputs=[0] if out_dims == 4 else []
        ).eval()

    def write(tmp: Path) -> None:
        with quiet_fds() as log:
            try:
                edge = litert_torch.convert(nhwc_module, (x_nhwc,))
                edge.export(str(tmp))
            except Exception as exc:
                raise RuntimeError(f"TFLite conversion failed: {exc.__class__.__name__}: {exc} [{_tail(log)}]") from None

    _write_atomic(path, write)


def export_block(spec: BlockSpec, fmt: str, path: Path) -> Path:
    """Export one block to ``path`` (atomically)."""
    import torch

    module = block_module(spec)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_seed_for(str(spec)) + 1)
        example = torch.randn(spec.input_shape)
    if fmt == "onnx":
        export_onnx(module, example, path)
    elif fmt == "tflite":
        nhwc = _PoolNHWC.make() if spec.kind == "pool" else None
        export_tflite(module, example, path, nhwc_module=nhwc)
    else:
        raise ValueError(f"unknown format {fmt!r} (known: {', '.join(FORMATS)})")
    return path


def export_tflite_many(modules: Sequence, examples: Sequence, paths: Sequence[Path], what: str = "blocks") -> None:
    """Convert ``modules`` (each called on its NCHW example) in one litert-torch call and
    write each one's own model to its path (atomically): NHWC input and, for a 4-D output,
    NHWC output, as ``export_tflite`` gives one alone.  Raises on any failure; nothing is
    written then."""
    import litert_torch
    import torch

    from supernet.ops import fold_bn

    from .tflite_split import split_model

    class Many(torch.nn.Module):
        def __init__(self, parts):
            super().__init__()
            self.parts = torch.nn.ModuleList(parts)

        def forward(self, *xs):
            return tuple(m(x) for m, x in zip(self.parts, xs))

    modules = [fold_bn(m) for m in modules]
    n = len(modules)
    with torch.no_grad():
        four_d = [i for i, (m, x) in enumerate(zip(modules, examples)) if m(x).dim() == 4]
    nhwc = litert_torch.to_channel_last_io(Many(modules).eval(), args=list(range(n)), outputs=four_d).eval()
    with quiet_fds() as log, tempfile.TemporaryDirectory(prefix="hwnas-tflite-batch-") as tmp:
        try:
            edge = litert_torch.convert(nhwc, tuple(x.permute(0, 2, 3, 1).contiguous() for x in examples))
            combined = Path(tmp) / "many.tflite"
            edge.export(str(combined))
            parts = split_model(combined.read_bytes(), n)
        except Exception as exc:
            raise RuntimeError(f"TFLite conversion of {n} {what} failed: {exc.__class__.__name__}: {exc} "
                               f"[{_tail(log)}]") from None
    for path, data in zip(paths, parts):
        _write_atomic(Path(path), lambda tmp, data=data: tmp.write_bytes(data))


def export_tflite_blocks(specs: Sequence[BlockSpec], paths: Sequence[Path]) -> None:
    """Convert ``specs`` (no pooling blocks) in one litert-torch call and write each block's
    own model to its path (atomically).  Each block gets the weights and example input
    ``export_block`` would give it.  Raises on any failure; nothing is written then."""
    import torch

    if any(s.kind == "pool" for s in specs):
        raise ValueError("pooling blocks are converted one by one (channel-last module)")
    modules, examples = [], []
    for spec in specs:
        modules.append(block_module(spec))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_seed_for(str(spec)) + 1)
            examples.append(torch.randn(spec.input_shape))
    export_tflite_many(modules, examples, paths)


def batchable(key: str, fmt: str) -> bool:
    """Whether (key, fmt) may be converted together with others (``export_tflite_blocks``;
    an int8 TFLite block's fp32 model is converted that way)."""
    return fmt in ("tflite", "tflite-int8") and BlockSpec.parse(key).kind != "pool"


def plan_tasks(items: Sequence[tuple[str, str]], workers: int) -> list[list[tuple[str, str]]]:
    """Group export items into tasks: one item each, except TFLite blocks, which go in chunks
    of at most ``TFLITE_BATCH``, as few as keep every one of ``workers`` processes busy to the
    end (chunks of equal size, their number a multiple of ``workers``)."""
    single = [[it] for it in items if not batchable(*it)]
    batch = [it for it in items if batchable(*it)]
    if not batch:
        return single
    w = max(1, workers)
    chunks = w * -(-len(batch) // (w * TFLITE_BATCH))  # a multiple of the workers: none idles at the end
    size = -(-len(batch) // chunks)
    return [batch[i:i + size] for i in range(0, len(batch), size)] + single


def network_module(space: SearchSpace, cfg: SubnetConfig):
    """The static network of ``cfg`` with the random weights every export of it gets."""
    import torch

    from supernet.ops import build_network

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_seed_for(cfg.to_json()))
        module = build_network(space, cfg).eval()
        _random_bn_statistics(module)
        return module


def export_network(space: SearchSpace, cfg: SubnetConfig, fmt: str, path: Path, module=None) -> Path:
    """Export a whole subnet (NCHW ONNX, or NHWC-input TFLite).  ``module`` defaults to the
    static network with random weights built by the same block builder."""
    import torch

    module = network_module(space, cfg) if module is None else module
    example = torch.randn(1, space.in_channels, cfg.r, cfg.r)
    if fmt == "onnx":
        export_onnx(module.eval(), example, path)
    elif fmt == "tflite":
        export_tflite(module.eval(), example, path)
    else:
        raise ValueError(f"unknown format {fmt!r} (known: {', '.join(FORMATS)})")
    return path


def export_networks(space: SearchSpace, cfgs: Sequence[SubnetConfig], fmt: str, paths: Sequence[Path],
                    done: Callable[[int], None] | None = None,
                    fp32_paths: Sequence[Path] | None = None,
                    calibration: Callable[[SubnetConfig], tuple[list, str]] | None = None,
                    workers: int = 1) -> list[str]:
    """Export each subnet to its path as ``export_network`` does; TFLite networks in chunks of
    up to ``TFLITE_BATCH`` (one litert-torch call each, split afterwards), a chunk that fails
    network by network.  ``done(n)`` hears of every n networks finished.  Returns one error
    string per network ('' when it was written).

    ``workers`` > 1 converts TFLite networks in that many processes (spawned, one thread
    each, gone with their parent, as the profiler's block exports), each a share of the
    networks: a litert-torch conversion is single-threaded Python, 10 s a Fashion-MNIST
    network on the AVX2 host, where 20 networks took 201 s in one process.  The networks'
    weights are seeded by their configurations (``network_module``), so a worker's model
    computes what this process's would (outputs bit-identical, measured; the files' bytes
    differ where networks converted together are split apart).  ONNX exports (0.3 s a
    network) stay in this process.

    An int8 ``fmt`` quantizes each network's fp32 model (``fp32_paths``, exported there
    first where missing; default: beside ``paths``) the way blocks are
    (``profiler.quantize``), recording the output error without a bound; calibrated on
    ``calibration(cfg)`` (real inputs and their label, ``profiler.calibrate.network_inputs``)
    when given, on seeded random inputs otherwise."""
    import torch

    if precision_of(fmt) == "int8":
        from .quantize import NETWORK_KIND, quantize_model

        base = base_format(fmt)
        twins = [Path(p) for p in fp32_paths] if fp32_paths is not None else \
            [Path(p).with_name(Path(p).stem + ".fp32." + base) for p in paths]
        need = [i for i, t in enumerate(twins) if not t.is_file()]
        errors = [""] * len(cfgs)
        for i, err in zip(need, export_networks(space, [cfgs[i] for i in need], base, [twins[i] for i in need],
                                                workers=workers)):
            errors[i] = err
        for i, cfg in enumerate(cfgs):
            if not errors[i]:
                try:
                    quantize_model(fmt, twins[i], Path(paths[i]), (1, space.in_channels, cfg.r, cfg.r),
                                   f"{space.name}:{cfg.to_json()}", NETWORK_KIND,
                                   calibration=None if calibration is None else calibration(cfg))
                except Exception as exc:  # noqa: BLE001 - a failed quantization is a failed row
                    errors[i] = f"int8: {exc}"[:500]
            if done is not None:
                done(1)
        return errors

    if fmt == "tflite" and workers > 1 and len(cfgs) > 1:
        return _export_networks_parallel(space, cfgs, paths, done, workers)
    written: set[int] = set()
    if fmt == "tflite" and len(cfgs) > 1:
        for lo in range(0, len(cfgs), TFLITE_BATCH):
            part = range(lo, min(lo + TFLITE_BATCH, len(cfgs)))
            try:
                export_tflite_many([network_module(space, cfgs[i]) for i in part],
                                   [torch.randn(1, space.in_channels, cfgs[i].r, cfgs[i].r) for i in part],
                                   [paths[i] for i in part], what="networks")
                written.update(part)
                if done is not None:
                    done(len(part))
            except Exception:  # noqa: BLE001 - network by network then, to say which one fails
                pass
    errors = [""] * len(cfgs)
    for i, cfg in enumerate(cfgs):
        if i not in written:
            try:
                export_network(space, cfg, fmt, Path(paths[i]))
            except Exception as exc:  # noqa: BLE001 - a failed export is a failed row
                errors[i] = f"export: {exc}"[:500]
            if done is not None:
                done(1)
    return errors


def _export_networks_chunk(space: SearchSpace, cfgs: list[str], paths: list[str]) -> list[str]:
    """A worker's share of ``export_networks`` (TFLite; configurations as JSON)."""
    return export_networks(space, [SubnetConfig.from_json(c) for c in cfgs], "tflite", [Path(p) for p in paths])


def _export_networks_parallel(space: SearchSpace, cfgs: Sequence[SubnetConfig], paths: Sequence[Path],
                              done: Callable[[int], None] | None, workers: int) -> list[str]:
    """``export_networks`` for TFLite in ``workers`` processes: the networks dealt out in
    chunks (two a worker, so that the progress moves and a large network does not hold one
    worker alone at the end), each chunk one call in a worker."""
    n = len(cfgs)
    workers = min(workers, n)
    chunks = [list(range(i, n, 2 * workers)) for i in range(min(n, 2 * workers))]
    errors = [""] * n
    with export_pool(workers) as pool:
        futures = {pool.submit(_export_networks_chunk, space, [cfgs[i].to_json() for i in chunk],
                               [str(paths[i]) for i in chunk]): chunk for chunk in chunks}
        for fut in as_completed(futures):
            chunk = futures[fut]
            try:
                errs = fut.result()
            except Exception as exc:  # noqa: BLE001 - a worker that died: its networks fail, named
                errs = [f"export: {exc.__class__.__name__}: {exc}"[:500]] * len(chunk)
            for i, err in zip(chunk, errs):
                errors[i] = err
            if done is not None:
                done(len(chunk))
    return errors


# --------------------------------------------------------------------------- the cache


@dataclass(frozen=True)
class ExportResult:
    key: str
    fmt: str
    path: Path | None
    error: str = ""
    exported: bool = False  # False when it came from the cache


def _export_task(key: str, fmt: str, path: str) -> tuple[str, str, str]:
    """Worker body: export one block; returns (key, fmt, error or '')."""
    try:
        export_block(BlockSpec.parse(key), fmt, Path(path))
        return key, fmt, ""
    except Exception as exc:  # noqa: BLE001 - a failed export is a result
        return key, fmt, f"{exc.__class__.__name__}: {exc}"[:2000]


def _export_tasks(items: list[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
    """Worker body for a task of ``plan_tasks``: ``(key, fmt, path)`` items, all TFLite when
    there are several.  A chunk whose joint conversion fails is converted block by block, so
    each block gets its own result and error.  int8 items are quantized from their fp32
    artifacts (``fp32_twin``), which are exported first where the cache lacks them."""
    fp32 = [it for it in items if precision_of(it[1]) == "fp32"]
    int8 = [it for it in items if precision_of(it[1]) == "int8"]
    results = _export_fp32_tasks(fp32) if fp32 else []
    if int8:
        twins = [(k, base_format(f), str(fp32_twin(Path(p), k, f))) for k, f, p in int8]
        need = [t for t in twins if not (Path(t[2]).is_file() and Path(t[2]).stat().st_size > 0)]
        errors = {(k, f): e for k, f, e in _export_fp32_tasks(need)} if need else {}
        for (key, fmt, path), (tk, tf, tp) in zip(int8, twins):
            err = errors.get((tk, tf), "")
            results.append((key, fmt, f"fp32 export: {err}"[:2000]) if err else _quantize_task(key, fmt, path, tp))
    return results


def _quantize_task(key: str, fmt: str, path: str, fp32_path: str) -> tuple[str, str, str]:
    """Quantize one block from its fp32 artifact.  LiteRT's int8 overhead probe is quantized
    from a 1x1 max pool instead of the fp32 probe's ReLU: alone, an int8 RELU is not
    delegated to XNNPACK here and costs 11 us at 16x16x16 (106 us at 28x28x48) against 0.5-0.9
    us for the int8 max pool, an identity XNNPACK runs; the probe must price the invocation,
    not a kernel no network runs (in a network the ReLU is fused into its convolution)."""
    import torch

    from .calibrate import load_calibration
    from .quantize import quantize_model

    try:
        spec = BlockSpec.parse(key)
        real = load_calibration(Path(path))  # None: seeded random inputs
        if spec.kind == "overhead" and fmt == "tflite-int8":
            with tempfile.TemporaryDirectory(prefix="hwnas-probe-") as tmp:
                src = Path(tmp) / "probe.tflite"
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(_seed_for(key) + 1)
                    example = torch.randn(spec.input_shape)
                export_tflite(_MaxPoolProbe.make(), example, src)
                quantize_model(fmt, src, Path(path), spec.input_shape, key, spec.kind, calibration=real)
        else:
            quantize_model(fmt, Path(fp32_path), Path(path), spec.input_shape, key, spec.kind, calibration=real)
        return key, fmt, ""
    except Exception as exc:  # noqa: BLE001 - a failed quantization is a result
        return key, fmt, f"{exc.__class__.__name__}: {exc}"[:2000]


class _MaxPoolProbe:  # built lazily so that torch is imported only when exporting
    @staticmethod
    def make():
        import torch

        class MaxPoolProbe(torch.nn.Module):
            """A 1x1 max pool: the identity, as an operator LiteRT's XNNPACK delegate runs in int8."""

            def forward(self, x):
                return torch.nn.functional.max_pool2d(x, 1)

        return MaxPoolProbe().eval()


def _export_fp32_tasks(items: list[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
    if len(items) > 1:
        try:
            export_tflite_blocks([BlockSpec.parse(k) for k, _, _ in items], [Path(p) for _, _, p in items])
            return [(k, f, "") for k, f, _ in items]
        except Exception:  # noqa: BLE001 - fall back to one conversion per block
            pass
    return [_export_task(k, f, p) for k, f, p in items]


def _worker_init() -> None:
    """Export workers use one thread each and die with their parent: a profiler killed with
    kill -9 must not leave converters running beside the next run's measurements.  (A
    watchdog thread, not PR_SET_PDEATHSIG, which fires when the creating *thread* ends.)"""
    import threading

    parent = os.getppid()

    def watch() -> None:
        import time

        while True:
            if os.getppid() != parent:
                os._exit(1)
            time.sleep(1.0)

    threading.Thread(target=watch, daemon=True, name="parent-watchdog").start()
    import torch

    torch.set_num_threads(1)


def default_export_workers() -> int:
    """The default number of export processes: 2, or the cores this process may run on if
    fewer (under ``taskset -c 0`` one worker, not two on one core); ``search.int8_drop``'s
    workers, which convert whole networks the same way, take the same default."""
    return min(2, usable_cores())


def export_pool(workers: int) -> ProcessPoolExecutor:
    """A pool of ``workers`` spawned export processes (``_worker_init``: one thread each,
    gone with their parent): the block exports, the broker's and the networks' share it."""
    import multiprocessing as mp

    return ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_worker_init)


class ArtifactCache:
    """Artifacts by (key, format) under ``root``; ``ensure`` exports what is missing."""

    def __init__(self, root: Path | str | None = None, calibration: str | None = None):
        """``calibration``: the id of the real-image calibration int8 blocks are quantized
        with (``profiler.calibrate``; stored under ``<root>/calib/<id>``), None for seeded
        random calibration.  It is part of the int8 formats' cache version."""
        self.root = Path(root) if root is not None else default_cache_dir()
        self.calibration = calibration
        self._versions: dict[str, str] = {}

    def version(self, fmt: str) -> str:
        if fmt not in self._versions:
            v = exporter_version(fmt)
            if self.calibration and precision_of(fmt) == "int8":
                v += f"-cal{self.calibration}"
            self._versions[fmt] = v
        return self._versions[fmt]

    def path(self, key: str, fmt: str) -> Path:
        return artifact_path(self.root, key, fmt, self.version(fmt))

    def ensure(
        self,
        items: Sequence[tuple[str, str]],
        workers: int = 1,
        progress: bool = True,
        desc: str = "export",
    ) -> dict[tuple[str, str], ExportResult]:
        """Make sure every (key, format) in ``items`` has an artifact.  Exports run in
        ``workers`` processes (1: in this process).  Failures are results, not raises."""
        from tqdm import tqdm

        results: dict[tuple[str, str], ExportResult] = {}
        todo: list[tuple[str, str]] = []
        for key, fmt in dict.fromkeys(items):
            p = self.path(key, fmt)
            if p.is_file() and p.stat().st_size > 0:
                results[(key, fmt)] = ExportResult(key, fmt, p)
            else:
                todo.append((key, fmt))
        if not todo:
            return results
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OSError(f"cannot create the artifact cache {self.root}: {exc.strerror}") from None
        bar = tqdm(total=len(todo), desc=desc, unit="block", disable=not progress, dynamic_ncols=True)
        try:
            tasks = [[(k, f, str(self.path(k, f))) for k, f in task] for task in plan_tasks(todo, workers)]
            if workers <= 1:
                for task in tasks:
                    for key, fmt, err in _export_tasks(task):
                        results[(key, fmt)] = self._result(key, fmt, err)
                        bar.update(1)
            else:
                with export_pool(workers) as pool:
                    futures = [pool.submit(_export_tasks, task) for task in tasks]
                    for fut in as_completed(futures):
                        for key, fmt, err in fut.result():
                            results[(key, fmt)] = self._result(key, fmt, err)
                            bar.update(1)
        finally:
            bar.close()
        return results

    def _result(self, key: str, fmt: str, err: str) -> ExportResult:
        if err:
            return ExportResult(key, fmt, None, error=err)
        return ExportResult(key, fmt, self.path(key, fmt), exported=True)


def keys_and_formats(specs: Iterable[BlockSpec], runtimes: Iterable[str]) -> list[tuple[str, str]]:
    fmts = [format_for_runtime(r) for r in runtimes]
    return [(str(s), f) for f in dict.fromkeys(fmts) for s in specs]
