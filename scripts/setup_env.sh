#!/usr/bin/env bash
# Create (once) the project's virtual environment in .venv and install monai_mcx with the pinned CI stack.
# Sourced by scripts/run_demo.sh and scripts/run_tests.sh; safe to run again (it reinstalls only when
# setup.cfg or constraints.txt changed). Override the interpreter with PYTHON=python3.x.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
VENV="${MCX_VENV:-$ROOT/.venv}"
if [ ! -x "$VENV/bin/python" ]; then
    echo "[setup] creating virtual environment $VENV"
    "$PY" -m venv "$VENV"
fi
STAMP="$VENV/.monai_mcx-installed"
WANT="$(cat "$ROOT/setup.cfg" "$ROOT/constraints.txt" "$ROOT/pyproject.toml" | sha256sum | cut -d' ' -f1)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
    echo "[setup] installing monai_mcx and its pinned dependencies (first time: a few minutes)"
    # the pinned stack (a CUDA build of torch) takes about 8 GB in the venv; say so before pip runs out of disk
    FREE_KB="$(df -Pk "$VENV" | awk 'NR==2 {print $4}')"
    if [ -n "$FREE_KB" ] && [ "$FREE_KB" -lt $((9 * 1024 * 1024)) ]; then
        echo "[setup] warning: $((FREE_KB / 1024)) MiB free on the disk of $VENV; the install needs about 8 GiB" >&2
    fi
    "$VENV/bin/python" -m pip install -q --no-cache-dir -c "$ROOT/constraints.txt" -e "$ROOT[dev,itk]" 2>&1 \
        | grep -v "is ignored" || true
    "$VENV/bin/python" -c "import monai_mcx, monai, torch, ignite" || {
        echo "[setup] install failed (see pip's message above; 'No space left on device': free about 8 GiB)" >&2
        exit 1
    }
    echo "$WANT" > "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
