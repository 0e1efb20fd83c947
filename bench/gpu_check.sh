#!/usr/bin/env bash
# The prepared GPU check (see bench/gpu_check.py). On the GPU machine, from the checkout root,
# after `python tools/prepare_gpu_carry.py` here and with .gpu_carry carried along:
#   bash bench/gpu_check.sh [--out DIR]
# installs .gpu_carry/wheels into a temp folder (no index, no network) and runs the check against
# .gpu_carry/ComfyUI. On a CPU machine with ComfyUI and the test environment installed:
#   bash bench/gpu_check.sh --dry-run        (tiny models, every phase; CI runs this)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-$(command -v python3)}"
# The carried wheels are for the GPU machine's Python; a dry run uses this environment unless
# DTGEN_GPU_WHEELS names a folder of wheels to install first (a test of the carried set).
WHEELS="${DTGEN_GPU_WHEELS:-$ROOT/.gpu_carry/wheels}"
case " $* " in *" --dry-run "*) [ -n "${DTGEN_GPU_WHEELS:-}" ] || WHEELS="" ;; esac
if [ -n "$WHEELS" ] && [ -d "$WHEELS" ] && ls "$WHEELS"/*.whl >/dev/null 2>&1; then
  SITE="$(mktemp -d "${TMPDIR:-/tmp}/dtgen-gpu-site.XXXXXX")"
  trap 'rm -rf "$SITE"' EXIT
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --disable-pip-version-check \
    --target "$SITE" "$WHEELS"/*.whl
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
if [ -z "${COMFYUI_PATH:-}" ] && [ -f "$ROOT/.gpu_carry/ComfyUI/main.py" ]; then
  export COMFYUI_PATH="$ROOT/.gpu_carry/ComfyUI"
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 DO_NOT_TRACK=1
"$PY" "$ROOT/bench/gpu_check.py" "$@"
