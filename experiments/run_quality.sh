#!/usr/bin/env bash
# The quality runs behind experiments/results/rt_polarity.md (one at a time: the CPU has 2 cores).
#   bash experiments/run_quality.sh            # Houlsby seeds 0 1 2, then full fine-tuning seeds 0 1 2
#   SEEDS=0 FULL_SEEDS= bash experiments/run_quality.sh   # one Houlsby seed only
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
for seed in ${SEEDS:-0 1 2}; do
  $PY scripts/train.py --config experiments/configs/rt_houlsby.py --config.seed=$seed \
    --workdir runs/rt_houlsby-seed$seed --config.progress=false
done
for seed in ${FULL_SEEDS-0 1 2}; do
  $PY scripts/train.py --config experiments/configs/rt_full.py --config.seed=$seed \
    --workdir runs/rt_full-seed$seed --config.progress=false
done
