#!/usr/bin/env bash
# The main job on an embedded default (no external data). Creates ./.venv on a fresh machine, writes synthetic H&E
# tiles, then
#   1. runs the bundle's shipped nuclei network on them (models/model.pt, trained label-free on MoNuSeg train):
#      seconds -> demo_out/shipped/ (labels/, points/, measurements/, geojson/, overlays/, report.html, summary.json
#      scored against the tiles' synthetic ground truth);
#   2. trains the whole label-free pipeline on the same tiles (self-supervised activation network -> PSM pseudo masks
#      -> detection network -> Voronoi labels -> segmentation network -> nuclei), a few minutes on 2 CPU cores with
#      short schedules (the real defaults are in the configs) -> demo_out/models/, demo_out/eval/nuclei/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
PY=.venv/bin/python
OUT=${1:-demo_out}
$PY -c "from bundle.synthetic import write_synthetic_folder as w; print(w('$OUT/tiles', n_tiles=8, size=256))"
start=$(date +%s.%N)
$PY -m monai.bundle run --config_file configs/inference.json --dataset_dir "$OUT/tiles/datalist.json" \
  --output_dir "$OUT/shipped"
$PY - "$OUT/shipped/summary.json" "$start" <<'PYEOF'
import json, sys, time
s = json.load(open(sys.argv[1]))
print(f"shipped network: {s['n_images']} tiles in {time.time() - float(sys.argv[2]):.1f} s (process start to summary), "
      f"mean AJI {s['aji']:.3f} against the synthetic ground truth -> {sys.argv[1].rsplit('/', 1)[0]} "
      "(open report.html there in a browser)")
PYEOF
$PY -m bundle.label_free --dataset_dir "$OUT/tiles/datalist.json" --bundle_root "$OUT" --override '{
  "ssl": {"epochs": 8, "crop_size": 128},
  "psm": {"scm#min_size": 30},
  "det": {"epochs": 6, "steps_per_epoch": 10, "crop_size": 128, "val_interval": 3},
  "seg": {"epochs": 6, "steps_per_epoch": 10, "crop_size": 128, "val_interval": 3}}'
echo "label-free on the tiles themselves: $OUT/eval/nuclei (labels/, points/, geojson/, overlays/, report.html; summary.json scores them)"
echo "TensorBoard:  $PY -m tensorboard.main --logdir $OUT/eval"
