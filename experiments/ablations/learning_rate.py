"""Ablation 6: learning-rate robustness (He et al., ACL 2021, On the Effectiveness of Adapter-based Tuning).

    python scripts/sweep.py --config experiments/ablations/learning_rate.py
    python scripts/report.py experiments/results/learning_rate

MiniLM-L6 on rt_polarity, 150 steps of 32, seeds 0-2: lr in {1e-5, 1e-4, 3e-4, 1e-3, 3e-3} for full
fine-tuning, Houlsby adapters (m=64) and LoRA (r=8 on q, v). Budget: ~2 min per run (full fine-tuning
~3), 45 runs, about 1.6 hours on the 2-core CPU (split it with --only, or run it on a GPU).
The paper: adapters' best learning rate is 10-100x fine-tuning's and their accuracy stays on a broader
plateau around it; fine-tuning collapses above ~1e-4.
"""
from adapters_jax.sweeps import grid
from experiments.ablations import common

LRS = [1e-5, 1e-4, 3e-4, 1e-3, 3e-3]


def get_config():
    return common.recipe(max_steps=150, method="houlsby", lr=1e-3)


def finalize(c):
    common.apply(c, common.METHODS[c.ablation.method])
    c.optimizer.lr = c.ablation.lr
    return c


def sweep():
    return grid.product(grid.axis("ablation.method", ["full", "houlsby", "lora"]), grid.axis("ablation.lr", LRS),
                        grid.axis("seed", common.SEEDS))


REPORT = {
    "title": "Learning-rate robustness (He et al. 2021)",
    "x": "ablation.lr", "xscale": "log", "series": "ablation.method",
    "paper": "He et al. 2021, On the Effectiveness of Adapter-based Tuning for Pretrained Language Model "
             "Adaptation, Figure 4 (accuracy against learning rate, adapters vs fine-tuning).",
}
