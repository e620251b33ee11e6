#!/usr/bin/env bash
# Create ./.venv with the CPU build of torch and this package (editable) if it is not there yet.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c "import bundle, monai, ignite, skimage, zarr, pytest, xdist, jsonschema, matplotlib, jinja2, pyarrow, shapely" 2>/dev/null; then
  "$PY" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
  # torch is pinned to the CPU build in pyproject.toml; GPU users: see README "Install".
  .venv/bin/python -m pip install -q torch==2.13.0
  .venv/bin/python -m pip install -q -e ".[test]"
fi
