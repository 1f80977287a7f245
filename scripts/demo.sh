#!/usr/bin/env bash
# Sets everything up (cached) and runs the main job: a generation with attention capture on the
# embedded random-weight SD1.5 model (or AF_CHECKPOINT), writing image, heat-map grid, masks, raw maps.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup_env.sh
exec "$AF_PYTHON" scripts/demo.py "$@"
