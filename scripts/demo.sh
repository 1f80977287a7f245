#!/usr/bin/env bash
# Sets everything up (cached) and runs the main job: a generation with attention capture on the
# embedded demo model (a tiny SD3-shaped MMDiT trained on drawn shapes; or AF_CHECKPOINT, a real SD1.x
# checkpoint), writing image, heat-map grid, masks, raw maps and a reweight pair.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup_env.sh
exec "$AF_PYTHON" scripts/demo.py "$@"
