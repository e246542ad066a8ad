"""The adapter bank's cost: a batch whose every example uses a different adapter against the same batch with
one adapter, forward (inference) and train step (loss + gradient w.r.t. the adapters).

    python bench/bank.py --model minilm-l6 --methods lora,houlsby,ia3 --shapes 32x128x32,128x8x128,32x1x32 \
        --rounds 3 --out bench/results/bank_minilm-l6.jsonl
    python bench/bank.py --scale 1000 --model smollm2-135m --out bench/results/bank_scale_smollm2.jsonl

Shape BxTxK: batch B, tokens T, K adapters in the bank. For each (method, shape) one process builds K
adapters of the method (random non-zero weights), stacks them (bank.build), and times, interleaved round by
round in that process so both sides see the same machine load:
  - "mixed": the bank, example b on slot b % K (every example a different adapter when K = B);
  - "one":   the plain model with one adapter active (no bank: what a batch of one adapter costs).
Each timing is the median of --steps calls after --warmup (compile excluded). Ratio = one_s / mixed_s
(>= 1 means the mixed batch is as fast). Forward returns the final hidden state (both sides), so the
vocabulary projection of a decoder is not in it. Train: value_and_grad of a mean-squared hidden-state
loss w.r.t. the trainable adapter leaves (the bank's [K, ...] leaves, or the one adapter's), no optimizer.
--scale N: one LoRA r=8 (q, v) bank of N slots on the model, its bytes per adapter (and share of the base),
the process's peak RSS, and one forward b32 t16 with random slots.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench import common  # noqa: E402  (run as a script: the repository root first)
SPECS = {"lora": "lora[r=8]", "houlsby": "houlsby[bottleneck=64]", "ia3": "ia3", "prefix": "prefix_tuning[prefix_length=16]"}


def _setup(model_name: str):
    sys.path.insert(0, str(ROOT))
    from adapters_jax import xla_flags

    return xla_flags.apply_for(model_name)


def build(model_name: str, spec: str, k: int, seed: int = 0):
    import jax

    import adapters_jax as aj
    from adapters_jax import bank, paths

    base = aj.load(model_name)
    model, params = base.model, base.params
    names = [f"a{i}" for i in range(k)]
    model, params = aj.add_adapters((model, params), spec, name=names[0])
    flat = paths.flat(params)
    keys = iter(jax.random.split(jax.random.PRNGKey(seed), len(flat)))
    flat = {p: v if paths.is_base(p) else v + 0.02 * jax.random.normal(next(keys), v.shape, v.dtype)
            for p, v in flat.items()}
    params = paths.unflat(flat)
    banked, bparams = bank.build((model, params), names[:1], size=k)  # slot 0 = a0, the others fresh adapters
    flat = paths.flat(bparams)
    flat = {p: v if paths.adapter_of(p) != "bank" else v + 0.02 * jax.random.normal(next(keys), v.shape, v.dtype)
            for p, v in flat.items()}
    return base, aj.activate(model, names[0]), params, aj.activate(banked), paths.unflat(flat)


def timed(fn, warmup: int, steps: int) -> float:
    """Median seconds of `steps` calls after `warmup` (common.timed, waiting for jax's asynchronous results)."""
    import jax

    return statistics.median(common.timed(fn, warmup, steps, jax.block_until_ready)[1])


def one_case(model_name: str, method: str, b: int, t: int, k: int, rounds: int, warmup: int, steps: int) -> list:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from adapters_jax import bank
    from adapters_jax.partition import labels as make_labels, merge, split

    base, single, sparams, banked, bparams = build(model_name, SPECS[method], k)
    g = np.random.default_rng(0)
    ids = jnp.asarray(g.integers(3, base.config.vocab_size, (b, t)), jnp.int32)
    mask = jnp.ones((b, t), jnp.int32)
    slots = jnp.asarray(np.arange(b) % k, jnp.int32)

    def hidden(model, params, slots=None):
        m = model if slots is None else bank.route(model, slots)
        return m.apply({"params": params}, ids, mask, return_hidden=True)

    fwd_one = jax.jit(lambda p: hidden(single, p))
    fwd_mix = jax.jit(lambda p, s: hidden(banked, p, s))

    def grad_fn(model, params, use_slots):
        tr, fr = split(params, make_labels(model, params))

        def loss(tr, s):
            h = hidden(model, merge(tr, fr), s if use_slots else None)
            return jnp.mean(jnp.square(h.astype(jnp.float32)))
        f = jax.jit(jax.value_and_grad(loss))
        return lambda: f(tr, slots)

    calls = {("forward", "one"): lambda: fwd_one(sparams), ("forward", "mixed"): lambda: fwd_mix(bparams, slots),
             ("train", "one"): grad_fn(single, sparams, False), ("train", "mixed"): grad_fn(banked, bparams, True)}
    rows = []
    for r in range(rounds):
        for (mode, side), fn in calls.items():
            s = timed(fn, warmup if r == 0 else 1, steps)
            rows.append({"model": model_name, "method": method, "spec": SPECS[method], "batch": b, "seq": t,
                         "adapters": k, "mode": mode, "side": side, "round": r, "seconds": s,
                         "tokens_per_s": b * t / s})
    return rows


def scale(model_name: str, n: int) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from adapters_jax import bank, paths

    t0 = time.perf_counter()
    base, _, _, banked, bparams = build(model_name, "lora[r=8]", n)
    build_s = time.perf_counter() - t0
    bank_bytes = sum(v.nbytes for p, v in paths.flat(bparams).items() if paths.adapter_of(p) == "bank")
    base_bytes = sum(v.nbytes for p, v in paths.flat(bparams).items() if paths.is_base(p))
    ids = jnp.asarray(np.random.default_rng(0).integers(3, base.config.vocab_size, (32, 16)), jnp.int32)
    slots = jnp.asarray(np.random.default_rng(1).integers(0, n, 32), jnp.int32)
    f = jax.jit(lambda p, s: bank.route(banked, s).apply({"params": p}, ids, jnp.ones_like(ids), return_hidden=True))
    s = timed(lambda: f(bparams, slots), 1, 3)
    return {"model": model_name, "spec": "lora[r=8]", "slots": n, "bank_bytes": bank_bytes,
            "bytes_per_adapter": bank_bytes / n, "share_of_base": bank_bytes / n / base_bytes,
            "base_bytes": base_bytes, "build_s": build_s, "forward_b32_t16_s": s,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="minilm-l6")
    p.add_argument("--methods", default="lora,houlsby,ia3")
    p.add_argument("--shapes", default="32x128x32,128x8x128,32x1x32")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--scale", type=int, default=0)
    p.add_argument("--lora-all-slots-max-tk", type=int, default=None,
                   help="banked.ALL_SLOTS_MAX_TK for this run (0: always gather; an A/B of the LoRA paths)")
    p.add_argument("--out", required=True)
    a = p.parse_args()
    flags = _setup(a.model)
    from adapters_jax.modules import banked

    if a.lora_all_slots_max_tk is not None:
        banked.ALL_SLOTS_MAX_TK = a.lora_all_slots_max_tk
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = [scale(a.model, a.scale)] if a.scale else [
        row for m in a.methods.split(",") for shape in a.shapes.split(",")
        for row in one_case(a.model, m, *map(int, shape.split("x")), a.rounds, a.warmup, a.steps)]
    import subprocess

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    for row in rows:
        row |= {"lora_all_slots_max_tk": banked.ALL_SLOTS_MAX_TK, "xla_flags": flags, "commit": commit, "load_avg": list(map(float, open("/proc/loadavg").read().split()[:3]))}
        print(json.dumps(row), flush=True)
    common.append_rows(out, rows)
    if not a.scale:
        print(table(rows))


def table(rows: list) -> str:
    """Per (method, shape, mode): median seconds over rounds, one / mixed, and the ratio of medians."""
    keys = sorted({(r["method"], r["batch"], r["seq"], r["adapters"], r["mode"]) for r in rows})
    lines = ["| method | B x T, K | mode | one adapter s | mixed s | mixed/one throughput |", "|---|---|---|---|---|---|"]
    for m, b, t, k, mode in keys:
        med = {side: statistics.median(r["seconds"] for r in rows if (r["method"], r["batch"], r["seq"], r["adapters"],
                                                                       r["mode"], r["side"]) == (m, b, t, k, mode, side))
               for side in ("one", "mixed")}
        lines.append(f"| {m} | {b} x {t}, {k} | {mode} | {med['one']:.4f} | {med['mixed']:.4f} | "
                     f"{med['one'] / med['mixed']:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
