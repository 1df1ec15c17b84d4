#!/usr/bin/env bash
# Installs everything into ./.venv (once), then runs the whole pytest suite on the CPU.
#   bash scripts/test.sh [pytest args ...]
# With pytest-xdist installed (requirements-dev.txt) the tests run in GCNET_TEST_WORKERS
# processes (default 2; torch threads shared out among them by tests/conftest.py), a module's
# tests in one worker (--dist loadscope: its module fixtures are built once); an explicit -n /
# --numprocesses or `-p no:xdist` among the arguments is used as given.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="$(bash "$ROOT/scripts/setup_env.sh")"
cd "$ROOT"
parallel=()
if "$PY" -c "import xdist" 2>/dev/null \
  && ! printf '%s\n' "$@" | grep -qE '^(-n|--numprocesses|-pno:xdist$|no:xdist$)'; then
  parallel=(-n "${GCNET_TEST_WORKERS:-2}" --dist loadscope)
fi
exec "$PY" -m pytest -q "${parallel[@]}" "$@"
