"""The main job: the whole hardware-aware NAS pipeline on this machine, offline.

    python -m search.pipeline [--out out/pipeline] [--cache cache/artifacts] [--resolutions 32,48]

1. profile the local device at the demo resolutions, onnxruntime and TFLite (profiler.run;
   int8 blocks calibrated on the dataset's images, ``profiler.calibrate``),
   and check the LUT against whole networks measured twice (profiler.validate, both runtimes:
   the fidelity line beside the final table, and the calibration the searches apply);
2. train a small supernet on Fashion-MNIST with progressive shrinking (supernet.train);
3. collect (subnet, held-out accuracy) rows from it (search.collect);
4. train the accuracy predictor on them (search.predictor);
4b. (``--precision fp32,int8``, the default) measure the fp32 -> int8 accuracy drop of a few
   subnets, quantized per runtime as the profiler quantizes blocks (search.int8_drop): the
   drop model the search scores int8 candidates with;
4c. when the validation of step 1 could not judge the table for a runtime (verdict ``noisy``:
   a busy host in those minutes, or ``drifted``: the table's own blocks no longer ran at their
   rows' time), validate again, ten minutes later and before the searches read its
   calibration; the first report is kept (``local.validate-first.json``);
5. search two or three latency budgets per runtime (search.evolve), the budgets spread over
   each runtime's own range (``--fractions`` of the way from its cheapest to its largest
   subnet); with both precisions, per budget the better of an fp32 and an int8 search, each
   priced from its own precision's rows, and the precision to deploy it in;
6. a table and a plot: the architecture chosen for each runtime and budget, with its latency
   under *both* runtimes' LUTs, so where the runtimes' costs differ the choices differ, and
   (both precisions) the precision chosen and its int8 latency under each runtime's int8
   rows, with a line per runtime saying where int8 is slower than fp32 on this device and
   which block kinds cause it (``profiler.int8_report``; issue 16).

Every stage is the project's own command line, run as a subprocess with a timeout
(`--stage-timeout`, 4 hours by default: a guard against a hung stage; its own
progress bar streams through).  ``OUT/config.json`` (the resolved settings) is written first;
``OUT/stages.json`` records each finished stage's command and wall time, and a rerun skips a
stage recorded with the same command whose outputs exist, unless an earlier stage ran again
(rerun to resume: the profiler and the collector also resume inside a stage, and a killed
training continues from its checkpoint; ``--force`` redoes everything).  Bad input (a missing
dataset, a resolution the space lacks) is one ``error:`` line before any work.

Defaults (two resolutions, both precisions, the ``main`` preset, 100 subnets on 2,500
held-out images each after BN recalibration on 4,000 training images, the int8 drop of 6
subnets, 100 generations) measured 12.9 minutes on 2 cores with a cold artifact cache
(2026-12-05, AMD EPYC: profile 3.0, validate 1.8, train 4.5, collect 1.8, int8 drop 1.3
minutes; issue 13's target is 20); keep ``--cache`` across runs to skip the block and probe exports of the profile stage and
the network exports of validate.

Outputs: ``OUT/config.json``, ``OUT/stages.json``, ``OUT/luts/local.csv`` (both runtimes),
``OUT/supernet/`` (the training run, accuracy.csv, predictor.pt), ``OUT/search-<runtime>/``,
``OUT/summary.json``, ``OUT/summary.csv``, ``OUT/summary.png``.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from profiler.costmodel import UNUSABLE_VERDICTS
from profiler.validate import DRIFT_BLOCKS, fidelity_line
from supernet.atomic import Busy, ExclusiveLock, atomic_open, atomic_write_text, stamped_free_path
from supernet.cliargs import run_main, seed_arg

RUNTIMES = ("onnxruntime", "tflite")
STAGES = ("profile", "validate", "train", "collect", "predictor", "int8 drop", "search", "summary")


def fail(msg: str) -> "SystemExit":
    """The one error line the pipeline prints on bad input or a failed step."""
    return SystemExit(f"error: {msg}")


class Stages:
    """Which stages are finished: ``OUT/stages.json`` records each finished stage's command
    and wall time.  A stage is skipped on a rerun when it is recorded with the same command,
    its outputs still exist and no earlier stage ran again (its inputs are then unchanged)."""

    def __init__(self, out: Path, force: bool):
        self.path = out / "stages.json"
        self.force = force
        self.done: dict[str, dict] = {}
        # the command each stage was last started with (kept when it is killed): a killed
        # stage is continued only by the same command
        self.started: dict[str, list[str]] = {}
        if self.path.is_file() and not force:
            try:
                data = json.loads(self.path.read_text())
                self.done = dict(data.get("stages", {}))
                self.started = dict(data.get("started", {}))
            except (OSError, ValueError, AttributeError, TypeError):
                self.done, self.started = {}, {}
        self.number = 0
        self.seen: list[str] = []  # stages this run has skipped or run so far
        self.dirty = force  # an earlier stage ran: every later one runs too

    def finished(self, name: str, cmd: list[str] | None, outputs: list[Path]) -> bool:
        rec = self.done.get(name)
        return (not self.dirty and rec is not None and rec.get("cmd") == _portable(cmd)
                and all(p.exists() for p in outputs))

    def forget_from(self, name: str) -> None:
        """Drop the records of ``name`` and of every stage after it (on disk too) before
        ``name`` runs: their outputs came from inputs this run is about to change, so an
        interrupted run must not leave them looking finished to the next one."""
        self.done = {k: v for k, v in self.done.items() if k in self.seen and k != name}
        self._save()

    def started_with(self, name: str, cmd: list[str]) -> bool:
        """Whether ``name`` was last started with ``cmd`` (what changes no result aside)."""
        return self.started.get(name) == _portable(cmd)

    def record(self, name: str, cmd: list[str] | None, seconds: float) -> None:
        self.done[name] = {"cmd": _portable(cmd), "seconds": round(seconds, 1), "skipped": False}
        self._save()

    def _save(self) -> None:
        atomic_write_text(self.path, json.dumps({"stages": self.done, "started": self.started}, indent=2) + "\n")

    def run(self, name: str, cmd: list[str], outputs: list[Path], timeout_s: float | None,
            check=None) -> float:
        """Run one stage's command (its own progress bars stream through) unless finished;
        exit with one error line on failure.  ``timeout_s`` None: no limit.  ``check``: called
        once the command succeeded, before the stage is recorded (it raises ``fail`` when the
        outputs are not usable, so a rerun runs the stage again).  Returns the wall time (0
        when skipped)."""
        self.number += 1
        head = f"[pipeline {self.number}] {name}"
        if self.finished(name, cmd, outputs):
            print(f"{head}: finished before ({self.done[name]['seconds']:.0f} s), skipped", flush=True)
            self.seen.append(name)
            return 0.0
        print(f"{head}: {' '.join(cmd)}", flush=True)
        self.dirty = True
        self.started[name] = _portable(cmd)
        self.forget_from(name)
        t0 = time.time()
        # its own process group, so that a stage stopped for its time (or by Ctrl-C here) is
        # stopped with every process it started (the profiler's export workers)
        # a stage stopped by a signal names this command, not its own, as the one to continue with
        env = dict(os.environ, HWNAS_CONTINUE_WITH="the same search.pipeline command")
        proc = subprocess.Popen(cmd, process_group=0, preexec_fn=_die_with_parent, env=env)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _stop_group(proc)
            again = ("rerun the same command without --force to continue it" if self.force else
                     "rerun the same command to continue it")
            raise fail(f"pipeline stage {name} exceeded --stage-timeout {timeout_s:g} s; {again} (finished work "
                       "is kept), or raise --stage-timeout (0: no limit)") from None
        except BaseException:  # Ctrl-C or any error here: the stage's processes go too
            _stop_group(proc)
            raise
        if proc.returncode != 0:
            raise fail(f"pipeline stage {name} failed (exit code {proc.returncode}; its message is above)")
        missing = [str(p) for p in outputs if not p.exists()]
        if missing:
            raise fail(f"pipeline stage {name} did not write {', '.join(missing)}")
        if check is not None:
            check()
        dt = time.time() - t0
        self.record(name, cmd, dt)
        self.seen.append(name)
        print(f"{head}: done in {dt:.0f} s", flush=True)
        return dt


def _stop_group(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    """SIGTERM to a stage's process group; after ``grace_s``, SIGKILL to whatever of the
    group is left (the leader or the workers it started)."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:  # the whole group is gone
        proc.wait()
        return
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _die_with_parent() -> None:
    """In a stage's process (Linux): get SIGTERM when the pipeline dies, even by SIGKILL
    (a killed pipeline or a timed-out test leaves no stage running)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


_NO_EFFECT = {"--resume": 0, "--force": 0, "--no-progress": 0, "--export-workers": 1, "--cache": 1}


def _portable(cmd: list[str] | None) -> list[str] | None:
    """A command without the interpreter path (a venv moved elsewhere is the same stage) and
    without what changes no result: ``--resume``/``--force`` (a resumed stage is the same
    stage), ``--no-progress``, ``--export-workers N`` and ``--cache DIR`` (where artifacts are
    kept; their keys hold what was built)."""
    if cmd is None:
        return None
    out, skip = [], 0
    for c in cmd[1:]:
        if skip:
            skip -= 1
        elif c in _NO_EFFECT:
            skip = _NO_EFFECT[c]
        else:
            out.append(c)
    return out


def train_restart_flag(run: Path, stages: Stages, cmd: list[str], force: bool) -> list[str]:
    """What the train stage adds to ``cmd`` when it runs: ``--resume`` when a killed training
    left a checkpoint and was started with these same settings (it continues); ``--force``
    when the run folder holds another training (finished, or killed under other settings:
    it starts over, the old outputs set aside by ``supernet.train``); nothing for a new run."""
    if ((run / "checkpoints" / "last.pt").is_file() and not (run / "supernet.pt").exists() and not force
            and stages.started_with("train", cmd)):
        return ["--resume"]
    if (run / "config.yaml").exists():
        return ["--force"]
    return []


def set_lut_aside(lut: Path, stages: Stages, cmd: list[str], force: bool) -> Path | None:
    """Before the profile stage: a table measured with other settings (the last finished or
    killed profile's command) or ``force`` is moved aside whole, since the profiler keeps
    and resumes every row it finds; returns where it went (None: kept, or none there)."""
    prev = stages.started.get("profile") or (stages.done.get("profile") or {}).get("cmd")
    if not lut.exists() or not (force or (prev is not None and prev != _portable(cmd))):
        return None
    aside = stamped_free_path(lut.parent.parent, f"{lut.parent.name}.replaced")
    lut.parent.rename(aside)
    lut.parent.mkdir(parents=True)
    print(f"note: {lut.parent} (measured with other settings) moved to {aside}", flush=True)
    return aside


def check_data(spec: str) -> None:
    """One clear error when the dataset is missing (before any stage spends time)."""
    from supernet.data import FMNIST_DIR, FMNIST_FILES

    kind, _, path = spec.partition(":")
    if kind == "fmnist":
        root = Path(path) if path else FMNIST_DIR
        missing = [f for f in FMNIST_FILES if not (root / f).is_file()]
        if missing:
            raise fail(f"Fashion-MNIST not found: {root / missing[0]} does not exist "
                       "(install Debian's dataset-fashion-mnist or pass --data fmnist:PATH)")
    elif kind in ("cifar10", "imagefolder"):
        if not path or not Path(path).exists():
            raise fail(f"dataset {spec!r}: {path or '(no path)'} does not exist")
    else:
        raise fail(f"unknown dataset {spec!r} (use fmnist, fmnist:PATH, cifar10:PATH or imagefolder:PATH)")


def lut_errors(lut: Path, runtimes: list[str], precision: str) -> list[tuple[str, str, str]]:
    """(key, runtime, error) of the LUT's error rows of ``runtimes`` in ``precision``."""
    from profiler.lut import LutTable

    table = LutTable.load(lut)
    return [(key, rt, str(row.get("error", ""))) for (key, rt, _res, prec), row in table.rows.items()
            if rt in runtimes and prec == precision and row["status"] != "ok"]


def budgets_for(lut: Path, runtime: str, space, fractions: list[float], resolutions: list[int],
                widths: list[float]) -> tuple[list[float], float, float]:
    """Budgets at ``fractions`` of the way from the cheapest to the largest subnet's latency
    (the LUT's calibration, if any, applied as the search applies it)."""
    from search.evolve import CostArrays, covered_choices
    from search.latency import LatencyModel

    model = LatencyModel.from_lut(lut, space, runtime, calibration="auto")
    ch = covered_choices(model, space, resolutions=resolutions, widths=widths)
    costs = CostArrays(model, ch)
    lo, _ = costs.cheapest()
    hi = max(float(model.latency([space.max_subnet(r, w)])[0]) for r in ch.resolutions for w in ch.widths)
    if not lo > 0:  # a calibration written before profiler.validate refused such fits
        raise ValueError(f"its calibration prices the cheapest subnet at {lo:.4g} ms; run profiler.validate "
                         "on it again (or rerun the pipeline with --force)")
    # round up, so the cheapest subnet always fits the lowest budget
    return [math.ceil((lo + f * (hi - lo)) * 1000) / 1000 for f in fractions], lo, hi


def _ints(text: str, what: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise fail(f"{what} must be a comma list of integers, got {text!r}") from None


def _floats(text: str, what: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise fail(f"{what} must be a comma list of numbers, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m search.pipeline", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("out/pipeline"), help="run folder (default: out/pipeline)")
    ap.add_argument("--space", default="fmnist")
    ap.add_argument("--data", default="fmnist", help="fmnist | fmnist:PATH | cifar10:PATH | imagefolder:PATH")
    ap.add_argument("--resolutions", default="32,48", help="demo resolutions (profiled, sampled, searched)")
    ap.add_argument("--width", default="1.0", help="width multiplier (profiled, sampled, searched)")
    ap.add_argument("--runtimes", default=",".join(RUNTIMES), help="runtimes to profile and search for")
    ap.add_argument("--precision", default="fp32,int8",
                    help="fp32, or fp32,int8 (default): also profile int8 blocks, measure the int8 accuracy drop, "
                         "search both precisions per budget and price the chosen subnets in int8")
    ap.add_argument("--int8-subnets", type=int, default=6,
                    help="subnets whose fp32 -> int8 accuracy drop is measured (the largest and smallest among them)")
    ap.add_argument("--int8-eval-images", type=int, default=2000,
                    help="held-out images each int8 drop is measured on (fp32 and int8 on the same images)")
    ap.add_argument("--cache", type=Path, default=None,
                    help="artifact cache shared by every stage and run (default: the profiler's, cache/artifacts)")
    ap.add_argument("--export-workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=None, help="profiler: minimum timed runs per block")
    ap.add_argument("--min-time", type=float, default=None, help="profiler: minimum timed seconds per block")
    ap.add_argument("--sweeps", type=int, default=None, help="profiler: timings of every block, in turn (fastest kept)")
    ap.add_argument("--preset", default="main", help="supernet.train preset")
    ap.add_argument("--train-limit", type=int, default=None, help="training images (default: the preset's)")
    ap.add_argument("--subnets", type=int, default=100, help="subnets evaluated for the predictor")
    ap.add_argument("--validate-subnets", type=int, default=20,
                    help="whole networks profiler.validate measures (twice each, both runtimes)")
    ap.add_argument("--drift-blocks", type=int, default=DRIFT_BLOCKS,
                    help="the LUT's heaviest blocks profiler.validate times again after the networks, to say how far "
                         "the device moved since the table (0: off)")
    ap.add_argument("--eval-images", type=int, default=2500, help="held-out images per evaluated subnet")
    ap.add_argument("--recal-images", type=int, default=4000,
                    help="training images each collected subnet's BN is recalibrated on (default 4000: with 1000 "
                         "the recalibration was half the measured ranking noise; README)")
    ap.add_argument("--predictor-epochs", type=int, default=300)
    ap.add_argument("--fractions", default="0.2,0.5,0.8", help="budgets between the cheapest and largest subnet")
    ap.add_argument("--generations", type=int, default=100)
    ap.add_argument("--population", type=int, default=100)
    ap.add_argument("--samples", type=int, default=1000, help="random subnets in each search plot")
    ap.add_argument("--seed", type=seed_arg, default=0)
    ap.add_argument("--stage-timeout", type=float, default=4 * 3600,
                    help="seconds one stage may run before the pipeline stops it (default 4 h: a guard "
                         "against a hung stage, far above any preset's time on 2 cores; 0: no limit)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bars")
    ap.add_argument("--force", action="store_true", help="redo every stage")
    return ap


def main(argv: list[str] | None = None) -> int:
    with contextlib.ExitStack() as held:  # the --out folder's lock, released when the command ends
        return _main(argv, held)


def _main(argv: list[str] | None, held: contextlib.ExitStack) -> int:
    args = build_parser().parse_args(argv)
    t_start = time.time()
    from supernet.space import get_space

    try:
        space = get_space(args.space)
    except ValueError as exc:
        raise fail(str(exc)) from None
    resolutions = _ints(args.resolutions, "--resolutions")
    widths = _floats(args.width, "--width")
    fractions = _floats(args.fractions, "--fractions")
    runtimes = [r.strip() for r in args.runtimes.split(",") if r.strip()]
    bad = [r for r in resolutions if r not in space.resolutions]
    if not resolutions or bad:
        raise fail(f"--resolutions: {bad[0] if bad else '(none)'} is not a resolution of space {space.name!r} "
                   f"({', '.join(map(str, space.resolutions))})")
    bad_w = [w for w in widths if w not in space.width_mults]
    if len(widths) != 1 or bad_w:
        raise fail(f"--width: give one width multiplier of space {space.name!r} "
                   f"({', '.join(map(str, space.width_mults))})")
    if not runtimes or any(r not in RUNTIMES for r in runtimes):
        raise fail(f"--runtimes: known runtimes are {', '.join(RUNTIMES)}, got {args.runtimes!r}")
    precisions = [p.strip() for p in args.precision.split(",") if p.strip()]
    if precisions not in (["fp32"], ["fp32", "int8"], ["int8", "fp32"]):
        raise fail(f"--precision: fp32 or fp32,int8 (the search runs on fp32 rows), got {args.precision!r}")
    int8 = "int8" in precisions
    if not fractions or any(not 0 <= f <= 1 for f in fractions):
        raise fail(f"--fractions must lie in 0..1, got {args.fractions!r}")
    for name in ("subnets", "generations", "population", "predictor_epochs", "recal_images", "eval_images",
                 "int8_eval_images"):
        if getattr(args, name) < 1:
            raise fail(f"--{name.replace('_', '-')} must be at least 1")
    if args.subnets < 5:
        raise fail("--subnets must be at least 5 (the predictor holds some rows out)")
    if args.int8_subnets < 2:
        raise fail("--int8-subnets must be at least 2 (the largest and the smallest)")
    for name in ("validate_subnets", "repeats", "sweeps", "train_limit"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise fail(f"--{name.replace('_', '-')} must be at least 1")
    if args.drift_blocks < 0:
        raise fail(f"--drift-blocks must be 0 (off) or more, got {args.drift_blocks}")
    if args.export_workers < 0:
        raise fail(f"--export-workers must be at least 0 (0: convert in the profiler's own process), "
                   f"got {args.export_workers}")
    if args.population < 2:
        raise fail(f"--population must be at least 2, got {args.population}")
    if args.samples < 0:
        raise fail(f"--samples must be at least 0, got {args.samples}")
    if args.min_time is not None and not 0 <= args.min_time < 1e6:  # also refuses nan and inf
        raise fail(f"--min-time must be a number of seconds >= 0, got {args.min_time:g}")
    from supernet.presets import PRESETS
    if args.preset not in PRESETS:
        raise fail(f"--preset {args.preset!r}: known presets are {', '.join(sorted(PRESETS))}")
    if not args.stage_timeout >= 0:  # also refuses nan
        raise fail(f"--stage-timeout must be 0 (no limit) or a number of seconds, got {args.stage_timeout:g}")
    limit = args.stage_timeout or None
    check_data(args.data)

    py = sys.executable
    out = args.out
    try:
        out.mkdir(parents=True, exist_ok=True)
        # one pipeline in a folder at a time (two would run every stage twice over the same files)
        held.enter_context(ExclusiveLock(out, f"pipeline folder {out}"))
    except Busy as exc:
        raise fail(str(exc)) from None
    except OSError as exc:
        raise fail(f"--out {out}: {exc}") from None
    cache = args.cache if args.cache is not None else None
    # the resolved configuration, written first
    resolved = {**{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                "resolutions": resolutions, "width": widths[0], "fractions": fractions, "runtimes": runtimes,
                "precisions": ["fp32", "int8"] if int8 else ["fp32"],
                "python": py, "cwd": str(Path.cwd()), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    atomic_write_text(out / "config.json", json.dumps(resolved, indent=2) + "\n")
    stages = Stages(out, args.force)
    lut = out / "luts" / "local.csv"
    run = out / "supernet"
    lut.parent.mkdir(parents=True, exist_ok=True)
    res_arg, w_arg, seed = ",".join(map(str, resolutions)), f"{widths[0]:g}", str(args.seed)
    quiet = ["--no-progress"] if args.no_progress else []
    times: dict[str, float] = {}

    # 1. profile (the profiler itself also resumes: a killed run keeps the blocks measured)
    cmd = [py, "-m", "profiler.run", "--device", "local", "--runtime", ",".join(runtimes), "--space", args.space,
           "--precision", "fp32,int8" if int8 else "fp32", "--resolutions", res_arg, "--widths", w_arg, "--lut", str(lut),
           "--export-workers", str(args.export_workers), *quiet]
    if cache is not None:
        cmd += ["--cache", str(cache)]
    if int8:  # int8 blocks calibrated on the dataset's images carried to each block (profiler.calibrate)
        cmd += ["--data", args.data]
    for flag, v in (("--repeats", args.repeats), ("--min-time", args.min_time), ("--sweeps", args.sweeps)):
        if v is not None:
            cmd += [flag, str(v)]
    set_lut_aside(lut, stages, cmd, args.force)

    def profiled() -> None:  # an fp32 block without a price would stop every search
        bad = lut_errors(lut, runtimes, "fp32")
        if bad:
            key, rt, err = bad[0]
            raise fail(f"{len(bad)} fp32 block(s) failed to profile (first: {key} with {rt}: {err[:200]}); rerun "
                       f"the same command to retry them (each up to the device's max_attempts), or see {lut}")

    times["profile"] = stages.run("profile", cmd, [lut], limit, check=profiled)
    # 1b. fidelity of the LUT (both runtimes, every network measured twice): the line beside
    # the final table, and the calibration the searches apply
    cmd = [py, "-m", "profiler.validate", "--device", "local", "--runtime", ",".join(runtimes), "--space",
           args.space, "--lut", str(lut), "--subnets", str(args.validate_subnets), "--seed", seed,
           "--drift-blocks", str(args.drift_blocks), "--export-workers", str(args.export_workers), *quiet]
    if cache is not None:
        cmd += ["--cache", str(cache)]
    validate_cmd, validated, first_validation = cmd, lut.with_name("local.validate.json"), first_validation_path(lut)
    times["validate"] = stages.run("validate", cmd, [validated], limit)
    if times["validate"] > 0:
        first_validation.unlink(missing_ok=True)  # a new first validation: no earlier one to keep
    # 2. train
    cmd = [py, "-m", "supernet.train", "--preset", args.preset, "--space", args.space, "--data", args.data,
           "--out", str(run), "--seed", seed, *quiet]
    if args.train_limit is not None:
        cmd += ["--train-limit", str(args.train_limit)]
    cmd += train_restart_flag(run, stages, cmd, args.force)
    times["train"] = stages.run("train", cmd, [run / "supernet.pt"], limit)
    # 3. collect (resumes by itself: rows already evaluated are kept)
    cmd = [py, "-m", "search.collect", "--run", str(run), "--subnets", str(args.subnets), "--resolutions", res_arg,
           "--widths", w_arg, "--eval-images", str(args.eval_images), "--recal-images", str(args.recal_images),
           "--seed", seed, *quiet]
    times["collect"] = stages.run("collect", cmd, [run / "accuracy.csv"], limit)
    # 4. predictor
    cmd = [py, "-m", "search.predictor", "--data", str(run / "accuracy.csv"), "--space", args.space,
           "--out", str(run / "predictor.pt"), "--epochs", str(args.predictor_epochs), "--seed", seed]
    times["predictor"] = stages.run("predictor", cmd, [run / "predictor.pt"], limit)
    # 4b. the int8 accuracy drop the search across precisions scores int8 candidates with
    if int8:
        cmd = [py, "-m", "search.int8_drop", "--run", str(run), "--subnets", str(args.int8_subnets),
               "--runtime", ",".join(runtimes), "--resolutions", res_arg, "--width", w_arg,
               "--eval-images", str(args.int8_eval_images), "--seed", seed, *quiet]
        times["int8 drop"] = stages.run("int8 drop", cmd, [run / "int8_drop.json"], limit)
    # 4c. a validation that could not judge the table (a busy host in those two minutes) is made
    # again, minutes later, before the searches read its calibration; the first is kept
    try:
        unjudged = unjudged_runtimes(validated)
    except (OSError, ValueError, AttributeError) as exc:  # AttributeError: JSON that is no object
        raise fail(f"{validated}: unreadable ({exc}); rerun with --force") from None
    again = unjudged or "validate again" in stages.done
    if again and not stages.finished("validate again", validate_cmd, [validated, first_validation]):
        atomic_write_text(first_validation, validated.read_text())
        print(f"note: the validate stage could not judge the LUT for {', '.join(unjudged)} (the "
              f"same networks measured twice too far apart, or the LUT's blocks no longer at their rows' time); "
              f"validating again, the first report kept in "
              f"{first_validation}", flush=True)
    if again:
        times["validate again"] = stages.run("validate again", validate_cmd, [validated, first_validation], limit)
    # 5. search per runtime, budgets spread over each runtime's own latency range
    searches = {}
    for rt in runtimes:
        try:
            budgets, lo, hi = budgets_for(lut, rt, space, fractions, resolutions, widths)
        except (ValueError, KeyError) as exc:  # KeyError: MissingKeysError, a block without a row
            raise fail(f"{lut} ({rt}): {str(exc).splitlines()[0]}") from None
        dest = out / f"search-{rt}"
        cmd = [py, "-m", "search.evolve", "--lut", str(lut), "--runtime", rt, "--predictor", str(run),
               "--space", args.space, "--calibration", "auto", "--resolutions", res_arg, "--widths", w_arg,
               "--latency-ms", ",".join(map(str, budgets)), "--generations", str(args.generations),
               "--population", str(args.population), "--samples", str(args.samples), "--seed", seed,
               "--out", str(dest)]
        failed8 = lut_errors(lut, [rt], "int8") if int8 else []
        if failed8:  # a block whose int8 model failed (e.g. over its error bound): no int8 search
            print(f"note: {len(failed8)} {rt} int8 block(s) have no int8 price (first: {failed8[0][0]}: "
                  f"{failed8[0][2][:160]}); {rt} is searched in fp32 only", flush=True)
        elif int8:  # per budget the better of an fp32 and an int8 search (drop: run/int8_drop.json)
            cmd += ["--precision", "fp32,int8"]
        times[f"search {rt}"] = stages.run(f"search {rt}", cmd, [dest / "search.json"], limit)
        searches[rt] = {"budgets": budgets, "cheapest_ms": lo, "largest_ms": hi,
                        "summary": json.loads((dest / "search.json").read_text())}

    # 6. cross-runtime table and plot
    t0 = time.time()
    rows = cross_table(searches, lut, space, runtimes if int8 else [])
    quality = accuracy_quality(run)
    fidelity = json.loads(validated.read_text())
    first = json.loads(first_validation.read_text()) if "validate again" in stages.done else None
    int8_summary = None
    if int8:
        from profiler.int8_report import report, write

        rep = report(lut, runtimes)
        write(lut, rep)
        int8_summary = rep["runtimes"]
        try:
            drops = json.loads((run / "int8_drop.json").read_text())["runtimes"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise fail(f"{run / 'int8_drop.json'}: unreadable ({exc}); rerun with --force") from None
        int8_summary = {rt: {**v, "accuracy_drop": drops.get(rt)} for rt, v in int8_summary.items()}
    write_summary(out, rows, searches, runtimes, stages, time.time() - t_start, quality, fidelity, int8_summary,
                  first_fidelity=first)
    stages.record("summary", None, time.time() - t0)
    return 0


def cross_table(searches: dict, lut: Path, space, int8_runtimes: list[str] | tuple = ()) -> list[dict]:
    """One row per (runtime searched for, budget): the chosen subnet, the precision to deploy
    it in (``fp32`` unless the search compared both) and its predicted latency under every
    runtime's LUT (and, for ``int8_runtimes``, under their int8 rows: ``<runtime>_int8_ms``);
    ``fits``: under the budget in the chosen precision on the runtime searched for."""
    from search.latency import LatencyModel, MissingKeysError
    from supernet.space import SubnetConfig

    models = {rt: LatencyModel.from_lut(lut, space, rt, calibration="auto") for rt in searches}
    models.update({f"{rt}_int8": LatencyModel.from_lut(lut, space, rt, calibration="auto", precision="int8")
                   for rt in int8_runtimes})
    rows = []
    for rt, s in searches.items():
        for level, res in enumerate(s["summary"]["results"]):
            cfg = SubnetConfig.from_dict(res["subnet"])
            prec = res.get("precision") or "fp32"
            row = {"searched_for": rt, "level": level, "budget_ms": res["budget"], "precision": prec,
                   "predicted_accuracy": res["predicted_accuracy"], "subnet": res["subnet"]}
            if res.get("alternative"):
                row["alternative"] = res["alternative"]
            for other, m in models.items():
                try:
                    row[f"{other}_ms"] = round(float(m.latency([cfg])[0]), 4)
                except MissingKeysError:  # an int8 block that failed (its error row says why)
                    row[f"{other}_ms"] = None
            own = row.get(f"{rt}_int8_ms" if prec == "int8" else f"{rt}_ms")
            row["fits"] = own is not None and own <= res["budget"] + 1e-9
            rows.append(row)
    return rows


def _short(s: dict) -> str:
    """A subnet in one short string: r, depths, kernels and expands of the active blocks."""
    ks, es, i = [], [], 0
    n = len(s["ks"]) // max(1, len(s["d"]))
    for stage, d in enumerate(s["d"]):
        for j in range(d):
            ks.append(str(s["ks"][stage * n + j]))
            es.append(f"{s['e'][stage * n + j]:g}")
    return f"r{s['r']} d{''.join(map(str, s['d']))} k{''.join(ks)} e{''.join(es)}"


def accuracy_quality(run: Path) -> dict:
    """How far the accuracy side can be trusted: the supernet's largest and smallest subnet
    (``result.json``), the spread of the collected accuracies against the standard error of
    one of them, and the predictor's held-out Kendall tau and RMSE against predicting the
    mean.  ``ranks`` is False when the predictor does not beat the mean (RMSE not below
    0.9x the baseline's, or tau under 0.3): the table then says its accuracy column is noise."""
    from supernet.evaluation import standard_error

    q: dict = {}
    try:
        res = json.loads((run / "result.json").read_text())
        q.update(largest_top1=res.get("max_top1"), smallest_top1=res.get("min_top1"),
                 result_held_out_images=res.get("held_out_images"))
    except (OSError, ValueError):
        pass
    try:
        with (run / "accuracy.csv").open(newline="") as f:
            accs = [float(r["top1"]) for r in csv.DictReader(f) if r.get("status") == "ok"]
        conf = json.loads((run / "accuracy.config.json").read_text())
        n = int(conf.get("eval_images") or 0)
        q["recal_images"] = conf.get("recal_images")
    except (OSError, ValueError, KeyError):
        accs, n = [], 0
    if accs:
        mean = sum(accs) / len(accs)
        std = math.sqrt(sum((a - mean) ** 2 for a in accs) / max(1, len(accs) - 1))
        q.update(subnets=len(accs), top1_mean=round(mean, 3), top1_std=round(std, 3), top1_min=min(accs),
                 top1_max=max(accs), eval_images=n, standard_error_pp=round(standard_error(mean, n), 3) if n else None)
    try:
        m = json.loads((run / "predictor.json").read_text())["metrics"]
        q.update(kendall_tau=round(m["kendall_tau"], 3), rmse_pp=round(100 * m["rmse"], 3),
                 baseline_rmse_pp=round(100 * m["baseline_rmse"], 3), predictor_test_rows=m.get("n_test"),
                 predictor_model=m.get("model", "mlp"))
        q["ranks"] = bool(m["rmse"] < 0.9 * m["baseline_rmse"] and m["kendall_tau"] >= 0.3)
        if m.get("resplits"):
            q["resplits"] = {k: round(v, 3) for k, v in m["resplits"].items()}
        if m.get("folds"):
            q["predictor_evaluation"] = m.get("evaluation")
            q["folds"] = {k: (round(v, 3) if isinstance(v, float) else v)
                          for k, v in m["folds"].items() if k != "per_fold"}
    except (OSError, ValueError, KeyError, TypeError):
        q["ranks"] = False
    return q


def quality_lines(q: dict) -> list[str]:
    lines = []
    if q.get("largest_top1") is not None:
        lines.append(f"supernet: largest subnet {q['largest_top1']:.2f}%, smallest {q['smallest_top1']:.2f}% top-1 "
                     f"on {q.get('result_held_out_images')} held-out images")
    if q.get("subnets"):
        se = f", standard error of one accuracy {q['standard_error_pp']:.2f} pp" if q.get("standard_error_pp") else ""
        recal = f" (BN recalibrated on {q['recal_images']} training images)" if q.get("recal_images") else ""
        lines.append(f"collected: {q['subnets']} subnets on {q['eval_images']} held-out images each{recal}, "
                     f"top-1 {q['top1_min']:.2f}..{q['top1_max']:.2f}% (std {q['top1_std']:.2f} pp{se})")
    if "kendall_tau" in q:
        strong = q["kendall_tau"] >= 0.5 and q["rmse_pp"] <= 0.7 * q["baseline_rmse_pp"]
        verdict = ("it ranks subnets" if strong else
                   "it ranks subnets only weakly (tau < 0.5 or RMSE > 0.7x the mean's): treat close pred.acc% as ties"
                   if q["ranks"] else
                   "it does NOT beat predicting the mean: pred.acc% above is noise, the choices are by latency only")
        rs, fo = q.get("resplits"), q.get("folds")
        spread = ""
        if fo and fo.get("kendall_tau_mean") is not None:  # nested cross-validation
            spread = (f" ({q['predictor_evaluation']}: each row predicted by a model that did not see it; per fold "
                      f"tau {fo['kendall_tau_mean']:.3f} [{fo['kendall_tau_min']:.2f}, {fo['kendall_tau_max']:.2f}])")
        elif rs:  # one split, refitted on others
            spread = (f"; refitted on {rs['n']} other splits: tau {rs['kendall_tau_mean']:.3f} "
                      f"[{rs['kendall_tau_min']:.2f}, {rs['kendall_tau_max']:.2f}], RMSE {rs['rmse_ratio_mean']:.2f}x "
                      f"[{rs['rmse_ratio_min']:.2f}, {rs['rmse_ratio_max']:.2f}] the mean's")
        lines.append(f"predictor ({q['predictor_model']}): held-out Kendall tau {q['kendall_tau']:.3f}, RMSE {q['rmse_pp']:.2f} pp "
                     f"(predicting the mean: {q['baseline_rmse_pp']:.2f} pp) on {q.get('predictor_test_rows')} rows"
                     f"{spread}; {verdict}")
    return lines


def write_summary(out: Path, rows: list[dict], searches: dict, runtimes: list[str], stages: Stages,
                  seconds: float, quality: dict | None = None, fidelity: dict | None = None,
                  int8: dict | None = None, first_fidelity: dict | None = None) -> None:
    """The final table, ``summary.csv``, ``summary.json`` and ``summary.png``.  ``fidelity``:
    ``profiler.validate``'s report; ``first_fidelity``: the validate stage's own report when
    it could not judge the table and the pipeline validated again (``fidelity`` is then the second)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from profiler.int8_report import verdict

    cols = [*runtimes, *([f"{rt}_int8" for rt in runtimes] if int8 else [])]
    with atomic_open(out / "summary.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["searched_for", "level", "budget_ms", "precision", "predicted_accuracy", *[f"{c}_ms" for c in cols],
                    "fits", "arch", "subnet"])
        for r in rows:
            w.writerow([r["searched_for"], r["level"], r["budget_ms"], r.get("precision", "fp32"), r["predicted_accuracy"],
                        *[r[f"{c}_ms"] for c in cols], r["fits"], _short(r["subnet"]),
                        json.dumps(r["subnet"], separators=(",", ":"))])
    levels = sorted({r["level"] for r in rows})
    by = {(r["searched_for"], r["level"]): r for r in rows}
    differs = [len({json.dumps(by[(rt, lv)]["subnet"], sort_keys=True) for rt in runtimes if (rt, lv) in by}) > 1
               for lv in levels]
    stage_s = {k: v["seconds"] for k, v in stages.done.items()}
    summary = {"seconds": round(seconds, 1), "stage_seconds": stage_s, "runtimes": runtimes, "rows": rows,
               "architectures_differ_per_budget_level": differs,
               "budgets": {rt: searches[rt]["budgets"] for rt in runtimes},
               "latency_range_ms": {rt: [searches[rt]["cheapest_ms"], searches[rt]["largest_ms"]] for rt in runtimes},
               "accuracy": quality or {}, "fidelity": fidelity_summary(fidelity or {}),
               "fidelity_validate_stage": fidelity_summary(first_fidelity) if first_fidelity else None,
               "int8": int8 or {}}
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")

    fig, axes = plt.subplots(1, len(runtimes), figsize=(5.5 * len(runtimes), 4.2), dpi=120, squeeze=False)
    for ax, lut_rt in zip(axes[0], runtimes):
        for rt, marker in zip(runtimes, ("o", "s")):
            rs = [r for r in rows if r["searched_for"] == rt]
            # each subnet at its latency in the precision it is deployed in
            xs = [r.get(f"{lut_rt}_int8_ms") if r.get("precision") == "int8" else r[f"{lut_rt}_ms"] for r in rs]
            line, = ax.plot(xs, [100 * r["predicted_accuracy"] for r in rs], marker=marker, label=f"chosen for {rt}")
            q8 = [(x, 100 * r["predicted_accuracy"]) for x, r in zip(xs, rs) if r.get("precision") == "int8" and x]
            if q8:
                ax.scatter(*zip(*q8), s=120, facecolors="none", edgecolors=line.get_color(),
                           label=f"chosen for {rt}: int8")
        for b in searches[lut_rt]["budgets"]:
            ax.axvline(b, ls="--", lw=0.8, color="0.6")
        ax.set_title(f"latency on the local {lut_rt} LUT (dashed: its budgets)", fontsize=9)
        ax.set_xlabel(f"{lut_rt} latency, LUT sum in the deployed precision (ms)")
        ax.set_ylabel("predicted accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_open(out / "summary.png", "wb") as fh:
        fig.savefig(fh, format="png")
    plt.close(fig)

    print(f"{'searched for':>12} {'budget ms':>9}{' deploy' if int8 else ''} {'pred.acc%':>9} "
          + " ".join(f"{c.replace('_int8', ' int8') + ' ms':>{19 if c.endswith('_int8') else 14}}" for c in cols)
          + "  architecture")
    for r in rows:
        dep = f" {r.get('precision', 'fp32'):>6}" if int8 else ""
        print(f"{r['searched_for']:>12} {r['budget_ms']:>9.3f}{dep} {100 * r['predicted_accuracy']:>9.2f} "
              + " ".join(f"{r[f'{c}_ms']:>{19 if c.endswith('_int8') else 14}.3f}" if r[f"{c}_ms"] is not None
                         else f"{'n/a':>{19 if c.endswith('_int8') else 14}}" for c in cols)
              + f"  {_short(r['subnet'])}")
    if len(runtimes) > 1:
        print(f"architectures differ between runtimes at budget levels {fractions_str(differs)}")
    for line in quality_lines(quality or {}):
        print(line)
    for rt, f in (summary["fidelity_validate_stage"] or {}).items():
        if f.get("verdict") in UNJUDGED:
            print("LUT fidelity in the validate stage, " + fidelity_line(rt, f) + "; validated again:")
    for rt, f in summary["fidelity"].items():
        print("LUT fidelity, " + fidelity_line(rt, f) + f" ({f['n']} networks x {f['passes']} passes)")
    for rt, s in (int8 or {}).items():
        print("int8 blocks against fp32, " + verdict(rt, s))
    for rt, s in (int8 or {}).items():
        d = s.get("accuracy_drop")
        if d:
            chosen = sum(1 for r in rows if r["searched_for"] == rt and r.get("precision") == "int8")
            n_rt = sum(1 for r in rows if r["searched_for"] == rt)
            se = f" +- {d['standard_error_pp']:.2f}" if d.get("standard_error_pp") is not None else ""
            used = (searches[rt]["summary"].get("int8_drop") or {}).get("pp")  # what the search scored int8 with
            used_s = f"the search used {used:+.2f}" if used is not None else "the search used none"
            print(f"int8 accuracy drop, {rt}: {d['mean_drop_pp']:+.2f}{se} pp mean over {d.get('subnets', 'the')} "
                  f"subnets ({d['min_drop_pp']:+.2f} .. {d['max_drop_pp']:+.2f}; negative: int8 scored higher), "
                  f"{used_s}; int8 chosen for {chosen} of {n_rt} budgets")
    if int8 and any(r[f"{c}_ms"] is None for r in rows for c in cols):
        print(f"n/a: a block of that subnet has no int8 row (its quantization failed; the error rows of "
              f"{out / 'luts' / 'local.csv'} say why)")
    print("stage wall times: " + ", ".join(f"{k} {v:.0f} s" for k, v in stage_s.items())
          + f"; this invocation {seconds / 60:.1f} min")
    print(f"wrote {out / 'summary.json'}, {out / 'summary.csv'}, {out / 'summary.png'}")


def first_validation_path(lut: Path) -> Path:
    """Where the pipeline keeps the validate stage's report when it had to validate again."""
    return lut.with_name("local.validate-first.json")


# validation verdicts that say nothing of the table (profiler.validate.fidelity_verdict): its
# networks disagreed with themselves, or its blocks no longer ran at their rows' time; their
# calibrations are never applied either
UNJUDGED = tuple(UNUSABLE_VERDICTS)


def unjudged_runtimes(path: Path) -> list[str]:
    """The runtimes whose validation in ``path`` (``profiler.validate``'s JSON) could not
    judge the table (a verdict in ``UNJUDGED``)."""
    return [rt for rt, s in per_runtime(json.loads(path.read_text())).items() if s.get("verdict") in UNJUDGED]


def per_runtime(doc: dict) -> dict:
    """``profiler.validate``'s JSON by runtime (it writes one runtime's report flat)."""
    return doc.get("runtimes") or ({doc["runtime"]: doc} if "runtime" in doc else {})


def fidelity_summary(doc: dict) -> dict:
    """Per runtime, the figures of ``profiler.validate``'s JSON the summary keeps."""
    per = per_runtime(doc)
    keep = ("n", "passes", "median_abs_error_pct", "within_10pct", "repeat_median_abs_diff_pct",
            "repeat_within_10pct", "fastest_pass", "overhead_model", "boundary_model", "without_boundary", "plain",
            "a", "b", "calibrated_median_abs_error_pct", "calibrated_within_10pct", "sum_over_measured", "verdict")
    drift_keep = ("status", "n", "ratio_median", "ratio_min", "ratio_max", "share_of_model", "model_x_drift", "reason")
    out = {rt: {k: s[k] for k in keep if k in s} for rt, s in per.items()}
    for rt, s in per.items():
        if isinstance(s.get("lut_drift"), dict):  # how far the device moved since the LUT (no per-block list)
            out[rt]["lut_drift"] = {k: v for k, v in s["lut_drift"].items() if k in drift_keep}
    return out


def fractions_str(differs: list[bool]) -> str:
    return ", ".join(f"{i + 1}: {'yes' if d else 'no'}" for i, d in enumerate(differs))


if __name__ == "__main__":
    run_main(main, "search.pipeline",
             "finished stages and the work of the stopped one are kept; the same command continues")
