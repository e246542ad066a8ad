"""Ablation 9, the decoder half: every method on SmolLM2-135M through the instruct path, in one table.

    python scripts/sweep.py --config experiments/ablations/methods_smollm2.py
    python scripts/report.py experiments/results/methods_smollm2

SmolLM2-135M-Instruct on rt_polarity as an instruct task (experiments/configs/smollm2_rt_instruct.py: "Review:
<text>\nSentiment:" -> " positive" / " negative", the loss on the response only, 300 steps of batch 8,
AdamW with warm-up and linear decay), seeds 0-2: Houlsby m=64, Pfeiffer m=64, parallel m=64, LoRA r=8
alpha=16 on q/v (the recipe's, as PEFT's peer ran it: bench/results/instruct_quality.md), IA3 and prefix
tuning (10) at lr 3e-3, full fine-tuning at lr 2e-5 (Houlsby, Pfeiffer, parallel and LoRA at the recipe's
1e-3). The metric is exact-match accuracy of greedy generation on the 1,236 test reviews, with the
trainable share, training time and peak memory in each row. Budget: ~10 min per run on the 2-core CPU
(full fine-tuning longer), 21 runs, about 4 hours: run it with --only per method, or on a GPU.
The papers on decoders (He et al. 2022, Table 1; Hu et al. 2021, Table 2): adapters and LoRA within a
point or two of full fine-tuning; prefix tuning below them on classification-like tasks.
"""
from adapters_jax.sweeps import grid
from experiments.ablations import common
from experiments.configs import smollm2_rt_instruct

METHODS = {
    "houlsby_m64": {"adapter": common.houlsby(64)},
    "pfeiffer": common.METHODS["pfeiffer"],
    "parallel": common.METHODS["parallel"],
    "lora": {"adapter": "lora[r=8,alpha=16,attn_matrices=[q,v]]"},
    "ia3": common.METHODS["ia3"],
    "prefix": common.METHODS["prefix"],
    "full": {"adapter": "none", "full_finetune": True, "optimizer.lr": 2e-5},
}


def get_config():
    import ml_collections

    c = smollm2_rt_instruct.get_config()
    c.ablation = ml_collections.ConfigDict({"method": "lora"})
    return c


def finalize(c):
    return common.apply(c, METHODS[c.ablation.method])


def sweep():
    return grid.product(grid.axis("ablation.method", list(METHODS)), grid.axis("seed", common.SEEDS))


REPORT = {
    "title": "Every method on SmolLM2-135M (instruct rt_polarity)",
    "x": "ablation.method", "xscale": "category", "order": list(METHODS),
    "baseline": {"ablation.method": "full"},
    "paper": "He et al. 2022, Table 1 (adapters, LoRA and prefix tuning against full fine-tuning); Hu et al. "
             "2021, Table 2 (LoRA on GPT-2).",
}
