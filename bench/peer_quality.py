"""The PyTorch peers on our quality recipe (rt_polarity, MiniLM-L6): one training run, one JSON record.

Run with the peers' interpreter (.venv-peers, see bench/peers.py) on the splits that bench/export_task.py
wrote with the library's interpreter:

    python bench/export_task.py rt_polarity --out bench/tmp/rt_polarity.json
    .venv-peers/bin/python bench/peer_quality.py --method houlsby --seed 0 --data bench/tmp/rt_polarity.json \
        --out bench/results/peer_quality/adapterhub_houlsby-seed0.json

Methods: houlsby (AdapterHub 1.3 `DoubleSeqBnConfig`, bottleneck 64, ReLU, its other defaults), lora (PEFT
0.21 `LoraConfig`, r=8, alpha=8 on query and value), full (transformers alone, every weight trains).

The recipe is experiments/configs/base.py's: max 64 tokens, batch 32 (last partial batch dropped), 2 epochs,
AdamW (betas 0.9/0.999, eps 1e-8, weight decay 0.01 on matrices only) behind global-norm clipping at 1.0,
peak lr 1e-3 (adapters) or 5e-5 (full), linear warm-up over 10% of the steps then linear decay to 0; head:
mean pooling over real tokens, dropout 0.1, linear layer (normal(0.02) kernel, zero bias); the base keeps its
dropout (0.1, the peers' usual setting; our default run turns it off, rt_houlsby_dropout.py keeps it).
Validation accuracy after each epoch; test accuracy at the best one (first on ties). Each epoch's order is
numpy's `default_rng([seed, epoch]).permutation`, as in our batcher without its length grouping; a batch is
padded to its longest row. The script refuses data whose fingerprint or token ids differ from the export's.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
SPLITS = ("train", "validation", "test")
BOTTLENECK = 64
LR = {"houlsby": 1e-3, "lora": 1e-3, "full": 5e-5}
PEER = {"houlsby": "adapterhub", "lora": "peft", "full": "pytorch"}


def fingerprint(label_names, splits) -> str:
    """adapters_jax.data.tasks.Task.fingerprint, over the exported texts and labels."""
    h = hashlib.sha256(repr(tuple(label_names)).encode())
    for split in SPLITS:
        d = splits[split]
        h.update(f"\0{split}\0{len(d['label'])}".encode())
        for text, label in zip(d["text"], d["label"]):
            h.update(f"{label}\0{text}\0".encode())
    return h.hexdigest()


def ids_sha256(ids) -> str:
    """bench/export_task.ids_sha256."""
    h = hashlib.sha256()
    for row in ids:
        h.update((",".join(str(int(t)) for t in row) + "\n").encode())
    return h.hexdigest()


class Classifier(torch.nn.Module):
    """encoder -> mean pooling over real tokens -> dropout -> linear."""

    def __init__(self, encoder, hidden: int, num_labels: int, dropout: float = 0.1):
        super().__init__()
        self.encoder = encoder
        self.dropout = torch.nn.Dropout(dropout)
        self.out_proj = torch.nn.Linear(hidden, num_labels)
        torch.nn.init.normal_(self.out_proj.weight, std=0.02)
        torch.nn.init.zeros_(self.out_proj.bias)

    def forward(self, input_ids, attention_mask):
        h = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        m = attention_mask.unsqueeze(-1).to(h.dtype)
        pooled = (h * m).sum(1) / m.sum(1).clamp(min=1.0)
        return self.out_proj(self.dropout(pooled))


def build(method: str, model_dir: str, num_labels: int):
    import transformers

    encoder = transformers.AutoModel.from_pretrained(model_dir)
    hidden = encoder.config.hidden_size
    if method == "houlsby":
        import adapters

        adapters.init(encoder)
        encoder.add_adapter("rt", config=adapters.DoubleSeqBnConfig(reduction_factor=hidden / BOTTLENECK,
                                                                    non_linearity="relu"))
        encoder.train_adapter("rt")
    elif method == "lora":
        import peft

        encoder = peft.get_peft_model(encoder, peft.LoraConfig(r=8, lora_alpha=8, lora_dropout=0.0,
                                                               target_modules=["query", "value"]))
    return Classifier(encoder, hidden, num_labels)


def batches(ids, labels, order, batch_size, pad_id, drop_last):
    for i in range(0, len(order), batch_size):
        rows = order[i:i + batch_size]
        if drop_last and len(rows) < batch_size:
            return
        width = max(len(ids[r]) for r in rows)
        x = torch.full((len(rows), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for j, r in enumerate(rows):
            x[j, :len(ids[r])] = torch.tensor(ids[r])
            mask[j, :len(ids[r])] = 1
        yield x, mask, torch.tensor([labels[r] for r in rows])


@torch.no_grad()
def accuracy(model, ids, labels, pad_id, batch_size=128) -> float:
    model.eval()
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    correct = 0
    for x, mask, y in batches(ids, labels, order, batch_size, pad_id, drop_last=False):
        correct += int((model(x, mask).argmax(-1) == y).sum())
    model.train()
    return correct / len(ids)


def git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def main(argv=None):
    t_start = time.time()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--method", choices=sorted(LR), required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", required=True, help="the JSON that bench/export_task.py wrote")
    ap.add_argument("--out", required=True)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--log-every", type=int, default=50)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: every core)")
    ap.add_argument("--train-limit", type=int, default=0, help="smoke test: the first N training rows only")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads or os.cpu_count())
    load_avg_start = [round(x, 2) for x in os.getloadavg()]

    data = json.loads(Path(args.data).read_text())
    splits = data["splits"]
    if fingerprint(data["label_names"], splits) != data["fingerprint"]:
        sys.exit(f"error: {args.data}: texts and labels do not give the fingerprint recorded in the file")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(data["model_dir"])
    pad_id = tokenizer.pad_token_id or 0
    ids, labels = {}, {}
    for split in SPLITS:
        ids[split] = tokenizer(splits[split]["text"], truncation=True, max_length=data["max_length"],
                               add_special_tokens=True)["input_ids"]
        labels[split] = splits[split]["label"]
        if ids_sha256(ids[split]) != splits[split]["ids_sha256"]:
            sys.exit(f"error: {args.data}: the {split} split tokenizes to other ids than the library's")

    if args.train_limit:
        ids["train"], labels["train"] = ids["train"][:args.train_limit], labels["train"][:args.train_limit]
    torch.manual_seed(args.seed)
    t_load = time.time()
    model = build(args.method, data["model_dir"], len(data["label_names"]))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    lr = LR[args.method]
    opt = torch.optim.AdamW([{"params": [p for p in params if p.ndim >= 2], "weight_decay": 0.01},
                             {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.999), eps=1e-8)
    steps_per_epoch = len(ids["train"]) // args.batch_size
    total = steps_per_epoch * args.epochs
    warm = int(round(0.1 * total))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: s / warm if s < warm else max(0.0, 1.0 - (s - warm) / max(total - warm, 1)))
    load_s = time.time() - t_load

    train_s = eval_s = 0.0
    step, best, epochs = 0, {"val_accuracy": -1.0, "test_accuracy": None, "epoch": None}, []
    for epoch in range(args.epochs):
        order = np.random.default_rng([args.seed, epoch]).permutation(len(ids["train"])).tolist()
        t0, losses = time.time(), []
        for x, mask, y in batches(ids["train"], labels["train"], order, args.batch_size, pad_id, drop_last=True):
            loss = torch.nn.functional.cross_entropy(model(x, mask), y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.item())
            step += 1
            if step % args.log_every == 0:
                print(f"step {step}/{total} loss {np.mean(losses[-args.log_every:]):.4f} "
                      f"{(time.time() - t0) / len(losses):.3f} s/step", file=sys.stderr, flush=True)
        train_s += time.time() - t0
        t0 = time.time()
        val = accuracy(model, ids["validation"], labels["validation"], pad_id)
        rec = {"epoch": epoch + 1, "step": step, "train_loss": float(np.mean(losses)), "val_accuracy": val}
        if val > best["val_accuracy"]:
            rec["test_accuracy"] = accuracy(model, ids["test"], labels["test"], pad_id)
            best = {"val_accuracy": val, "test_accuracy": rec["test_accuracy"], "epoch": epoch + 1}
        eval_s += time.time() - t0
        epochs.append(rec)
        print(json.dumps(rec), file=sys.stderr, flush=True)

    import transformers

    versions = {"torch": torch.__version__, "transformers": transformers.__version__}
    for name in ("adapters", "peft"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            pass
    out = {
        "peer": PEER[args.method], "method": args.method, "seed": args.seed, "task": data["task"],
        "task_fingerprint": data["fingerprint"], "token_ids_match_library": True,
        "counts": {s: len(labels[s]) for s in SPLITS},
        "trainable_params": sum(p.numel() for p in params), "total_params": sum(p.numel() for p in model.parameters()),
        "lr": lr, "batch_size": args.batch_size, "epochs": args.epochs, "steps": step, "warmup_steps": warm,
        "max_length": data["max_length"], "base_dropout": model.encoder.config.hidden_dropout_prob,
        "val_accuracy": best["val_accuracy"], "test_accuracy": best["test_accuracy"], "best_epoch": best["epoch"],
        "per_epoch": epochs,
        "train_s": train_s, "eval_s": eval_s, "load_s": load_s, "wall_s": time.time() - t_start,
        "torch_threads": torch.get_num_threads(), "versions": versions,
        "command": "python " + " ".join([os.path.relpath(sys.argv[0], ROOT)] + sys.argv[1:]),
        "commit": git_commit(), "host": platform.node(), "cpu_count": os.cpu_count(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t_start)),
        "finished": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        "load_avg_start": load_avg_start, "load_avg_end": [round(x, 2) for x in os.getloadavg()],
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"{args.out}: {PEER[args.method]} {args.method} seed {args.seed}: test {100 * out['test_accuracy']:.2f} "
          f"(val {100 * out['val_accuracy']:.2f}, epoch {out['best_epoch']}), train {train_s:.0f} s, "
          f"wall {out['wall_s']:.0f} s")


if __name__ == "__main__":
    main()
