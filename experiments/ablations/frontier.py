"""Ablation 3: the parameter/accuracy frontier (Houlsby et al. 2019, Figs. 3-4; AdapterFusion Table 1).

    python scripts/sweep.py --config experiments/ablations/frontier.py
    python scripts/report.py experiments/results/frontier

MiniLM-L6 on rt_polarity, 150 steps of 32 (0.56 epoch), seeds 0-2: the head alone, LayerNorms, BitFit
(biases), the top two layers (lr 1e-4), Houlsby adapters with bottleneck m in {1, 4, 16, 64, 256}, and full
fine-tuning (lr 5e-5); the head always trains; the base's dropout is off for every method (the make-train
setting). Accuracy against trainable parameters on a log axis. Budget: ~2 min per run on the 2-core CPU,
30 runs, about an hour.
The paper (BERT-base, GLUE): adapters reach full fine-tuning's accuracy with ~1-4% of the parameters;
fine-tuning only the top layers needs far more parameters for the same accuracy; LayerNorm-only is weak.
"""
from adapters_jax.sweeps import grid
from experiments.ablations import common

NAMES = ["head", "layernorm", "bitfit", "top2", "houlsby_m1", "houlsby_m4", "houlsby_m16", "houlsby_m64",
         "houlsby_m256", "full"]


def get_config():
    return common.recipe(max_steps=150, method="houlsby_m64")


def finalize(c):
    return common.apply(c, common.METHODS[c.ablation.method])


def sweep():
    return grid.product(grid.axis("ablation.method", NAMES), grid.axis("seed", common.SEEDS))


REPORT = {
    "title": "Parameter/accuracy frontier (Houlsby et al. 2019, Figs. 3-4)",
    "x": "trainable_params", "xscale": "log", "label": "ablation.method",
    "baseline": {"ablation.method": "full"},
    "paper": "Houlsby et al. 2019, Figure 3 (GLUE, accuracy vs trained parameters, adapters vs fine-tuning the "
             "top layers) and Figure 4; Pfeiffer et al. 2021 (AdapterFusion), Table 1.",
}
