"""Where a train step's time goes: a jax.profiler trace of a few steps, summed by XLA thunk name.

    python bench/profile_step.py --model minilm-l6 --method houlsby --batch 32 --seq 128 [--steps 3] [--dots]

Prints ms/step and share per thunk kind (the trailing `.N` of fusion names
dropped), the top single thunks, and a coarse split: dots (oneDNN/YNNPACK/plain
dot thunks and fusions that contain a dot), random bits, transposes/copies,
everything else. Same model, method, batch and XLA flag choice as bench/jax_worker.py. With
--dots, the dot thunks grouped by operand shapes and contracting dims (read from
the compiled HLO), with FLOPs and GFLOP/s of thunk time each. Thunks overlap on
the threads and some dots run asynchronously (their thunk only launches them),
so compare those rates within one run, not with a lone matmul's.
"""
from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import math
import os
import re
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402

from adapters_jax import xla_flags  # noqa: E402
from bench.jax_worker import apply_xla_flags, train_setup  # noqa: E402


def kind(name: str) -> str:
    n = name.lower()
    if any(s in n for s in ("dot", "onednn", "matmul", "gemm", "ynn", "xnn")):
        return "dots"
    if any(s in n for s in ("threefry", "rng", "random")):
        return "random bits"
    if any(s in n for s in ("transpose", "copy")):
        return "transposes/copies"
    return "other (elementwise, reductions, softmax, norms)"


_INSTR = re.compile(r"^\s*(?:ROOT )?%(\S+) = (\w+)\[([\d,]*)\]")


def dot_signatures(hlo: str) -> dict[str, tuple[str, float]]:
    """{thunk name: (dot signature, FLOPs)} for every fusion or thunk of the compiled HLO that holds one dot."""
    comps, cur, calls = {}, None, {}
    for line in hlo.splitlines():
        if line.startswith(("%", "ENTRY")) and line.rstrip().endswith("{"):
            cur = comps.setdefault(line.split()[0].lstrip("%") if line.startswith("%") else "ENTRY", [])
            continue
        if cur is not None:
            cur.append(line)
        if (m := re.search(r"^\s*(?:ROOT )?%(\S+) = .*calls=%([\w.\-]+)", line)):
            calls[m.group(1)] = m.group(2)
    out = {}
    for comp, lines in comps.items():
        shapes = {m.group(1): (m.group(2), [int(d) for d in m.group(3).split(",") if d])
                  for m in map(_INSTR.match, lines) if m}
        for line in lines:
            if " dot(" not in line:
                continue
            name = _INSTR.match(line).group(1)
            a, b = re.search(r" dot\(%(\S+), %(\S+)\)", line).groups()
            contract = [int(d) for d in re.search(r"lhs_contracting_dims=\{([\d,]*)\}", line).group(1).split(",") if d]
            k = math.prod(shapes[a][1][d] for d in contract)
            n_out = math.prod(shapes[name][1])
            rc = re.search(r"rhs_contracting_dims=\{([\d,]*)\}", line).group(1)
            sig = f"{shapes[a][1]} x {shapes[b][1]} -> {shapes[name][1]} (contract {contract} x [{rc}])"
            out[name] = (sig, 2.0 * n_out * k)
            for caller, callee in calls.items():
                if callee == comp:
                    out[caller] = out[name]
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="minilm-l6")
    ap.add_argument("--method", default="houlsby")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--top", type=int, default=20)
    ap.add_argument("--dots", action="store_true", help="also group the dot thunks by shape, with GFLOP/s each")
    args = ap.parse_args()
    apply_xla_flags(args.model)
    cfg = {"model": args.model, "method": args.method, "batch": args.batch, "seq": args.seq}
    setup = train_setup(cfg)
    frozen, state, batch = setup.frozen, setup.state, setup.batch
    step = setup.step.lower(state, frozen, batch).compile()
    dot_shapes = dot_signatures(step.as_text()) if args.dots else {}
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
          f"(summed over threads; XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}: {xla_flags.current()['reason']})")
    for k, t in by_kind.most_common():
        print(f"  {per(t):8.1f} ms/step {100 * t / total:5.1f}%  {k}")
    print("top thunks:")
    for k, t in by_name.most_common(args.top):
        print(f"  {per(t):8.1f} ms/step {100 * t / total:5.1f}%  {k[:100]}")
    if dot_shapes:
        by_sig, flops_sig, count = collections.Counter(), collections.Counter(), collections.Counter()
        for e in events:
            if e["name"] in dot_shapes:
                sig, flops = dot_shapes[e["name"]]
                by_sig[sig] += e["dur"]
                flops_sig[sig] += flops
                count[sig] += 1
        print("dots by shape (thunk ms/step, GFLOP/step, GFLOP/s of thunk time, instances):")
        for sig, t in by_sig.most_common(args.top):
            n = count[sig] / args.steps
            print(f"  {per(t):8.1f} ms {flops_sig[sig] / args.steps / 1e9:7.2f} GF {flops_sig[sig] / t / 1e3:6.0f} GF/s "
                  f"x{n:4.0f}  {sig}")


if __name__ == "__main__":
    main()
