"""Everything bench/peer_instruct.py needs to train the PEFT peer on exactly our instruct data, from a
config (run with the library's interpreter; the peers' has no jax and no GGUF reader):

    python bench/export_instruct.py --config experiments/configs/smollm2_rt_instruct.py --out bench/tmp/rt_instruct

OUT/model: the base model as a transformers directory (export_merged with no adapter: the float32 weights
our loader reads from the GGUF asset, config.json, tokenizer files), so both sides start from the same
numbers. OUT/data.json: per split the token ids our trainer builds (kinds.encode: prompt template, response
names, end token, prompts cut from the left to max_length), the loss masks, the prompt ids generation starts
from and the reference responses, plus the recipe the config states (steps, batch, optimizer, LoRA).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    import adapters_jax as aj
    from adapters_jax.configs import parse
    from adapters_jax.sweeps import grid
    from adapters_jax.train import kinds, loop

    config = grid.config_for(grid.load_module(a.config), {})
    kind = kinds.kind_of(config)
    if kind != "instruct":
        raise SystemExit(f"error: {a.config} is a {kind!r} config; this exports instruct data")
    out = Path(a.out)
    base = aj.load(config.model)
    if not (out / "model" / "config.json").exists():
        model, params = aj.add_adapters(base, None)
        aj.export_merged(model, params, out / "model", tokenizer=base.tokenizer)
    task = loop.load_task(config, config.task)
    enc = kinds.encode(config, task, base.tokenizer, kind)
    (lora,) = parse(config.adapter)
    o = config.optimizer
    data = {"config": a.config, "model": config.model, "task": config.task, "max_length": config.max_length,
            "recipe": {"steps": config.max_steps, "batch_size": config.batch_size, "lr": o.lr, "warmup": o.warmup,
                       "weight_decay": o.weight_decay, "clip_norm": o.clip_norm, "schedule": o.schedule,
                       "lora": {"r": lora.r, "alpha": lora.alpha, "dropout": lora.dropout,
                                "matrices": list(lora.attn_matrices)}},
            "splits": {s: {"ids": [x.tolist() for x in e.ids], "loss_masks": [m.tolist() for m in e.loss_masks],
                           "prompts": [p.tolist() for p in e.prompts], "responses": list(e.responses)}
                       for s, e in enc.items()}}
    (out / "data.json").write_text(json.dumps(data))
    print(f"{out}: model/ and data.json (" + ", ".join(f"{s} {len(e.ids)}" for s, e in enc.items()) + ")")
    return 0


if __name__ == "__main__":
    sys.exit(main())
