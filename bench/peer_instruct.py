"""The PyTorch peer of an instruct run: transformers + PEFT LoRA trained on exactly our token ids with the
config's recipe, then exact-match accuracy of greedy generation on the test split. One JSON line.

    python bench/export_instruct.py --config experiments/configs/smollm2_rt_instruct.py --out bench/tmp/rt_instruct
    .venv-peers/bin/python bench/peer_instruct.py --data bench/tmp/rt_instruct --seed 0 \
        --out bench/results/instruct_quality.jsonl

Run with the peers' interpreter (.venv-peers: torch 2.13 CPU, transformers 4.57, PEFT 0.21). The model is
LlamaForCausalLM from DATA/model (our loader's float32 weights, written by export_merged); the data the ids,
loss masks, prompts and responses of DATA/data.json (our kinds.encode). The recipe is the one data.json
states: PEFT LoraConfig(r, lora_alpha, lora_dropout, target q_proj/v_proj), torch AdamW (betas 0.9/0.999,
eps 1e-8, the stated weight decay), linear warm-up over the stated fraction then linear decay to 0 (step 0
at lr 0, as optax's schedule), global-norm clipping, batches of the stated size drawn without replacement
from a shuffled train split (epochs reshuffled), right-padded, the loss the mean over response tokens of the
batch (our causal_lm_loss). Evaluation as ours (kinds.exact_match): prompts left-padded in batches, greedy,
at most the longest reference response's tokens + 1 new tokens, stopped at the end token, the decoded text
stripped and compared with the stripped reference.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import common  # noqa: E402  (run as a script: the repository root first; no jax in it)


def lr_at(step: int, recipe: dict) -> float:
    """The optax schedule of adapters_jax/train/optimizer.schedule ("linear"), as a factor of lr."""
    total = recipe["steps"]
    warm = int(round(recipe["warmup"] * total))
    if step < warm:
        return step / warm
    return max(0.0, 1.0 - (step - warm) / max(total - warm, 1))


def batches(n: int, size: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(n, generator=g).tolist()
        for i in range(0, n - size + 1, size):
            yield order[i:i + size]


def collate(rows: list[list[int]], masks: list[list[int]], pad: int):
    t = max(len(r) for r in rows)
    ids = torch.full((len(rows), t), pad, dtype=torch.long)
    att = torch.zeros((len(rows), t), dtype=torch.long)
    lm = torch.zeros((len(rows), t), dtype=torch.float32)
    for b, (r, m) in enumerate(zip(rows, masks)):
        ids[b, :len(r)], att[b, :len(r)], lm[b, :len(m)] = torch.tensor(r), 1, torch.tensor(m, dtype=torch.float32)
    return ids, att, lm


def loss_fn(model, ids, att, lm):
    logits = model(input_ids=ids, attention_mask=att).logits[:, :-1].float()
    nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1),
                                            reduction="none").view(ids.shape[0], -1)
    w = lm[:, 1:]
    return (nll * w).sum() / w.sum().clamp(min=1.0)


@torch.inference_mode()
def exact_match(model, tok, prompts: list[list[int]], responses: list[str], batch: int) -> float:
    longest = max(len(tok(r, add_special_tokens=False)["input_ids"]) for r in set(responses)) + 1
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    hits = 0
    for i in range(0, len(prompts), batch):
        rows = prompts[i:i + batch]
        t = max(len(r) for r in rows)
        ids = torch.full((len(rows), t), pad, dtype=torch.long)
        att = torch.zeros((len(rows), t), dtype=torch.long)
        for b, r in enumerate(rows):
            ids[b, t - len(r):], att[b, t - len(r):] = torch.tensor(r), 1
        out = model.generate(input_ids=ids, attention_mask=att, max_new_tokens=longest, do_sample=False,
                             eos_token_id=tok.eos_token_id, pad_token_id=pad)
        for b, ref in enumerate(responses[i:i + batch]):
            text = tok.decode(out[b, t:], skip_special_tokens=True)
            hits += text.strip() == ref.strip()
    return hits / len(prompts)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="the directory bench/export_instruct.py wrote")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    ap.add_argument("--steps", type=int, default=0, help="override the recipe's steps (a quick check only)")
    ap.add_argument("--limit-test", type=int, default=0, help="score the first N test prompts (a quick check only)")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    import peft
    import transformers

    if a.threads:
        torch.set_num_threads(a.threads)
    data = json.loads((Path(a.data) / "data.json").read_text())
    recipe = data["recipe"] | ({"steps": a.steps} if a.steps else {})
    torch.manual_seed(a.seed)
    tok = transformers.AutoTokenizer.from_pretrained(str(Path(a.data) / "model"))
    model = transformers.AutoModelForCausalLM.from_pretrained(str(Path(a.data) / "model"), torch_dtype=torch.float32)
    lc = recipe["lora"]
    names = {"q": "q_proj", "k": "k_proj", "v": "v_proj"}
    model = peft.get_peft_model(model, peft.LoraConfig(r=lc["r"], lora_alpha=lc["alpha"], lora_dropout=lc["dropout"],
                                                       target_modules=[names[m] for m in lc["matrices"]],
                                                       task_type="CAUSAL_LM"))
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=recipe["lr"], betas=(0.9, 0.999), eps=1e-8,
                            weight_decay=recipe["weight_decay"])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_at(s, recipe))
    train = data["splits"]["train"]
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    model.train()
    t0, losses = time.time(), []
    draw = batches(len(train["ids"]), recipe["batch_size"], a.seed)
    for step in range(recipe["steps"]):
        idx = next(draw)
        ids, att, lm = collate([train["ids"][i] for i in idx], [train["loss_masks"][i] for i in idx], pad)
        loss = loss_fn(model, ids, att, lm)
        opt.zero_grad()
        loss.backward()
        if recipe["clip_norm"]:
            torch.nn.utils.clip_grad_norm_(trainable, recipe["clip_norm"])
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    train_s = time.time() - t0
    model.eval()
    test = data["splits"]["test"]
    n = a.limit_test or len(test["prompts"])
    t1 = time.time()
    acc = exact_match(model, tok, test["prompts"][:n], test["responses"][:n], a.eval_batch)
    row = {"impl": "peft", "config": data["config"], "seed": a.seed, "steps": recipe["steps"],
           "test_accuracy": acc, "n_test": n, "train_s": round(train_s, 1),
           "eval_s": round(time.time() - t1, 1), "final_loss_mean10": sum(losses[-10:]) / 10,
           "trainable_params": sum(p.numel() for p in trainable), "torch_threads": torch.get_num_threads(),
           "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                        "peft": peft.__version__}, "command": "python " + " ".join(sys.argv)}
    print(json.dumps(row), flush=True)
    if a.out:
        common.append_rows(a.out, [row])
    return 0


if __name__ == "__main__":
    sys.exit(main())
