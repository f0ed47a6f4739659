#!/usr/bin/env bash
# The whole test suite, on a fresh machine: sets up .venv (scripts/setup_env.sh), then runs pytest.
# Extra arguments go to pytest (e.g. scripts/run_tests.sh -k loss -x).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
python -m pytest -q "$@" tests
