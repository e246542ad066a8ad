"""Ablation 5b: LoRA rank on {q, v} with alpha fixed (Hu et al. 2021, Table 6's setting), the control that
ablation 5 (lora_rank.py, alpha = r) lacks.

    python scripts/sweep.py --config experiments/ablations/lora_rank_alpha.py
    python scripts/report.py experiments/results/lora_rank_alpha

MiniLM-L6 on rt_polarity, 150 steps of 32, seeds 0-2, r in {1, 2, 4, 8, 16, 64} on {q, v} with alpha = 8 at
every rank (the update scaled by alpha / r = 8 / r, as Hu et al. fix alpha to the first rank they try and do
not tune it). Budget: ~2 min per run on the 2-core CPU, 18 runs, about 40 minutes.
Ablation 5 found accuracy rising with the rank (r=1 76.65%, r=64 80.96%) where the paper finds r=1 enough;
with alpha = r a higher rank is also a larger update under Adam. If the rank effect disappears here, the
scaling explains it; if it stays, the short budget or the model does.
"""
from adapters_jax.sweeps import grid
from experiments.ablations import common

ALPHA = 8
RANKS = {f"qv_r{r}_a{ALPHA}": common.lora(r, alpha=ALPHA) for r in (1, 2, 4, 8, 16, 64)}


def get_config():
    return common.recipe(max_steps=150, lora=f"qv_r8_a{ALPHA}")


def finalize(c):
    c.adapter = RANKS[c.ablation.lora]
    return c


def sweep():
    return grid.product(grid.axis("ablation.lora", list(RANKS)), grid.axis("seed", common.SEEDS))


REPORT = {
    "title": f"LoRA rank on q, v with alpha = {ALPHA} fixed (Hu et al. 2021, Table 6)",
    "x": "ablation.lora", "xscale": "category", "order": list(RANKS), "baseline": {"ablation.lora": f"qv_r8_a{ALPHA}"},
    "paper": "Hu et al. 2021, LoRA, Table 6 (GPT-3 175B, WikiSQL / MultiNLI: r = 1 on {W_q, W_v} within a point "
             "of r = 64; alpha fixed).",
}
