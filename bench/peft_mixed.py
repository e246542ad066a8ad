"""The PyTorch peer of bench/bank.py: PEFT 0.21's mixed-adapter batches (`adapter_names`) on MiniLM-L6.

    .venv-peers/bin/python bench/peft_mixed.py --shapes 32x128x32,128x8x128,32x1x32 --rounds 2 \
        --out bench/results/bank_peft_minilm-l6.jsonl

Run with the peers' interpreter (.venv-peers: torch 2.13 CPU, transformers 4.57, PEFT 0.21), never the
library's. The model is transformers' BertModel from the same MiniLM-L6 checkpoint directory (the cached
asset); K LoRA adapters r=8, alpha=8 on query and value (our lora[r=8]) with random non-zero B; inference
only (PEFT refuses `adapter_names` in training). Per shape BxTxK, interleaved per round: "mixed" =
`model(input_ids, attention_mask, adapter_names=[slot b % K per row])`, "one" = the same batch with one
adapter active (no adapter_names). Median of --steps calls after --warmup, under torch.inference_mode, the
last hidden state computed (as bench/bank.py). One JSON line per (shape, side, round), in bench/bank.py's
fields, with "impl": "peft".
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import common  # noqa: E402  (run as a script: the repository root first; no jax in it)


def model_dir() -> str:
    root = Path(os.environ.get("ADAPTERS_JAX_CACHE") or Path.home() / ".cache" / "adapters_jax")
    return str(root / "assets" / "minilm-l6")


def build(k: int):
    import peft
    import transformers

    torch.manual_seed(0)
    base = transformers.BertModel.from_pretrained(model_dir(), add_pooling_layer=False)
    cfg = peft.LoraConfig(r=8, lora_alpha=8, target_modules=["query", "value"], lora_dropout=0.0)
    model = peft.get_peft_model(base, cfg, adapter_name="a0")
    for i in range(1, k):
        model.add_adapter(f"a{i}", cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    model.eval()
    return model


def timed(fn, warmup: int, steps: int) -> float:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default="32x128x32,128x8x128,32x1x32")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--out", required=True)
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    rows = []
    for shape in a.shapes.split(","):
        b, t, k = map(int, shape.split("x"))
        model = build(k)
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(3, 30522, (b, t), generator=g)
        mask = torch.ones(b, t, dtype=torch.long)
        names = [f"a{i % k}" for i in range(b)]
        calls = {"one": lambda: model(input_ids=ids, attention_mask=mask).last_hidden_state,
                 "mixed": lambda: model(input_ids=ids, attention_mask=mask, adapter_names=names).last_hidden_state}
        with torch.inference_mode():
            for r in range(a.rounds):
                for side, fn in calls.items():
                    s = timed(fn, a.warmup if r == 0 else 1, a.steps)
                    rows.append({"model": "minilm-l6", "impl": "peft", "method": "lora", "spec": "lora[r=8]",
                                 "batch": b, "seq": t, "adapters": k, "mode": "forward", "side": side, "round": r,
                                 "seconds": s, "tokens_per_s": b * t / s, "torch_threads": torch.get_num_threads(),
                                 "load_avg": list(map(float, open("/proc/loadavg").read().split()[:3]))})
                    print(json.dumps(rows[-1]), flush=True)
    common.append_rows(a.out, rows)


if __name__ == "__main__":
    main()
