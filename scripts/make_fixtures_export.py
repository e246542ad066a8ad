"""Cross-library fixtures for tests/test_export.py: merged models exported by OUR code, read back by transformers.

    .venv/bin/python scripts/make_fixtures_export.py             # writes tests/fixtures/export_ref.{npz,json}
    .venv/bin/python scripts/make_fixtures_export.py --smollm2   # + the real SmolLM2-135M (numbers in docs/export.md)

Stage 1 (.venv, jax) builds every case deterministically (committed tiny bases, adapter and head leaves and the
tiny SmolLM2-shaped model's weights drawn from fixed numpy seeds, SmolLM2's real tokenizer) and exports it with
`adapters_jax.export.export_merged`. Stage 2 runs this file again under .venv-ref (torch + transformers 5,
`--reference DIR`): transformers loads each export (`AutoModelFor*.from_pretrained(dir)`, for GGUF
`from_pretrained(dir, gguf_file="model.gguf")`), tokenizes the text with the exported tokenizer and writes
its outputs. Stage 1 then stores transformers' outputs (a few positions, not weights) and each export's
hash (the files transformers read), so the test re-exports, checks the bytes are the same, and compares
our outputs with transformers' without torch.

Cases: tiny Llama (untied lm_head) + LoRA (q, v, gate, up) + IA3 -> HF; tiny BERT + LoRA + classification
head on the pooler -> BertForSequenceClassification; tiny RoBERTa + LoRA + IA3 + RoBERTa's head ->
RobertaForSequenceClassification; a tiny SmolLM2-shaped Llama (tied embeddings, SmolLM2's 49,152-token
tokenizer) + LoRA + IA3 -> HF (with tokenizer files) and GGUF float32 and float16.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FIX = ROOT / "tests" / "fixtures"
TEXT_IDS = FIX / "smollm2_ref.npz"  # transformers' GGUF tokenization of smollm2_ref.json's text
# export name -> (case, format, dtype)
EXPORTS = {
    "llama": ("llama", "hf", "float32"),
    "bert": ("bert", "hf", "float32"),
    "roberta": ("roberta", "hf", "float32"),
    "smol_hf": ("smol", "hf", "float32"),
    "smol_gguf_f32": ("smol", "gguf", "float32"),
    "smol_gguf_f16": ("smol", "gguf", "float16"),
}
SPECS = {"llama": "lora[r=4,alpha=8,intermediate_lora=true]|ia3", "bert": "lora[r=4]",
         "roberta": "lora[r=4,alpha=16]|ia3", "smol": "lora[r=4]|ia3"}


# --- stage 1: our side (jax) ---

def smollm2_tokenizer(gguf_path=None):
    """SmolLM2's tokenizer rebuilt from its GGUF metadata (our reader), without loading the weights."""
    import gguf

    from adapters_jax.data import assets
    from adapters_jax.models.gguf import metadata, tokenizer_from_gguf

    path = str(gguf_path or assets.model_path("smollm2-135m"))
    reader = gguf.GGUFReader(path)
    return tokenizer_from_gguf(reader, metadata(reader), path)


def tiny_smol_config():
    from adapters_jax.models import llama

    return llama.Config(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-5,
                        rope_theta=1e5, max_position_embeddings=8192, tie_word_embeddings=True,
                        pad_token_id=2, bos_token_id=1, eos_token_id=2)


def drawn(params, seed: int, kinds=("adapter", "head"), scale: float = 1.0):
    """params with every leaf of `kinds` drawn from numpy (fixed seed, sorted paths): IA3/norm scales near 1."""
    import jax.numpy as jnp

    from adapters_jax import paths

    rng = np.random.default_rng(seed)
    flat = paths.flat(params)
    for k in sorted(flat):
        if paths.parse(k).kind in kinds:
            near_one = k.endswith(("ia3_l", "scale"))
            noise = rng.standard_normal(flat[k].shape) * (0.3 if near_one else 0.2) * scale
            flat[k] = jnp.asarray(noise + (1.0 if near_one else 0.0), jnp.float32)
    return paths.unflat(flat)


def batch(vocab: int, pad: int, left: bool):
    """3 x 12 ids: a full row, a right-padded row and (decoders) a left-padded one."""
    rng = np.random.default_rng(0)
    ids = rng.integers(3, vocab, size=(3, 12)).astype(np.int32)
    mask = np.ones((3, 12), np.int32)
    mask[1, 7:] = 0
    if left:
        mask[2, :3] = 0
    else:
        mask[2, 9:] = 0
    ids[mask == 0] = pad
    return ids, mask


def with_adapter(model, params, spec: str, head=None):
    """(model, params) with adapter "task" active and `head`: every new leaf zero here, drawn by `drawn` later.

    What aj.add_adapters builds, shapes from jax.eval_shape instead of an initialising forward pass
    (its values would be overwritten anyway): the cases build in well under a second.
    """
    import jax
    import jax.numpy as jnp

    from adapters_jax import paths
    from adapters_jax.adapter_setup import AdapterSetup
    from adapters_jax.models import family_of

    model = model.clone(adapters=AdapterSetup().add("task", spec).activate("task"), head=head)
    ids = family_of(model.config.model_type).dummy_inputs(model.config)
    shapes = paths.flat(jax.eval_shape(model.init, jax.random.PRNGKey(0), ids)["params"])
    flat = paths.flat(params)
    flat.update({k: jnp.zeros(v.shape, v.dtype) for k, v in shapes.items() if k not in flat})
    return model, paths.unflat(flat)


def build(case: str, tokenizer=None) -> dict:
    """The adapter model of `case`: model, params, tokenizer, inputs (all deterministic)."""
    import jax

    import adapters_jax as aj
    from adapters_jax.models import heads, llama
    from adapters_jax.models.registry import abstract_params

    tok = None
    if case == "llama":
        base = aj.load(FIX / "tiny-llama")
        ids, mask = batch(256, 0, left=True)
        model, params = with_adapter(base.model, base.params, SPECS[case])
    elif case in ("bert", "roberta"):
        base = aj.load(FIX / ("tiny-bert-bf16" if case == "bert" else "tiny-roberta"))
        head = (heads.Classification(3, pooling="pooler") if case == "bert"
                else heads.Classification(2, pooling="cls", hidden_layers=1))
        ids, mask = batch(128, base.config.pad_token_id, left=False)
        model, params = with_adapter(base.model, base.params, SPECS[case], head)
    else:
        config = tiny_smol_config()
        bare = llama.Model(config)
        shapes = jax.tree.map(lambda s: np.zeros(s.shape, np.float32), abstract_params(bare, config))
        base_params = drawn(shapes, 7, kinds=("base",))
        ids = np.load(TEXT_IDS)["input_ids"][None].astype(np.int32)
        mask = np.ones_like(ids)
        model, params = with_adapter(bare, base_params, SPECS[case])
        tok = tokenizer if tokenizer is not None else smollm2_tokenizer()
    params = drawn(params, {"llama": 1, "bert": 2, "roberta": 3, "smol": 4}[case])
    return {"model": model, "params": params, "tokenizer": tok, "ids": ids, "mask": mask}


def export(name: str, built: dict, dest: Path) -> Path:
    from adapters_jax.export import export_merged

    _, fmt, dtype = EXPORTS[name]
    return export_merged(built["model"], built["params"], dest, format=fmt, dtype=dtype, tokenizer=built["tokenizer"])


def tokenizer_fields_equal(ours: Path, theirs: Path) -> list[str]:
    """The tokenizer.* fields of our GGUF that differ from those llama.cpp's converter wrote (empty: none)."""
    import gguf

    a, b = gguf.GGUFReader(str(ours)), gguf.GGUFReader(str(theirs))
    keys = sorted(k for k in set(a.fields) | set(b.fields) if k.startswith("tokenizer."))
    same = lambda k: k in a.fields and k in b.fields and a.fields[k].contents() == b.fields[k].contents()  # noqa: E731
    return [k for k in keys if not same(k)]


def export_hash(path: Path) -> str:
    """sha256 of what transformers reads: the GGUF file, or model.safetensors + config.json."""
    h = hashlib.sha256()
    files = ["model.gguf"] if (path / "model.gguf").exists() else ["model.safetensors", "config.json"]
    for f in files:
        h.update(f.encode())
        h.update((path / f).read_bytes())
    return h.hexdigest()


def lm_summary(logits_1xTxV, ids_T) -> dict:
    """Next-token log-probs of the text (target) and the top-5 ids/log-probs at each position."""
    x = np.asarray(logits_1xTxV, np.float64)[0, :-1]
    logp = x - x.max(-1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
    top5 = np.argsort(-logp, -1)[:, :5]
    return {"target_logp": np.take_along_axis(logp, ids_T[1:, None], -1)[:, 0].astype(np.float32),
            "top5_ids": top5.astype(np.int32), "top5_logp": np.take_along_axis(logp, top5, -1).astype(np.float32)}


def our_outputs(built: dict) -> dict:
    """What the adapter model computes on the case's inputs (logits; for the text, lm_summary)."""
    import jax

    out = jax.jit(built["model"].apply)({"params": built["params"]}, built["ids"], built["mask"])
    if built["tokenizer"] is not None:
        return lm_summary(out, built["ids"][0])
    return {"logits": np.asarray(out, np.float32)}


def smollm2_export(work: Path) -> dict:
    """The real SmolLM2-135M (Q4_1 dequantized) + LoRA + IA3 (small drawn updates) -> GGUF float32 and float16."""
    import adapters_jax as aj

    base = aj.load("smollm2-135m")
    model, params = aj.add_adapters(base, SPECS["smol"], name="task")
    params = drawn(params, 5, scale=0.1)
    ids = np.load(TEXT_IDS)["input_ids"][None].astype(np.int32)
    ours = lm_summary(model.apply({"params": params}, ids), ids[0])
    out = {}
    for dtype in ("float32", "float16"):
        from adapters_jax.export import export_merged

        d = export_merged(model, params, work / f"smollm2_{dtype}", format="gguf", dtype=dtype,
                          tokenizer=base.tokenizer)
        back = aj.load(d / "model.gguf")
        out[dtype] = {"ours_reloaded": lm_summary(back.model.apply({"params": back.params}, ids), ids[0])}
        del back
    return {"adapter_model": ours, **out}


# --- stage 2: transformers (run under .venv-ref) ---

def reference(work: Path) -> None:
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    inputs = np.load(work / "inputs.npz")
    text = json.loads((FIX / "smollm2_ref.json").read_text())["text"]
    out, info = {}, {"transformers": transformers.__version__, "torch": torch.__version__}
    for name, (case, fmt, _) in EXPORTS.items():
        d = str(work / name)
        kw = {"gguf_file": "model.gguf"} if fmt == "gguf" else {}
        ids, mask = torch.tensor(inputs[f"{case}/ids"]).long(), torch.tensor(inputs[f"{case}/mask"]).long()
        if case in ("bert", "roberta"):
            m = AutoModelForSequenceClassification.from_pretrained(d, dtype=torch.float32).eval()
        else:
            m = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager", **kw).eval()
        info[f"{name}/class"] = type(m).__name__
        with torch.no_grad():
            logits = m(input_ids=ids, attention_mask=mask).logits.float().numpy()
        if case == "smol":
            tok_ids = AutoTokenizer.from_pretrained(d, **kw)(text)["input_ids"]
            info[f"{name}/tokenizer_ids_equal"] = tok_ids == inputs["smol/ids"][0].tolist()
            out.update({f"{name}/{k}": v for k, v in lm_summary(logits, inputs["smol/ids"][0]).items()})
        else:
            out[f"{name}/logits"] = logits
    for dtype in ("float32", "float16"):
        d = work / f"smollm2_{dtype}"
        if d.exists():
            ids = inputs["smol/ids"]
            m = AutoModelForCausalLM.from_pretrained(str(d), gguf_file="model.gguf", dtype=torch.float32,
                                                     attn_implementation="eager").eval()
            with torch.no_grad():
                logits = m(input_ids=torch.tensor(ids).long()).logits.float().numpy()
            out.update({f"smollm2_{dtype}/{k}": v for k, v in lm_summary(logits, ids[0]).items()})
            del m
    np.savez(work / "reference.npz", **out)
    (work / "reference.json").write_text(json.dumps(info, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reference", type=Path, help="stage 2 (.venv-ref): read the exports in this directory")
    ap.add_argument("--ref-python", default=str(ROOT / ".venv-ref" / "bin" / "python"))
    ap.add_argument("--smollm2", action="store_true", help="also export the real SmolLM2-135M (minutes, ~1 GB)")
    args = ap.parse_args()
    if args.reference:
        return reference(args.reference)
    work = Path(tempfile.mkdtemp(prefix="export-fixtures-"))
    tok = smollm2_tokenizer()
    built = {case: build(case, tok) for case in SPECS}
    np.savez(work / "inputs.npz", **{f"{c}/{k}": b[k] for c, b in built.items() for k in ("ids", "mask")})
    hashes = {name: export_hash(export(name, built[case], work / name)) for name, (case, _, _) in EXPORTS.items()}
    from adapters_jax.data import assets

    smol_file = assets.model_path("smollm2-135m")
    differ = tokenizer_fields_equal(work / "smol_gguf_f16" / "model.gguf", smol_file)
    assert not differ, f"tokenizer fields that differ from {smol_file.name}: {differ}"
    real = smollm2_export(work) if args.smollm2 else None
    subprocess.run([args.ref_python, __file__, "--reference", str(work)], check=True)
    ref = dict(np.load(work / "reference.npz"))
    info = json.loads((work / "reference.json").read_text())
    diffs = {}
    for name, (case, _, _) in EXPORTS.items():
        ours = our_outputs(built[case])
        key = "logits" if "logits" in ours else "target_logp"
        m = built[case]["mask"].astype(bool) if key == "logits" and case == "llama" else Ellipsis
        diffs[name] = float(np.abs(ours[key][m] - ref[f"{name}/{key}"][m]).max())
        assert name.endswith("f16") or diffs[name] < 1e-5, (name, diffs[name])
    assert all(v for k, v in info.items() if k.endswith("tokenizer_ids_equal")), info
    smollm2 = {}
    for dtype in ("float32", "float16") if real else ():
        theirs = ref.pop(f"smollm2_{dtype}/target_logp")
        smollm2[dtype] = {
            "transformers_vs_adapter_model": float(np.abs(theirs - real["adapter_model"]["target_logp"]).max()),
            "transformers_vs_ours_reloaded": float(np.abs(theirs - real[dtype]["ours_reloaded"]["target_logp"]).max()),
            "top1_agree": float((ref.pop(f"smollm2_{dtype}/top5_ids")[:, 0]
                                 == real["adapter_model"]["top5_ids"][:, 0]).mean())}
        ref.pop(f"smollm2_{dtype}/top5_logp")
    np.savez_compressed(FIX / "export_ref.npz", **ref)
    meta = {"hashes": hashes, "max_abs_diff_ours_vs_transformers": diffs, **info,
            "smol_gguf_tokenizer_fields_differing_from_smollm2_file": differ}
    if smollm2:
        meta["smollm2_135m_next_token_logp"] = smollm2
    elif (FIX / "export_ref.json").exists():  # keep the last real-weight numbers
        old = json.loads((FIX / "export_ref.json").read_text()).get("smollm2_135m_next_token_logp")
        meta.update({"smollm2_135m_next_token_logp": old} if old else {})
    (FIX / "export_ref.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    print(json.dumps(meta, indent=1, sort_keys=True))


if __name__ == "__main__":
    sys.exit(main())
