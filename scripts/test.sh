#!/usr/bin/env bash
# Installs everything into ./.venv (once), then runs the whole pytest suite on the CPU.
#   bash scripts/test.sh [pytest args ...]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="$(bash "$ROOT/scripts/setup_env.sh")"
cd "$ROOT"
exec "$PY" -m pytest -q "$@"
