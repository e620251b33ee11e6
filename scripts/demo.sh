#!/usr/bin/env bash
# The main job on an embedded default: synthetic H&E tiles (no external data), self-supervised training of the
# activation network, then PSM -> SCM pseudo masks. Creates ./.venv on a fresh machine. About 2 min on 2 CPU cores.
# Outputs: demo_out/models/model.pt, demo_out/eval (TensorBoard), demo_out/eval/pseudo_masks/{psm,masks,overlays}/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
PY=.venv/bin/python
OUT=${1:-demo_out}
$PY -c "from bundle.synthetic import write_synthetic_folder as w; print(w('$OUT/tiles', n_tiles=8, size=256))"
$PY -m monai.bundle run --config_file configs/ssl_train.json --dataset_dir "$OUT/tiles/datalist.json" \
    --bundle_root "$OUT" --epochs 8 --crop_size 128
$PY -m monai.bundle run --config_file configs/psm_infer.json --dataset_dir "$OUT/tiles/datalist.json" \
    --bundle_root "$OUT" --scm#min_size 30
echo "pseudo masks: $OUT/eval/pseudo_masks (summary.json has pixel F1 against the synthetic ground truth)"
echo "TensorBoard:  $PY -m tensorboard.main --logdir $OUT/eval"
