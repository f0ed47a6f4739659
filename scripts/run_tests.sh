#!/usr/bin/env bash
# The whole test suite, on a fresh machine: sets up .venv (scripts/setup_env.sh), then runs pytest.
# Extra arguments go to pytest (e.g. scripts/run_tests.sh -k loss -x).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
# -rs: every skipped test and its reason in the short summary (tests/conftest.py adds a banner for the ones
# that leave a whole feature untested, e.g. the MONAI Label server without a package index)
python -m pytest -q -rs "$@" tests
