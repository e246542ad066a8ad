"""Reference fixtures for tests/test_llama.py, computed with torch + transformers.

Run once with the reference env (torch is never a dependency of the library
or its tests), then commit what it writes under tests/fixtures/:

    .venv-ref/bin/python scripts/make_fixtures_llama.py [--gguf PATH/SmolLM2-135M-Instruct.Q4_1.gguf]

(the env needs torch, transformers, gguf and accelerate: transformers' GGUF loader asks for it).

(a) smollm2_ref.npz / smollm2_ref.json: transformers' own GGUF loader on the
    SmolLM2 Q4_1 file: per position of a fixed text, the log-prob of the
    actual next token and the top-5 ids and log-probs; the greedy
    continuation of "The capital of France is".
(b) tiny-{qwen2,mistral,llama}/: tiny random models (safetensors, <1 MB) and
    reference.npz beside them: a fixed padded batch and its logits.
(c) tiny-llama-bf16/: tiny-llama saved in bfloat16, with reference logits
    computed in float32 from the bf16 weights.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import torch
import transformers

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures"
TEXT = (
    "The old lighthouse keeper climbed the narrow stairs every evening to light the lamp. "
    "Ships passing through the dark and stormy waters relied on its steady beam to guide them "
    "safely past the rocks and into the quiet harbor."
)
PROMPT = "The capital of France is"

TINY = dict(
    vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
)
TINY_MODELS = {
    # Qwen2 with its q/k/v biases and tied embeddings; Mistral with a sliding window shorter
    # than the batch's sequence; Llama with an untied lm_head.
    "qwen2": transformers.Qwen2Config(**TINY, tie_word_embeddings=True, rope_theta=1e6),
    "mistral": transformers.MistralConfig(**TINY, tie_word_embeddings=False, sliding_window=4, head_dim=8),
    "llama": transformers.LlamaConfig(**TINY, tie_word_embeddings=False, rope_theta=1e4),
}


def default_gguf() -> str:
    if os.environ.get("SMOLLM2_GGUF"):
        return os.environ["SMOLLM2_GGUF"]
    from adapters_jax.data import assets

    return str(assets.model_path("smollm2-135m"))


def smollm2(gguf_path: Path) -> None:
    kw = dict(gguf_file=gguf_path.name)
    tok = transformers.AutoTokenizer.from_pretrained(str(gguf_path.parent), **kw)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(gguf_path.parent), dtype=torch.float32, attn_implementation="eager", **kw
    ).eval()
    ids = tok(TEXT, return_tensors="pt").input_ids
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0].float(), -1)
    targets = ids[0, 1:]
    target_logp = logp[:-1].gather(-1, targets[:, None])[:, 0]
    top_logp, top_ids = logp[:-1].topk(5, -1)
    np.savez(
        FIXTURES / "smollm2_ref.npz",
        input_ids=ids[0].numpy().astype(np.int32),
        target_logp=target_logp.numpy(),
        top5_ids=top_ids.numpy().astype(np.int32),
        top5_logp=top_logp.numpy(),
    )
    prompt_ids = tok(PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(prompt_ids, max_new_tokens=4, do_sample=False)
    new_ids = out[0, prompt_ids.shape[1]:].tolist()
    ref = {
        "text": TEXT,
        "prompt": PROMPT,
        "prompt_ids": prompt_ids[0].tolist(),
        "greedy_ids": new_ids,
        "greedy_text": tok.decode(new_ids),
        "transformers": transformers.__version__,
        "torch": torch.__version__,
    }
    (FIXTURES / "smollm2_ref.json").write_text(json.dumps(ref, indent=1) + "\n")
    print(f"smollm2: {ids.shape[1]} tokens, greedy {ref['greedy_text']!r}")
    assert ref["greedy_text"].startswith(" Paris"), ref["greedy_text"]


def tiny_batch() -> tuple[np.ndarray, np.ndarray]:
    """3 x 12 ids: one full row, one right-padded, one left-padded."""
    rng = np.random.default_rng(0)
    ids = rng.integers(3, 256, size=(3, 12)).astype(np.int64)
    mask = np.ones((3, 12), np.int64)
    mask[1, 7:] = 0
    mask[2, :3] = 0
    ids[mask == 0] = 0
    return ids, mask


def perturb(model: torch.nn.Module) -> None:
    """Move norms off one and biases off zero, so loading them wrongly shows in the logits."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.2 * torch.randn_like(p))


def logits_of(model, ids, mask) -> np.ndarray:
    with torch.no_grad():
        return model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.float().numpy()


def write_reference(out: Path, ids, mask, logits) -> None:
    np.savez(out / "reference.npz", input_ids=ids.astype(np.int32), attention_mask=mask.astype(np.int32),
             logits=logits.astype(np.float32))
    size = sum(f.stat().st_size for f in out.iterdir())
    print(f"{out.name}: {size / 1e3:.0f} kB, |logits| max {np.abs(logits).max():.2f}")


def save_model(model, out: Path) -> None:
    model.save_pretrained(out, safe_serialization=True)
    (out / "generation_config.json").unlink(missing_ok=True)


def tiny_models() -> None:
    ids, mask = tiny_batch()
    for seed, (name, config) in enumerate(TINY_MODELS.items()):
        torch.manual_seed(seed)
        config.initializer_range = 0.08
        config._attn_implementation = "eager"
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
        perturb(model)
        save_model(model, FIXTURES / f"tiny-{name}")
        write_reference(FIXTURES / f"tiny-{name}", ids, mask, logits_of(model, ids, mask))
        if name == "llama":
            out = FIXTURES / "tiny-llama-bf16"
            save_model(model.to(torch.bfloat16), out)
            # Reload in float32 rather than calling .float() on the bf16 module: that would also
            # carry the bf16-rounded RoPE inv_freq buffer into the reference.
            f32 = transformers.AutoModelForCausalLM.from_pretrained(
                out, dtype=torch.float32, attn_implementation="eager"
            ).eval()
            write_reference(out, ids, mask, logits_of(f32, ids, mask))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gguf", default=None, help="SmolLM2-135M-Instruct.Q4_1.gguf (default: $SMOLLM2_GGUF or the asset)")
    ap.add_argument("--only", choices=["smollm2", "tiny"], default=None)
    args = ap.parse_args()
    FIXTURES.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(2)
    if args.only != "smollm2":
        tiny_models()
    if args.only != "tiny":
        smollm2(Path(args.gguf or default_gguf()))


if __name__ == "__main__":
    main()
