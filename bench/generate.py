"""Generation speed on SmolLM2-135M: our aj.generate (KV cache) against transformers' generate (PyTorch).

    python bench/generate.py --batches 1,16 --new 64 --rounds 2 --out bench/results/generate_smollm2.jsonl

runs each (side, batch) in its own process, interleaved round by round
(ours with .venv's python, transformers with .venv-ref's: torch 2.13 CPU,
transformers' own GGUF loader), and appends one JSON line per run. Both sides
decode greedily exactly `--new` tokens (EOS banned, as min_new_tokens does) from
the same prompts of 16 real tokens, float32, after one untimed warm-up call (our
compile, torch's first-call allocations). Reported: new tokens per second of the
timed call, and our KV cache's bytes (keys and values of every layer, all slots).
A worker: `python bench/generate.py --worker jax|torch --batch B --new N`.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench import common  # noqa: E402  (run as a script: the repository root first)
PROMPT = "The old lighthouse keeper climbed the narrow stairs every evening to light the lamp for the"
PYTHONS = {"jax": ROOT / ".venv/bin/python", "torch": ROOT / ".venv-ref/bin/python"}


def gguf_path() -> str:
    sys.path.insert(0, str(ROOT))
    from adapters_jax.data import assets

    return str(assets.model_path("smollm2-135m"))


def jax_worker(batch: int, new: int) -> dict:
    sys.path.insert(0, str(ROOT))
    from adapters_jax import xla_flags

    flags = xla_flags.apply_for("smollm2-135m")
    import adapters_jax as aj
    from adapters_jax.decoding import prompt_bucket
    from adapters_jax.models import kv_cache
    from adapters_jax.modules.hooks import prompt_length

    base = aj.load("smollm2-135m")
    ids = base.tokenizer(PROMPT, add_special_tokens=False)["input_ids"][:16]
    prompts = [ids] * batch
    run = lambda: aj.generate(base.model, base.params, prompts, new, min_new_tokens=new)  # noqa: E731
    (warm,), (dt,), outs = common.timed(run)
    assert all(len(o.ids) == new for o in outs)
    slots = kv_cache.slots_for(prompt_bucket(len(ids)), prompt_length(base.model), new)
    return {"side": "jax", "batch": batch, "new": new, "seconds": dt, "warmup_s": warm,
            "tokens_per_s": batch * new / dt, "kv_cache_bytes": kv_cache.nbytes(base.config, batch, slots),
            "kv_slots": slots, "xla_flags": flags, "first_ids": outs[0].ids[:8]}


def torch_worker(batch: int, new: int, gguf: str) -> dict:
    import torch
    import transformers

    torch.set_num_threads(os.cpu_count() or 1)
    path = Path(gguf)  # resolved by the parent: the peers' venv has no jax to run the asset code
    tok = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    model = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                              dtype=torch.float32).eval()
    ids = torch.tensor([tok(PROMPT, add_special_tokens=False)["input_ids"][:16]] * batch)
    run = lambda: model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,  # noqa: E731
                                 max_new_tokens=new, min_new_tokens=new)
    with torch.no_grad():
        (warm,), (dt,), out = common.timed(run)
    assert out.shape[1] - ids.shape[1] == new
    return {"side": "torch", "batch": batch, "new": new, "seconds": dt, "warmup_s": warm,
            "tokens_per_s": batch * new / dt, "torch": torch.__version__, "transformers": transformers.__version__,
            "attn_implementation": model.config._attn_implementation, "first_ids": out[0, 16:24].tolist()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--worker", choices=("jax", "torch"))
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", default=None)
    ap.add_argument("--gguf", default=None, help="worker: the SmolLM2 GGUF file (the parent resolves it)")
    ap.add_argument("--sides", default="jax,torch")
    args = ap.parse_args()
    if args.worker:
        rec = jax_worker(args.batch, args.new) if args.worker == "jax" else torch_worker(args.batch, args.new, args.gguf)
        print("BENCH_RESULT " + json.dumps(rec), flush=True)
        return 0
    rows, gguf = [], gguf_path()
    for rnd in range(args.rounds):
        for b in (int(x) for x in args.batches.split(",")):
            for side in args.sides.split(","):
                p = subprocess.run([str(PYTHONS[side]), __file__, "--worker", side, "--batch", str(b),
                                    "--new", str(args.new), "--gguf", gguf], capture_output=True, text=True, cwd=ROOT,
                                   timeout=1800)
                line = next((x for x in p.stdout.splitlines() if x.startswith("BENCH_RESULT ")), None)
                rec = json.loads(line[13:]) if line else {"side": side, "batch": b, "error": p.stderr[-2000:]}
                rec["round"] = rnd
                rows.append(rec)
                print(json.dumps({k: rec.get(k) for k in ("round", "side", "batch", "tokens_per_s", "kv_cache_bytes",
                                                          "error")}), flush=True)
                if args.out:
                    common.append_rows(args.out, [rec])
    return 0


if __name__ == "__main__":
    sys.exit(main())
