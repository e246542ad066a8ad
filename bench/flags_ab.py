"""A/B of XLA flag sets on one train step: each (method, flag set) in its own process, interleaved, repeated.

    python bench/flags_ab.py --methods full,houlsby --sets library,ynnpack,onednn --rounds 2

Flag sets are named below. `library` leaves XLA_FLAGS and ADAPTERS_JAX_ONEDNN unset, so the worker gets the
library's choice for the model (`xla_flags.apply_for`); every other set gives XLA_FLAGS explicitly with
ADAPTERS_JAX_ONEDNN=0, so the library adds nothing. Prints one line per run: median / min / max step seconds
of --steps timed steps, and the flags the worker ran with.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adapters_jax.xla_flags import ONEDNN  # noqa: E402
from bench.common import run_worker  # noqa: E402

SETS = {
    "library": None,  # what xla_flags.apply_for chooses for the model
    "ynnpack": "",  # XLA:CPU's own default
    "onednn": " ".join(ONEDNN),  # the library's choice for BERT-family models
    "onednn_dot_fusion": "--xla_cpu_use_onednn=true --xla_cpu_experimental_onednn_fusion_type=dot",
    "eigen": "--xla_cpu_experimental_ynn_fusion_type=",
    "xnnpack": "--xla_cpu_experimental_xnn_fusion_type=dot --xla_cpu_experimental_ynn_fusion_type=",
}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="minilm-l6")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--methods", default="full,houlsby")
    ap.add_argument("--sets", default="ynnpack,onednn", help=f"comma list of {sorted(SETS)}")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=4)
    args = ap.parse_args()
    sets = args.sets.split(",")
    if bad := [s for s in sets if s not in SETS]:
        ap.error(f"unknown flag sets {bad}; choose from {sorted(SETS)}")
    for rnd in range(args.rounds):
        for method in args.methods.split(","):
            for name in sets:
                env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "ADAPTERS_JAX_ONEDNN")}
                if SETS[name] is not None:
                    env.update({"XLA_FLAGS": SETS[name], "ADAPTERS_JAX_ONEDNN": "0"})
                cfg = {"model": args.model, "method": method, "batch": args.batch, "seq": args.seq,
                       "warmup": 1, "steps": args.steps}
                r = run_worker(sys.executable, "bench/jax_worker.py", cfg, timeout=1800, env=env)
                if "error" in r:
                    print(f"round {rnd} {method:8s} {name:18s} FAILED: {r['error']}", flush=True)
                    continue
                print(f"round {rnd} {method:8s} {name:18s} median {r['step_s_median']:.3f} min {r['step_s_min']:.3f} "
                      f"max {r['step_s_max']:.3f} compile {r['compile_s']:.1f} s  loss {r['loss_after']:.5f}  "
                      f"XLA_FLAGS={r['xla_flags']!r}",
                      flush=True)


if __name__ == "__main__":
    main()
