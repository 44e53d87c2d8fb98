"""Cost models over ``space.blocks(subnet)``: LUT latency (optionally calibrated), MACs, params.

The one latency model of hwnas: ``profiler.validate`` checks it against whole networks,
``search.latency`` prints it, ``search.evolve`` and ``search.proxyless`` search with it.  It
lives here, below both, so that nothing in ``profiler/`` imports ``search/``.

A subnet's cost is the sum of its blocks' costs.  Every elastic block slot's shape depends
only on the resolution, the width multiplier and its own (kernel, expand), so the cost of a
whole population is ``base(r, w) + sum over active slots of slot[slot, kernel, expand]``:
``tables(r, w)`` gives those arrays and ``cost`` evaluates a population with array sums.

**Invocation overhead.**  Each LUT row is one block run on its own, so it carries one
runtime invocation (the call, the input copy in, the output fetch) that a whole network pays
once.  At 32 px a block costs tens of microseconds and that share is large.  The profiler
measures, beside the blocks, an ``overhead`` probe at every input shape
(``supernet.space.overhead_probe``: one ReLU from the shape to itself); when the LUT has
probe rows for its runtime the latency model prices a block as ``LUT(block) -
LUT(probe(block's input))`` and adds the network input's probe once.  LUTs without probe rows
(imported tables, older LUTs) are summed as they are; ``overhead=False`` forces that.

**Layout boundary.**  A runtime that computes in a layout of its own converts a model's input
into it and its output back: onnxruntime's CPU provider runs convolutions in a blocked layout
(NCHWc), so a block run alone pays two reorders (and the residual add they keep apart) that
inside a network, where blocks hand blocked tensors on, it does not.  Where the LUT has
``boundary`` probes at a block's input shape (``supernet.space.boundary_probes``: one and two
chained 1x1 depthwise convolutions; the profiler measures them for onnxruntime's fp32 tables,
``prices_boundary``, whose int8 blocks do not run in that layout) the edge taken
off a block is ``2 t(one) - t(two)`` (at least the overhead probe) instead of the overhead
probe; the network still adds its input's overhead probe once (measured on a 2-core AMD EPYC,
Fashion-MNIST space at 32-48 px, onnxruntime 1.32, 2026-12-07: the identity-probe model
over-predicted 20 networks by 16% in the median, README "Fidelity").  ``boundary=False``
keeps the overhead probe.

**Weight streaming.**  A LUT row times one block again and again, so its weights are in the
caches each time; inside a network a block's weights were last read one whole run before,
and if that run touched more than the caches hold they come from further away, so a network
pays more than its blocks did one at a time (on a 2 MiB-L2 Xeon a Fashion-MNIST network of
1.4-2.9 MB of weights ran 0-75 us over its block sum, in proportion to its weights).  The
profiler measures ``stream`` probes (``supernet.space.stream_probes``: chains of
matrix-vector products with 0.25 MiB of weights up to what the largest network touches in a
run); their time per weight byte ``c(W)`` (each less its input shape's overhead probe) is
flat while the weights fit and rises once they do not; call ``e(W) = c(W) - c_min`` its
excess (made non-decreasing above the minimum, held at its last value beyond the largest
probe).  A network pays, for each block of ``w_b`` weight bytes, ``max(0, e(F) - e(s_b)) *
w_b``, where ``s_b`` is what the block touches alone (weights and activations,
``solo_bytes``: a block that overflows the caches on its own, at 160-224 px, streamed its
weights in its LUT row already) and ``F = sum of s_b`` over the network's blocks is what one
run touches between two reads of the same weights (its reuse distance; bytes are parameters
and values x 4 in float32, x 1 in int8, priced from the int8 table's own probes, the same
chains quantized).  ``F`` counts activations as well as weights because at 224 px they are
most of it: ``ofa_mbv3``'s 224-px networks hold 14-31 MiB of weights but touch 40-70 MiB a
run, past a 32 MiB L3, where the chains read 2.2x slower per byte than at 8 MiB (AMD EPYC,
AVX2 only, onnxruntime, 2026-12-07).  LUTs without stream rows, and LUTs whose blocks were
timed in rotation (``--context round-robin``: each block already met cold caches), get no
such term; ``stream=False`` forces that.  It is not additive over blocks (it depends on the
whole network's ``F``): ``cost`` adds it per subnet from per-block parameter and footprint
tables (``param_tables``).

**Calibration** (``profiler.validate`` fits it): ``measured ~ a * sum + b`` per runtime (and
precision: an int8 fit is recorded as ``<runtime>-int8``), in ``<lut>.calibration.json``,
recorded with whether the sums it was fitted on used the overhead model (a calibration only
applies to the same kind of sum).

**Precision** (issue 16): a model prices one precision from that precision's rows only
(``precision="int8"``: the LUT's int8 rows and int8 overhead probes; a block without an int8
row is a missing key, never priced from its fp32 row).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from supernet.space import OFA_MBV3, BlockSpec, SearchSpace, SubnetConfig, boundary_probes, overhead_probe

BYTES_PER_PARAM = {"fp32": 4, "int8": 1}


class MissingKeysError(KeyError):
    """Blocks a subnet needs that the LUT lacks; ``keys`` lists them."""

    def __init__(self, keys: Sequence[str], where: str = "LUT"):
        self.keys = list(dict.fromkeys(keys))
        self.where = where
        super().__init__(self.message())

    def message(self, limit: int = 10) -> str:
        shown = "\n  ".join(self.keys[:limit])
        more = f"\n  ... and {len(self.keys) - limit} more" if len(self.keys) > limit else ""
        return f"{self.where} lacks {len(self.keys)} block(s) the subnet needs:\n  {shown}{more}"

    def __str__(self) -> str:
        return self.message()


def _missing_key(exc: KeyError, block: BlockSpec) -> str:
    """The key a lookup missed (a block's or its overhead probe's)."""
    return exc.args[0] if exc.args and isinstance(exc.args[0], str) else str(block)


def solo_bytes(block: BlockSpec, bytes_per_value: int = 4) -> float:
    """What one block touches when it runs alone: its weights and its activations (input,
    output and, for an MBConv, its expanded tensor before and after the depthwise)."""
    values = block.in_h * block.in_w * block.in_c + block.out_h * block.out_w * block.out_c
    if block.kind == "mbconv":
        values += (block.in_h * block.in_w + block.out_h * block.out_w) * block.mid
    return float(bytes_per_value * (block.params() + values))


def cheapest_by_blocks(space: SearchSpace, base: np.ndarray, slot: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The cheapest subnet by its blocks at every (resolution, width): ``base`` ``(nr, nw)``
    and ``slot`` ``(nr, nw, slots, kernels, expands)``, ``CostModel.tables`` stacked.  Per
    stage the cheapest depth given the cheapest (kernel, expand) of every slot: exact, because
    slots are independent given (r, w).  Returns the costs ``(nr, nw)``, the flat (kernel,
    expand) index of every slot ``(nr, nw, slots)`` and the depth index of every stage
    ``(nr, nw, stages)``."""
    nr, nw = base.shape
    ns, md = len(space.stages), space.max_depth
    flat = slot.reshape(nr, nw, space.num_blocks, -1)
    min_slot = flat.min(axis=-1).reshape(nr, nw, ns, md)
    depth_cost = np.cumsum(min_slot, axis=-1)[..., np.asarray(space.depths) - 1]  # first d slots of each stage
    allowed = np.array([[d in space.stage_depths(i) for d in space.depths] for i in range(ns)])
    depth_cost = np.where(allowed, depth_cost, np.inf)  # a stage capped below a depth
    return base + depth_cost.min(axis=-1).sum(axis=-1), flat.argmin(axis=-1), depth_cost.argmin(axis=-1)


class CostModel:
    """Sum of a per-block cost over a subnet's blocks, vectorised over populations."""

    unit = ""
    name = "cost"
    bytes_per_param = 4

    def __init__(self, space: SearchSpace, block_cost: Callable[[BlockSpec, int], float],
                 calibration: tuple[float, float] | None = None, where: str = ""):
        self.space = space
        self._block_cost = block_cost
        self.calibration = calibration
        self.where = where or self.name
        self._tables: dict[tuple[int, float], tuple[float, np.ndarray]] = {}
        self._ptables: dict[tuple[int, float], tuple[float, np.ndarray]] = {}

    def network_cost(self, first: BlockSpec, r: int) -> float:
        """What a whole network pays once beyond its blocks (``first``: its first block)."""
        return 0.0

    def weight_cost(self, block_params: np.ndarray, block_solo: np.ndarray, r: int) -> np.ndarray:
        """What whole networks pay for their weights beyond their blocks' costs, from each
        network's blocks' parameter counts and their solo working sets in bytes (``(N, B)``
        arrays; a block the network does not run has 0 in both); ``(N,)``.  None here
        (``LatencyModel``: weight streaming)."""
        return np.zeros(np.shape(block_params)[0])

    def has_weight_cost(self, r: int) -> bool:
        return False

    def network_weight_cost(self, blocks: Sequence[BlockSpec], r: int) -> float:
        """``weight_cost`` of one network given its blocks (0 when the model has none)."""
        if not self.has_weight_cost(r):
            return 0.0
        return float(self.weight_cost(np.array([[b.params() for b in blocks]], dtype=float),
                                      np.array([[solo_bytes(b, self.bytes_per_param) for b in blocks]]), r)[0])

    # per-block ----------------------------------------------------------------------
    def block_costs(self, cfg: SubnetConfig) -> list[tuple[BlockSpec, float]]:
        """(block, cost) for every block of ``cfg``; raises MissingKeysError."""
        blocks = self.space.blocks(cfg)
        costs, missing = [], []
        for b in blocks:
            try:
                costs.append(self._block_cost(b, cfg.r))
            except KeyError as exc:
                missing.append(_missing_key(exc, b))
        if missing:
            raise MissingKeysError(missing, self.where)
        return list(zip(blocks, costs))

    def raw_sum(self, cfg: SubnetConfig) -> float:
        """The uncalibrated cost: the blocks' costs and the once-per-network part."""
        return self.sum_of(self.block_costs(cfg), cfg.r)

    def sum_of(self, per_block: list[tuple[BlockSpec, float]], r: int) -> float:
        """The uncalibrated cost of a network from its ``block_costs``: their sum and the
        once-per-network part; raises MissingKeysError."""
        try:
            extra = self.network_cost(per_block[0][0], r)
        except KeyError as exc:
            raise MissingKeysError([_missing_key(exc, per_block[0][0])], self.where) from None
        return float(sum(c for _, c in per_block) + extra + self.network_weight_cost([b for b, _ in per_block], r))

    def calibrate(self, raw: np.ndarray | float):
        if self.calibration is None:
            return raw
        a, b = self.calibration
        return a * raw + b

    # tables -------------------------------------------------------------------------
    def tables(self, r: int, w: float) -> tuple[float, np.ndarray]:
        """(base, slot) for resolution ``r`` and width ``w``: ``base`` is the cost of the
        fixed blocks and of the network's once-only part, ``slot[i, ki, ei]`` the cost of
        block slot ``i`` with kernel ``space.kernels[ki]`` and expand ``space.expands[ei]``
        (uncalibrated)."""
        hit = self._tables.get((r, w))
        if hit is not None:
            return hit
        sp = self.space
        nb, nk, ne = sp.num_blocks, len(sp.kernels), len(sp.expands)
        slot = np.zeros((nb, nk, ne))
        pslot = np.zeros((nb, nk, ne))
        sslot = np.zeros((nb, nk, ne))
        base = 0.0
        pbase: list[float] = []
        sbase: list[float] = []
        missing: list[str] = []
        full_d = sp.full_depths  # slots a stage can never reach stay at cost 0
        for ki, k in enumerate(sp.kernels):
            for ei, x in enumerate(sp.expands):
                blocks = sp._blocks(r, w, (k,) * nb, (x,) * nb, full_d)
                # blocks: first_conv, first block, the reachable elastic slots, the head
                slots = [i * sp.max_depth + j for i, d in enumerate(full_d) for j in range(d)]
                for i, b in enumerate(blocks):
                    try:
                        c = self._block_cost(b, r)
                    except KeyError as exc:
                        missing.append(_missing_key(exc, b))
                        continue
                    if 2 <= i < 2 + len(slots):
                        slot[slots[i - 2], ki, ei] = c
                        pslot[slots[i - 2], ki, ei] = b.params()
                        sslot[slots[i - 2], ki, ei] = solo_bytes(b, self.bytes_per_param)
                    elif ki == 0 and ei == 0:
                        base += c
                        pbase.append(b.params())
                        sbase.append(solo_bytes(b, self.bytes_per_param))
                if ki == 0 and ei == 0:
                    try:
                        base += self.network_cost(blocks[0], r)
                    except KeyError as exc:
                        missing.append(_missing_key(exc, blocks[0]))
        if missing:
            raise MissingKeysError(missing, f"{self.where} (r={r}, w={w:g})")
        self._tables[(r, w)] = (base, slot)
        self._ptables[(r, w)] = (np.array(pbase, dtype=float), np.array(sbase, dtype=float), pslot, sslot)
        return base, slot

    def covered(self) -> list[tuple[int, float]]:
        """The (resolution, width) pairs of the space this model can price every subnet of."""
        out = []
        for r in self.space.resolutions:
            for w in self.space.width_mults:
                try:
                    self.tables(r, w)
                except KeyError:  # MissingKeysError
                    continue
                out.append((r, w))
        return out

    def cheapest_block_sum(self) -> float | None:
        """The smallest uncalibrated block sum of any subnet at any (resolution, width) the
        model covers (None: it covers none); the weight term, never negative, left out, so
        every subnet a search can price costs at least this."""
        tabs = [self.tables(r, w) for r, w in self.covered()]
        if not tabs:
            return None
        total, _, _ = cheapest_by_blocks(self.space, np.array([[b for b, _ in tabs]]), np.array([[s for _, s in tabs]]))
        return float(total.min())

    def param_tables(self, r: int, w: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """For ``weight_cost``: the fixed blocks' parameter counts and solo working sets
        (``(F,)`` each), and the slots' (``(slots, kernels, expands)`` each, like
        ``tables(r, w)``'s)."""
        if (r, w) not in self._ptables:
            self.tables(r, w)
        return self._ptables[(r, w)]

    def cost(self, subnets: Sequence[SubnetConfig], calibrated: bool = True) -> np.ndarray:
        """Cost of every subnet (array), by table sums."""
        sp = self.space
        kidx = {k: i for i, k in enumerate(sp.kernels)}
        eidx = {x: i for i, x in enumerate(sp.expands)}
        out = np.empty(len(subnets))
        groups: dict[tuple[int, float], list[int]] = {}
        for n, cfg in enumerate(subnets):
            groups.setdefault((cfg.r, cfg.w), []).append(n)
        slots = np.arange(sp.num_blocks)
        pos_in_stage = slots % sp.max_depth
        stage_of = slots // sp.max_depth
        for (r, w), idx in groups.items():
            base, slot = self.tables(r, w)
            ks = np.array([[kidx[k] for k in subnets[n].ks] for n in idx])
            es = np.array([[eidx[x] for x in subnets[n].e] for n in idx])
            ds = np.array([subnets[n].d for n in idx])
            active = pos_in_stage[None, :] < ds[:, stage_of]
            per_slot = slot[slots[None, :], ks, es]
            out[idx] = base + (per_slot * active).sum(axis=1)
            if self.has_weight_cost(r):
                pbase, sbase, pslot, sslot = self.param_tables(r, w)
                n = len(idx)
                params = np.concatenate([np.broadcast_to(pbase, (n, len(pbase))),
                                         pslot[slots[None, :], ks, es] * active], axis=1)
                solo = np.concatenate([np.broadcast_to(sbase, (n, len(sbase))),
                                       sslot[slots[None, :], ks, es] * active], axis=1)
                out[idx] += self.weight_cost(params, solo, r)
        return self.calibrate(out) if calibrated else out

    # the name the search uses -----------------------------------------------------------
    def __call__(self, subnets: Sequence[SubnetConfig]) -> np.ndarray:
        return self.cost(subnets)


def has_overhead_rows(table: dict[str, float]) -> bool:
    return any(k.startswith("overhead-") for k in table)


def has_boundary_rows(table: dict[str, float]) -> bool:
    return any(k.startswith("boundary-") for k in table)


# Tables whose blocks pay a layout boundary at a model's edges that a network pays once: the
# profiler measures boundary probes (supernet.space.boundary_probes) for them and the model
# takes that boundary off each block.  onnxruntime's CPU provider computes fp32 convolutions
# in its blocked NCHWc layout and converts at every model's edges.  LiteRT's XNNPACK computes
# in the models' own NHWC: its overhead probe holds the whole edge (its block sums were within
# 1-2% of whole networks at 32-48 px with it alone).  onnxruntime int8 (QDQ) blocks do not
# run in NCHWc: priced with boundary edges, three int8 tables under-predicted 20 networks at
# 32-48 px by 6-13%, with the overhead probe as the edge they were within 1.9-4.4% (AMD EPYC,
# 2026-12-07, README "int8 tables").
BOUNDARY_RUNTIMES = ("onnxruntime",)
BOUNDARY_PRECISIONS = ("fp32",)


def prices_boundary(runtime: str | None, precision: str) -> bool:
    """Whether a ``runtime`` table of ``precision`` is priced with layout-boundary edges."""
    return runtime in BOUNDARY_RUNTIMES and precision in BOUNDARY_PRECISIONS


class LatencyModel(CostModel):
    """LUT latency in ms: the sum of the blocks' LUT rows, less one invocation overhead per
    block plus one per network when the LUT has overhead probes (``overhead``), optionally
    calibrated as ``a * sum + b``."""

    unit = "ms"
    name = "latency"

    def __init__(self, space: SearchSpace, table: dict[str, float] | Callable[[int], dict[str, float]],
                 calibration: tuple[float, float] | None = None, where: str = "LUT",
                 runtime: str = "", device: str = "", overhead: bool = True, precision: str = "fp32",
                 stream: bool = True, boundary: bool = True):
        """``table``: latency by key, or a function of the resolution returning one (for
        LUTs imported per input size).  ``overhead``: use the LUT's overhead probes when it
        has them (False: sum the rows as they are).  ``stream``: price weight streaming from
        the LUT's stream probes when it has them (False: no weight term)."""
        self._table_for = table if callable(table) else (lambda _r, t=dict(table): t)
        self._by_r: dict[int, tuple[dict[str, float], bool]] = {}
        self._stream_by_r: dict[int, tuple[np.ndarray, np.ndarray] | None] = {}
        self.stream_requested = stream
        self.bytes_per_param = BYTES_PER_PARAM.get(precision, 4)
        self.runtime = runtime
        self.device = device
        self.precision = precision
        self.overhead_requested = overhead
        self.boundary_requested = boundary
        self._boundary_by_r: dict[int, bool] = {}
        self.calibration_skipped = ""  # from_lut(calibration="auto"): why the file beside the LUT was not applied
        self.context = "warm"  # how the LUT's block rows were timed (from_lut reads it)
        super().__init__(space, self._lookup, calibration, where)

    def _table(self, r: int) -> tuple[dict[str, float], bool]:
        hit = self._by_r.get(r)
        if hit is None:
            t = self._table_for(r)
            hit = self._by_r[r] = (t, self.overhead_requested and has_overhead_rows(t))
        return hit

    def uses_overhead(self, r: int | None = None) -> bool:
        """Whether sums at resolution ``r`` (default: the space's largest) subtract the
        per-block invocation overhead."""
        return self._table(self.space.resolutions[-1] if r is None else r)[1]

    def uses_boundary(self, r: int | None = None) -> bool:
        """Whether the edge taken off each block at resolution ``r`` (default: the space's
        largest) is the layout boundary of the LUT's boundary probes (``edge``)."""
        r = self.space.resolutions[-1] if r is None else r
        hit = self._boundary_by_r.get(r)
        if hit is None:
            t, use = self._table(r)
            hit = self._boundary_by_r[r] = (use and self.boundary_requested and has_boundary_rows(t)
                                            and self.precision in BOUNDARY_PRECISIONS)  # older int8 tables have them
        return hit

    def edge(self, block: BlockSpec, r: int) -> float:
        """What ``block``'s LUT row holds that the block does not pay inside a network: its
        input shape's layout boundary (``2 t(one) - t(two)`` of the boundary probes, at least
        the overhead probe) where the model uses them, else the overhead probe; 0 without
        the overhead model.  Raises KeyError naming a missing probe."""
        t, use = self._table(r)
        if not use:
            return 0.0
        ovh = t[str(overhead_probe(block))]
        if not self.uses_boundary(r):
            return ovh
        one, two = boundary_probes(block)
        return max(2.0 * t[str(one)] - t[str(two)], ovh)

    def stream_curve(self, r: int | None = None) -> tuple[np.ndarray, np.ndarray] | None:
        """(weight bytes, excess ms per byte) of the LUT's stream probes at resolution
        ``r`` (default: the space's largest), sorted by weight, or None without two of
        them (or with ``stream=False``).  The excess is each probe's time per weight byte
        (less its input's overhead probe when the model uses probes) above the smallest
        such, made non-decreasing from there on."""
        r = self.space.resolutions[-1] if r is None else r
        if r in self._stream_by_r:
            return self._stream_by_r[r]
        curve = None
        if self.stream_requested:
            t, use = self._table(r)
            bpp = self.bytes_per_param
            pts = []
            for key, value in t.items():
                if not key.startswith("stream-"):
                    continue
                spec = BlockSpec.parse(key)
                ovh = t.get(str(overhead_probe(spec)), 0.0) if use else 0.0
                pts.append((spec.params() * bpp, max(value - ovh, 0.0) / (spec.params() * bpp)))
            if len(pts) >= 2:
                pts.sort()
                wb = np.array([p[0] for p in pts], dtype=float)
                per = np.array([p[1] for p in pts])
                lo = int(np.argmin(per))
                excess = np.maximum.accumulate(np.where(np.arange(len(per)) < lo, per[lo], per)) - per[lo]
                curve = (wb, excess)
        self._stream_by_r[r] = curve
        return curve

    def has_weight_cost(self, r: int) -> bool:
        return self.stream_curve(r) is not None

    def weight_cost(self, block_params: np.ndarray, block_solo: np.ndarray, r: int) -> np.ndarray:
        """Weight streaming in ms (``stream_curve``'s excess ``e``): a network whose run
        touches ``F`` bytes (the sum of its blocks' ``s_b``) pays, for each block of ``w_b``
        weight bytes that touches ``s_b`` bytes alone, ``max(0, e(F) - e(s_b)) * w_b``: what
        its weights cost beyond what the block's LUT row already paid for them (a block whose
        own working set overflows the caches streamed its weights when it was timed alone
        too); 0 without stream probes."""
        if self.stream_curve(r) is None:
            return super().weight_cost(block_params, block_solo, r)
        block_solo = np.asarray(block_solo, dtype=float)
        return self.weight_terms(block_solo.sum(axis=1), block_params, block_solo, r).sum(axis=1)

    def weight_terms(self, net_bytes: np.ndarray | float, block_params: np.ndarray, block_solo: np.ndarray,
                     r: int) -> np.ndarray:
        """Each block's share of ``weight_cost`` in networks that touch ``net_bytes`` a run
        (``(N,)``, or one number for every block): ``max(0, e(F) - e(s_b)) * w_b``, shaped
        like ``block_params``.  Needs the stream curve (``has_weight_cost``)."""
        wbytes, excess = self.stream_curve(r)
        wb = np.asarray(block_params, dtype=float) * self.bytes_per_param
        net = np.interp(np.asarray(net_bytes, dtype=float), wbytes, excess)
        solo = np.interp(np.asarray(block_solo, dtype=float), wbytes, excess)
        return np.maximum(np.asarray(net)[..., None] - solo, 0.0) * wb

    def row(self, block: BlockSpec, r: int) -> float:
        """The block's LUT row at resolution ``r`` as measured (no overhead taken off)."""
        return self._table(r)[0][str(block)]

    def _lookup(self, block: BlockSpec, r: int) -> float:
        return self._table(r)[0][str(block)] - self.edge(block, r)

    def network_cost(self, first: BlockSpec, r: int) -> float:
        t, use = self._table(r)
        return t[str(overhead_probe(first))] if use else 0.0

    @classmethod
    def from_lut(cls, path: Path | str, space: SearchSpace | None = None, runtime: str | None = None,
                 calibration: tuple[float, float] | str | Path | None = None,
                 stat: str = "quiet", overhead: bool = True, precision: str = "fp32",
                 stream: bool = True, boundary: bool = True) -> "LatencyModel":
        """Load a LUT CSV.  ``calibration``: (a, b), a calibration JSON path, ``"auto"`` (use
        ``<lut>.calibration.json`` when present and fitted for this runtime, precision and
        kind of sum; why one was not applied is then in ``calibration_skipped``), or None.
        ``precision``: price from the LUT's rows of that precision only (LutError when it
        has none for the runtime)."""
        from .lut import LutTable, calibration_path, check_space

        lut = LutTable.load(path)
        check_space(path, (space or OFA_MBV3).name)
        rt = lut.pick_runtime(runtime)
        lut.check_precision(rt, precision)
        context = lut.block_context(rt, precision)
        model = cls(space or OFA_MBV3, lambda r: lut.table(rt, stat, resolution=r, precision=precision), None,
                    where=str(path) if precision == "fp32" else f"{path} ({precision} rows)",
                    runtime=rt, device=",".join(lut.devices), overhead=overhead, precision=precision,
                    stream=stream and context == "warm",  # blocks timed in rotation paid cold caches already
                    boundary=boundary)
        model.context = context
        use, bnd = model.uses_overhead(), model.uses_boundary()
        streams = model.has_weight_cost(model.space.resolutions[-1])
        key = calibration_key(rt, precision)
        if calibration == "auto":
            cp = calibration_path(Path(path))
            if cp.exists():
                try:
                    model.calibration = read_calibration(cp, key, overhead=use, stream=streams, context=context,
                                                         boundary=bnd)
                except CalibrationMismatch as exc:  # another runtime's, or the other kind of sum
                    model.calibration_skipped = str(exc)
        elif isinstance(calibration, (str, Path)):
            model.calibration = read_calibration(Path(calibration), key, overhead=use, stream=streams,
                                                 context=context, boundary=bnd)
        else:
            model.calibration = calibration
        return model

    def latency(self, subnets: Sequence[SubnetConfig]) -> np.ndarray:
        return self.cost(subnets)


def calibration_key(runtime: str, precision: str = "fp32") -> str:
    """The entry of a calibration file for ``runtime`` in ``precision``: the runtime's name
    for fp32 (as files written before int8 tables have it), ``<runtime>-int8`` for int8."""
    return runtime if precision == "fp32" else f"{runtime}-{precision}"


class CalibrationMismatch(ValueError):
    """A calibration file fitted for another runtime or another kind of sum."""


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
    except FileNotFoundError:
        raise ValueError(f"{path}: no such calibration file") from None
    except (OSError, ValueError, RecursionError) as exc:
        raise ValueError(f"{path}: not a calibration file ({exc.__class__.__name__}: {exc})") from None
    return data


def calibration_entries(path: Path) -> dict[str, dict[str, Any]]:
    """Calibrations by runtime from a calibration JSON: ``{"runtimes": {rt: {a, b, ...}}}``,
    or the one-runtime form ``{a, b, runtime}`` of earlier versions."""
    data = _read_json(path)
    if "runtimes" in data:
        entries = data["runtimes"]
        if not isinstance(entries, dict) or not all(isinstance(v, dict) for v in entries.values()):
            raise ValueError(f"{path}: not a calibration file ('runtimes' is not a mapping of runtimes)")
        return dict(entries)
    return {str(data.get("runtime") or ""): data}


# validations whose calibration is never applied (profiler.validate.fidelity_verdict): what
# the line was fitted on, the entry's field that says how bad, its words, what to do
UNUSABLE_VERDICTS = {
    "noisy": ("on a validation too noisy to judge the table", "noise_pct",
              " (the same networks measured twice differed by {:.1f}% in the median)",
              "run profiler.validate again on a quiet device"),
    "drifted": ("while the device had drifted from the table", "drift", " (its blocks took {:.2f}x their LUT time)",
                "measure the table again, or run profiler.validate again"),
}


def read_calibration(path: Path, runtime: str | None = None, overhead: bool | None = None,
                     stream: bool | None = None, context: str | None = None,
                     boundary: bool | None = None) -> tuple[float, float]:
    """(a, b) from a calibration JSON written by ``profiler.validate``.  Raises
    CalibrationMismatch when it holds nothing for ``runtime``, was fitted on sums with (or
    without) the overhead model, the streaming term or the layout-boundary probes where
    ``overhead``, ``stream`` or ``boundary`` says otherwise (files without ``boundary``:
    without), or on block rows timed in another ``context`` (files without one: warm), or
    on a validation whose verdict was ``noisy`` (``profiler.validate``); ValueError when
    corrupt."""
    entries = calibration_entries(path)
    if runtime and runtime in entries:
        data = entries[runtime]
    elif "" in entries and len(entries) == 1 and not (runtime or "").endswith("-int8"):  # an old file that names no runtime
        data = entries[""]
    elif not runtime and len(entries) == 1:
        data = next(iter(entries.values()))
    else:
        raise CalibrationMismatch(f"{path}: calibration is for runtime {', '.join(map(repr, entries))}, "
                                  f"not {runtime!r}")
    try:
        a, b = float(data["a"]), float(data["b"])
    except (KeyError, TypeError, ValueError, OverflowError) as exc:
        raise ValueError(f"{path}: not a calibration file ({exc.__class__.__name__}: {exc})") from None
    if not (math.isfinite(a) and math.isfinite(b)) or not 0 < a <= 1e3 or abs(b) > 1e6:
        raise ValueError(f"{path}: calibration a={a:g}, b={b:g} is not usable (a must be a finite positive "
                         f"slope, b a finite offset in ms)")
    for field, wanted, what in (("overhead", overhead, "the overhead model"),
                                ("stream", stream, "the weight-streaming term"),
                                ("boundary", boundary, "the layout-boundary probes")):
        fitted = bool(data.get(field, False))
        if wanted is not None and fitted != wanted:
            raise CalibrationMismatch(
                f"{path}: calibration for {runtime or 'this runtime'} was fitted on LUT sums "
                f"{'with' if fitted else 'without'} {what}, and these sums are "
                f"{'with' if wanted else 'without'} it: run profiler.validate again")
    unjudged = UNUSABLE_VERDICTS.get(str(data.get("verdict")))
    if unjudged:  # a line through noise, or through a passing state of the device, would move every price by it
        what, field, detail, todo = unjudged
        value = data.get(field)
        raise CalibrationMismatch(
            f"{path}: calibration for {runtime or 'this runtime'} was fitted {what}"
            + (detail.format(float(value)) if isinstance(value, (int, float)) and math.isfinite(value) else "")
            + f": {todo}")
    fitted_ctx = str(data.get("context") or "warm")
    if context is not None and fitted_ctx != context:
        raise CalibrationMismatch(
            f"{path}: calibration for {runtime or 'this runtime'} was fitted on block rows timed {fitted_ctx}, "
            f"and the LUT's are now timed {context}: run profiler.validate again")
    return a, b


def write_calibration(path: Path, runtime: str, entry: dict[str, Any]) -> None:
    """Record ``runtime``'s calibration in ``path``, keeping the other runtimes' entries
    (atomically)."""
    from supernet.atomic import atomic_write_text

    entries: dict[str, dict[str, Any]] = {}
    if Path(path).is_file():
        try:
            entries = {k: v for k, v in calibration_entries(path).items() if k}
        except ValueError:
            entries = {}  # a corrupt file is replaced by the fit just made
    entries[runtime] = dict(entry, runtime=runtime)
    atomic_write_text(path, json.dumps({"runtimes": entries}, indent=2) + "\n")


class MacsModel(CostModel):
    """Multiply-accumulates in millions (OFA's counting)."""

    unit = "M MACs"
    name = "macs"

    def __init__(self, space: SearchSpace):
        super().__init__(space, lambda b, _r: b.macs() / 1e6, where="MACs")


class ParamsModel(CostModel):
    """Parameters in millions."""

    unit = "M params"
    name = "params"

    def __init__(self, space: SearchSpace):
        super().__init__(space, lambda b, _r: b.params() / 1e6, where="params")


__all__ = ["BYTES_PER_PARAM", "solo_bytes", "CalibrationMismatch", "CostModel", "LatencyModel", "MacsModel", "MissingKeysError", "ParamsModel",
           "calibration_entries", "calibration_key", "has_boundary_rows", "has_overhead_rows", "read_calibration", "write_calibration"]
