#!/usr/bin/env bash
# The README's main command (`make demo`): install or reuse the environment,
# generate the synthetic dataset if missing, train Co-DETR on it, evaluate with
# tools/test.py, draw predictions and plot loss / val mAP against iteration.
# Everything lands in work_dirs/demo/. Override with DATA=..., WORK=..., CONFIG=...
set -euo pipefail
cd "$(dirname "$0")/.."

CONFIG=${CONFIG:-configs/co_deformable_detr_synthetic.py}
DATA=${DATA:-data/synthetic}
WORK=${WORK:-work_dirs/demo}
PY=${PYTHON:-.venv/bin/python}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}

step() { printf '\n[demo] %s\n' "$*"; }

step "environment"
bash tools/install.sh

if [ ! -f "$DATA/annotations/instances_val.json" ]; then
  step "generating the synthetic dataset in $DATA"
  "$PY" tools/misc/generate_synthetic_coco.py --out-dir "$DATA" --num-train 400 \
    --num-val 100 --img-size 128 --seed 0
else
  step "reusing the dataset in $DATA"
fi

step "training $CONFIG -> $WORK"
"$PY" tools/train.py "$CONFIG" --work-dir "$WORK" \
  --cfg-options "train_dataloader.dataset.data_root=$DATA/" \
  "val_dataloader.dataset.data_root=$DATA/" "test_dataloader.dataset.data_root=$DATA/" \
  "val_evaluator.ann_file=$DATA/annotations/instances_val.json" \
  "test_evaluator.ann_file=$DATA/annotations/instances_val.json"

CKPT=$(ls -t "$WORK"/best_coco_bbox_mAP_*.pth 2>/dev/null | head -n 1 || true)
[ -n "$CKPT" ] || CKPT="$WORK/$(cat "$WORK/last_checkpoint" | xargs basename)"
step "evaluating $CKPT with tools/test.py"
"$PY" tools/test.py "$CONFIG" "$CKPT" --work-dir "$WORK/test" \
  --metrics-out "$WORK/metrics.json" \
  --cfg-options "test_dataloader.dataset.data_root=$DATA/" \
  "test_evaluator.ann_file=$DATA/annotations/instances_val.json"

step "drawing predictions on the validation images -> $WORK/predictions"
"$PY" tools/infer.py "$DATA/val" "$CONFIG" "$CKPT" --out-dir "$WORK/predictions" \
  --score-thr 0.3

step "plotting loss and val mAP -> $WORK/curves.png"
"$PY" tools/analysis_tools/plot_curves.py "$WORK" --out "$WORK/curves.png"

step "done: $WORK/metrics.json, $CKPT, $WORK/predictions/, $WORK/curves.png"
cat "$WORK/metrics.json"
