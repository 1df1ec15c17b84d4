#!/usr/bin/env bash
# Installs everything gcnet_d2 needs into a project-local virtual environment, once.
#   bash scripts/setup_env.sh          # creates/updates ./.venv, prints its python
# A second run only checks a stamp and exits. An importable detectron2 (e.g. one you built
# from source) is used, never replaced: if `${PYTHON:-python3}` imports detectron2, the venv
# is created with --system-site-packages and nothing that is already importable is reinstalled.
# Environment: PYTHON (base interpreter, default python3), GCNET_VENV (default ./.venv).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${GCNET_VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"
STAMP="$VENV/.gcnet_d2-installed"
want="$(cat "$ROOT"/requirements*.txt "$ROOT/setup.py" | sha256sum | cut -c1-16)"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && "$PY" -c "import gcnet_d2" 2>/dev/null; then
  echo "$PY"
  exit 0
fi

log() { echo "[setup] $*" >&2; }
BASE_PY="${PYTHON:-python3}"
if [ ! -x "$PY" ]; then
  if "$BASE_PY" -c "import detectron2" >/dev/null 2>&1; then
    log "using the detectron2 that $BASE_PY imports (venv with --system-site-packages)"
    "$BASE_PY" -m venv --system-site-packages "$VENV"
  else
    "$BASE_PY" -m venv "$VENV"
  fi
fi
pip() { "$PY" -m pip --disable-pip-version-check -q "$@"; }
has() { "$PY" -c "import $1" >/dev/null 2>&1; }

if ! has torch || ! has torchvision; then
  log "installing torch 2.14.1 + torchvision 0.29.1"
  pip install torch==2.14.1 torchvision==0.29.1
fi
# Before detectron2's own needs so that an existing cv2 (opencv-python) is not doubled.
has cv2 || pip install opencv-python-headless==5.0.0.93
log "installing runtime and test requirements"
pip install -r "$ROOT/requirements.txt" -r "$ROOT/requirements-dev.txt"
if ! has detectron2; then
  # detectron2 is not on PyPI under its own name. sal-detectron2 0.7.2 is a pure-python wheel
  # of upstream main (tagged cp310); installed by target its CPython-3.10 _C is simply not
  # loaded, which Mask / Cascade Mask R-CNN do not need (see README "Install").
  log "installing detectron2 (sal-detectron2 0.7.2 wheel)"
  site="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  pip install --no-deps --only-binary=:all: --python-version 3.10 --target "$site" \
    sal-detectron2==0.7.2 2>&1 | grep -v "^WARNING: Target directory" >&2 || true
  has detectron2 || { log "detectron2 failed to install"; exit 1; }
fi
if [ -f "$ROOT/requirements-parity.txt" ]; then
  log "installing mmdetection (reference for the parity tests)"
  pip install --no-deps -r "$ROOT/requirements-parity.txt"
fi
pip install --no-deps --no-build-isolation -e "$ROOT"
"$PY" -c "import gcnet_d2" || { log "gcnet_d2 does not import"; exit 1; }
echo "$want" >"$STAMP"
echo "$PY"
