"""Parse the output of TensorFlow Lite's / LiteRT's ``benchmark_model`` into a summary reply.

``benchmark_model`` prints, per phase, a header and one statistics line (microseconds)::

    Running benchmark for at least 1 iterations and at least 0.5 seconds ...
    count=1 curr=3512391                                          <- warm-up
    Running benchmark for at least 50 iterations and at least 1 seconds ...
    count=50 first=2990275 curr=2913402 min=2727568 max=3189954 avg=2.95034e+06 std=109798
    Inference timings in us: Init: 17187, First inference: 3512391, Warmup (avg): 3.51239e+06, Inference (avg): 2.95034e+06

Newer builds add ``p5= median= p95=`` to the statistics line and prefix lines with
``INFO:`` (or a logcat tag); older ones print only the op profiler's
``Timings (microseconds): count=...`` line and ``Average inference timings in us: Warmup:
..., Init: ..., Inference: ...``.  With ``--enable_op_profiling`` the op profiler's
``Timings (microseconds)`` line also appears in new builds; it sums operator times and is
not the run's statistics, so it is used only when nothing better exists.

The tool gives count/avg/std/min/max (and sometimes the median), never the raw samples, so
its replies are *summary* replies: ``validate_summary`` checks them field by field and
``measure.summary_row`` stores them (median only when printed).  Fixtures of real captured
outputs: ``tests/fixtures/benchmark_model/``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from .transport import MAX_SAMPLE_MS, MAX_THREADS, MAX_TIMED_S, RunnerError, reply_number, reply_string

_NUM = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
_STATS = re.compile(
    rf"count=(?P<count>\d+) first=(?P<first>{_NUM}) curr=(?P<curr>{_NUM}) min=(?P<min>{_NUM}) "
    rf"max=(?P<max>{_NUM}) avg=(?P<avg>{_NUM}) std=(?P<std>{_NUM})"
    rf"(?: p5=(?P<p5>{_NUM}) median=(?P<median>{_NUM}) p95=(?P<p95>{_NUM}))?"
)
_HEADER = re.compile(r"Running benchmark for at least \d+ iterations")
_TIMINGS = re.compile(
    rf"Inference timings in us: Init: (?P<init>{_NUM}), First inference: (?P<first>{_NUM}), "
    rf"Warmup \(avg\): (?P<warmup>{_NUM}), Inference \(avg\): (?P<inference>{_NUM})"
)
_LEGACY = re.compile(
    rf"Average inference timings in us: Warmup: (?P<warmup>{_NUM}), Init: (?P<init>{_NUM}), "
    rf"(?:Inference|no stats): (?P<inference>{_NUM})"
)
_ERROR = re.compile(r"(ERROR:.*|Failed to .*|Benchmarking failed.*|.*[Nn]ot found.*|.*Permission denied.*)")


class BenchmarkModelError(ValueError):
    """The output holds no usable statistics (the message quotes the tool's errors)."""


@dataclass(frozen=True)
class BenchmarkSummary:
    """Statistics of the regular (timed) runs, in microseconds as printed."""

    count: int
    first_us: float
    curr_us: float
    min_us: float
    max_us: float
    avg_us: float
    std_us: float
    median_us: float | None = None
    p5_us: float | None = None
    p95_us: float | None = None
    init_us: float | None = None
    first_inference_us: float | None = None
    warmup_avg_us: float | None = None
    inference_avg_us: float | None = None
    source: str = "run"  # "run": the regular-run line; "op_profiler": the legacy fallback


def _stats_from(m: re.Match, source: str, **extra: Any) -> BenchmarkSummary:
    f = {k: (float(v) if v is not None else None) for k, v in m.groupdict().items()}
    return BenchmarkSummary(
        count=int(m.group("count")), first_us=f["first"], curr_us=f["curr"], min_us=f["min"],
        max_us=f["max"], avg_us=f["avg"], std_us=f["std"], median_us=f["median"], p5_us=f["p5"],
        p95_us=f["p95"], source=source, **extra,
    )


def parse(text: str) -> BenchmarkSummary:
    """The regular-run statistics of one ``benchmark_model`` output.

    Raises BenchmarkModelError when the output has none (quoting the tool's error lines),
    or when its lines contradict each other (the statistics' average against
    ``Inference (avg)``)."""
    lines = [ln.rstrip("\r") for ln in text.splitlines()]
    headers = [i for i, ln in enumerate(lines) if _HEADER.search(ln)]
    run_lines = [(i, m) for i, ln in enumerate(lines)
                 if "Timings (microseconds)" not in ln and (m := _STATS.search(ln))]
    profiler_lines = [(i, m) for i, ln in enumerate(lines)
                      if "Timings (microseconds)" in ln and (m := _STATS.search(ln))]
    timings = next((m for ln in reversed(lines) if (m := _TIMINGS.search(ln))), None)
    legacy = next((m for ln in reversed(lines) if (m := _LEGACY.search(ln))), None)
    extra: dict[str, Any] = {}
    if timings:
        extra = {"init_us": float(timings["init"]), "first_inference_us": float(timings["first"]),
                 "warmup_avg_us": float(timings["warmup"]), "inference_avg_us": float(timings["inference"])}
    elif legacy:
        extra = {"init_us": float(legacy["init"]), "warmup_avg_us": float(legacy["warmup"]),
                 "inference_avg_us": float(legacy["inference"])}

    summary: BenchmarkSummary | None = None
    if headers:
        # the statistics line that follows the last phase header is the regular run's;
        # with one header only the warm-up ran
        after = [(i, m) for i, m in run_lines if i > headers[-1]]
        if len(headers) >= 2 and after:
            summary = _stats_from(after[0][1], "run", **extra)
    elif run_lines:
        summary = _stats_from(run_lines[-1][1], "run", **extra)
    if summary is None and not headers and profiler_lines:
        summary = _stats_from(profiler_lines[-1][1], "op_profiler", **extra)
    if summary is None:
        errors = [m.group(0).strip() for ln in lines if (m := _ERROR.search(ln))]
        detail = " | ".join(dict.fromkeys(errors))[-600:] if errors else (
            "no statistics line in its output" + (f" (last line: {lines[-1][:200]!r})" if lines else " (empty)"))
        raise BenchmarkModelError(f"benchmark_model failed: {detail}")
    if summary.source == "run" and summary.inference_avg_us is not None:
        a, b = summary.avg_us, summary.inference_avg_us
        if abs(a - b) > 1e-3 * max(abs(a), abs(b)) + 1.0:
            raise BenchmarkModelError(f"benchmark_model output is inconsistent: avg={a:g} us but Inference (avg): {b:g} us")
    return summary


def summary_reply(s: BenchmarkSummary, threads: int, runtime_version: str) -> dict[str, Any]:
    """A reply in the runner's shape, statistics in milliseconds, without raw samples."""
    ms = lambda v: None if v is None else v / 1000.0  # noqa: E731
    return {
        "ok": True, "runtime": "tflite", "runtime_version": runtime_version, "threads": int(threads),
        "provider": "benchmark_model", "module": "benchmark_model", "source": "benchmark_model",
        "count": s.count, "mean_ms": ms(s.avg_us), "std_ms": ms(s.std_us), "min_ms": ms(s.min_us),
        "max_ms": ms(s.max_us), "median_ms": ms(s.median_us), "p90_ms": None, "iqr_ms": None,
        "first_ms": ms(s.first_us), "init_ms": ms(s.init_us),
    }


def validate_summary(reply: Any) -> dict[str, Any]:
    """Check a summary reply field by field (the counterpart of ``validate_reply`` for tools
    that print statistics, not samples).  Raises RunnerError."""
    if not isinstance(reply, dict):
        raise RunnerError(f"benchmark_model reply is not an object: {str(reply)[:200]}")
    if reply.get("ok") is not True:
        err = reply.get("error")
        raise RunnerError(str(err)[:2000] if isinstance(err, str) and err else "benchmark_model failed without a message")
    what = "benchmark_model"
    out: dict[str, Any] = {"count": reply_number(reply, "count", what, 1e9, lo=1, integer=True)}
    for name in ("mean_ms", "std_ms", "min_ms", "max_ms", "median_ms", "p90_ms", "iqr_ms"):
        out[name] = reply_number(reply, name, what, MAX_SAMPLE_MS, optional=name in ("median_ms", "p90_ms", "iqr_ms"))
    lo, hi = out["min_ms"] * (1 - 1e-6) - 1e-6, out["max_ms"] * (1 + 1e-6) + 1e-6
    for name in ("mean_ms", "median_ms", "p90_ms"):
        if out[name] is not None and not lo <= out[name] <= hi:
            raise RunnerError(f"benchmark_model reply: {name}={out[name]:g} lies outside [min, max]")
    out.update({k: reply_string(reply, k, what) for k in ("runtime", "runtime_version")},
               threads=reply_number(reply, "threads", what, MAX_THREADS, lo=1, integer=True),
               provider=reply_string(reply, "provider", what, optional=True),
               module=reply_string(reply, "module", what, optional=True), source="benchmark_model",
               timed_s=reply_number(reply, "timed_s", what, MAX_TIMED_S, optional=True) or 0.0)
    return out
