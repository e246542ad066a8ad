"""Where a train step's time goes: a jax.profiler trace of a few steps, summed by XLA thunk name.

    python bench/profile_step.py --model minilm-l6 --method houlsby --batch 32 --seq 128 [--steps 3]

Prints ms/step and share per thunk kind (the trailing `.N` of fusion names
dropped), the top single thunks, and a coarse split: dots (oneDNN/YNNPACK/plain
dot thunks and fusions that contain a dot), random bits, transposes/copies,
everything else. Same model, method and batch as bench/jax_worker.py.
"""
from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import adapters_jax  # noqa: E402,F401  (the library's XLA:CPU defaults)
import jax  # noqa: E402

from bench.jax_worker import train_setup  # noqa: E402


def kind(name: str) -> str:
    n = name.lower()
    if any(s in n for s in ("dot", "onednn", "matmul", "gemm", "ynn", "xnn")):
        return "dots"
    if any(s in n for s in ("threefry", "rng", "random")):
        return "random bits"
    if any(s in n for s in ("transpose", "copy")):
        return "transposes/copies"
    return "other (elementwise, reductions, softmax, norms)"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="minilm-l6")
    ap.add_argument("--method", default="houlsby")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--top", type=int, default=20)
    args = ap.parse_args()
    cfg = {"model": args.model, "method": args.method, "batch": args.batch, "seq": args.seq}
    _, _, _, _, frozen, state, batch, step = train_setup(cfg)
    step = step.lower(state, frozen, batch).compile()
    for _ in range(2):
        state, m = step(state, frozen, batch)
        jax.block_until_ready(m["loss"])
    with tempfile.TemporaryDirectory() as d:
        with jax.profiler.trace(d, create_perfetto_trace=True):
            for _ in range(args.steps):
                state, m = step(state, frozen, batch)
                jax.block_until_ready(m["loss"])
        trace = json.load(gzip.open(glob.glob(f"{d}/**/*.trace.json.gz", recursive=True)[0]))
    events = [e for e in trace["traceEvents"] if e.get("ph") == "X"
              and not e["name"].startswith(("ThunkExecutor", "$", "PjitFunction", "PjRt"))]
    by_name, by_kind = collections.Counter(), collections.Counter()
    for e in events:
        name = re.sub(r"\.\d+$", "", e["name"])
        by_name[name] += e["dur"]
        by_kind[kind(name)] += e["dur"]
    total = sum(by_name.values())
    per = lambda us: us / 1e3 / args.steps
    print(f"{args.model} {args.method} b{args.batch} t{args.seq}: thunk time {per(total):.0f} ms/step "
          f"(summed over threads; XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r})")
    for k, t in by_kind.most_common():
        print(f"  {per(t):8.1f} ms/step {100 * t / total:5.1f}%  {k}")
    print("top thunks:")
    for k, t in by_name.most_common(args.top):
        print(f"  {per(t):8.1f} ms/step {100 * t / total:5.1f}%  {k[:100]}")


if __name__ == "__main__":
    main()
