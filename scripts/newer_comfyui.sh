#!/usr/bin/env bash
# Runs the test suite against another (newer) ComfyUI tree, without touching the project's cached venv.
#
#   COMFYUI_PATH=/path/to/ComfyUI bash scripts/newer_comfyui.sh [pytest args, as for scripts/test.sh]
#   e.g. COMFYUI_PATH=~/src/ComfyUI bash scripts/newer_comfyui.sh -q -p no:randomly tests/comfy tests/unit
#
# What it does:
#  1. creates/activates the usual cached environment (scripts/setup_env.sh; also the 0.3.75 tree);
#  2. installs the PyPI packages the tree needs beyond that venv into a separate folder,
#     $ATTENTION_FOCUS_CACHE/extra-<ComfyUI version>, with `pip install --no-deps --target` (never torch);
#     it goes first on PYTHONPATH. torchaudio there is made pure Python (its CUDA-linked lib/*.so removed);
#  3. copies tokenizer files the tree lacks (e.g. a tree extracted from a mirror without its large blobs)
#     from the 0.3.75 tree, where that has them;
#  4. runs pytest like scripts/test.sh, with COMFYUI_PATH and PYTHONPATH set.
# Fixture caches are keyed by the ComfyUI version, so each tree gets its own.
#
# Settings: AF_EXTRA_PACKAGES  override the package list (space separated pip requirements)
#           AF_PREPARE_ONLY=1  prepare the folder and tokenizers, print the exports, run no test
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${COMFYUI_PATH:-}" ]; then
  echo "usage: COMFYUI_PATH=/path/to/ComfyUI bash scripts/newer_comfyui.sh [pytest args]" >&2
  exit 2
fi
_af_tree="$(cd "$COMFYUI_PATH" && pwd)"
if [ ! -f "$_af_tree/main.py" ] || [ ! -d "$_af_tree/comfy" ]; then
  echo "[attention-focus] $_af_tree is not a ComfyUI tree (no main.py / comfy/)" >&2
  exit 1
fi

# 1. the cached venv and the 0.3.75 reference tree (setup_env.sh makes both when COMFYUI_PATH is unset)
unset COMFYUI_PATH
. scripts/setup_env.sh
set -euo pipefail
_af_base="$COMFYUI_PATH"
export COMFYUI_PATH="$_af_tree"
_af_version=$(sed -n 's/^__version__ *= *["'\'']\([^"'\'']*\)["'\''].*/\1/p' "$COMFYUI_PATH/comfyui_version.py" \
              2>/dev/null || true)
_af_version="${_af_version:-unknown}"

# 2. packages beyond the venv, per ComfyUI version (measured; see README "Newer ComfyUI")
_af_torchaudio="torchaudio==2.11.1"
case "$_af_version" in
  0.3.75) _af_pkgs="" ;;
  0.8.0)  _af_pkgs="comfyui-frontend-package==1.35.9 comfy-kitchen==0.2.3" ;;
  0.33.0) _af_pkgs="comfyui-frontend-package==1.49.6 comfyui-embedded-docs==0.5.10 comfy-kitchen==0.2.31
                    comfy-aimdo==0.4.13 simpleeval blake3 PyOpenGL $_af_torchaudio" ;;
  *)
    # Unknown tree: the pinned (==) requirements whose version the venv lacks and the unpinned ones it lacks
    # entirely, from the tree's requirements.txt; never torch/torchvision (torchaudio as above), nor the
    # large workflow templates (the tests do not use them).
    _af_pkgs=$("$AF_PYTHON" - "$COMFYUI_PATH/requirements.txt" "$_af_torchaudio" <<'EOF'
import re, sys
from importlib import metadata
out = []
for line in open(sys.argv[1]):
    line = line.split("#", 1)[0].strip()
    m = re.match(r"([A-Za-z0-9_.\-]+)\s*(==\s*([^\s;]+))?", line)
    if not m:
        continue
    name, pin = m.group(1), m.group(3)
    low = name.lower().replace("_", "-")
    if low in ("torch", "torchvision") or low.startswith("comfyui-workflow-templates"):
        continue
    try:
        have = metadata.version(name)
    except metadata.PackageNotFoundError:
        have = None
    if low == "torchaudio":
        if have is None:
            out.append(sys.argv[2])
    elif have is None or (pin and have != pin):
        out.append(f"{name}=={pin}" if pin else name)
print(" ".join(out))
EOF
)
    echo "[attention-focus] ComfyUI $_af_version is not a measured version; extra packages from its" \
         "requirements.txt: ${_af_pkgs:-none}" >&2 ;;
esac
_af_pkgs="${AF_EXTRA_PACKAGES:-$_af_pkgs}"
_af_pkgs=$(tr -s ' \t\n' ' ' <<< "$_af_pkgs" | sed 's/^ //; s/ $//')  # one line, single spaces
_af_extra="$ATTENTION_FOCUS_CACHE/extra-$_af_version"
if [ -n "$_af_pkgs" ] && [ "$(cat "$_af_extra/.ready" 2>/dev/null)" != "$_af_pkgs" ]; then
  echo "[attention-focus] installing into $_af_extra (once): $_af_pkgs" >&2
  rm -rf "$_af_extra"
  mkdir -p "$_af_extra"
  # --no-deps: whatever they depend on is the venv's (above all torch, CPU build); never a CUDA torch.
  read -r -a _af_pkg_list <<< "$_af_pkgs"
  "$AF_PYTHON" -m pip install -q --disable-pip-version-check --no-deps --no-compile --target "$_af_extra" \
    "${_af_pkg_list[@]}" 2> >(grep -v "is ignored: it is neither" >&2)
  if [ -d "$_af_extra/torchaudio" ]; then
    # The registry's torchaudio links CUDA libraries; without its compiled extensions it imports as pure
    # Python beside the CPU torch (ComfyUI imports it at module level; the tests use no audio op).
    find "$_af_extra/torchaudio" -name "*.so*" -delete
  fi
  echo "$_af_pkgs" > "$_af_extra/.ready"
fi
if [ -n "$_af_pkgs" ]; then
  export PYTHONPATH="$_af_extra${PYTHONPATH:+:$PYTHONPATH}"
fi

# 3. tokenizer files the tree lacks (only files that the 0.3.75 tree has, in folders the tree has too)
if [ "$_af_base" != "$COMFYUI_PATH" ] && [ -d "$_af_base/comfy/text_encoders" ]; then
  for _af_src in "$_af_base"/comfy/text_encoders/*tokenizer*/*; do
    [ -f "$_af_src" ] || continue
    _af_rel="${_af_src#"$_af_base"/}"
    _af_dst="$COMFYUI_PATH/$_af_rel"
    if [ -d "$(dirname "$_af_dst")" ] && [ ! -e "$_af_dst" ]; then
      echo "[attention-focus] copying $_af_rel from the 0.3.75 tree (absent in $COMFYUI_PATH)" >&2
      cp "$_af_src" "$_af_dst"
    fi
  done
fi

echo "[attention-focus] ComfyUI $_af_version at $COMFYUI_PATH; PYTHONPATH=${PYTHONPATH:-}" >&2
if [ -n "${AF_PREPARE_ONLY:-}" ]; then
  echo "export COMFYUI_PATH=$(printf %q "$COMFYUI_PATH") PYTHONPATH=$(printf %q "${PYTHONPATH:-}")" \
       "AF_PYTHON=$(printf %q "$AF_PYTHON")"
  exit 0
fi
# 4. the suite
exec "$AF_PYTHON" -m pytest -c tests/pytest.ini "$@"
