#!/usr/bin/env bash
# Box and mask AP of the quick start's trained model on its 12 held-out images, ONNX Runtime
# fp32 against int8 (tools/export_model.py --quantize int8 --evaluate-on), both files run by
# deploy/onnx_predictor.py. Calibrated on the first 16 training images (never the held-out
# ones); the int8 file is written only when neither AP drops by more than 0.5 (issue 27's bar).
#   bash benchmarks/int8_accuracy.sh [QUICKSTART_OUTPUT_DIR] [extra export_model.py flags]
# QUICKSTART_OUTPUT_DIR: where scripts/quickstart.sh trained (output/quickstart by default;
# it holds model_final.pth). The dataset: $GCNET_SYNTH_ROOT, else datasets/gcnet_synthetic;
# GCNET_VAL_IMAGES=N: N held-out images (with 12, one changed detection moves AP by a point).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
OUT="${1:-output/quickstart}"
shift || true
DATA="${GCNET_SYNTH_ROOT:-${DETECTRON2_DATASETS:-datasets}/gcnet_synthetic}"
if [[ -n "${GCNET_VAL_IMAGES:-}" ]]; then
  # N held-out images of the quick start's generator (same seed and size: the first 12 are
  # the quick start's, the training images the same) instead of 12
  DATA="${DATA}_val${GCNET_VAL_IMAGES}"
  "$PY" -m gcnet_d2.data.synthetic --root "$DATA" --num-val "$GCNET_VAL_IMAGES" >/dev/null
fi
"$PY" tools/export_model.py \
  --config-file configs/quickstart/mask_rcnn_r50_fpn_r16_gcb_synthetic.yaml \
  --format onnx --sample-image "$DATA/val/000000.jpg" --output "$OUT/int8" \
  --quantize int8 --calibration-images "$DATA/train" --calibration-count 16 \
  --evaluate-on "$DATA/annotations/instances_val.json" "$DATA/val" --max-ap-drop 0.5 \
  "$@" MODEL.WEIGHTS "$OUT/model_final.pth"
