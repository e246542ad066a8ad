"""Memory of serving N fully fine-tuned models from one process: the cost side that adapters remove.

    python bench/serve_cost.py --model smollm2-135m --models 1 8 --out bench/results/serve_cost_smollm2.jsonl

For each N (one process per N, so nothing is shared between measurements), a process builds the serving
engine exactly as scripts/serve.py does for one full model (no adapters: a bank of one slot, warm-up off) and
then holds N-1 further full copies of the model's parameters on the device (fine-tuned weights are a full
copy per tenant; these are the base's values copied, which costs the same bytes), and reports its RSS
(VmRSS, VmHWM) in MiB. It does not serve the extra copies: requests for different full models cannot share
a batch, so their throughput is measured separately (docs/serving.md). One JSON line per N.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import common  # noqa: E402  (run as a script: the repository root first)


def hold(model: str, n: int) -> dict:
    from adapters_jax import xla_flags

    xla_flags.apply_for(model)
    import jax
    import jax.numpy as jnp

    import adapters_jax as aj
    from adapters_jax.serve.engine import Engine

    t0 = time.perf_counter()
    base = aj.load(model)
    engine = Engine(base, bank="lora[r=8]", max_resident=1, max_batch=16, max_model_len=128, name="base")
    copies = [jax.tree.map(lambda x: jnp.array(x, copy=True), base.params) for _ in range(n - 1)]
    jax.block_until_ready(copies)
    param_bytes = sum(x.nbytes for x in jax.tree.leaves(base.params))
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    rss = {k: round(int(fields[k].split()[0]) / 1024, 1) for k in ("VmRSS", "VmHWM")}
    engine.stop(drain=False)
    return {"models": n, "param_mb_each": round(param_bytes / 2 ** 20, 1), **{f"{k}_mb": v for k, v in rss.items()},
            "seconds": round(time.perf_counter() - t0, 1)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--models", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--out", default=None)
    ap.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)  # the child: hold this many
    args = ap.parse_args(argv)
    if args.one is not None:
        print(json.dumps(hold(args.model, args.one)))
        return 0
    for n in args.models:
        out = subprocess.run([sys.executable, __file__, "--model", args.model, "--one", str(n)], capture_output=True,
                             text=True, check=True)
        row = {"label": f"{args.model}: one process holding {n} full models", "model": args.model,
               **json.loads(out.stdout.strip().splitlines()[-1]), "loadavg_1m": round(os.getloadavg()[0], 2),
               "command": "python " + " ".join(sys.argv)}
        print(json.dumps(row), flush=True)
        if args.out:
            common.append_rows(args.out, [row])
    return 0


if __name__ == "__main__":
    sys.exit(main())
