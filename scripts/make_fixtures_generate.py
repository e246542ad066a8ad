"""Greedy-generation reference for SmolLM2-135M-Instruct, computed with torch + transformers (+ peft).

Run once with the reference env (torch is never a dependency of the library
or its tests), then commit what it writes:

    .venv-ref/bin/python scripts/make_fixtures_generate.py \
        --gguf /root/.cache/adapters_jax/assets/smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf

(the reference env: python3 -m venv .venv-ref && .venv-ref/bin/pip install torch==2.13.0
'transformers>=5,<6' gguf accelerate safetensors peft==0.21.*; --gguf defaults to
$SMOLLM2_GGUF or the library's asset, as in make_fixtures_llama.py).

Writes tests/fixtures/smollm2_generate.json. The model is transformers' own GGUF loader on the
Q4_1 file (dequantised to float32, eager attention), exactly as make_fixtures_llama.py loads it.
For each of PROMPTS:

- prompt_ids: tokenizer(prompt, add_special_tokens=False).input_ids -- the ids fed to generate.
  This tokenizer adds no BOS (nor anything else) by default; the script checks that the default
  call gives the same ids. The chat prompt's <|im_start|>/<|im_end|> are parsed as special tokens.
- base_greedy_ids: the 32 new ids of model.generate(ids, attention_mask=ones, do_sample=False,
  max_new_tokens=32, min_new_tokens=32), batch of 1. min_new_tokens makes generate set the logits
  of every id in "min_new_tokens_suppressed_ids" (the generation config's EOS ids) to -inf at
  every one of the 32 steps, so EOS never stops it: a reimplementation must mask those ids too.
- base_margins: per generated step, top-1 minus top-2 of the scores generate chose from
  (output_scores=True: the logits after that EOS masking; no other processor acts in greedy mode,
  checked below). base_raw_margins: the same from the unprocessed logits (output_logits=True);
  "base_raw_argmax_is_suppressed" lists the steps whose raw argmax was a suppressed EOS id.
- lora_*: the same with a PEFT LoRA (LORA_CONFIG) whose weights follow LORA_RULE (no file needed).
- "batched_left_padded": one generate call on all five prompts as a left-padded batch (base model,
  same settings, the tokenizer's attention mask), the 32 new ids per row and whether each row equals
  its batch-of-1 run.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import peft
import torch
import transformers

OUT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "smollm2_generate.json"
PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a small village,",
    "The three primary colors are",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
]
NEW_TOKENS = 32
LORA_SCALE = 0.05
LORA_CONFIG = dict(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], lora_dropout=0.0, bias="none")
LORA_RULE = (
    "sd = peft.get_peft_model_state_dict(peft_model); rng = np.random.default_rng(0); "
    "for name in sorted(sd): sd[name] = (rng.standard_normal(tuple(sd[name].shape)) * {scale})"
    ".astype(np.float32); then peft.set_peft_model_state_dict(peft_model, sd). Shapes are torch's: "
    "lora_A.weight is (r, in_features), lora_B.weight is (out_features, r); the LoRA delta of "
    "x is (x @ A.T @ B.T) * lora_alpha / r."
)


def default_gguf() -> str:
    if os.environ.get("SMOLLM2_GGUF"):
        return os.environ["SMOLLM2_GGUF"]
    from adapters_jax.data import assets

    return str(assets.model_path("smollm2-135m"))


def load(gguf_path: Path):
    kw = dict(gguf_file=gguf_path.name)
    tok = transformers.AutoTokenizer.from_pretrained(str(gguf_path.parent), **kw)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(gguf_path.parent), dtype=torch.float32, attn_implementation="eager", **kw
    ).eval()
    return tok, model


def margins(scores) -> list[float]:
    """top-1 minus top-2 per step, for a batch of 1."""
    out = []
    for s in scores:
        top = s[0].float().topk(2).values
        out.append(float(top[0] - top[1]))
    return out


def greedy(model, ids: torch.Tensor, mask: torch.Tensor, suppressed: list[int]) -> dict:
    with torch.no_grad():
        out = model.generate(
            input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=NEW_TOKENS,
            min_new_tokens=NEW_TOKENS, output_scores=True, output_logits=True, return_dict_in_generate=True,
        )
    new = out.sequences[:, ids.shape[1]:]
    assert new.shape[1] == NEW_TOKENS, new.shape
    res = {"ids": new.tolist()}
    if ids.shape[0] == 1:
        # The chosen id is the argmax of the processed scores, and the processed scores differ from
        # the raw logits only at the suppressed EOS ids (which are -inf): nothing else acts.
        keep = torch.ones(out.logits[0].shape[-1], dtype=torch.bool)
        keep[suppressed] = False
        raw_suppressed = []
        for step, (sc, lg) in enumerate(zip(out.scores, out.logits)):
            assert int(sc[0].argmax()) == int(new[0, step])
            assert torch.equal(sc[0, keep], lg[0, keep]), f"a processor other than min_new_tokens at step {step}"
            assert torch.isinf(sc[0, ~keep]).all()
            if int(lg[0].argmax()) in suppressed:
                raw_suppressed.append(step)
        res["margins"] = margins(out.scores)
        res["raw_margins"] = margins(out.logits)
        res["raw_argmax_is_suppressed"] = raw_suppressed
    return res


def run_prompts(model, prompt_ids: list[list[int]], suppressed) -> list[dict]:
    outs = []
    for ids in prompt_ids:
        t = torch.tensor([ids])
        outs.append(greedy(model, t, torch.ones_like(t), suppressed))
    return outs


def set_lora_weights(pm, scale: float) -> dict:
    sd = peft.get_peft_model_state_dict(pm)
    rng = np.random.default_rng(0)
    new, shapes, checksum = {}, {}, 0.0
    for name in sorted(sd):
        value = (rng.standard_normal(tuple(sd[name].shape)) * scale).astype(np.float32)
        new[name] = torch.from_numpy(value)
        shapes[name] = list(value.shape)
        checksum += float(value.astype(np.float64).sum())
    res = peft.set_peft_model_state_dict(pm, new)
    unexpected = getattr(res, "unexpected_keys", [])
    assert not unexpected, unexpected
    # Check it took: every tensor read back equals what was set.
    back = peft.get_peft_model_state_dict(pm)
    assert sorted(back) == sorted(new)
    for name in new:
        assert torch.equal(back[name].float().cpu(), new[name]), name
    first = sorted(new)[0]
    print(f"lora: {len(new)} tensors, {first} {shapes[first]} [0,:3] = {back[first][0, :3].tolist()}")
    return {"names_sorted": sorted(new), "shapes": shapes, "checksum": checksum}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gguf", default=None, help="SmolLM2-135M-Instruct.Q4_1.gguf (default: $SMOLLM2_GGUF or the asset)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    gguf_path = Path(args.gguf or default_gguf())
    tok, model = load(gguf_path)
    gc = model.generation_config
    eos = gc.eos_token_id
    suppressed = sorted(set([eos] if isinstance(eos, int) else list(eos or [])))
    assert suppressed, "no EOS id in the generation config"
    print(f"generation_config: {gc.to_diff_dict()}")

    prompt_ids = []
    for p in PROMPTS:
        ids = tok(p, add_special_tokens=False).input_ids
        assert tok(p).input_ids == ids, f"the tokenizer adds special tokens by default to {p!r}"
        prompt_ids.append(ids)

    base = run_prompts(model, prompt_ids, suppressed)

    # Left-padded batch, base model.
    tok.padding_side = "left"
    pad_source = "pad_token"
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
        pad_source = "eos_token"
    enc = tok(PROMPTS, add_special_tokens=False, padding=True, return_tensors="pt")
    for row, ids in enumerate(prompt_ids):
        n = int(enc.attention_mask[row].sum())
        assert enc.input_ids[row, -n:].tolist() == ids and not enc.attention_mask[row, :-n].any()
    batched = greedy(model, enc.input_ids, enc.attention_mask, suppressed)["ids"]

    # LoRA.
    scale = LORA_SCALE
    while True:
        pm = peft.get_peft_model(model, peft.LoraConfig(**LORA_CONFIG)).eval()
        lora_meta = set_lora_weights(pm, scale)
        lora = run_prompts(pm, prompt_ids, suppressed)
        n_differ = sum(b["ids"] != l["ids"] for b, l in zip(base, lora))
        if n_differ >= 3 or scale >= 0.1:
            break
        print(f"lora scale {scale}: only {n_differ}/5 continuations differ from base; raising to 0.1")
        model = pm.unload()
        scale = 0.1
    assert n_differ >= 3, n_differ

    entries = []
    for i, p in enumerate(PROMPTS):
        b, l = base[i]["ids"][0], lora[i]["ids"][0]
        entries.append({
            "prompt": p,
            "prompt_ids": prompt_ids[i],
            "base_greedy_ids": b,
            "base_greedy_text": tok.decode(b),
            "base_margins": base[i]["margins"],
            "base_raw_margins": base[i]["raw_margins"],
            "base_raw_argmax_is_suppressed": base[i]["raw_argmax_is_suppressed"],
            "lora_greedy_ids": l,
            "lora_greedy_text": tok.decode(l),
            "lora_margins": lora[i]["margins"],
            "lora_raw_margins": lora[i]["raw_margins"],
            "lora_raw_argmax_is_suppressed": lora[i]["raw_argmax_is_suppressed"],
            "lora_differs_from_base": b != l,
        })
    ref = {
        "model": gguf_path.name,
        "loader": "transformers GGUF loader (AutoModelForCausalLM.from_pretrained(dir, gguf_file=...)), "
                  "float32, attn_implementation='eager'",
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "peft": peft.__version__, "numpy": np.__version__},
        "generate": {
            "do_sample": False, "max_new_tokens": NEW_TOKENS, "min_new_tokens": NEW_TOKENS,
            "batch": "1 per prompt, attention_mask all ones",
            "min_new_tokens_suppressed_ids": suppressed,
            "margins": "top-1 minus top-2 of generate's scores (logits with the suppressed ids at -inf); "
                       "raw_margins: the same from the unprocessed logits",
        },
        "prompt_ids_convention": "tokenizer(prompt, add_special_tokens=False).input_ids; identical to the "
                                 "default call: this tokenizer adds no BOS/EOS. Chat markers are special tokens.",
        "prompts": entries,
        "lora": {
            "config": {**LORA_CONFIG, "scaling": LORA_CONFIG["lora_alpha"] / LORA_CONFIG["r"]},
            "scale": scale,
            "rule": LORA_RULE.format(scale=scale),
            **lora_meta,
        },
        "batched_left_padded": {
            "padding_side": "left",
            "pad_token_id": tok.pad_token_id,
            "pad_token": tok.pad_token,
            "pad_token_source": pad_source,
            "input_ids": enc.input_ids.tolist(),
            "attention_mask": enc.attention_mask.tolist(),
            "greedy_ids": batched,
            "equals_batch_of_1": [batched[i] == base[i]["ids"][0] for i in range(len(PROMPTS))],
        },
    }
    OUT.write_text(json.dumps(ref, indent=1) + "\n")
    print(f"wrote {OUT} ({OUT.stat().st_size / 1e3:.0f} kB)")
    for e in entries:
        print(f"{e['prompt']!r}\n  base {e['base_greedy_text']!r} (min margin {min(e['base_margins']):.4f})"
              f"\n  lora {e['lora_greedy_text']!r} (min margin {min(e['lora_margins']):.4f})")
    print(f"lora differs on {n_differ}/5; batched == alone: {ref['batched_left_padded']['equals_batch_of_1']}")


if __name__ == "__main__":
    main()
