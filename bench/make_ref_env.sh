#!/usr/bin/env bash
# Bench-only environment with OFA's reference code (PyPI `ofa`), for bench/search_vs_ofa.py,
# pymoo (its NSGA-II, for bench/search_vs_ofa.py --pareto) and timm (bench/gpu_step.py).
#
#   bash bench/make_ref_env.sh        # creates or reuses bench/.venv-ref (gitignored)
#
# `ofa` is installed with --no-deps, plus gdown (imported by ofa.model_zoo); what else it
# imports (torch, torchvision, numpy, tqdm, pyyaml) comes from the project's .venv through a .pth file, so nothing heavy is downloaded twice.
# If bench/.venv-ref already exists (another bench may have made it), it is reused and only
# `ofa` is added when missing.  Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

REF=bench/.venv-ref
OFA_VERSION=0.1.0.post202307202001
MAIN_PY=.venv/bin/python
[ -x "$MAIN_PY" ] || { echo "error: .venv/bin/python not found; run bash setup.sh first" >&2; exit 1; }

if [ ! -x "$REF/bin/python" ]; then
  base=$("$MAIN_PY" -c 'import sys; print(sys._base_executable)')
  echo "make_ref_env: creating $REF with $base" >&2
  "$base" -m venv "$REF"
else
  echo "make_ref_env: reusing $REF" >&2
fi

main_site=$("$MAIN_PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
ref_site=$("$REF/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
pth="$ref_site/zz-hwnas-main-venv.pth"   # "zz": after the ref env's own packages
[ -f "$pth" ] || echo "$main_site" > "$pth"

if ! "$REF/bin/python" -c 'import importlib.metadata as m; m.version("ofa")' >/dev/null 2>&1; then
  echo "make_ref_env: installing ofa==$OFA_VERSION (--no-deps)" >&2
  "$REF/bin/python" -m pip install -q --no-deps "ofa==$OFA_VERSION"
fi
# ofa/tutorial/__init__.py imports ofa.model_zoo, which imports gdown (small, pure Python)
if ! "$REF/bin/python" -c 'import gdown' >/dev/null 2>&1; then
  echo "make_ref_env: installing gdown (imported by ofa.model_zoo)" >&2
  "$REF/bin/python" -m pip install -q gdown
fi
PYMOO_VERSION=0.6.2
if ! "$REF/bin/python" -c 'import pymoo' >/dev/null 2>&1; then
  echo "make_ref_env: installing pymoo==$PYMOO_VERSION (NSGA-II for bench/search_vs_ofa.py --pareto)" >&2
  "$REF/bin/python" -m pip install -q "pymoo==$PYMOO_VERSION"
fi
TIMM_VERSION=1.0.29
if ! "$REF/bin/python" -c 'import timm' >/dev/null 2>&1; then
  echo "make_ref_env: installing timm==$TIMM_VERSION (mobilenetv3_large_100 for bench/gpu_step.py)" >&2
  "$REF/bin/python" -m pip install -q "timm==$TIMM_VERSION"
fi
"$REF/bin/python" -c 'import ofa.tutorial.evolution_finder, ofa.tutorial.accuracy_predictor, ofa.tutorial.latency_table, pymoo.algorithms.moo.nsga2, timm' \
  || { echo "error: $REF cannot import ofa.tutorial (see the traceback above)" >&2; exit 1; }
echo "make_ref_env: ready: $REF/bin/python" >&2
