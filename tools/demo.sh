#!/usr/bin/env bash
# The README's main command (`make demo`): install or reuse the environment,
# generate the synthetic shapes dataset (reused when already generated with the
# same arguments), train Co-DETR with its mask branch on it, evaluate the query
# head (the product: boxes and masks) and each auxiliary head (boxes) on its own
# with tools/test.py, draw the validation
# predictions beside their ground truth plus a contact sheet, and plot loss /
# val mAP against iteration. Everything lands in work_dirs/demo/.
# Override with DATA=..., WORK=..., CONFIG=...; `tools/demo.sh --data-only`
# only generates the dataset.
set -euo pipefail
cd "$(dirname "$0")/.."

CONFIG=${CONFIG:-configs/co_deformable_detr_inst_synthetic.py}
DATA=${DATA:-data/synthetic}
WORK=${WORK:-work_dirs/demo}
PY=${PYTHON:-.venv/bin/python}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
START=$(date +%s)

step() { printf '\n[demo] %s (%d s)\n' "$*" "$(( $(date +%s) - START ))"; }

if [ "${1:-}" != "--data-only" ]; then
  step "environment"
  bash tools/install.sh
fi

# The demo's data: 128 px scenes with 1-4 shapes of 24-64 px (six classes), at most 15 %
# of a shape hidden, 5 % empty scenes; the generator's defaults make a harder set (8-64 px,
# up to 6 shapes, 60 % may be hidden).
step "synthetic dataset in $DATA"
"$PY" tools/misc/generate_synthetic_coco.py --out-dir "$DATA" --reuse --num-train 1600 \
  --num-val 100 --img-size 128 --min-size 24 --max-size 64 --max-objects 4 \
  --min-visible 0.85 --empty-ratio 0.05 --seed 0
[ "${1:-}" != "--data-only" ] || exit 0

DATA_OPTS=("train_dataloader.dataset.data_root=$DATA/" "val_dataloader.dataset.data_root=$DATA/"
           "test_dataloader.dataset.data_root=$DATA/"
           "val_evaluator.ann_file=$DATA/annotations/instances_val.json"
           "test_evaluator.ann_file=$DATA/annotations/instances_val.json")

step "training $CONFIG -> $WORK"
"$PY" tools/train.py "$CONFIG" --work-dir "$WORK" --cfg-options "${DATA_OPTS[@]}"

CKPT=$(ls -t "$WORK"/best_coco_bbox_mAP_*.pth 2>/dev/null | head -n 1 || true)
[ -n "$CKPT" ] || CKPT="$WORK/$(cat "$WORK/last_checkpoint" | xargs basename)"
step "evaluating the query head of $CKPT with tools/test.py"
"$PY" tools/test.py "$CONFIG" "$CKPT" --work-dir "$WORK/test" \
  --metrics-out "$WORK/metrics.json" --cfg-options "${DATA_OPTS[@]}"
# The auxiliary heads are detectors too: their own box AP on the same images (the mask
# branch runs on the query head's boxes only).
for head in two-stage one-stage; do
  step "evaluating the auxiliary $head head (model.eval_module=$head)"
  "$PY" tools/test.py "$CONFIG" "$CKPT" --work-dir "$WORK/test_$head" \
    --metrics-out "$WORK/metrics_$head.json" \
    --cfg-options "${DATA_OPTS[@]}" "model.eval_module=$head" test_evaluator.metric=bbox
done

step "drawing predictions (right) beside the ground truth (left) -> $WORK/predictions"
"$PY" tools/infer.py "$DATA/val" "$CONFIG" "$CKPT" --out-dir "$WORK/predictions" \
  --score-thr 0.3 --min-side 1024 --gt-ann "$DATA/annotations/instances_val.json" \
  --contact-sheet "$WORK/predictions.png" --sheet-size 16

step "plotting loss and val mAP -> $WORK/curves.png"
"$PY" tools/analysis_tools/plot_curves.py "$WORK" --out "$WORK/curves.png"

ELAPSED=$(( $(date +%s) - START ))
"$PY" - "$WORK" "$ELAPSED" <<'EOF'
import json, sys
from pathlib import Path
work, elapsed = Path(sys.argv[1]), int(sys.argv[2])
summary = {'seconds': elapsed}
for name, file in (('query head (Co-DETR)', 'metrics.json'),
                   ('aux Faster R-CNN (two-stage)', 'metrics_two-stage.json'),
                   ('aux ATSS (one-stage)', 'metrics_one-stage.json')):
    m = json.loads((work / file).read_text())
    summary[name] = {k: m[f'coco/bbox_{k}'] for k in ('mAP', 'mAP_50', 'mAP_75')}
    line = f'{name:30s} box mAP {m["coco/bbox_mAP"]:.3f}  mAP@50 {m["coco/bbox_mAP_50"]:.3f}'
    if 'coco/segm_mAP' in m:  # the mask branch (query head's boxes)
        summary[name].update({f'segm_{k}': m[f'coco/segm_{k}']
                              for k in ('mAP', 'mAP_50', 'mAP_75')})
        line += f'  mask mAP {m["coco/segm_mAP"]:.3f}  mAP@50 {m["coco/segm_mAP_50"]:.3f}'
    print(line)
(work / 'summary.json').write_text(json.dumps(summary, indent=1) + '\n')
print(f'demo took {elapsed // 60} min {elapsed % 60} s; {work}/summary.json')
EOF
step "done: $WORK/summary.json, $CKPT, $WORK/predictions.png, $WORK/predictions/, $WORK/curves.png"
