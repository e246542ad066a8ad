"""Ablation 9: the mission's own questions: bottleneck sizes 16-64 against full fine-tuning, and every
method against LoRA on each built-in task, in one table.

    python scripts/sweep.py --config experiments/ablations/methods.py
    python scripts/report.py experiments/results/methods

MiniLM-L6, 300 steps of 32, seeds 0-2, on rt_polarity, tweet_sentiment and bbc_news: Houlsby m in
{16, 32, 64}, Pfeiffer, parallel, LoRA (r=8, q/v), IA3, prefix tuning (10), full fine-tuning. Each row holds
the accuracy, the trainable share and the training time. Budget: ~3.5 min per run on the 2-core CPU, 81
runs, about 5 hours: run it with --only per task, or on a GPU. SmolLM2-135M through the instruct path is
the other half: experiments/ablations/methods_smollm2.py (21 runs of ~10 min).
"""
from adapters_jax.sweeps import grid
from experiments.ablations import common

NAMES = ["houlsby_m16", "houlsby_m32", "houlsby_m64", "pfeiffer", "parallel", "lora", "ia3", "prefix", "full"]


def get_config():
    return common.recipe(max_steps=300, method="houlsby_m64")


def finalize(c):
    return common.apply(c, common.METHODS[c.ablation.method])


def sweep():
    return grid.product(grid.axis("task", ["rt_polarity", "tweet_sentiment", "bbc_news"]),
                        grid.axis("ablation.method", NAMES), grid.axis("seed", common.SEEDS))


REPORT = {
    "title": "Adapters against LoRA and full fine-tuning, per task",
    "x": "ablation.method", "xscale": "category", "series": "task",
    "paper": "Houlsby et al. 2019 Table 1 (GLUE: adapters 80.0 vs fine-tuning 80.4 with 3.6% of the "
             "parameters); He et al. 2022 Table 1; Hu et al. 2021 Table 2.",
}
