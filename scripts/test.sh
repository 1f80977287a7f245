#!/usr/bin/env bash
# Runs the whole test suite (unit, in-process ComfyUI, end-to-end server) in the cached environment.
# Extra arguments go to pytest, e.g.  bash scripts/test.sh tests/unit -q   or   bash scripts/test.sh -k heatmap
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup_env.sh
exec "$AF_PYTHON" -m pytest -c tests/pytest.ini "$@"
