"""Ablation 4: placement and form at matched parameters (AdapterFusion A.2; He et al. 2022 Tables 2-5).

    python scripts/sweep.py --config experiments/ablations/placement.py
    python scripts/report.py experiments/results/placement

MiniLM-L6 on rt_polarity, 200 steps of 32 (0.75 epoch), seeds 0-2, ~50k adapter parameters per layer pair
in every form: Houlsby (after attention and FFN, m=32 each), Pfeiffer (after the FFN only, m=64),
attention only (m=64), and a parallel adapter beside the FFN (m=64) with scaling s in {1, 2, 4, 8}.
Budget: ~2.5 min per run on the 2-core CPU, 21 runs, under an hour.
Expected on classification: all within about a point (He et al.'s null result on SST-2: placement and form
matter on generation and MNLI, little on sentiment).
"""
from adapters_jax.sweeps import grid
from experiments.ablations import common

FORMS = {
    "houlsby_m32": common.houlsby(32),
    "pfeiffer_m64": "pfeiffer[bottleneck=64,non_linearity=relu]",
    "attention_m64": "bottleneck[bottleneck=64,non_linearity=relu,mh_adapter=true,output_adapter=false]",
    **{f"parallel_m64_s{s}": f"par_bn[bottleneck=64,scaling={float(s)}]" for s in (1, 2, 4, 8)},
}


def get_config():
    return common.recipe(max_steps=200, form="houlsby_m32")


def finalize(c):
    c.adapter = FORMS[c.ablation.form]
    return c


def sweep():
    return grid.product(grid.axis("ablation.form", list(FORMS)), grid.axis("seed", common.SEEDS))


REPORT = {
    "title": "Adapter placement and form at matched parameters (He et al. 2022)",
    "x": "ablation.form", "xscale": "category", "order": list(FORMS), "baseline": {"ablation.form": "houlsby_m32"},
    "paper": "He et al. 2022, Towards a Unified View of Parameter-Efficient Transfer Learning, Tables 2-5 "
             "(SST-2: every placement within ~0.5 points); Pfeiffer et al. 2021, AdapterFusion, Appendix A.2.",
}
