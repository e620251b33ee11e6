#!/usr/bin/env bash
# Reproduces docs/results/psm_*.{json,md}: SSL training of the CPU-profile activation network with each pretext on
# the 30 unlabelled MoNuSeg train images, then the pseudo-mask benchmark (labels used for scoring only).
# Usage: bash scripts/run_psm_experiments.sh ../shared/data/monuseg [runs_dir]   (2-core CPU: about 60 min)
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-../shared/data/monuseg}
RUNS=${2:-runs}
PY=${PY:-.venv/bin/python}
train() {  # name pretext epochs
  /usr/bin/time -v $PY -m monai.bundle run --config_file configs/ssl_train.json --dataset_dir "$DATA/train/images" \
    --bundle_root "$RUNS/$1" --pretext "$2" --epochs "$3" > "$RUNS/$1.log" 2>&1
  grep -E "Maximum resident|Elapsed" "$RUNS/$1.log" | tail -2
}
mkdir -p "$RUNS"
[ -f "$RUNS/contrastive/models/model.pt" ] || train contrastive contrastive 30
[ -f "$RUNS/similarity/models/model.pt" ] || train similarity similarity 30
for p in triplet rotation mean_pixel simsiam; do
  [ -f "$RUNS/abl_$p/models/model.pt" ] || train "abl_$p" "$p" 10
done
[ -f "$RUNS/abl_contrastive10/models/model.pt" ] || train abl_contrastive10 contrastive 10
$PY scripts/benchmark_psm.py --monuseg "$DATA" --ablate contrastive \
  --net random=random:head --net random_norm=random:feature_norm \
  --net contrastive="$RUNS/contrastive/models/model.pt":feature_norm \
  --net similarity="$RUNS/similarity/models/model.pt":head \
  --out docs/results/psm_benchmark
ARGS=()
for p in triplet rotation mean_pixel; do ARGS+=(--net "$p=$RUNS/abl_$p/models/model.pt:head"); done
ARGS+=(--net "simsiam=$RUNS/abl_simsiam/models/model.pt:feature_norm")
ARGS+=(--net "contrastive10=$RUNS/abl_contrastive10/models/model.pt:feature_norm")
$PY scripts/benchmark_psm.py --monuseg "$DATA" --baselines 0 --ablate none "${ARGS[@]}" --out docs/results/psm_pretexts
