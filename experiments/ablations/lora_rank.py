"""Ablation 5: LoRA rank and target matrices at a fixed budget (Hu et al. 2021, Tables 5-6).

    python scripts/sweep.py --config experiments/ablations/lora_rank.py
    python scripts/report.py experiments/results/lora_rank

MiniLM-L6 on rt_polarity, 150 steps of 32, seeds 0-2, alpha = r (scaling 1): on {q, v}, r in
{1, 2, 4, 8, 16, 64}; at a budget of 16 ranks per layer, {q}, {k}, {v}, {o} at r=16, {q, k} and {q, v} at
r=8, all four at r=4. Budget: ~2 min per run on the 2-core CPU, 33 runs, about 70 minutes.
The paper (GPT-3, WikiSQL/MNLI): rank 1-4 on {q, v} is as good as 64; spreading the budget over more
matrices beats a high rank on one. Not here yet: the subspace similarity of the r=8 and r=64 updates (Fig. 3).
"""
from adapters_jax.sweeps import grid
from experiments.ablations import common

TARGETS = {
    **{f"qv_r{r}": common.lora(r) for r in (1, 2, 4, 8, 16, 64)},
    **{f"{n}_r16": common.lora(16, (role,)) for n, role in (("q", "q"), ("k", "k"), ("v", "v"), ("o", "attn_out"))},
    "qk_r8": common.lora(8, ("q", "k")),
    "qkvo_r4": common.lora(4, ("q", "k", "v", "attn_out")),
}


def get_config():
    return common.recipe(max_steps=150, lora="qv_r8")


def finalize(c):
    c.adapter = TARGETS[c.ablation.lora]
    return c


def sweep():
    return grid.product(grid.axis("ablation.lora", list(TARGETS)), grid.axis("seed", common.SEEDS))


REPORT = {
    "title": "LoRA rank and targets (Hu et al. 2021, Tables 5-6)",
    "x": "ablation.lora", "xscale": "category", "baseline": {"ablation.lora": "qv_r8"},
    "paper": "Hu et al. 2021, LoRA, Table 5 (which matrices at 18M parameters: {q,v} r=4 and all four r=2 best) "
             "and Table 6 (rank: r=1 on {q,v} within a point of r=64 on WikiSQL and MNLI).",
}
