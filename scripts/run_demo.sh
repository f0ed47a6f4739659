#!/usr/bin/env bash
# The main job on the embedded SYNTHETIC demo data, on a fresh machine:
#   set up .venv -> generate demo data -> train -> evaluate -> infer.
# Writes bundle/demo_data/ and the run folder bundle/runs/demo/: models/{model.pt,model.json,last.pt,last.json}
# (model.json: the model description) and eval/{metrics.json,report.md,tensorboard/,predictions/}.
# bundle/models/ (the shipped model) is not touched. Extra arguments are passed to every `monai.bundle run`
# (e.g. --epochs 2 --device cpu); inference gets only the run's ckpt_dir: the description drives it.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
start=$(date +%s)
RUN=bundle/runs/demo
echo "== 1/3 train (generates the synthetic demo data on first use) =="
python -m monai.bundle run --config_file bundle/configs/train.json "$@"
echo "== 2/3 evaluate (validation split; writes the chosen thresholds into $RUN/models/model.json) =="
python -m monai.bundle run --config_file "['bundle/configs/train.json','bundle/configs/evaluate.json']" "$@"
echo "== 3/3 infer (test split, DICOM) =="
python -m monai.bundle run --config_file bundle/configs/inference.json --ckpt_dir "$RUN/models" \
    --output_dir "$RUN/eval/predictions" --overwrite true "$@"
python - <<'PY'
import json
m = json.load(open("bundle/runs/demo/eval/metrics.json"))
keys = ["classification/auc", "segmentation/dice_positive", "segmentation/dice_empty_aware", "localization/ap50", "localization/map", "localization/rsna"]
print("\nmetrics (synthetic validation split, bundle/runs/demo/eval/metrics.json):")
for k in keys:
    if k in m:
        print(f"  {k:32s} {m[k]}")
PY
echo "model: $RUN/models/model.pt with its description $RUN/models/model.json"
echo "predictions: $RUN/eval/predictions/ (per-image JSON, mask PNG, predictions.csv)"
echo "TensorBoard: $ROOT/.venv/bin/tensorboard --logdir $ROOT/$RUN/eval/tensorboard --host 127.0.0.1"
echo "done in $(( $(date +%s) - start )) s"
