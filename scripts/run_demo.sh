#!/usr/bin/env bash
# The main job on the embedded SYNTHETIC demo data, on a fresh machine:
#   set up .venv -> generate demo data -> train -> evaluate -> infer.
# Writes bundle/demo_data/, bundle/models/model.pt, bundle/eval/{metrics.json,tensorboard/,predictions/}.
# Extra arguments are passed to every `monai.bundle run` (e.g. --epochs 2 --device cpu).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
start=$(date +%s)
echo "== 1/3 train (generates the synthetic demo data on first use) =="
python -m monai.bundle run --config_file bundle/configs/train.json "$@"
echo "== 2/3 evaluate (validation split) =="
python -m monai.bundle run --config_file "['bundle/configs/train.json','bundle/configs/evaluate.json']" "$@"
echo "== 3/3 infer (test split, DICOM) =="
python -m monai.bundle run --config_file bundle/configs/inference.json "$@"
python - <<'PY'
import json
m = json.load(open("bundle/eval/metrics.json"))
keys = ["classification/auc", "segmentation/dice_positive", "segmentation/dice_empty_aware", "localization/ap50", "localization/map", "localization/rsna"]
print("\nmetrics (synthetic validation split, bundle/eval/metrics.json):")
for k in keys:
    if k in m:
        print(f"  {k:32s} {m[k]}")
PY
echo "predictions: bundle/eval/predictions/ (per-image JSON, mask PNG, predictions.csv)"
echo "TensorBoard: $ROOT/.venv/bin/tensorboard --logdir $ROOT/bundle/eval/tensorboard --host 127.0.0.1"
echo "done in $(( $(date +%s) - start )) s"
