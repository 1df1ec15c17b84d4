#!/usr/bin/env bash
# The quick start's main job: installs everything into ./.venv (once), generates the synthetic
# COCO-format dataset (datasets/gcnet_synthetic), trains a GC r16 Mask R-CNN R-50-FPN on the
# CPU, evaluates it with COCOEvaluator and prints box / mask AP.
#   bash scripts/quickstart.sh [KEY VALUE ...]     # extra train_net.py overrides
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="$(bash "$ROOT/scripts/setup_env.sh")"
cd "$ROOT"
OUT="${GCNET_QUICKSTART_OUT:-output/quickstart}"
start=$(date +%s)
"$PY" train_net.py --config-file configs/quickstart/mask_rcnn_r50_fpn_r16_gcb_synthetic.yaml \
  OUTPUT_DIR "$OUT" "$@"
echo "[quickstart] trained and evaluated in $(( $(date +%s) - start )) s"
"$PY" tools/summarize_results.py "$OUT" --min-box-ap "${GCNET_MIN_BOX_AP:-30}" \
  --min-mask-ap "${GCNET_MIN_MASK_AP:-30}"
