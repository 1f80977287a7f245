#!/usr/bin/env bash
# Trains the demo model on CPU (resumable; see scripts/demo_model/train.py --help) and writes
# models/attention-focus-shapes.safetensors + .json. The committed model was made by the command in that .json.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup_env.sh
PYTHONPATH="$PWD/scripts${PYTHONPATH:+:$PYTHONPATH}" exec "$AF_PYTHON" -m demo_model.train "$@"
