#!/usr/bin/env bash
# The project's test command (README and .ci/run both call this).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
# two pytest-xdist workers (CI has 2 cores); PYTEST_WORKERS=0 runs the tests in this one process
exec .venv/bin/python -m pytest -q -n "${PYTEST_WORKERS:-2}" tests "$@"
