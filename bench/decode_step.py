"""One decode step of SmolLM2-135M (the KV-cache step aj.generate and the server run per token), across commits.

    python bench/decode_step.py --roots /work/wt_old,. --batches 16 --slots 64,128 --rounds 5 \
        --out bench/results/decode_step_smollm2.jsonl

Each (round, batch, slots, root) runs in its own process, the roots alternating within a round, so two
checkouts (a worktree pinned to the older commit, and this one) see the same machine load. A worker
imports adapters_jax from its --root, prefills 16 tokens into a cache of `slots` slots, then times
`repeats` groups of 10 greedy decode steps (one jitted call per step, as aj.generate makes them);
reported: every group's ms/step, their minimum (the least disturbed by other load) and median, and the
logits matmul alone. The record names the root's commit.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench import common  # noqa: E402  (run as a script: the repository root first)


def worker(root: str, batch: int, slots: int, repeats: int) -> dict:
    sys.path.remove(str(ROOT))  # adapters_jax from `root`, the checkout under test
    sys.path.insert(0, root)
    from adapters_jax import xla_flags

    flags = xla_flags.apply_for("smollm2-135m")
    import jax
    import jax.numpy as jnp
    import numpy as np

    import adapters_jax as aj
    from adapters_jax import decoding
    from adapters_jax.models import kv_cache

    assert Path(aj.__file__).resolve().is_relative_to(Path(root).resolve()), aj.__file__
    base = aj.load("smollm2-135m")
    m, p = base.model, base.params
    cache = kv_cache.init(m.config, batch, slots, m.dtype)
    ids = np.ones((batch, 16), np.int32)
    pos = np.tile(np.arange(16, dtype=np.int32), (batch, 1))
    key, greedy, no_ban = jax.random.PRNGKey(0), (0.0, 0, 1.0), jnp.int32(-1)
    tok, cache = decoding._prefill(m, p, ids, np.ones_like(ids), pos, cache, key, *greedy, no_ban)
    pos_b = np.full((batch,), 16, np.int32)
    tok, cache = decoding._decode(m, p, tok, pos_b, cache, key, *greedy, no_ban)
    tok.block_until_ready()
    groups = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for s in range(10):
            tok, cache = decoding._decode(m, p, tok, pos_b + 1 + s, cache, key, *greedy, no_ban)
        tok.block_until_ready()
        groups.append((time.perf_counter() - t0) / 10 * 1e3)
        cache = {**cache, "index": cache["index"] - 10}  # the same slots again: every group does the same work
    logits = jax.jit(lambda p, h: m.apply({"params": p}, h, method=m.logits))
    h = jnp.ones((batch, 1, m.config.hidden_size), jnp.float32)
    logits(p, h).block_until_ready()
    t0 = time.perf_counter()
    for _ in range(10):
        out = logits(p, h)
    out.block_until_ready()
    commit = subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "-C", root, "status", "--porcelain", "--", "adapters_jax"],
                                capture_output=True, text=True).stdout.strip())
    return {"root": root, "commit": commit + ("+dirty" if dirty else ""), "batch": batch, "slots": slots,
            "ms_per_step": [round(x, 2) for x in groups], "min_ms": round(min(groups), 2),
            "median_ms": round(float(np.median(groups)), 2), "logits_ms": round((time.perf_counter() - t0) * 100, 2),
            "xla_flags": flags["xla_flags"], "load_avg": list(os.getloadavg())}


def main() -> int:
    if len(sys.argv) == 2 and sys.argv[1].startswith("{"):  # a worker: bench.common.run_worker's JSON config
        cfg = json.loads(sys.argv[1])
        common.emit(worker(cfg["root"], cfg["batch"], cfg["slots"], cfg["repeats"]))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--roots", default=str(ROOT), help="comma-separated checkouts to alternate")
    ap.add_argument("--batches", default="16")
    ap.add_argument("--slots", default="64,128")
    ap.add_argument("--repeats", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    for rnd in range(args.rounds):
        for b in (int(x) for x in args.batches.split(",")):
            for s in (int(x) for x in args.slots.split(",")):
                for root in args.roots.split(","):
                    cfg = {"root": str(Path(root).resolve()), "batch": b, "slots": s, "repeats": args.repeats}
                    rec = {**cfg, **common.run_worker(sys.executable, "bench/decode_step.py", cfg, 1800)}
                    rec["round"] = rnd
                    rec["command"] = " ".join(["python", "bench/decode_step.py", *sys.argv[1:]])
                    print(json.dumps({k: rec.get(k) for k in ("round", "commit", "batch", "slots", "min_ms",
                                                              "median_ms", "error")}), flush=True)
                    if args.out:
                        common.append_rows(args.out, [rec])
    return 0


if __name__ == "__main__":
    sys.exit(main())
