"""Reference fixtures for tests/test_adapter_parity.py: AdapterHub 1.3 and PEFT 0.21 on torch.

Run once with the peers env (torch, transformers 4.57, adapters 1.3, peft 0.21;
never a dependency of the library or its tests), then commit what it writes:

    .venv-peers/bin/python scripts/make_fixtures_adapters.py [--minilm DIR]

DIR is the minilm-l6 asset directory (default: adapters_jax's asset cache).
Writes under tests/fixtures/adapters/:
  tiny-bert/, tiny-llama/   tiny random bases (config.json + model.safetensors)
  <base>__<case>.npz        per case: the adapter's tensors under their
                            AdapterHub/PEFT names ("w/<torch name>"), the padded
                            batch, the reference last hidden state and a json
                            "meta" (library, peer config, our config string).
Every adapter param is re-randomised after creation (N(0, 0.1), around 1 for
IA3 vectors and LayerNorm scales) and rounded to float16, so the float16 copy
stored here is exact and an adapter that is not wired in changes the output.
MiniLM's own weights are not copied: its cases store only adapter + batch + output.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
import transformers
from transformers import AutoTokenizer, BertConfig, BertModel, LlamaConfig, LlamaForCausalLM

FIX = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "adapters"
SENTENCES = ["The movie was a delight.", "A tedious, overlong mess of a film, sadly."]

# (case, peer config, our config string); AdapterHub ids take their own defaults unless overridden.
# Bottleneck/prefix sizes are shrunk on MiniLM only to keep the fixtures small.
AH_BERT = [
    ("double_seq_bn", "double_seq_bn", "double_seq_bn"),
    ("seq_bn", "seq_bn", "seq_bn"),
    ("par_bn", "par_bn", "par_bn"),
    ("prefix_tuning", "prefix_tuning[prefix_length=5,bottleneck_size=32]", "prefix_tuning[prefix_length=5,bottleneck_size=32]"),
]
AH_TINY_EXTRA = [  # options that shift tensor names or add params; AdapterHub's own LoRA/IA3
    ("seq_bn_ln", "seq_bn[ln_before=True,ln_after=True,residual_before_ln=False]",
     "seq_bn[ln_before=true,ln_after=true,residual_before_ln=false]"),
    ("scaled_par_bn", "scaled_par_bn", "scaled_par_bn"),
    ("ah_lora", "lora[r=4,alpha=8,attn_matrices=['q','k','v']]", "lora[r=4,alpha=8,attn_matrices=[q,k,v]]"),
    # AdapterHub's IA3 scales intermediate.dense's output (before the activation): our target= mirrors it
    ("ah_ia3", "ia3", "ia3[target=(attention/self/(key|value)|intermediate/dense)$]"),
]
AH_MINILM = [
    ("double_seq_bn", "double_seq_bn[reduction_factor=64]", "double_seq_bn[reduction_factor=64]"),
    ("seq_bn", "seq_bn[reduction_factor=64]", "seq_bn[reduction_factor=64]"),
    ("par_bn", "par_bn[reduction_factor=64]", "par_bn[reduction_factor=64]"),
    ("prefix_tuning", "prefix_tuning[prefix_length=5,bottleneck_size=16]", "prefix_tuning[prefix_length=5,bottleneck_size=16]"),
]
AH_LLAMA = [
    ("double_seq_bn", "double_seq_bn", "double_seq_bn"),
    ("seq_bn", "seq_bn", "seq_bn"),
    ("par_bn", "par_bn", "par_bn"),
    ("prefix_tuning", "prefix_tuning[prefix_length=5,bottleneck_size=32]", "prefix_tuning[prefix_length=5,bottleneck_size=32]"),
]

BERT_FFN_OUT = r".*layer\.\d+\.output\.dense$"  # not attention.output.dense
PEFT_BERT = [
    ("lora", dict(kind="lora", target_modules=["query", "value"], r=8, lora_alpha=16), "lora[r=8,alpha=16]"),
    ("rslora", dict(kind="lora", target_modules=r".*(query|key|value|intermediate\.dense)$", r=4, lora_alpha=8,
                    use_rslora=True),
     "lora[r=4,alpha=8,use_rslora=true,target=(attention/self/(query|key|value)|intermediate/dense)$]"),
    ("ia3", dict(kind="ia3", target_modules=r".*\.(key|value)$|" + BERT_FFN_OUT, feedforward_modules=BERT_FFN_OUT),
     "ia3"),
    ("prompt", dict(kind="prompt", num_virtual_tokens=4), "prompt_tuning[prompt_length=4]"),
]
PEFT_LLAMA = [
    ("lora", dict(kind="lora", target_modules=["q_proj", "v_proj"], r=8, lora_alpha=16), "lora[r=8,alpha=16]"),
    ("rslora", dict(kind="lora", target_modules=r".*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)$",
                    r=4, lora_alpha=8, use_rslora=True),
     "lora[r=4,alpha=8,use_rslora=true,target=(self_attn/(q|k|v|o)_proj|mlp/(gate|up|down)_proj)$]"),
    ("ia3", dict(kind="ia3", target_modules=["k_proj", "v_proj", "down_proj"], feedforward_modules=["down_proj"]),
     "ia3"),
    ("prompt", dict(kind="prompt", num_virtual_tokens=4), "prompt_tuning[prompt_length=4]"),
]


def fp16_exact(t: torch.Tensor) -> torch.Tensor:
    return t.half().float()


def randomise(named_params, gen: torch.Generator) -> None:
    """Every adapter param N(0, 0.1), IA3 vectors and LayerNorm scales around one; float16-exact."""
    with torch.no_grad():
        for name, p in named_params:
            noise = torch.randn(p.shape, generator=gen) * 0.1
            if "ia3_l" in name or ".loras." in name and p.shape[-1] == 1 or "norm" in name and name.endswith("weight"):
                noise = 1.0 + 5 * noise
            p.copy_(fp16_exact(noise))


def tiny_batch(vocab, pad, seed=0):
    g = np.random.default_rng(seed)
    ids = g.integers(3, vocab, size=(3, 10)).astype(np.int64)
    mask = np.ones_like(ids)
    mask[1, 7:] = 0
    mask[2, 4:] = 0
    ids[mask == 0] = pad
    return ids, mask


ONLY = None  # set from --only: other cases are computed (same seeds) but not written


def save_case(path: Path, tensors: dict, ids, mask, hidden, meta: dict) -> None:
    if ONLY is not None and path.stem != ONLY:
        return
    arrays = {f"w/{k}": v.detach().numpy().astype(np.float16) for k, v in tensors.items()}
    np.savez_compressed(path, input_ids=ids, attention_mask=mask, hidden=hidden.astype(np.float32),
                        meta=np.array(json.dumps(meta)), **arrays)
    print(f"{path.name}: {path.stat().st_size / 1024:.0f} KB, {len(arrays)} tensors")


def hidden_of(model, ids, mask, llama: bool):
    with torch.no_grad():
        inner = model.model if llama else model
        return inner(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).last_hidden_state.numpy()


def adapterhub_case(make_base, base_name, case, peer, ours, ids, mask, seed, llama, store_saved):
    import adapters

    torch.manual_seed(seed)
    model = make_base()
    adapters.init(model)
    model.add_adapter("t", config=peer)
    model.set_active_adapters("t")
    model.eval()
    randomise([(n, p) for n, p in model.named_parameters() if ".t." in n], torch.Generator().manual_seed(seed))
    hidden = hidden_of(model, ids, mask, llama)
    assert np.abs(hidden - hidden_of(make_base(), ids, mask, llama)).max() > 1e-2, f"{case}: adapter not applied"
    if store_saved:  # exactly what AdapterHub's save_adapter writes (prefix pool repeated per layer)
        with tempfile.TemporaryDirectory() as d:
            model.save_adapter(d, "t")
            tensors = torch.load(os.path.join(d, "pytorch_adapter.bin"))
    else:  # deduplicated: the shared prefix pool once
        tensors = {n: p for n, p in model.named_parameters() if ".t." in n}
    meta = dict(library="adapterhub", version=adapters.__version__, peer_config=peer, ours=ours,
                adapter_name="t", n_virtual=0, llama=llama)
    save_case(FIX / f"{base_name}__{case}.npz", tensors, ids, mask, hidden, meta)


def peft_case(make_base, base_name, case, spec, ours, ids, mask, seed, llama):
    import peft

    spec = dict(spec)
    kind = spec.pop("kind")
    torch.manual_seed(seed)
    model = make_base()
    task = "CAUSAL_LM" if llama else "FEATURE_EXTRACTION"
    if kind == "lora":
        cfg = peft.LoraConfig(**spec, lora_dropout=0.0)
    elif kind == "ia3":
        cfg = peft.IA3Config(**spec)
    else:
        cfg = peft.PromptTuningConfig(task_type=task, **spec)
    pm = peft.get_peft_model(model, cfg)
    pm.eval()
    randomise([(n, p) for n, p in pm.named_parameters() if p.requires_grad], torch.Generator().manual_seed(seed))
    with torch.no_grad():
        if kind == "prompt" and llama:  # PeftModelForCausalLM.forward, up to the decoder's last hidden state
            t_ids, t_mask = torch.tensor(ids), torch.tensor(mask)
            embeds = torch.cat([pm.get_prompt(len(ids)), model.get_input_embeddings()(t_ids)], dim=1)
            full_mask = torch.cat([torch.ones(len(ids), embeds.shape[1] - t_ids.shape[1], dtype=t_mask.dtype), t_mask], 1)
            hidden = pm.base_model.model(inputs_embeds=embeds, attention_mask=full_mask).last_hidden_state.numpy()
        elif kind == "prompt":  # PEFT prepends the virtual tokens; the reference keeps them
            hidden = pm(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).last_hidden_state.numpy()
        else:
            hidden = hidden_of(pm.base_model.model, ids, mask, llama)
            base = hidden_of(make_base(), ids, mask, llama)
            assert np.abs(hidden - base).max() > 1e-2, f"{case}: adapter not applied"
    tensors = peft.get_peft_model_state_dict(pm)
    meta = dict(library="peft", version=peft.__version__, peer_config={k: str(v) for k, v in spec.items()},
                peer_kind=kind, ours=ours, adapter_name="t",
                n_virtual=spec.get("num_virtual_tokens", 0), llama=llama)
    save_case(FIX / f"{base_name}__{case}.npz", tensors, ids, mask, hidden, meta)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--minilm", default=None)
    ap.add_argument("--only", default=None, help="regenerate just this case (e.g. tiny-llama__prompt)")
    args = ap.parse_args()
    if args.minilm is None:
        cache = Path(os.environ.get("ADAPTERS_JAX_CACHE", Path.home() / ".cache" / "adapters_jax"))
        args.minilm = str(cache / "assets" / "minilm-l6")  # `python scripts/assets.py fetch minilm-l6` puts it there
    FIX.mkdir(parents=True, exist_ok=True)
    global ONLY
    ONLY = args.only

    # tiny random BERT, saved so our loader reads the very same base
    bert_cfg = BertConfig(vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                          intermediate_size=64, max_position_embeddings=40, hidden_dropout_prob=0.0,
                          attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    if ONLY is None:
        BertModel(bert_cfg).save_pretrained(FIX / "tiny-bert", safe_serialization=True)
    tiny_bert = lambda: BertModel.from_pretrained(FIX / "tiny-bert").eval()
    ids, mask = tiny_batch(128, 0)

    llama_cfg = LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                            tie_word_embeddings=False, rope_theta=10000.0, initializer_range=0.1)
    torch.manual_seed(1)
    if ONLY is None:
        LlamaForCausalLM(llama_cfg).save_pretrained(FIX / "tiny-llama", safe_serialization=True)
    tiny_llama = lambda: LlamaForCausalLM.from_pretrained(FIX / "tiny-llama", attn_implementation="eager").eval()
    lids, lmask = tiny_batch(128, 0, seed=1)

    tok = AutoTokenizer.from_pretrained(args.minilm)
    enc = tok(SENTENCES, padding=True, return_tensors="np")
    mids, mmask = enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int64)
    minilm = lambda: BertModel.from_pretrained(args.minilm).eval()

    seed = 0
    for case, peer, ours in AH_BERT + AH_TINY_EXTRA:
        seed += 1
        adapterhub_case(tiny_bert, "tiny-bert", case, peer, ours, ids, mask, seed, False, store_saved=True)
    for case, peer, ours in AH_MINILM:
        seed += 1
        adapterhub_case(minilm, "minilm", case, peer, ours, mids, mmask, seed, False, store_saved=False)
    for case, peer, ours in AH_LLAMA:
        seed += 1
        adapterhub_case(tiny_llama, "tiny-llama", case, peer, ours, lids, lmask, seed, True, store_saved=True)
    for base_name, make, (bi, bm) in (("tiny-bert", tiny_bert, (ids, mask)), ("minilm", minilm, (mids, mmask))):
        for case, spec, ours in PEFT_BERT:
            seed += 1
            peft_case(make, base_name, case, spec, ours, bi, bm, seed, False)
    for case, spec, ours in PEFT_LLAMA:
        seed += 1
        peft_case(tiny_llama, "tiny-llama", case, spec, ours, lids, lmask, seed, True)
    print("transformers", transformers.__version__)


if __name__ == "__main__":
    main()
