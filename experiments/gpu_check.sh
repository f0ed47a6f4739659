#!/usr/bin/env bash
# CUDA checks and benchmark rows in ONE call (<= 8 min on a GPU): AMP training steps, AMP inference parity
# with fp32, channels_last / torch.compile, the CUDA rows of experiments/benchmark.py (256/512 px, batch 1/32),
# a short training-throughput run. Writes one JSON: $OUT/gpu_check.json when $OUT is set, else docs/gpu_check.json.
#
#   bash experiments/gpu_check.sh        # on a CUDA machine
#   bash experiments/gpu_check.sh --dry  # CPU, tiny sizes: checks that it starts (CI)
#
# A machine whose Python has torch but not MONAI: carry a folder of wheels (see README, "GPU check") as
# ./wheels (or WHEELS=/path); this script installs them offline first (pip --no-index --find-links).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
WHEELS=${WHEELS:-wheels}
if ! "$PY" -c "import monai, ignite" 2>/dev/null; then
    if [ -d "$WHEELS" ]; then
        echo "gpu_check: installing MONAI and dependencies from $WHEELS (offline)"
        "$PY" -m pip install --quiet --no-index --find-links "$WHEELS" -r "$WHEELS/requirements.txt"
    else
        echo "gpu_check: MONAI is not importable and there is no wheels folder ($WHEELS)" >&2
        exit 2
    fi
fi
RESULTS=${OUT:-docs}/gpu_check.json
if [ "${1:-}" = "--dry" ]; then
    RESULTS=${OUT:-$(mktemp -d)}/gpu_check.json
fi
# run as a module from the repository root (the root is on sys.path: monai_mcx and experiments import from it)
exec timeout "${GPU_CHECK_TIMEOUT:-480}" "$PY" -m experiments.gpu_check --out "$RESULTS" "$@"
