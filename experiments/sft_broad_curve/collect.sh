#!/usr/bin/env bash
# (run from the repo root) copy the curve's small artifacts into experiments/sft_broad_curve (no checkpoints, no optimizer state)
set -euo pipefail
cd /work/main
R=outputs/curve/sft_broad; E=experiments/sft_broad_curve
mkdir -p $E/curve
for f in learning_curve.json learning_curve.png; do [ -f $R/$f ] && cp $R/$f $E/; done
[ -f $R/curve/val_prompts.jsonl ] && cp $R/curve/val_prompts.jsonl $E/curve/
for d in $R/curve/step_*; do
  k=$(basename $d); mkdir -p $E/curve/$k
  [ -d $d/adapter ] && rm -rf $E/curve/$k/adapter && cp -r $d/adapter $E/curve/$k/
  [ -f $d/point.json ] && cp $d/point.json $E/curve/$k/
  if [ -d $d/bfcl ]; then mkdir -p $E/curve/$k/bfcl; cp -r $d/bfcl/bfcl $E/curve/$k/bfcl/ 2>/dev/null || true
    for f in summary.json results.md; do [ -f $d/bfcl/$f ] && cp $d/bfcl/$f $E/curve/$k/bfcl/; done; fi
  if [ -d $d/val ]; then mkdir -p $E/curve/$k/val; [ -f $d/val/predictions.jsonl ] && cp $d/val/predictions.jsonl $E/curve/$k/val/; fi
  if [ -f $d/heldout/decisions.json ]; then mkdir -p $E/curve/$k/heldout; cp $d/heldout/predictions.jsonl $d/heldout/decisions.json $E/curve/$k/heldout/; fi
done
# the slice in progress: the adapter a stop wrote (train/adapter), if newer than the last point
if [ -f $R/train/adapter/adapter_config.json ]; then
  s=$(python3 -c "import json;print(json.load(open('$R/train/adapter/adapter_config.json'))['step'])")
  if [ ! -d $E/curve/step_$s ]; then rm -rf $E/in_progress_adapter; cp -r $R/train/adapter $E/in_progress_adapter; fi
fi
# an in-progress adapter no newer than the newest point is superseded by that point's adapter
if [ -f $E/in_progress_adapter/adapter_config.json ]; then
  s=$(python3 -c "import json;print(json.load(open('$E/in_progress_adapter/adapter_config.json'))['step'])")
  newest=$(ls -d $E/curve/step_* | sed 's/.*step_//' | sort -n | tail -1)
  if [ "$s" -le "$newest" ]; then rm -rf $E/in_progress_adapter; fi
fi
cp $R/train/metrics.jsonl $E/train_metrics.jsonl
du -sh $E; find $E -type f | wc -l
