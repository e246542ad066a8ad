"""Fixtures for tests/test_interop_dirs.py: adapter directories crossing between adapters_jax, PEFT 0.21 and AdapterHub 1.3.

Two stages, then commit what they write under tests/fixtures/interop/:

    .venv/bin/python scripts/make_fixtures_interop.py export       # ours/<case>/: OUR PEFT/AdapterHub directories
    .venv-peers/bin/python scripts/make_fixtures_interop.py peers  # <case>.npz outputs; peer/<case>/ THEIR directories

`export` adds each OURS case's adapter (and head) to its base, sets every adapter and head
leaf to float16-exact N(0, 0.1) draws (IA3 vectors and LayerNorm scales around one) from a
numpy generator seeded per case, and saves it with aj.save_adapter(format=...). The test
rebuilds the same adapter and checks the writer still writes these files bit for bit.
`peers` (torch, transformers 4.57, adapters 1.3, peft 0.21: never a dependency of the library
or its tests) loads each ours/<case> into the peer library (PeftModel.from_pretrained,
model.load_adapter(..., use_safetensors=True)), checks every saved tensor arrived, and records
the peer's output (last hidden state, or logits with a head) on a padded batch; then for each
PEER case it makes a random-init adapter in the peer library, saves it with the peer's own
save (AdapterHub prefix tuning: torch.save, then the conversion our refusal message prints,
because AdapterHub 1.3 cannot save a shared prefix pool as safetensors) and records its output.
Bases: tiny BERT / tiny Llama of tests/fixtures/adapters, MiniLM-L6's real weights (--minilm DIR,
default the asset cache).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FIX = ROOT / "tests" / "fixtures" / "interop"
BASES = {"tiny-bert": ROOT / "tests/fixtures/adapters/tiny-bert", "tiny-llama": ROOT / "tests/fixtures/adapters/tiny-llama"}
SENTENCES = ["The movie was a delight.", "A tedious, overlong mess of a film, sadly."]
BERT_RS = r"lora[r=2,alpha=4,use_rslora=true,target=(attention/self/(query|key|value)|intermediate/dense)$]"
LLAMA_RS = r"lora[r=4,alpha=8,use_rslora=true,target=(self_attn/(q|k|v|o)_proj|mlp/(gate|up|down)_proj)$]"
# (case, our spec, format, head labels (0: none)); case = <base>__<format>_<what>
OURS = [
    ("tiny-llama__peft_lora", "lora[r=4,alpha=8]", "peft", 0),
    ("tiny-llama__peft_rslora", LLAMA_RS, "peft", 0),
    ("tiny-llama__peft_ia3", "ia3", "peft", 0),
    ("tiny-llama__peft_prompt", "prompt_tuning[prompt_length=4]", "peft", 0),
    ("tiny-llama__ah_houlsby", "double_seq_bn", "adapterhub", 0),
    ("tiny-llama__ah_pfeiffer", "seq_bn", "adapterhub", 0),
    ("tiny-llama__ah_lora", "lora[r=4,alpha=8,attn_matrices=[q,k,v],leave_out=[0]]", "adapterhub", 0),
    ("tiny-llama__ah_prefix", "prefix_tuning[prefix_length=5,bottleneck_size=16]", "adapterhub", 0),
    ("minilm__peft_lora", "lora[r=2,alpha=4]", "peft", 0),
    ("minilm__peft_rslora", BERT_RS, "peft", 0),
    ("minilm__peft_ia3", "ia3", "peft", 0),
    ("minilm__peft_prompt", "prompt_tuning[prompt_length=4]", "peft", 0),
    ("minilm__ah_houlsby", "double_seq_bn[reduction_factor=128]", "adapterhub", 0),
    ("minilm__ah_pfeiffer", "seq_bn[reduction_factor=64]", "adapterhub", 0),
    ("minilm__ah_lora", "lora[r=2,alpha=4,intermediate_lora=true]", "adapterhub", 0),
    ("minilm__ah_prefix", "prefix_tuning[prefix_length=5,bottleneck_size=4]", "adapterhub", 0),
    ("tiny-bert__peft_lora_head", "lora[r=4,alpha=8,leave_out=[0]]", "peft", 3),
    ("tiny-bert__peft_ranks", r"lora[r=4,target=layer_\d+/attention/self/query$]|"
                              r"lora[r=2,alpha=6,target=layer_\d+/attention/self/value$]", "peft", 0),
    ("tiny-bert__ah_pfeiffer_head", "seq_bn[ln_before=true,ln_after=true,residual_before_ln=false]", "adapterhub", 3),
    ("tiny-bert__ah_ia3", r"ia3[target=(attention/self/(key|value)|intermediate/dense)$]", "adapterhub", 0),
    ("tiny-bert__ah_mam", "prefix_tuning[prefix_length=5,bottleneck_size=8]|scaled_par_bn", "adapterhub", 0),
]
# (case, peer library, peer config); made and saved by the peer library itself
PEER = [
    ("tiny-llama__peft_lora", "peft", dict(kind="lora", target_modules=["q_proj", "v_proj"], r=4, lora_alpha=8)),
    ("tiny-llama__peft_rslora", "peft", dict(kind="lora", target_modules=r".*\.(q_proj|o_proj|down_proj)$", r=4,
                                              lora_alpha=8, use_rslora=True)),
    ("tiny-llama__peft_ia3", "peft", dict(kind="ia3", target_modules=["k_proj", "v_proj", "down_proj"],
                                          feedforward_modules=["down_proj"])),
    ("tiny-llama__peft_prompt", "peft", dict(kind="prompt", num_virtual_tokens=4)),
    ("tiny-llama__ah_houlsby", "adapterhub", "double_seq_bn"),
    ("tiny-llama__ah_pfeiffer", "adapterhub", "seq_bn[reduction_factor=8]"),
    ("tiny-llama__ah_lora", "adapterhub", "lora[r=4,alpha=8,attn_matrices=['q','k','v'],intermediate_lora=True]"),
    ("tiny-llama__ah_prefix", "adapterhub", "prefix_tuning[prefix_length=5,bottleneck_size=8]"),
    ("minilm__peft_lora", "peft", dict(kind="lora", target_modules=["query", "value"], r=2, lora_alpha=4,
                                       layers_to_transform=[1, 3, 5])),
    ("minilm__ah_pfeiffer", "adapterhub", "seq_bn[reduction_factor=128]"),
    ("tiny-bert__peft_lora_head", "peft", dict(kind="lora", task="SEQ_CLS", target_modules=["query", "value"], r=4,
                                               lora_alpha=8)),
    ("tiny-bert__peft_patterns", "peft", dict(kind="lora", target_modules=["query", "key", "value", "dense"], r=4,
                                              lora_alpha=8, rank_pattern={"key": 2}, alpha_pattern={"value": 16},
                                              exclude_modules=["pooler.dense", "attention.output.dense"])),
    ("tiny-bert__ah_houlsby_head", "adapterhub", "double_seq_bn"),
    ("tiny-bert__ah_ia3", "adapterhub", "ia3"),
]


def tiny_batch(seed):
    g = np.random.default_rng(seed)
    ids = g.integers(3, 128, size=(3, 10)).astype(np.int64)
    mask = np.ones_like(ids)
    mask[1, 7:] = 0
    mask[2, 4:] = 0
    ids[mask == 0] = 0
    return ids, mask


def minilm_dir(arg):
    cache = Path(os.environ.get("ADAPTERS_JAX_CACHE", Path.home() / ".cache" / "adapters_jax"))
    return Path(arg) if arg else cache / "assets" / "minilm-l6"


def seed_of(case: str) -> int:
    return [c for c, *_ in OURS].index(case) + 1


def fill_random(params, name: str, seed: int):
    """Adapter `name`'s leaves and the head's: float16-exact N(0, 0.1), one-centred for IA3 and norm scales."""
    from adapters_jax import paths

    g = np.random.default_rng(seed)
    flat = paths.flat(params)
    for k in sorted(flat):
        if paths.adapter_of(k) == name or paths.is_head(k):
            x = g.normal(0.0, 0.1, flat[k].shape)
            x = 1.0 + 5 * x if k.endswith(("ia3_l", "/scale")) else x
            flat[k] = np.asarray(x.astype(np.float16).astype(np.float32))
    return paths.unflat(flat)


def load_base(base_name: str, minilm: Path):
    from adapters_jax.models import load_hf_dir

    return load_hf_dir(minilm if base_name == "minilm" else BASES[base_name])


def build_ours(base, case: str, spec: str, fmt: str, labels: int):
    """(model, params) of an OURS case on its base (load_base), from its spec and seed (the test calls this too)."""
    import adapters_jax as aj

    head = None
    if labels:
        head = aj.heads.Classification(labels, pooling="pooler" if fmt == "peft" else "cls",
                                       hidden_layers=0 if fmt == "peft" else 1)
    model, params = aj.add_adapters(base, spec, name="t", head=head, init=False)  # every leaf is drawn below
    return model, fill_random(params, "t", seed_of(case))


def export(minilm: Path) -> None:
    import adapters_jax as aj

    bases = {}
    for case, spec, fmt, labels in OURS:
        name = case.split("__")[0]
        base = bases[name] = bases.get(name) or load_base(name, minilm)
        model, params = build_ours(base, case, spec, fmt, labels)
        out = aj.save_adapter(FIX / "ours" / case, model, params, "t", format=fmt)
        print(f"ours/{case}: {sum(f.stat().st_size for f in out.iterdir()) / 1024:.0f} KB")


# --- peers (torch) ---

def batch_for(base_name, minilm):
    if base_name == "minilm":
        from transformers import AutoTokenizer

        enc = AutoTokenizer.from_pretrained(minilm)(SENTENCES, padding=True, return_tensors="np")
        return enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int64)
    return tiny_batch(1 if base_name == "tiny-llama" else 0)


def torch_base(base_name, minilm, labels=0, adapter_model=False):
    from transformers import BertForSequenceClassification, BertModel, LlamaForCausalLM

    path = minilm if base_name == "minilm" else BASES[base_name]
    if adapter_model:
        from adapters import AutoAdapterModel

        return AutoAdapterModel.from_pretrained(path).eval()
    if base_name == "tiny-llama":
        return LlamaForCausalLM.from_pretrained(path, attn_implementation="eager").eval()
    if labels:
        return BertForSequenceClassification.from_pretrained(path, num_labels=labels).eval()
    return BertModel.from_pretrained(path).eval()


def run(model, ids, mask, llama, head=False, prompt=None):
    """The output the test compares: logits with a head, else the last hidden state (PEFT's prompt kept in front)."""
    import torch

    t_ids, t_mask = torch.tensor(ids), torch.tensor(mask)
    with torch.no_grad():
        if head:
            return model(input_ids=t_ids, attention_mask=t_mask).logits.numpy()
        if prompt is not None and llama:  # PeftModelForCausalLM's forward up to the decoder's last hidden state
            embeds = torch.cat([prompt.get_prompt(len(ids)), prompt.get_input_embeddings()(t_ids)], dim=1)
            full = torch.cat([torch.ones(len(ids), embeds.shape[1] - t_ids.shape[1], dtype=t_mask.dtype), t_mask], 1)
            return prompt.base_model.model(inputs_embeds=embeds, attention_mask=full).last_hidden_state.numpy()
        if prompt is not None:
            return prompt(input_ids=t_ids, attention_mask=t_mask).last_hidden_state.numpy()
        inner = model.model if llama else model
        return inner(input_ids=t_ids, attention_mask=t_mask).last_hidden_state.numpy()


def record(name, ids, mask, out, base_out, meta):
    if not meta["head"] and np.abs(out[:, meta["n_virtual"]:] - base_out).max() <= 1e-2:
        raise SystemExit(f"{name}: the adapter barely changes the output; the case would test nothing")
    np.savez_compressed(FIX / f"{name}.npz", input_ids=ids, attention_mask=mask, out=out.astype(np.float32),
                        meta=np.array(json.dumps(meta)))
    print(f"{name}.npz: {(FIX / f'{name}.npz').stat().st_size / 1024:.0f} KB")


def peers_load_ours(minilm):
    import adapters
    import peft
    import torch
    from safetensors.numpy import load_file

    for case, spec, fmt, labels in OURS:
        base_name, d = case.split("__")[0], FIX / "ours" / case
        llama = base_name == "tiny-llama"
        ids, mask = batch_for(base_name, minilm)
        base_out = run(torch_base(base_name, minilm), ids, mask, llama)
        saved = load_file(str(d / ("adapter_model.safetensors" if fmt == "peft" else "adapter.safetensors")))
        prompt = None
        if fmt == "peft":
            model = peft.PeftModel.from_pretrained(torch_base(base_name, minilm, labels), str(d)).eval()
            sd = {k: v.detach().numpy() for k, v in peft.get_peft_model_state_dict(model).items()}
            prompt = model if spec.startswith("prompt") else None
            base_out = base_out if prompt is None else run(model.base_model, ids, mask, llama)
        else:
            model = torch_base(base_name, minilm, adapter_model=bool(labels))
            if not labels:
                adapters.init(model)
            model.load_adapter(str(d), use_safetensors=True)
            model.set_active_adapters("t")
            model.eval()
            sd = {k: v.detach().numpy() for k, v in model.state_dict().items() if ".t." in k or k.startswith("heads.t.")}
            sd = {k.removeprefix("bert."): v for k, v in sd.items()}
        missing = [k for k, v in saved.items() if k not in sd or not np.array_equal(sd[k], v)]
        if labels and fmt == "adapterhub":
            missing = [k for k in missing if not k.startswith("heads.")]
        if missing:
            raise SystemExit(f"{case}: {fmt} did not load {missing[:4]}")
        inner = model.base_model.model if fmt == "peft" and not labels and prompt is None else model
        out = run(inner, ids, mask, llama, head=bool(labels), prompt=prompt)
        n_virtual = out.shape[1] - ids.shape[1] if prompt is not None else 0
        version = (peft if fmt == "peft" else adapters).__version__
        record(f"ours__{case}", ids, mask, out, base_out, dict(library=fmt, version=version, torch=torch.__version__,
                                                             spec=spec, head=bool(labels), n_virtual=n_virtual,
                                                             llama=llama))


def randomise(named_params, seed):
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in named_params:
            noise = torch.randn(p.shape, generator=gen) * 0.1
            if "ia3_l" in name or ".loras." in name and p.shape[-1] == 1 or "norm" in name and name.endswith("weight"):
                noise = 1.0 + 5 * noise
            p.copy_(noise.half().float())


def peers_save_own(minilm):
    import adapters
    import peft
    import safetensors.torch as st
    import torch

    for seed, (case, lib, peer) in enumerate(PEER, start=100):
        base_name, d = case.split("__")[0], FIX / "peer" / case
        llama, head = base_name == "tiny-llama", case.endswith("_head")
        ids, mask = batch_for(base_name, minilm)
        base_out = run(torch_base(base_name, minilm), ids, mask, llama)
        if d.exists():
            shutil.rmtree(d)
        torch.manual_seed(seed)
        prompt = None
        if lib == "peft":
            spec = dict(peer)
            kind, task = spec.pop("kind"), spec.pop("task", None)
            model = torch_base(base_name, minilm, labels=3 if head else 0)
            if kind == "lora":
                cfg = peft.LoraConfig(task_type=task, lora_dropout=0.0, **spec)
            elif kind == "ia3":
                cfg = peft.IA3Config(task_type=task, **spec)
            else:
                cfg = peft.PromptTuningConfig(task_type="CAUSAL_LM" if llama else "FEATURE_EXTRACTION", **spec)
            model = peft.get_peft_model(model, cfg).eval()
            randomise([(n, p) for n, p in model.named_parameters() if p.requires_grad], seed)
            model.save_pretrained(str(d))
            (d / "README.md").unlink(missing_ok=True)
            prompt = model if kind == "prompt" else None
            base_out = base_out if prompt is None else run(model.base_model, ids, mask, llama)
            meta = dict(library="peft", version=peft.__version__, peer_config={k: str(v) for k, v in peer.items()})
        else:
            model = torch_base(base_name, minilm, adapter_model=head)
            if not head:
                adapters.init(model)
            model.add_adapter("t", config=peer)
            if head:
                model.add_classification_head("t", num_labels=3)
            model.set_active_adapters("t")
            model.eval()
            randomise([(n, p) for n, p in model.named_parameters() if ".t." in n or n.startswith("heads.t.")], seed)
            if "prefix_tuning" in peer:  # AdapterHub 1.3 cannot save its shared prefix pool as safetensors
                model.save_adapter(str(d), "t")
                sd = torch.load(d / "pytorch_adapter.bin")
                st.save_file({k: v.clone() for k, v in sd.items()}, str(d / "adapter.safetensors"))
                (d / "pytorch_adapter.bin").unlink()
                if (d / "pytorch_model_head.bin").exists():  # the static model's lm_head, saved beside
                    st.save_file(torch.load(d / "pytorch_model_head.bin"), str(d / "model_head.safetensors"))
                    (d / "pytorch_model_head.bin").unlink()
            else:
                model.save_adapter(str(d), "t", use_safetensors=True)
            meta = dict(library="adapterhub", version=adapters.__version__, peer_config=peer)
        inner = model.base_model.model if lib == "peft" and not head and prompt is None else model
        out = run(inner, ids, mask, llama, head=head, prompt=prompt)
        n_virtual = out.shape[1] - ids.shape[1] if prompt is not None else 0
        record(f"peer__{case}", ids, mask, out, base_out, dict(meta, head=head, n_virtual=n_virtual, llama=llama))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("stage", choices=["export", "peers"])
    ap.add_argument("--minilm", default=None)
    args = ap.parse_args()
    FIX.mkdir(parents=True, exist_ok=True)
    if args.stage == "export":
        export(minilm_dir(args.minilm))
    else:
        peers_load_ours(minilm_dir(args.minilm))
        peers_save_own(minilm_dir(args.minilm))


if __name__ == "__main__":
    main()
