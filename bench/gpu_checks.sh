#!/usr/bin/env bash
# The CUDA checks of issues 13 and 15 in one call on a GPU machine (README, "On a GPU"):
#   1. the CUDA tests (bf16 and fp16 training, CPU/CUDA evaluation agreement, search.collect);
#   2. bench/gpu_warmup.py (first-call cost of new subnet shapes against the steady step, per
#      memory format and precision; the largest subnet's images/s at growing batches) and
#      bench/gpu_step.py as written (224 px, batch 256, bf16, channels-last; timm where installed);
#   3. the main job's supernet (--preset main) trained on the GPU, its largest and smallest
#      subnets evaluated there, and search.collect of $SUBNETS subnets timed there.
# Everything lands in $OUT (default /tmp/gpu_checks): log.txt, gpu_warmup.json, gpu_step.json, run.tar.gz
# (config, metrics, result, supernet.pt: evaluate it on a CPU to cross-check), eval.json,
# collect.json.  Each step has its own time limit so that one stuck step leaves the others.
#
#   bash bench/gpu_checks.sh                                    # on the GPU machine
#   DEVICE=cpu PRESET=test STEP_ARGS="--batch 4 --res 64 --amp off --steps 1 --reps 1 --warmup 0" \
#     WARMUP_ARGS="--subnets 2 --steady 1 --batches 8" SUBNETS=3 PYTEST=0 bash bench/gpu_checks.sh  # CPU dry run
# STEP=0 / WARMUP=0 leave a benchmark out; PYTEST_LIMIT_S, WARMUP_LIMIT_S, TRAIN_LIMIT_S and
# COLLECT_LIMIT_S bound their steps (seconds).  TRAIN_FLAGS (default: "pick") are supernet.train's
# memory format, --amp and --cudnn: "pick" takes them from gpu_warmup's best_variant (the least
# estimated time per new subnet shape), "" leaves the defaults; eval and collect use the same --cudnn.
# DATA (default fmnist) is passed to --data; PY (default python3) is the interpreter.
set -u
OUT=${OUT:-/tmp/gpu_checks}
PY=${PY:-python3}
DEVICE=${DEVICE:-cuda}
PRESET=${PRESET:-main}
DATA=${DATA:-fmnist}
SUBNETS=${SUBNETS:-100}
PYTEST=${PYTEST:-1}
STEP_ARGS=${STEP_ARGS:-}
WARMUP_ARGS=${WARMUP_ARGS:---subnets 10 --steady 5 --max-seconds 25}
TRAIN_LIMIT_S=${TRAIN_LIMIT_S:-480}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
LOG="$OUT/log.txt"
RUN=$(mktemp -d)/run
say() { echo "== $(date -u +%H:%M:%S) $*" | tee -a "$LOG"; }

say "machine"
{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv 2>&1
  nproc; uptime
  "$PY" -c "import sys, torch; print(sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.version.cuda, 'cudnn', torch.backends.cudnn.version())"
  "$PY" -c "import timm; print('timm', timm.__version__)" 2>&1 | tail -1; } >>"$LOG" 2>&1

if [ "$PYTEST" = 1 ]; then
  say "CUDA tests"
  timeout "${PYTEST_LIMIT_S:-240}" "$PY" -m pytest -q -p no:cacheprovider -o addopts="" tests/test_supernet_train.py \
    -k "cuda or device_auto" tests/test_bench_gpu_step.py >>"$LOG" 2>&1
  say "pytest rc=$?"
fi

if [ "${WARMUP:-1}" = 1 ]; then
  say "gpu_warmup"
  timeout "${WARMUP_LIMIT_S:-240}" "$PY" bench/gpu_warmup.py --device "$DEVICE" $WARMUP_ARGS --out "$OUT/gpu_warmup.json" >/dev/null 2>>"$LOG"
  say "gpu_warmup rc=$?"
fi

if [ "${STEP:-1}" = 1 ]; then
  say "gpu_step"
  timeout 180 "$PY" bench/gpu_step.py --device "$DEVICE" $STEP_ARGS --out "$OUT/gpu_step.json" >/dev/null 2>>"$LOG"
  say "gpu_step rc=$?"
fi

TRAIN_FLAGS=${TRAIN_FLAGS-pick}
if [ "$TRAIN_FLAGS" = pick ]; then
  TRAIN_FLAGS=$("$PY" - "$OUT/gpu_warmup.json" <<'PYEOF' 2>>"$LOG"
import json, sys
try:
    out = json.load(open(sys.argv[1]))
    v = next(v for v in out["variants"] if v["variant"] == out["best_variant"])
except (OSError, ValueError, KeyError, StopIteration):
    sys.exit(0)  # no warm-up result: the defaults
print(("" if v["channels_last"] else "--no-channels-last ") + f"--amp {v['amp']} --cudnn {v['cudnn']}")
PYEOF
)
fi
CUDNN_FLAG=$(echo "$TRAIN_FLAGS" | grep -o -- '--cudnn [a-z-]*' || true)
say "supernet.train --preset $PRESET --device $DEVICE $TRAIN_FLAGS"
t0=$SECONDS
# shellcheck disable=SC2086
timeout "$TRAIN_LIMIT_S" "$PY" -m supernet.train --preset "$PRESET" --device "$DEVICE" --data "$DATA" --out "$RUN" \
  $TRAIN_FLAGS --no-progress >>"$LOG" 2>&1
rc=$?
say "train rc=$rc wall $((SECONDS - t0)) s"
if [ -f "$RUN/result.json" ]; then
  cat "$RUN/result.json" >>"$LOG"
  for s in max min; do
    say "supernet.eval $s"
    # shellcheck disable=SC2086
    timeout 60 "$PY" -m supernet.eval --run "$RUN" --subnet "$s" --device "$DEVICE" --data "$DATA" $CUDNN_FLAG --json \
      >>"$OUT/eval.json" 2>>"$LOG"
  done
  say "search.collect $SUBNETS"
  t0=$SECONDS
  # shellcheck disable=SC2086
  timeout "${COLLECT_LIMIT_S:-120}" "$PY" -m search.collect --run "$RUN" --subnets "$SUBNETS" --device "$DEVICE" --data "$DATA" \
    $CUDNN_FLAG --json \
    >"$OUT/collect.json" 2>>"$LOG"
  say "collect rc=$? wall $((SECONDS - t0)) s"
fi
[ -d "$RUN" ] && tar -czf "$OUT/run.tar.gz" -C "$(dirname "$RUN")" --exclude checkpoints run
say "done"
tail -n 30 "$LOG"
