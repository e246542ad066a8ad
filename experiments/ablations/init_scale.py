"""Ablation 1: the adapters' initialisation scale (Houlsby et al. 2019, Fig. 6 right).

    python scripts/sweep.py --config experiments/ablations/init_scale.py
    python scripts/report.py experiments/results/init_scale

Houlsby adapters (bottleneck 64, relu, both sublayers) on MiniLM-L6 for rt_polarity, the make-train
recipe cut to 150 steps of 32 (0.47 epoch; warm-up 15 steps, linear decay); both projections drawn from
a normal distribution truncated at 2 std (init_weights="houlsby"; AdapterHub fixes the std at 1e-2), std
in {1e-7, 1e-4, 1e-2, 1e-1, 1}, seeds 0-2. Budget: about 2.5 min per run on the 2-core CPU, 15 runs,
under 40 minutes.
The paper (BERT-base, GLUE and additional tasks): flat up to about 1e-2, then worse, badly so on CoLA.
"""
import ml_collections

from adapters_jax.sweeps import grid
from experiments.configs import rt_houlsby

STDS = [1e-7, 1e-4, 1e-2, 1e-1, 1.0]


def get_config():
    c = rt_houlsby.get_config()
    c.max_steps = 150
    c.ablation = ml_collections.ConfigDict({"init_std": 1e-2})
    return c


def finalize(c):
    c.adapter = f"houlsby[bottleneck=64,non_linearity=relu,init_weights=houlsby,init_std={c.ablation.init_std}]"
    return c


def sweep():
    return grid.product(grid.axis("ablation.init_std", STDS), grid.axis("seed", [0, 1, 2]))


REPORT = {
    "title": "Adapter initialisation scale (Houlsby et al. 2019, Fig. 6 right)",
    "x": "ablation.init_std", "xscale": "log",
    "baseline": {"ablation.init_std": 1e-2},
    "paper": "Houlsby et al. 2019, Parameter-Efficient Transfer Learning for NLP, Figure 6 (right): validation "
             "accuracy against the std of the adapters' initialisation on MNLI and CoLA, BERT-base; stable "
             "to about 1e-2, worse for larger scales. The paper's curves are shown as a figure only, so no "
             "numbers are drawn beside ours.",
}
