#!/usr/bin/env bash
# The main job on an embedded default: the whole label-free nuclei pipeline on synthetic H&E tiles (no external
# data): self-supervised activation network -> PSM pseudo masks -> detection network -> Voronoi labels ->
# segmentation network -> nuclei instances, points, GeoJSON. Creates ./.venv on a fresh machine. A few minutes on
# 2 CPU cores (short schedules; the real defaults are in the configs).
# Outputs: demo_out/models/{model.pt,det/,seg/}, demo_out/eval (TensorBoard), demo_out/eval/nuclei/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
PY=.venv/bin/python
OUT=${1:-demo_out}
$PY -c "from bundle.synthetic import write_synthetic_folder as w; print(w('$OUT/tiles', n_tiles=8, size=256))"
$PY -m bundle.label_free --dataset_dir "$OUT/tiles/datalist.json" --bundle_root "$OUT" --override '{
  "ssl": {"epochs": 8, "crop_size": 128},
  "psm": {"scm#min_size": 30},
  "det": {"epochs": 6, "steps_per_epoch": 10, "crop_size": 128, "val_interval": 3},
  "seg": {"epochs": 6, "steps_per_epoch": 10, "crop_size": 128, "val_interval": 3}}'
echo "nuclei: $OUT/eval/nuclei (labels/, points/, geojson/, overlays/; summary.json scores them against the synthetic ground truth)"
echo "TensorBoard:  $PY -m tensorboard.main --logdir $OUT/eval"
