#!/usr/bin/env bash
# The quality runs behind experiments/results/rt_polarity.md (one at a time: the CPU has 2 cores).
#   bash experiments/run_quality.sh     # default (Houlsby) seeds 0 1 2, the base-dropout ablation, full fine-tuning
#   SEEDS=0 ABLATION_SEEDS= FULL_SEEDS= bash experiments/run_quality.sh   # the default run's seed 0 only
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
run() {  # config, seed
  $PY scripts/train.py --config "experiments/configs/$1.py" --config.seed="$2" --workdir "runs/$1-seed$2" \
    --config.progress=false
}
for seed in ${SEEDS-0 1 2}; do run rt_houlsby "$seed"; done
for seed in ${ABLATION_SEEDS-0 1 2}; do run rt_houlsby_dropout "$seed"; done
for seed in ${FULL_SEEDS-0 1 2}; do run rt_full "$seed"; done
