"""Full fine-tuning baseline for the default run: every MiniLM-L6 param trains, lr 5e-5.

    python scripts/train.py --config experiments/configs/rt_full.py
"""
from experiments.configs import base


def get_config():
    c = base.get_config()
    c.adapter = "none"
    c.full_finetune = True
    c.optimizer.lr = 5e-5
    return c
