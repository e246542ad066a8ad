"""The default run (`make train`): a Houlsby adapter on MiniLM-L6 for rt_polarity.

    python scripts/train.py --config experiments/configs/rt_houlsby.py [--config.seed=1]

Recipe (the AdapterHub peer's): houlsby[bottleneck=64,non_linearity=relu], max 64
tokens, batch 32, 2 epochs, AdamW lr 1e-3, 10% warm-up then linear decay, weight
decay 0.01, clip 1.0. Head: mean pooling + linear (all-MiniLM-L6-v2 was trained
for mean pooling; its pooler/CLS path is weak).
Expected: see experiments/results/rt_polarity.md (mean test accuracy over seeds 0-2).
"""
from experiments.configs import base


def get_config():
    return base.get_config()
