"""Parameters and multiply-accumulates of a subnet.

    python -m supernet.info --subnet max|min|<json>|FILE [--space ofa_mbv3] [--classes N]
                            [--resolution R] [--width W] [--per-block] [--json]

Counts come from the block specs (``BlockSpec.params``/``macs``, OFA's counting rules) and
need no torch; ``--check`` also builds the network with the shared block builder and counts
its parameters and MACs by forward hooks, to show the two agree.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace

from .space import get_space, parse_subnet, space_names


def summarise(space, cfg) -> dict:
    blocks = space.blocks(cfg)
    return {
        "space": space.name,
        "subnet": cfg.to_dict(),
        "canonical": space.canonical(cfg).to_dict(),  # as built: inert kernels collapsed (issue 17)
        "classes": space.num_classes,
        "params": sum(b.params() for b in blocks),
        "macs": sum(b.macs() for b in blocks),
        "blocks": len(blocks),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m supernet.info", description=__doc__.split("\n\n")[0])
    ap.add_argument("--subnet", default="max", help="max, min, a JSON object, or a JSON file (default: max)")
    ap.add_argument("--space", default="ofa_mbv3", help=f"search space ({', '.join(space_names())})")
    ap.add_argument("--classes", type=int, default=None, help="number of classes (default: the space's)")
    ap.add_argument("--resolution", type=int, default=None, help="input resolution (default: the subnet's, or the largest)")
    ap.add_argument("--width", type=float, default=None, help="width multiplier (default: the subnet's, or the first)")
    ap.add_argument("--per-block", action="store_true", help="list every block with its parameters and MACs")
    ap.add_argument("--check", action="store_true", help="also count on the built PyTorch module (needs torch)")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)
    try:
        space = get_space(args.space)
        if args.classes is not None:
            if args.classes < 1:
                raise ValueError("--classes must be at least 1")
            space = replace(space, num_classes=args.classes)
        cfg = parse_subnet(args.subnet, space, r=args.resolution, w=args.width)
    except ValueError as exc:
        ap.exit(2, f"error: {exc}\n")
    out = summarise(space, cfg)
    if args.per_block:
        out["per_block"] = [{"key": str(b), "params": b.params(), "macs": b.macs()} for b in space.blocks(cfg)]
    if args.check:
        from .ops import build_network, count_macs, count_params

        net = build_network(space, cfg)
        out["module_params"] = count_params(net)
        out["module_macs"] = count_macs(net, (1, space.in_channels, cfg.r, cfg.r))
    if args.json:
        print(json.dumps(out))
        return 0
    if args.per_block:
        for b in out["per_block"]:
            print(f"{b['params']:>10,} params {b['macs'] / 1e6:>9.2f} M MACs  {b['key']}")
    print(f"space {space.name}, {space.num_classes} classes, resolution {cfg.r}, width {cfg.w:g}")
    print(f"subnet  {cfg.to_json()}")
    active = {slot for _, _, slot in space.active_blocks(cfg)}
    collapsed = [f"slot {i}: {a} -> {b}" for i, (a, b) in enumerate(zip(cfg.ks, out["canonical"]["ks"]))
                 if a != b and i in active]
    if collapsed:
        print(f"built   {json.dumps(out['canonical'], separators=(',', ':'))}")
        print(f"        kernels larger than their feature map at {cfg.r} px compute their centre: "
              f"{', '.join(collapsed)}")
    print(f"params  {out['params']:,} ({out['params'] / 1e6:.2f} M)")
    print(f"MACs    {out['macs']:,} ({out['macs'] / 1e6:.1f} M)")
    if args.check:
        same = out["module_params"] == out["params"] and out["module_macs"] == out["macs"]
        print(f"module  {out['module_params']:,} params, {out['module_macs'] / 1e6:.1f} M MACs "
              f"({'matches' if same else 'DIFFERS from'} the block specs)")
        if not same:
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
