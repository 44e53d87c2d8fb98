"""Per-block overhead of measuring through SSH, beyond the measurement itself.

Starts a real OpenSSH sshd on 127.0.0.1 (tests/sshd.py: throwaway config, host-key checking
on), then measures the same blocks through it and through the local transport, with the same
runner and settings.  For every block, the cycle the profiler runs (push the model, one
request/reply with the runner, remove the model) is timed on the host; the runner's own work
(model load + timed runs, as it reports them; no warm-up) is subtracted.  What remains is the
path's overhead: sftp push/remove, the JSON round trip, the SSH channel.

    .venv/bin/python bench/ssh_overhead.py [--blocks 8] [--rounds 3] [--repeats 20]

Prints one JSON object; ``ssh.overhead_ms.median`` is the figure (target: <= 20 ms/block).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from profiler.devices import parse_device  # noqa: E402
from profiler.transport import LocalTransport  # noqa: E402
from supernet.space import TINY  # noqa: E402

from sshd import SshServer, shared_artifact_cache, sshd_missing  # noqa: E402


def measure_path(transport, paths, rounds: int, req: dict) -> dict:
    t0 = time.perf_counter()
    transport.open()
    connect_ms = (time.perf_counter() - t0) * 1e3
    t0 = time.perf_counter()
    ch = transport.start_runner()
    start_ms = (time.perf_counter() - t0) * 1e3
    cycles, overheads = [], []
    try:
        for _ in range(rounds):
            for path in paths:
                t0 = time.perf_counter()
                remote = transport.stage(path)
                reply = ch.request(dict(req, model=remote), timeout=120)
                transport.unstage(remote)
                cycle = (time.perf_counter() - t0) * 1e3
                if not reply.get("ok"):
                    raise RuntimeError(reply.get("error"))
                work = reply["load_ms"] + reply["timed_s"] * 1e3
                cycles.append(cycle)
                overheads.append(cycle - work)
    finally:
        ch.close()
        transport.close()

    def summary(xs):
        return {"median": statistics.median(xs), "mean": statistics.fmean(xs), "min": min(xs), "max": max(xs)}

    return {"connect_ms": connect_ms, "runner_start_ms": start_ms, "cycle_ms": summary(cycles),
            "overhead_ms": summary(overheads), "blocks_measured": len(cycles)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--blocks", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    if sshd_missing():
        print(json.dumps({"skipped": sshd_missing()}))
        return 0
    specs = TINY.all_blocks()[: args.blocks]
    cache = shared_artifact_cache(specs)
    paths = [cache.path(str(s), "onnx") for s in specs]
    req = {"runtime": "onnxruntime", "threads": 1, "warmup": 0, "repeats": args.repeats,
           "min_time_s": 0.0, "max_time_s": 5.0}
    with tempfile.TemporaryDirectory(prefix="hwnas-bench-") as tmp:
        server = SshServer(Path(tmp)).start()
        try:
            from profiler.transport_ssh import SSHTransport

            ssh_dev = parse_device(Path("bench"), "loopback", server.device_entry())
            ssh = measure_path(SSHTransport(ssh_dev), paths, args.rounds, req)
        finally:
            server.kill()
    local_dev = parse_device(Path("bench"), "local", {"transport": "local", "runtime": "onnxruntime"})
    local = measure_path(LocalTransport(local_dev), paths, args.rounds, req)
    print(json.dumps({
        "what": "per-block overhead beyond the runner's own work (load + timed runs), ms",
        "blocks": len(specs), "rounds": args.rounds, "repeats": args.repeats,
        "ssh": ssh, "local": local,
        "ssh_minus_local_ms": ssh["overhead_ms"]["median"] - local["overhead_ms"]["median"],
        "target_ms": 20.0, "meets_target": ssh["overhead_ms"]["median"] <= 20.0,
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
