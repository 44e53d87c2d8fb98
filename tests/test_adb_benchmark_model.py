"""The benchmark_model output parser against real captured outputs
(tests/fixtures/benchmark_model/, sources in SOURCES.md), and the summary-reply validation."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from profiler.benchmark_model import BenchmarkModelError, parse, summary_reply, validate_summary
from profiler.transport import RunnerError, validate_reply

FIXTURES = Path(__file__).parent / "fixtures" / "benchmark_model"


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


def test_regular_run_not_warmup_and_not_the_op_profiler_line():
    s = parse(fixture("riscv64_tflite_op_profiling.txt"))
    assert s.source == "run" and s.count == 50
    assert (s.min_us, s.max_us, s.avg_us, s.std_us) == (2727568, 3189954, 2.95034e6, 109798)
    assert s.init_us == 17187 and s.first_inference_us == 3512391 and s.inference_avg_us == 2.95034e6
    assert s.median_us is None


def test_litert_android_output_with_median_and_info_prefixes():
    s = parse(fixture("android_litert_sme2_median.txt"))
    # the second "Running benchmark" phase, not the warm-up (count=1055), not the op profiler (count=3166)
    assert s.count == 2112 and s.avg_us == 464.545 and s.median_us == 462 and s.p5_us == 460 and s.p95_us == 478
    assert s.min_us == 442 and s.max_us == 979 and s.std_us == 13


def test_plain_android_output():
    s = parse(fixture("android_mi11_tf24.txt"))
    assert s.count == 50 and s.avg_us == 249684 and s.std_us == 1442 and s.first_us == 249042
    assert s.init_us == 16242 and s.warmup_avg_us == 304586


def test_legacy_output_falls_back_to_the_profiler_timings():
    s = parse(fixture("tf_readme_legacy_op_profiling.txt"))
    assert s.source == "op_profiler" and s.count == 50 and s.avg_us == 79732
    assert s.inference_avg_us == 79760.9 and s.init_us == 38467


def test_logcat_prefixes_and_crlf():
    text = fixture("android_mi11_tf24.txt").replace("\n", "\r\n")
    text = "\n".join("I tflite  : " + ln for ln in text.split("\n"))
    assert parse(text).avg_us == 249684


def test_failures_quote_the_tool():
    with pytest.raises(BenchmarkModelError, match="Failed to mmap model .*missing.tflite"):
        parse(fixture("failed_mmap.txt"))
    with pytest.raises(BenchmarkModelError, match="no statistics"):
        parse("STARTING!\nSegmentation fault\n")
    with pytest.raises(BenchmarkModelError, match="empty"):
        parse("")
    warmup_only = "\n".join(fixture("riscv64_tflite_op_profiling.txt").splitlines()[:11])
    with pytest.raises(BenchmarkModelError):
        parse(warmup_only)  # only the warm-up phase ran


def test_contradicting_lines_are_rejected():
    text = fixture("android_mi11_tf24.txt").replace("Inference (avg): 249684", "Inference (avg): 100")
    with pytest.raises(BenchmarkModelError, match="inconsistent"):
        parse(text)


def test_summary_reply_round_trip_and_validation():
    reply = summary_reply(parse(fixture("android_litert_sme2_median.txt")), threads=1, runtime_version="bm@x")
    out = validate_summary(reply)
    assert out["count"] == 2112 and out["mean_ms"] == pytest.approx(0.464545) and out["median_ms"] == 0.462
    assert out["p90_ms"] is None and "samples_ms" not in out
    for bad in ({"count": 0}, {"mean_ms": 5.0}, {"std_ms": -1.0}, {"min_ms": math.nan}, {"threads": 0},
                {"median_ms": 0.1}, {"runtime_version": None}, {"ok": False, "error": "boom"}):
        with pytest.raises(RunnerError):
            validate_summary(dict(reply, **bad))


def test_runner_replies_still_need_raw_samples():
    # a summary-shaped reply coming from a runner is not accepted: validation is chosen by
    # the channel (benchmark_model's is summary_only), never by the reply's shape
    reply = summary_reply(parse(fixture("android_mi11_tf24.txt")), threads=1, runtime_version="1")
    with pytest.raises(RunnerError, match="samples_ms"):
        validate_reply(reply)
