"""The on-device runner's protocol and the host's validation of what comes back."""

from __future__ import annotations

import json
import os
import random
import statistics
import subprocess
import sys

import pytest

from profiler.transport import RUNNER_PATH, RunnerError, validate_reply


def _reply(**over):
    r = {"ok": True, "runtime": "onnxruntime", "runtime_version": "1.0", "threads": 1,
         "samples_ms": [1.0, 2.0, 3.0], "median_ms": 99.0, "load_avg": 0.5}
    r.update(over)
    return r


def test_host_recomputes_statistics_from_samples():
    out = validate_reply(_reply())
    assert out["median_ms"] == 2.0 and out["count"] == 3 and out["min_ms"] == 1.0 and out["max_ms"] == 3.0
    assert out["load_avg"] == 0.5


def test_a_timing_is_priced_by_the_median_of_its_quietest_stretch():
    from profiler.runner import QUIET_WINDOW, quiet_median

    rng = random.Random(0)
    quiet = [5.0 + 0.1 * rng.random() for _ in range(2 * QUIET_WINDOW)]
    busy = [9.0 + rng.random() for _ in range(6 * QUIET_WINDOW)]
    samples = busy[:3 * QUIET_WINDOW] + quiet + busy[3 * QUIET_WINDOW:]  # disturbed three quarters of the time
    assert statistics.median(samples) > 9.0  # the plain median is the disturbance's
    assert 5.0 <= quiet_median(samples) <= 5.1
    # undisturbed, the windows agree: within a tenth of the spread of the plain median
    steady = [5.0 + 0.1 * rng.random() for _ in range(8 * QUIET_WINDOW)]
    assert abs(quiet_median(steady) - statistics.median(steady)) < 0.01
    # fewer than two windows (a slow model timed a few hundred times): the plain median
    few = busy[:2 * QUIET_WINDOW - 2] + quiet[:1]
    assert quiet_median(few) == statistics.median(few)
    # the host recomputes it from the samples, never takes the reply's word for it
    out = validate_reply(_reply(samples_ms=samples, quiet_ms=0.001))
    assert out["quiet_ms"] == quiet_median(samples) and out["median_ms"] == statistics.median(samples)


@pytest.mark.parametrize("bad, message", [
    ("not a dict", "not a JSON object"),
    (_reply(ok=False, error="model missing"), "model missing"),
    (_reply(samples_ms=[]), "no samples_ms"),
    (_reply(samples_ms=[1.0, float("nan")]), "invalid sample"),
    (_reply(samples_ms=[1.0, -2.0]), "invalid sample"),
    (_reply(samples_ms=[1.0, "2"]), "invalid sample"),
    (_reply(threads=0), "threads is invalid"),
    (_reply(runtime=None), "runtime is missing"),
    (_reply(load_avg="high"), "load_avg is invalid"),
])
def test_malformed_replies_are_rejected(bad, message):
    with pytest.raises(RunnerError, match=message):
        validate_reply(bad)


def test_runner_info_and_serve_errors_are_replies():
    info = json.loads(subprocess.run([sys.executable, str(RUNNER_PATH), "info"], capture_output=True,
                                     text=True, check=True, timeout=120).stdout)
    assert info["ok"] and {"onnxruntime", "tflite"} <= set(info["runtimes"]) and info["cpus"] >= 1
    reqs = "\n".join([json.dumps({"id": 1, "model": "/nonexistent.onnx", "runtime": "onnxruntime"}),
                      "this is not json", json.dumps({"id": 3, "op": "info"})]) + "\n"
    out = subprocess.run([sys.executable, str(RUNNER_PATH), "serve"], input=reqs, capture_output=True,
                         text=True, timeout=120).stdout.splitlines()
    replies = [json.loads(x) for x in out]
    assert replies[0]["ready"] is True
    assert replies[1]["id"] == 1 and replies[1]["ok"] is False and "nonexistent" in replies[1]["error"]
    assert replies[2]["ok"] is False  # malformed request: an error reply, the runner keeps serving
    assert replies[3]["id"] == 3 and replies[3]["ok"] is True


def _serve(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(RUNNER_PATH), "serve", *argv], input=json.dumps({"id": 1, "op": "info"})
                          + "\n", capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity on this system")
def test_runner_pins_itself_to_the_cpu_mask_and_refuses_one_it_cannot_use():
    from profiler.runner import parse_cpu_mask

    assert parse_cpu_mask("c") == {2, 3} and parse_cpu_mask("0x5") == {0, 2}
    last = max(os.sched_getaffinity(0))
    p = _serve("--cpus", format(1 << last, "x"))
    hello, info = (json.loads(x) for x in p.stdout.splitlines())
    assert p.returncode == 0 and hello["ready"] and hello["affinity"] == [last] and info["affinity"] == [last]
    hello = json.loads(_serve("--cpus", "last:1").stdout.splitlines()[0])  # devices.yaml's cpu_mask: last
    assert hello["affinity"] == [last]
    for mask, words in ((format(1 << (last + 1), "x"), "none of which this process may use"), ("0", "names no CPU"),
                        ("big", "not hexadecimal"), ("f_0", "not hexadecimal"), ("last:0", "N >= 1")):
        p = _serve("--cpus", mask)
        (hello,) = (json.loads(x) for x in p.stdout.splitlines())  # the greeting is the error; nothing served
        assert p.returncode == 2 and hello["ok"] is False and repr(mask) in hello["error"] and words in hello["error"]


def test_cpu_lists_are_read_from_what_a_runner_says_and_nonsense_is_dropped():
    from profiler.transport import cpu_list

    assert cpu_list([3, 0, 1, 2, 6, 8, 9]) == "0-3,6,8-9" and cpu_list([5]) == "5"
    assert cpu_list(None) == cpu_list([]) == cpu_list(["1"]) == cpu_list([True]) == cpu_list([-1]) == ""


def test_runner_is_standard_library_only():
    """It is pushed to devices that have only Python and a runtime."""
    import ast

    tree = ast.parse(RUNNER_PATH.read_text())
    top = {(n.names[0].name if isinstance(n, ast.Import) else n.module).split(".")[0]
           for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))}
    assert top <= {"json", "math", "os", "platform", "statistics", "sys", "time"}


def test_a_microsecond_block_sends_a_reply_that_fits_the_line_cap(monkeypatch):
    """A block that runs in microseconds (global pooling under LiteRT) is timed hundreds of
    thousands of times in ``min_time_s``; the runner sends at most MAX_SAMPLES of them
    (every k-th), so the reply line stays under the host's cap (it was refused before)."""
    import json

    from profiler import runner, transport

    class FastModelDouble:  # test double: a model that does nothing
        module, version, provider = "double", "0", ""

        def __init__(self, *args, **kwargs):
            pass

        def run(self):
            pass

        def check_provider(self):
            pass

    monkeypatch.setattr(runner, "_Model", FastModelDouble)
    reply = runner.measure("unused", runtime="onnxruntime", repeats=50, min_time_s=0.5, max_time_s=5.0)
    assert reply["runs"] > runner.MAX_SAMPLES  # min_time_s is still honoured
    assert runner.MAX_SAMPLES // 2 <= len(reply["samples_ms"]) <= runner.MAX_SAMPLES
    assert reply["timed_s"] >= 0.5
    line = json.dumps(reply)  # as the runner writes it
    assert len(line.encode()) < transport.MAX_LINE_BYTES
    assert transport.validate_reply(json.loads(line))["count"] == len(reply["samples_ms"])


@pytest.mark.parametrize("runtime, fmt", [("onnxruntime", "onnx"), ("tflite", "tflite")])
def test_a_measured_model_is_freed_at_once(tmp_path, artifact_cache, runtime, fmt):
    """A runner measures hundreds of models in one process: each model (an onnxruntime session
    holds tens of MB for a 224-px network) must go when its measurement ends, not when the
    cyclic garbage collector gets round to it (a closure over the model object was a cycle, and
    a long runner grew and slowed down)."""
    import gc
    import weakref

    from profiler import runner
    from profiler.export import ArtifactCache
    from supernet.space import TINY

    key = str(TINY.all_blocks([32])[1])
    path = ArtifactCache(artifact_cache).ensure([(key, fmt)], progress=False)[(key, fmt)].path
    gc.disable()
    try:
        m = runner._Model(str(path), runtime, 1)
        m.run()
        ref = weakref.ref(m)
        del m
        assert ref() is None
    finally:
        gc.enable()


def test_an_onnxruntime_fallback_to_another_provider_is_an_error(tmp_path):
    """onnxruntime silently falls back to the CPU when a requested provider fails on the
    device (at session creation, or while running): the runner refuses to report such
    timings as the requested provider's."""
    from profiler import runner
    from profiler.export import export_block
    from supernet.space import TINY

    path = export_block(TINY.all_blocks([32])[0], "onnx", tmp_path / "b.onnx")
    m = runner._Model(str(path), "onnxruntime", 1)
    assert m.provider == "CPUExecutionProvider"
    m.check_provider()  # what was asked for is what runs

    class FellBack:  # what a session reports after onnxruntime gave up on the requested provider
        def get_providers(self):
            return ["CPUExecutionProvider"]

    m.sess, m.wanted_provider = FellBack(), "CUDAExecutionProvider"
    with pytest.raises(RuntimeError, match="runs this model on CPUExecutionProvider, not the requested "
                                           "CUDAExecutionProvider"):
        runner._reply(m, "onnxruntime", 1, 0, 0.0, 0.1, [1.0], 10, None)
