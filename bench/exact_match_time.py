"""Time kinds.exact_match (greedy generation of every prompt, batches of similar length) against the same
prompts batched in data order, on a config's test split with its untrained adapter.

    python bench/exact_match_time.py --config experiments/configs/smollm2_rt_instruct.py --n 256

Prints one JSON line: seconds for each order (after a first pass that compiles every shape), the score of
each (they must agree) and the commit. The untrained adapter generates the same number of tokens per prompt
as a trained one stopping at the end token or later, so this measures batching, not quality.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def data_order(model, params, enc, tokenizer, batch_size: int, limit: int) -> float:
    """exact_match as it was before commit 5216067: batches in data order."""
    from adapters_jax.decoding import generate

    prompts, responses = enc.prompts[:limit], enc.responses[:limit]
    longest = max(len(tokenizer(r, add_special_tokens=False)["input_ids"]) for r in set(responses)) + 1
    hits = 0
    for i in range(0, len(prompts), batch_size):
        outs = generate(model, params, [list(p) for p in prompts[i:i + batch_size]], longest, tokenizer=tokenizer)
        hits += sum(o.text.strip() == r.strip() for o, r in zip(outs, responses[i:i + batch_size]))
    return hits / max(len(prompts), 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--batch", type=int, default=32)
    a = ap.parse_args()
    from adapters_jax import xla_flags

    spec = importlib.util.spec_from_file_location("cfg", a.config)
    cfg = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cfg)
    config = cfg.get_config()
    xla_flags.apply_for(config.model)
    from adapters_jax.partition import merge
    from adapters_jax.train import kinds, loop

    with tempfile.TemporaryDirectory() as d:
        r, state = loop.prepare(config, Path(d))
        params = merge(state["trainable"], r.frozen)
        enc = r.enc["test"]
        fns = {"length": lambda: kinds.exact_match(r.model, params, enc, r.tokenizer, a.batch, limit=a.n),
               "data": lambda: data_order(r.model, params, enc, r.tokenizer, a.batch, a.n)}
        row = {"config": a.config, "n": a.n, "batch": a.batch}
        for order, fn in fns.items():
            fn()  # compiles every (batch, bucket) shape this order needs
            t0 = time.perf_counter()
            row[f"{order}_score"] = fn()
            row[f"{order}_s"] = round(time.perf_counter() - t0, 2)
        r.checkpointer.close()
    row["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                   cwd=ROOT).stdout.strip()
    row["load_avg"] = list(map(float, open("/proc/loadavg").read().split()[:3]))
    print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
