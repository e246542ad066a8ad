"""Full fine-tuning baseline for the default run: every MiniLM-L6 param trains, lr 5e-5.

    python scripts/train.py --config experiments/configs/rt_full.py [--config.seed=1]

The base keeps its dropout (0.1), as in standard full fine-tuning.
Expected: mean test accuracy 84.14 over seeds 0-2 (84.79 / 83.66 / 83.98).
"""
from experiments.configs import base


def get_config():
    c = base.get_config()
    c.adapter = "none"
    c.full_finetune = True
    c.optimizer.lr = 5e-5
    return c
