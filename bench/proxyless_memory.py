"""Memory and time of one ProxylessNAS search step: binarized paths against all paths active.

    .venv/bin/python bench/proxyless_memory.py [--space proxyless_fmnist] [--resolution 40]
        [--batch 64] [--archs 5] [--rounds 5] [--threads 2] [--device cpu|cuda]

For ``--archs`` architectures sampled from uniform ``alpha``, in alternating rounds:

- ``binarized weight step``: ``supernet.proxyless`` in ``sample`` mode (one path per block),
  forward, backward and SGD step on one batch;
- ``binarized arch step``: ``two`` mode (two paths per block, the inactive one without a
  graph), forward and backward of CE + E[latency], Adam step on alpha;
- ``all paths``: ``full`` mode (every path computed and weighted by softmax(alpha), the
  DARTS-style mixture), forward, backward, SGD step;
- ``compact``: the same architecture as the binarized step, built as a plain network
  (``supernet.ops.build_network``), forward, backward, SGD step.

Memory is the activation memory kept for backward (every tensor autograd saves, counted
once per storage, through ``torch.autograd.graph.saved_tensors_hooks``: exact and the same on
every machine) plus, on CUDA, the allocator's peak.  Time is the median over rounds.  Prints
one JSON object; targets (issue 9): binarized <= 1/3 of all paths (6 candidates plus zero),
binarized weight step <= 1.5x the compact model's time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from supernet.cliargs import threads_arg  # noqa: E402
from supernet.ops import build_network  # noqa: E402
from supernet.proxyless import ProxylessSupernet, expected_cost  # noqa: E402
from supernet.space import get_space  # noqa: E402


class SavedBytes:
    """Bytes of the distinct storages autograd saves for backward inside the context."""

    def __init__(self):
        self.seen: dict[int, int] = {}

    def pack(self, t: torch.Tensor):
        try:
            st = t.untyped_storage()
            self.seen.setdefault(st.data_ptr(), st.nbytes())
        except (RuntimeError, NotImplementedError):
            self.seen.setdefault(id(t), t.numel() * t.element_size())
        return t

    @staticmethod
    def unpack(t):
        return t

    def __enter__(self):
        self.ctx = torch.autograd.graph.saved_tensors_hooks(self.pack, self.unpack)
        self.ctx.__enter__()
        return self

    def __exit__(self, *exc):
        self.ctx.__exit__(*exc)

    @property
    def mib(self) -> float:
        return sum(self.seen.values()) / 2**20


def step(kind, net, compact, x, y, w_opt, a_opt, c_opt, costs, base, gen, paths, device):
    """One step of ``kind``; returns (seconds, saved activation MiB, CUDA peak MiB or None)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    with SavedBytes() as saved:
        if kind == "compact":
            loss = F.cross_entropy(compact(x), y)
            opt = c_opt
        elif kind == "binarized arch step":
            net.set_mode("two", gen)
            for p in net.weight_parameters():
                p.requires_grad_(False)
            loss = F.cross_entropy(net(x), y) + 0.1 * expected_cost(net, costs, base).float()
            opt = a_opt
        else:
            if kind == "binarized weight step":
                net.set_paths(paths)
            else:
                net.set_mode("full")
            loss = F.cross_entropy(net(x), y)
            opt = w_opt
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    if kind == "binarized arch step":
        for p in net.weight_parameters():
            p.requires_grad_(True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None
    return dt, saved.mib, peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--space", default="proxyless_fmnist")
    ap.add_argument("--resolution", type=int, default=40)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--archs", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=threads_arg, default=2)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    space = get_space(args.space)
    torch.manual_seed(0)
    net = ProxylessSupernet(space, args.resolution).to(device).train()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, space.in_channels, args.resolution, args.resolution, device=device)
    y = torch.randint(0, space.num_classes, (args.batch,), device=device)
    costs = [torch.rand(len(m), dtype=torch.float64) for m in net.mixed]
    w_opt = torch.optim.SGD(net.weight_parameters(), lr=0.01, momentum=0.9)
    a_opt = torch.optim.Adam(net.arch_parameters(), lr=0.01)
    kinds = ["binarized weight step", "binarized arch step", "all paths", "compact"]
    rows = []
    for a in range(args.archs):
        net.set_mode("sample", gen)
        paths = net.active_paths()
        cfg = net.derive(paths)
        compact = build_network(space, cfg).to(device).train()
        c_opt = torch.optim.SGD(compact.parameters(), lr=0.01, momentum=0.9)
        times = {k: [] for k in kinds}
        mem = {}
        for rnd in range(args.rounds + 1):  # round 0 warms up
            for k in kinds:
                dt, mib, peak = step(k, net, compact, x, y, w_opt, a_opt, c_opt, costs, 0.0, gen, paths, device)
                if rnd:
                    times[k].append(dt)
                    mem[k] = {"saved_activations_mib": round(mib, 3),
                              **({"cuda_peak_mib": round(peak, 1)} if peak is not None else {})}
        rows.append({"arch": a, "subnet": cfg.to_dict(),
                     **{k: {"ms": round(1000 * statistics.median(times[k]), 2), **mem[k]} for k in kinds}})

    def mean(k, f):
        return statistics.fmean(r[k][f] for r in rows)

    summary = {k: {"ms": round(mean(k, "ms"), 2), "saved_activations_mib": round(mean(k, "saved_activations_mib"), 3)}
               for k in kinds}
    out = {
        "space": space.name, "resolution": args.resolution, "batch": args.batch, "device": str(device),
        "threads": args.threads, "paths_per_block": [len(m) for m in net.mixed],
        "load_avg_1min": round(__import__("os").getloadavg()[0], 2), "mean": summary,
        "binarized_over_all_paths_memory": round(summary["binarized weight step"]["saved_activations_mib"]
                                                 / summary["all paths"]["saved_activations_mib"], 3),
        "binarized_arch_step_over_all_paths_memory": round(summary["binarized arch step"]["saved_activations_mib"]
                                                           / summary["all paths"]["saved_activations_mib"], 3),
        "binarized_over_compact_memory": round(summary["binarized weight step"]["saved_activations_mib"]
                                               / summary["compact"]["saved_activations_mib"], 3),
        "binarized_over_compact_time": round(summary["binarized weight step"]["ms"] / summary["compact"]["ms"], 3),
        "arch_step_over_compact_time": round(summary["binarized arch step"]["ms"] / summary["compact"]["ms"], 3),
        "all_paths_over_compact_time": round(summary["all paths"]["ms"] / summary["compact"]["ms"], 3),
        "targets": {"memory": "binarized <= 1/3 of all paths", "time": "binarized weight step <= 1.5x compact"},
        "per_arch": rows,
    }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
