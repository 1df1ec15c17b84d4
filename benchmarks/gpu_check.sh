#!/usr/bin/env bash
# Every GPU question of the project in one run, at most 8 minutes on one H100 (never in CI):
#   1. the CUDA tests (tests/test_cuda.py, tests/export/test_export_cuda.py), TF32 off as they set it;
#   2. AMP training steps of the three families (GC Mask R-CNN R-50, GC Cascade X-101, DCN + GC
#      Cascade X-101): fp16 + grad scaler against fp32 from the same weights and data (finite,
#      loss gap, step-time ratio);
#   3. GC r16 / plain Mask R-CNN R-50-FPN inference at batch 1 and 2.
# One JSON of the results: $OUT/gpu_check.json when OUT is set, else output/gpu_check/gpu_check.json
# (the pytest log and junit file next to it). Exit status: pytest's, or the Python part's if that failed.
#   bash benchmarks/gpu_check.sh             # on the GPU machine
#   bash benchmarks/gpu_check.sh --dry-run   # CPU: the CUDA tests skip, the Python part at tiny size
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x "$ROOT/.venv/bin/python" ]; then PY="$ROOT/.venv/bin/python"; else PY="$(command -v python3)"; fi
fi
DIR="${OUT:-$ROOT/output/gpu_check}"
mkdir -p "$DIR"
DRY=()
TEST_TIMEOUT=270
if [ "${1:-}" = "--dry-run" ]; then DRY=(--dry-run); TEST_TIMEOUT=120; fi
start=$(date +%s)
# 1. CUDA tests (each skips without a GPU); bounded so the rest always runs.
timeout "$TEST_TIMEOUT" "$PY" -m pytest -q -p no:cacheprovider tests/test_cuda.py \
  tests/export/test_export_cuda.py --junitxml "$DIR/cuda_tests.xml" >"$DIR/cuda_tests.log" 2>&1
tests_rc=$?
tail -3 "$DIR/cuda_tests.log"
echo "[gpu_check] CUDA tests: exit $tests_rc after $(( $(date +%s) - start )) s"
# 2 + 3. AMP training steps and inference, with the test summary, into one JSON.
"$PY" benchmarks/gpu_check.py "${DRY[@]}" --pytest-junit "$DIR/cuda_tests.xml" \
  --json "$DIR/gpu_check.json"
py_rc=$?
echo "[gpu_check] done in $(( $(date +%s) - start )) s: $DIR/gpu_check.json"
if [ "$tests_rc" -ne 0 ] && [ "$tests_rc" -ne 5 ]; then exit "$tests_rc"; fi
exit "$py_rc"
