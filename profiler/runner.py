#!/usr/bin/env python3
"""hwnas on-device runner: times one model and prints one JSON line of statistics.

Self-contained on purpose: the standard library plus numpy and whichever runtime the device
has (``ai_edge_litert``, ``tflite_runtime``, ``tensorflow.lite`` for TFLite models;
``onnxruntime`` for ONNX).  The host pushes this file to a device and never evaluates what
comes back; it parses the JSON line and validates every field.

Usage::

    python3 runner.py info                       # one JSON line: platform, CPU, runtimes
    python3 runner.py once MODEL [--runtime R] [--threads N] [--warmup N] [--repeats N]
                               [--min-time S] [--max-time S] [--providers P1,P2] [--cpus MASK]
    python3 runner.py serve [--cpus MASK]        # JSON requests on stdin, one reply per line

``--cpus MASK`` (hexadecimal, as taskset takes it: ``2`` is CPU 1, ``c`` CPUs 2-3; or
``last:N``, the N highest-numbered CPUs the runner may use) keeps the runner and every thread
its runtime starts on those CPUs (Linux's ``sched_setaffinity``); the greeting and ``info``
name the CPUs it runs on.

A ``serve`` request is ``{"id": .., "model": PATH, "runtime": .., "threads": .., "warmup": ..,
"repeats": .., "min_time_s": .., "max_time_s": .., "providers": [..]}``; the reply carries the
same id.  ``{"op": "measure_group", "models": [PATH, ..], ...}`` times a group of models in
rotation (``measure_group``) and replies ``{"ok": true, "results": [reply per model]}``.
Errors are replies (``"ok": false``), never tracebacks on stdout.
"""

import json
import math
import os
import platform
import statistics
import sys
import time

PROTOCOL = 1
TFLITE_MODULES = ("ai_edge_litert.interpreter", "tflite_runtime.interpreter", "tensorflow.lite")


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                low = line.lower()
                if low.startswith("model name") or low.startswith("hardware") or low.startswith("processor\t: arm"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _import(name):
    module = __import__(name)
    for part in name.split(".")[1:]:
        module = getattr(module, part)
    return module


def _tflite_interpreter_class():
    errors = []
    for name in TFLITE_MODULES:
        try:
            mod = _import(name)
            cls = getattr(mod, "Interpreter")
            top = _import(name.split(".")[0])
            version = getattr(top, "__version__", "") or getattr(mod, "__version__", "")
            if not version:
                try:
                    from importlib.metadata import version as _v
                    version = _v(name.split(".")[0].replace("_", "-"))
                except Exception:  # noqa: BLE001 - best effort only
                    version = "unknown"
            return cls, name.split(".")[0], version
        except Exception as exc:  # noqa: BLE001 - try the next one
            errors.append(f"{name}: {exc.__class__.__name__}")
    raise RuntimeError("no TFLite runtime on this device (tried " + ", ".join(errors) + ")")


def runtimes():
    found = {}
    try:
        _, module, version = _tflite_interpreter_class()
        found["tflite"] = {"module": module, "version": version}
    except RuntimeError:
        pass
    try:
        import onnxruntime
        found["onnxruntime"] = {
            "module": "onnxruntime",
            "version": onnxruntime.__version__,
            "providers": onnxruntime.get_available_providers(),
        }
    except Exception:  # noqa: BLE001
        pass
    return found


def parse_cpu_mask(mask):
    """The CPU numbers of a hexadecimal affinity mask (``"c"`` or ``"0xc"``: CPUs 2 and 3)."""
    text = str(mask)
    text = text[2:] if text.startswith("0x") else text
    if not text or any(c not in "0123456789abcdefABCDEF" for c in text):  # int() would take " c", "+c", "f_0"
        raise ValueError(f"CPU mask {mask!r} is not hexadecimal (e.g. 2 for CPU 1, c for CPUs 2-3)")
    bits = int(text, 16)
    cpus = {i for i in range(bits.bit_length()) if bits >> i & 1}
    if not cpus:
        raise ValueError(f"CPU mask {mask!r} names no CPU")
    return cpus


def pin(mask):
    """Keep this process (and the threads it starts from now on) on the CPUs of ``mask``
    (hexadecimal, or ``last:N``: the N highest-numbered CPUs it may use); returns them.
    Raises ValueError or OSError with a message naming the mask."""
    if not hasattr(os, "sched_setaffinity"):
        raise OSError(f"CPU mask {mask!r}: this system ({platform.system()}) cannot pin a process to CPUs")
    allowed = os.sched_getaffinity(0)
    if str(mask).startswith("last:"):
        n = str(mask)[5:]
        if not n.isdigit() or int(n) < 1:
            raise ValueError(f"CPU mask {mask!r}: last:N needs a number of CPUs N >= 1")
        cpus = set(sorted(allowed)[-int(n):])
    else:
        cpus = parse_cpu_mask(mask)
    if not cpus & allowed:
        raise ValueError(f"CPU mask {mask!r} names CPUs {sorted(cpus)}, none of which this process may use "
                         f"(allowed: {sorted(allowed)})")
    os.sched_setaffinity(0, cpus & allowed)
    return sorted(os.sched_getaffinity(0))


def _affinity():
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None


def info():
    return {
        "ok": True,
        "protocol": PROTOCOL,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "system": platform.system(),
        "host": platform.node(),
        "cpu": _cpu_model(),
        "cpus": os.cpu_count(),
        "affinity": _affinity(),
        "runtimes": runtimes(),
    }


class _Model:
    """A loaded model with one fixed random input."""

    def __init__(self, path, runtime, threads, providers=None):
        import numpy as np

        self.runtime = runtime
        rng = np.random.default_rng(0)
        if runtime == "tflite":
            cls, self.module, self.version = _tflite_interpreter_class()
            self.interp = cls(model_path=path, num_threads=int(threads))
            self.interp.allocate_tensors()
            self.inputs = []
            for d in self.interp.get_input_details():
                data = rng.standard_normal(tuple(d["shape"])).astype(np.float32)
                dtype = np.dtype(d["dtype"])
                if dtype.kind in "iu":  # an int8 model: its input quantized with its own scale and zero point
                    scale, zero = d["quantization"]
                    info = np.iinfo(dtype)
                    data = np.clip(np.round(data / (scale or 1.0)) + zero, info.min, info.max)
                self.interp.set_tensor(d["index"], data.astype(dtype))
            self.run = self.interp.invoke
            self.provider = "xnnpack" if "ai_edge_litert" in self.module or "tflite" in self.module else ""
        elif runtime == "onnxruntime":
            import onnxruntime as ort

            self.module, self.version = "onnxruntime", ort.__version__
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = int(threads)
            opts.inter_op_num_threads = 1
            opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            opts.log_severity_level = 3
            providers = list(providers or ["CPUExecutionProvider"])
            self.sess = ort.InferenceSession(path, sess_options=opts, providers=providers)
            self.provider = self.sess.get_providers()[0]
            self.wanted_provider = providers[0]
            self.check_provider()
            feeds = {}
            for i in self.sess.get_inputs():
                shape = tuple(d if isinstance(d, int) else 1 for d in i.shape)
                feeds[i.name] = rng.standard_normal(shape).astype(np.float32)
            self.feeds = feeds
            names = [o.name for o in self.sess.get_outputs()]
            sess = self.sess  # not self: a closure over self is a reference cycle that keeps every
            # session (tens of MB for a 224-px network) alive until the cyclic collector runs, and a
            # runner that measured many models grew and slowed down measurement after measurement
            self.run = lambda: sess.run(names, feeds)
        else:
            raise ValueError(f"unknown runtime {runtime!r} (known: tflite, onnxruntime)")

    def check_provider(self):
        """onnxruntime falls back to the CPU by itself when a requested provider fails (at
        session creation or while running): a GPU's table would hold CPU timings.  Raises."""
        sess = getattr(self, "sess", None)
        if sess is None:
            return
        now = sess.get_providers()[0]
        if now != self.wanted_provider:
            raise RuntimeError(f"onnxruntime runs this model on {now}, not the requested {self.wanted_provider} "
                               f"(it fell back: the provider failed on this device)")


def _load_avg():
    """The device's 1-minute load average after timing (None where the OS has none): a busy
    device measures slow, and the LUT records how busy it was."""
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return None


QUIET_WINDOW = 200  # samples a window of quiet_median holds at least


def quiet_median(samples):
    """The median of the quietest stretch of one timing: ``samples`` (in time order) cut
    into windows of at least ``QUIET_WINDOW`` consecutive samples, the smallest of their
    medians; the plain median where fewer than two windows fit (a model of milliseconds
    timed a few hundred times).  Another process on a shared CPU adds time to every
    invocation for a while: a probe of 6 us read 10 us for half of a timing, its median
    with it, and as a block's edge (twice one probe less another) that moved networks'
    prices by 5-7% (measured on a 2-core AMD EPYC VM, Fashion-MNIST space, onnxruntime,
    2026-12-07; README "Fidelity").  A disturbance only adds time, so the quietest
    window is the model's own time; with none, the windows' medians agree within a few
    tenths of a percent."""
    n = len(samples)
    k = n // QUIET_WINDOW
    if k < 2:
        return statistics.median(samples)
    cuts = [i * n // k for i in range(k + 1)]
    return min(statistics.median(samples[a:b]) for a, b in zip(cuts, cuts[1:]))


def _stats(samples):
    """Statistics of one timing's ``samples`` (in time order)."""
    s = sorted(samples)
    n = len(s)

    def q(p):
        if n == 1:
            return s[0]
        pos = p * (n - 1)
        lo = math.floor(pos)
        hi = min(lo + 1, n - 1)
        return s[lo] + (s[hi] - s[lo]) * (pos - lo)

    return {
        "count": n,
        "median_ms": statistics.median(s),
        "quiet_ms": quiet_median(samples),
        "mean_ms": statistics.fmean(s),
        "std_ms": statistics.stdev(s) if n > 1 else 0.0,
        "p90_ms": q(0.9),
        "min_ms": s[0],
        "max_ms": s[-1],
        "iqr_ms": q(0.75) - q(0.25),
    }


MAX_SAMPLES = 20000  # a reply of this many samples stays far below the host's 1 MiB line cap


def measure(model, runtime="tflite", threads=1, warmup=10, repeats=50, min_time_s=0.0,
            max_time_s=30.0, providers=None, max_samples=MAX_SAMPLES):
    """Load ``model``, run ``warmup`` untimed invocations, then time invocations until at
    least ``repeats`` were done and ``min_time_s`` has passed (or ``max_time_s`` is spent).
    At most ``max_samples`` samples are sent, every k-th in time order when more were
    taken (a block of a few microseconds runs hundreds of thousands of times in
    ``min_time_s``); ``runs`` says how many were timed."""
    t_load = time.perf_counter()
    m = _Model(model, runtime, threads, providers)
    load_ms = (time.perf_counter() - t_load) * 1e3
    for _ in range(int(warmup)):
        m.run()
    samples = []
    clock = time.perf_counter_ns
    start = clock()
    budget_ns = float(max_time_s) * 1e9
    min_ns = float(min_time_s) * 1e9
    while True:
        t0 = clock()
        m.run()
        t1 = clock()
        samples.append((t1 - t0) / 1e6)
        elapsed = t1 - start
        if len(samples) >= int(repeats) and elapsed >= min_ns:
            break
        if elapsed >= budget_ns:
            break
    return _reply(m, runtime, threads, warmup, load_ms, (clock() - start) / 1e9, samples, max_samples, _load_avg())


def _reply(m, runtime, threads, warmup, load_ms, timed_s, samples, max_samples, load_avg):
    """One model's reply: what ran it, its ``samples`` (at most ``max_samples``, every k-th
    in time order when more were taken; ``runs`` says how many) and their statistics."""
    m.check_provider()  # onnxruntime may also fall back while running
    out = {
        "ok": True,
        "load_avg": load_avg,
        "runtime": runtime,
        "module": m.module,
        "runtime_version": m.version,
        "provider": m.provider,
        "threads": int(threads),
        "warmup": int(warmup),
        "load_ms": load_ms,
        "timed_s": timed_s,
        "runs": len(samples),
    }
    if len(samples) > int(max_samples):
        samples = samples[::-(-len(samples) // int(max_samples))]  # every k-th, k = ceil(n / max)
    out["samples_ms"] = samples
    out.update(_stats(samples))
    return out


def measure_group(models, runtime="tflite", threads=1, warmup=10, repeats=50, min_time_s=0.0,
                  max_time_s=30.0, providers=None, max_samples=MAX_SAMPLES):
    """Load every model of ``models``, then run them **in rotation**: each round invokes every
    model once, in the order given, timing each invocation on its own (``warmup`` untimed
    rounds first), until at least ``repeats`` rounds were done and ``min_time_s`` has passed
    (or ``max_time_s`` is spent).  A model then meets the caches, branch predictors and the
    runtime's dispatch path as the models before it left them, as a block does inside a
    network, where timing it alone and again and again finds everything of its own hot.
    One reply per model, as ``measure``'s; a model that fails to load or run is an error
    reply and leaves the rotation."""
    loaded = []
    for path in models:
        t_load = time.perf_counter()
        try:
            loaded.append((_Model(path, runtime, threads, providers), (time.perf_counter() - t_load) * 1e3, None))
        except Exception as exc:  # noqa: BLE001 - one model's failure is its reply
            loaded.append((None, 0.0, exc))
    samples = [[] for _ in loaded]
    errors = [err for _, _, err in loaded]

    def rotation(timed):
        for i, (m, _, _) in enumerate(loaded):
            if m is None or errors[i] is not None:
                continue
            try:
                t0 = time.perf_counter_ns()
                m.run()
                t1 = time.perf_counter_ns()
            except Exception as exc:  # noqa: BLE001
                errors[i] = exc
                continue
            if timed:
                samples[i].append((t1 - t0) / 1e6)

    for _ in range(int(warmup)):
        rotation(False)
    start = time.perf_counter_ns()
    rounds = 0
    while any(e is None for e in errors):
        rotation(True)
        rounds += 1
        elapsed = time.perf_counter_ns() - start
        if (rounds >= int(repeats) and elapsed >= float(min_time_s) * 1e9) or elapsed >= float(max_time_s) * 1e9:
            break
    timed_s = (time.perf_counter_ns() - start) / 1e9
    load_avg = _load_avg()
    results = []
    for (m, load_ms, _), err, got in zip(loaded, errors, samples):
        if err is not None:
            results.append(_error(err))
            continue
        out = _reply(m, runtime, threads, warmup, load_ms, sum(got) / 1e3, got, max_samples, load_avg)
        out.update(group_timed_s=timed_s, context="round-robin")
        results.append(out)
    return {"ok": True, "results": results}


def _error(exc):
    return {"ok": False, "error": f"{exc.__class__.__name__}: {exc}".replace("\n", " ")[:2000]}


def serve(stdin, stdout, cpus=None):
    """Answer JSON requests from ``stdin``; with ``cpus`` (a hexadecimal mask), pinned to
    those CPUs first (a mask that cannot be applied is the greeting's error, and no serving)."""
    try:
        if cpus:
            pin(cpus)
    except (ValueError, OSError) as exc:
        stdout.write(json.dumps(_error(exc)) + "\n")
        stdout.flush()
        return 2
    stdout.write(json.dumps({"ok": True, "ready": True, "protocol": PROTOCOL, "affinity": _affinity()}) + "\n")
    stdout.flush()
    for line in stdin:
        line = line.strip()
        if not line:
            continue
        req_id = None
        try:
            req = json.loads(line)
            req_id = req.get("id")
            if req.get("op") == "info":
                reply = info()
            else:
                opts = dict(
                    runtime=req.get("runtime", "tflite"),
                    threads=req.get("threads", 1),
                    warmup=req.get("warmup", 10),
                    repeats=req.get("repeats", 50),
                    min_time_s=req.get("min_time_s", 0.0),
                    max_time_s=req.get("max_time_s", 30.0),
                    providers=req.get("providers"),
                )
                if req.get("op") == "measure_group":
                    reply = measure_group(list(req["models"]), **opts)
                else:
                    reply = measure(req["model"], **opts)
        except Exception as exc:  # noqa: BLE001 - every failure is a reply
            reply = _error(exc)
        reply["id"] = req_id
        stdout.write(json.dumps(reply) + "\n")
        stdout.flush()


def main(argv):
    if not argv or argv[0] in ("-h", "--help"):
        sys.stdout.write(__doc__)
        return 0
    cmd = argv[0]
    if cmd == "info":
        print(json.dumps(info()))
        return 0
    if cmd == "serve":
        if argv[1:] and (argv[1] != "--cpus" or len(argv) != 3):
            print(json.dumps({"ok": False, "error": "usage: runner.py serve [--cpus MASK]"}))
            return 2
        return serve(sys.stdin, sys.stdout, argv[2] if argv[1:] else None) or 0
    if cmd == "once":
        if len(argv) < 2:
            print(json.dumps({"ok": False, "error": "usage: runner.py once MODEL [options]"}))
            return 2
        opts = {"runtime": None, "threads": "1", "warmup": "10", "repeats": "50",
                "min-time": "0", "max-time": "30", "providers": "", "cpus": ""}
        rest = argv[2:]
        while rest:
            flag = rest.pop(0)
            name = flag[2:] if flag.startswith("--") else ""
            if name not in opts or not rest:
                print(json.dumps({"ok": False, "error": f"bad option {flag!r}"}))
                return 2
            opts[name] = rest.pop(0)
        model = argv[1]
        runtime = opts["runtime"] or ("onnxruntime" if model.endswith(".onnx") else "tflite")
        try:
            if opts["cpus"]:
                pin(opts["cpus"])
            out = measure(model, runtime, int(opts["threads"]), int(opts["warmup"]),
                          int(opts["repeats"]), float(opts["min-time"]), float(opts["max-time"]),
                          [p for p in opts["providers"].split(",") if p] or None)
        except Exception as exc:  # noqa: BLE001
            out = _error(exc)
        print(json.dumps(out))
        return 0 if out["ok"] else 1
    print(json.dumps({"ok": False, "error": f"unknown command {cmd!r} (info, once, serve)"}))
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
