"""Instruction tuning of SmolLM2-135M-Instruct on alpaca_demo (999 real Alpaca-format rows) with LoRA.

    python scripts/train.py --config experiments/configs/smollm2_alpaca_instruct.py [--config.seed=1]

task_kind "instruct": the prompt (instruction, plus the input after a blank line) is wrapped in the model's
own chat template, the loss covers the response tokens and the end token only; evaluation by response
loss and perplexity (the responses are free text, so no exact-match accuracy). LoRA r=8, alpha=16 on q
and v (PEFT's Llama default), AdamW lr 1e-3, 200 steps of batch 8, responses and prompts cut to 256
tokens (a prompt loses tokens from its start). Expected: not yet measured (this config's first run is
recorded in experiments/results/ when it has been made).
"""
from experiments.configs import base


def get_config():
    c = base.get_config()
    c.model, c.task, c.task_kind = "smollm2-135m", "alpaca_demo", "instruct"
    c.adapter = "lora[r=8,alpha=16]"
    c.instruct.prompt_template, c.instruct.response_template = "{text}", "{label}"
    c.instruct.chat_template = True
    c.max_length, c.buckets, c.batch_size, c.eval_batch_size = 256, (64, 128, 256), 8, 16
    c.max_steps, c.eval_every = 200, 100
    return c
