"""SmolLM2-135M-Instruct on rt_polarity as an instruct task, LoRA r=8 on q and v: the recipe that
bench/peer_instruct.py runs with PEFT (issue 13's quality comparison).

    python scripts/train.py --config experiments/configs/smollm2_rt_instruct.py [--config.seed=1]
    python scripts/train.py --config experiments/configs/smollm2_rt_instruct.py --config.adapter=houlsby[bottleneck=64]

"Review: <text>\nSentiment:" -> " positive" / " negative" plus the end token; the loss on the response
tokens only; 300 steps of batch 8 (0.3 epoch), AdamW lr 1e-3 (warm-up 10%, linear decay, weight decay
0.01, clip 1.0); LoRA r=8, alpha=16 (PEFT's usual Llama setting), no dropout. One evaluation, at the end
(the test metrics are the final adapter's, as the peer's are): exact-match accuracy of greedy generation
on the test split (1,236 reviews). Results and the peer's: bench/results/instruct_quality.md.
"""
from experiments.configs import base


def get_config():
    c = base.get_config()
    c.model, c.task, c.task_kind = "smollm2-135m", "rt_polarity", "instruct"
    c.adapter = "lora[r=8,alpha=16,attn_matrices=[q,v]]"
    c.instruct.prompt_template, c.instruct.response_template = "Review: {text}\nSentiment:", " {label}"
    c.instruct.response_names = ["negative", "positive"]  # the task's own names are rotten / fresh
    c.max_length, c.buckets, c.batch_size, c.eval_batch_size = 128, (64, 128), 8, 32
    c.max_steps, c.eval_every = 300, 300
    return c
