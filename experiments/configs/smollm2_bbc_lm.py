"""Domain adaptation of SmolLM2-135M to BBC news (task kind "lm"): Houlsby, LoRA or full fine-tuning.

    python scripts/train.py --config experiments/configs/smollm2_bbc_lm.py:houlsby   # or :lora, :full
        [--config.seed=1]

The knowledge-preservation experiment (experiments/knowledge.py) trains these three under the same step
budget: 100 steps of 8 blocks of 64 tokens (51,200 tokens, under half an epoch of bbc_news's train
articles), AdamW with 10% warm-up then linear decay, lr 1e-3 for the adapters and 5e-5 for full
fine-tuning (each method's usual rate), and evaluates the in-domain perplexity on the first 128
validation/test blocks. Expected and measured: experiments/results/knowledge_preservation.md.
"""
from experiments.configs import base

METHODS = {  # name -> (adapter config string, learning rate, full fine-tuning)
    "houlsby": ("houlsby[bottleneck=64,non_linearity=relu]", 1e-3, False),
    "lora": ("lora[r=8,alpha=16]", 1e-3, False),  # q and v projections (PEFT's Llama default)
    "full": ("none", 5e-5, True),
}


def get_config(method: str = "houlsby"):
    if method not in METHODS:
        raise ValueError(f"method {method!r}; choose one of {sorted(METHODS)}")
    c = base.get_config()
    c.model, c.task, c.task_kind = "smollm2-135m", "bbc_news", "lm"
    c.adapter, c.optimizer.lr, c.full_finetune = METHODS[method]
    c.max_length, c.padding, c.buckets, c.group_by_length = 64, "max", (64,), 0
    c.batch_size, c.eval_batch_size = 8, 32
    c.max_steps, c.eval_every, c.max_eval_examples = 100, 100, 128
    return c
