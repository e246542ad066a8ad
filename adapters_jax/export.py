"""Merged models out: the base with its LoRA and IA3 adapters folded in, as an HF directory or a GGUF file.

    export_merged(model, params, "out/hf", tokenizer=base.tokenizer)                    # config.json, model.safetensors
    export_merged(model, params, "out/gguf", format="gguf", dtype="float16", tokenizer=base.tokenizer)

What the model computes is what the export computes: every *active* LoRA and
IA3 adapter is folded into the kernel of the projection it acts on (LoRA adds
A B * scaling; IA3 on a projection's output scales the kernel's output columns
and the bias, IA3 on its input (the FFN activation) scales the kernel's input
rows), inactive ones are left out, a model without adapters (full fine-tuning)
is written as it is. Bottleneck, prefix and prompt adapters add computation
that the HF and llama.cpp architectures lack, and are refused (InteropError).

HF tensor names come from the path grammar (`paths.path_to_hf`, the inverse of
the loader's rename + transpose), GGUF names from the GGUF reader's table
(`models.gguf.gguf_name`), with llama.cpp's q/k row permutation (the file and
its vocabulary are written by `models.gguf_write`), so each direction is written once. The destination is written beside and renamed into
place: a failed export leaves nothing at DIR and never replaces a good one;
a non-empty DIR that is not a previous export is refused (docs/export.md).
"""
from __future__ import annotations

import dataclasses
import json
import shutil
import uuid
from pathlib import Path

import numpy as np

from adapters_jax import paths
from adapters_jax.configs import IA3, LoRA
from adapters_jax.errors import ConfigError, InteropError
from adapters_jax.models import family_of, gguf_write, heads
from adapters_jax.modules import hooks
from adapters_jax.modules.lora import lora_delta_kernel

FORMATS = {"hf": ("float32", "float16", "bfloat16"), "gguf": ("float32", "float16")}
MARKER = "adapters_jax_export.json"  # in every export: what was folded; an existing DIR with it may be replaced
GGUF_FILE = "model.gguf"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "vocab.json",
                   "merges.txt", "added_tokens.json", "tokenizer.model", "chat_template.jinja")
# why a method cannot be folded into the base: it adds computation the HF/llama.cpp architecture has no module for
UNFOLDABLE = {
    "bottleneck": "it adds down/up projections (and maybe norms) inside each layer",
    "prefix_tuning": "it adds key/value positions to every attention layer",
    "prompt_tuning": "it prepends soft-prompt embeddings to every input",
}
# HF causal-LM / encoder class per model_type (a model without a head)
BASE_ARCH = {"bert": "BertModel", "roberta": "RobertaModel", "llama": "LlamaForCausalLM",
             "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}
# a Classification head HF has a task model for: (model_type, pooling, hidden_layers) ->
# (architecture, base-name prefix, {our head module: HF module}, base modules the task model lacks)
HEAD_ARCH = {
    ("bert", "pooler", 0): ("BertForSequenceClassification", "bert.", paths.HF_HEAD_NAMES["bert"], ()),
    ("roberta", "cls", 1): ("RobertaForSequenceClassification", "roberta.", paths.HF_HEAD_NAMES["roberta"],
                            ("pooler/",)),
}


# --- folding: pure, on host numpy (float64 arithmetic, cast back to each kernel's dtype) ---

def fold(model, params):
    """(the model without adapters, params of base and head only) that compute what `model` computes.

    Active LoRA and IA3 adapters are folded into the kernels: per projection,
    W' = diag(s_in) (W + sum of LoRA A B * scaling) diag(s_out), b' = b * s_out
    (AdaptedLinear scales the input, adds LoRA on the scaled input, then scales the
    output). Raises InteropError for active adapters that cannot fold, a bank or a
    composition block.
    """
    setup = model.adapters
    flat = paths.flat(params)
    out = {k: v for k, v in flat.items() if paths.parse(k).kind != "adapter"}
    plain = model.clone(adapters=None)
    if setup is None:
        return plain, paths.unflat(out)
    check_foldable(setup)
    delta, s_in, s_out = {}, {}, {}
    for k, v in flat.items():
        p = paths.parse(k)
        if p.kind != "adapter" or p.name not in setup.active:
            continue
        layer = paths.layer_index(k)
        if layer is not None and layer < setup.drop_below:  # AdapterDrop: no adapter runs there
            continue
        named = setup.get(p.name)
        if p.method == "lora" and p.leaf == "lora_A":
            ab = {"lora_A": np.asarray(v, np.float64),
                  "lora_B": np.asarray(flat[k[: -len("lora_A")] + "lora_B"], np.float64)}
            delta[p.module] = delta.get(p.module, 0.0) + lora_delta_kernel(ab, named.of(LoRA)[0])
        elif p.method == "ia3" and p.leaf == "ia3_l":
            modes = {hooks.targets(c, p.module) for c in named.of(IA3)} - {None}
            scales = s_in if modes == {"input"} else s_out
            scales[p.module] = scales.get(p.module, 1.0) * np.asarray(v, np.float64)
    for module in set(delta) | set(s_in) | set(s_out):
        kernel = flat[f"{module}/kernel"]
        w = np.asarray(kernel, np.float64) + delta.get(module, 0.0)
        w = w * np.reshape(s_in.get(module, 1.0), (-1, 1)) * s_out.get(module, 1.0)
        out[f"{module}/kernel"] = w.astype(kernel.dtype)
        if f"{module}/bias" in flat and module in s_out:
            bias = flat[f"{module}/bias"]
            out[f"{module}/bias"] = (np.asarray(bias, np.float64) * s_out[module]).astype(bias.dtype)
    return plain, paths.unflat(out)


def check_foldable(setup) -> None:
    if setup.bank is not None:
        raise InteropError(f"this model runs adapter bank {setup.bank.name!r} (one adapter per example); a merged "
                           "model holds one: export a model with the adapter added alone")
    if setup.composition is not None:
        raise InteropError(f"composition {setup.composition!r} combines bottleneck adapters at run time; it cannot "
                           "be folded into the base weights")
    if setup.drop_n is not None:
        raise InteropError("AdapterDrop with a traced drop_n is a training-time setting; use adapter_drop(model, n)")
    bad = [f"{n!r} ({m.method}: {UNFOLDABLE[m.method]})" for n in setup.active for m in setup.get(n).methods
           if m.method not in ("lora", "ia3")]
    if bad:
        raise InteropError(f"active adapters that cannot be folded into the base: {', '.join(bad)}; the HF and "
                           "llama.cpp architectures have no module for them. Only LoRA and IA3 fold; save the others "
                           "as adapters (aj.save_adapter) or deactivate them (aj.activate)")


# --- HF directory ---

def hf_state(model, params, dtype: str = "float32", drop_head: bool = False) -> tuple[dict, dict]:
    """(HF-named numpy tensors, config.json dict) of a model without adapters (after `fold`)."""
    c = model.config
    arch, prefix, head_names, lacks, extra = BASE_ARCH[c.model_type], "", {}, (), {}
    if model.head is not None and not drop_head:
        arch, prefix, head_names, lacks = head_mapping(model)
        n = model.head.num_labels
        extra = {"id2label": {str(i): f"LABEL_{i}" for i in range(n)}, "label2id": {f"LABEL_{i}": i for i in range(n)}}
        if "pooler/" in lacks:  # RobertaForSequenceClassification has none
            c = dataclasses.replace(c, add_pooling_layer=False)
    cast = np.dtype(_np_dtype(dtype))
    tensors = {}
    for path, v in paths.flat(params).items():
        p = paths.parse(path)
        if p.kind == "head":
            if not head_names:
                continue
            name, transposed = paths.path_to_hf(path)
            name = f"{head_names[path.rsplit('/', 1)[0]]}.{name.rsplit('.', 1)[1]}"
        elif any(path.startswith(m) for m in lacks):
            continue
        else:
            name, transposed = paths.path_to_hf(path, prefix)
        v = np.asarray(v)
        tensors[name] = np.ascontiguousarray(v.T if transposed else v).astype(cast)
    return tensors, {**hf_config(c, arch, dtype), **extra}


def head_mapping(model):
    head = model.head
    key = (model.config.model_type, getattr(head, "pooling", None), getattr(head, "hidden_layers", None))
    if not isinstance(head, heads.Classification) or key not in HEAD_ARCH:
        maps = "; ".join(f"{a}: {t} with Classification(pooling={p!r}, hidden_layers={h})"
                         for (t, p, h), (a, *_) in HEAD_ARCH.items())
        raise InteropError(
            f"the {type(head).__name__} head (pooling={key[1]!r}, hidden_layers={key[2]}) on a {key[0]} model has no "
            f"HF task model that computes the same ({maps}); pass drop_head=True to export the base model alone")
    return HEAD_ARCH[key]


def hf_config(c, architecture: str, dtype: str) -> dict:
    """The HF config.json of family config `c` (config_from_hf of it gives `c` back)."""
    if family_of(c.model_type).FAMILY == "bert":
        keys = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                "hidden_act", "hidden_dropout_prob", "attention_probs_dropout_prob", "max_position_embeddings",
                "type_vocab_size", "layer_norm_eps", "pad_token_id")
        extra = {"position_embedding_type": "absolute"}
        if not c.add_pooling_layer:  # HF's default is a pooler; our loader reads this key
            extra["add_pooling_layer"] = False
    else:
        if c.model_type == "llama" and c.o_bias != c.attention_bias:
            raise InteropError(f"attention_bias={c.attention_bias} with o_bias={c.o_bias}: HF Llama has one flag "
                               "for q/k/v/o biases, so this model has no HF config")
        keys = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "head_dim", "rms_norm_eps", "max_position_embeddings", "tie_word_embeddings",
                "attention_bias", "mlp_bias", "attention_dropout", "pad_token_id", "bos_token_id", "eos_token_id",
                "rope_theta")
        extra = {"hidden_act": "silu", "rope_parameters": {"rope_type": "default", "rope_theta": c.rope_theta}}
        if c.model_type == "mistral":
            extra["sliding_window"] = c.sliding_window
        if c.model_type == "qwen2":
            extra["use_sliding_window"] = False
    return {"architectures": [architecture], "model_type": c.model_type, "dtype": dtype,
            **{k: getattr(c, k) for k in keys}, **extra}


def _np_dtype(dtype: str):
    if dtype == "bfloat16":
        import ml_dtypes

        return ml_dtypes.bfloat16
    return np.dtype(dtype)


def tokenizer_files(tokenizer) -> list[Path] | None:
    """The tokenizer files of directory `tokenizer` (None for a tokenizer object or None); refuses one without any."""
    if not isinstance(tokenizer, (str, Path)):
        return None
    src = Path(tokenizer)
    found = [src / f for f in TOKENIZER_FILES if (src / f).is_file()] if src.is_dir() else []
    if not found:
        raise ConfigError(f"tokenizer={str(tokenizer)!r} is not a directory holding tokenizer files "
                          f"({', '.join(TOKENIZER_FILES[:3])}, ...); pass the tokenizer object (base.tokenizer)")
    return found


def write_tokenizer(tokenizer, dest: Path) -> None:
    """Tokenizer files into `dest`: copied from a directory, or written by the tokenizer object."""
    for f in tokenizer_files(tokenizer) or ():
        shutil.copy2(f, dest / f.name)
    if tokenizer is not None and tokenizer_files(tokenizer) is None:
        tokenizer.save_pretrained(str(dest))
        _portable_tokenizer_class(dest / "tokenizer_config.json")


def _portable_tokenizer_class(path: Path) -> None:
    """transformers 5 names its fast tokenizers' class "TokenizersBackend", which transformers 4 (what PEFT
    users run) cannot load; "PreTrainedTokenizerFast" loads the same tokenizer.json, with the same ids, in both."""
    if not path.is_file():
        return
    cfg = json.loads(path.read_text())
    if cfg.get("tokenizer_class") == "TokenizersBackend":
        cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
        path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n")


# --- GGUF (Llama): what llama.cpp's convert_hf_to_gguf.py writes for LlamaForCausalLM ---

def prepare_gguf(model, params, dtype: str, tokenizer, drop_head: bool):
    """Check a folded Llama model for GGUF and return `write(dir)`; raises before anything is written."""
    from transformers import AutoTokenizer

    c = model.config
    if c.model_type != "llama":
        raise InteropError(f"GGUF export writes Llama models (GGUF architecture 'llama', which our reader and "
                           f"transformers' GGUF loader read back); this is a {c.model_type!r} model: use format='hf'")
    if model.head is not None and not drop_head:
        raise InteropError(f"GGUF holds a causal LM and this model has a {type(model.head).__name__} head; pass "
                           "drop_head=True to export the language model alone, or use format='hf'")
    if c.attention_bias or c.o_bias or c.mlp_bias:
        raise InteropError("this Llama has biases, which transformers' GGUF loader does not read for Llama; use "
                           "format='hf'")
    if tokenizer is None:
        raise ConfigError("GGUF export needs the tokenizer (llama.cpp reads the vocabulary from the file): pass "
                          "tokenizer=base.tokenizer")
    tok = AutoTokenizer.from_pretrained(str(tokenizer)) if tokenizer_files(tokenizer) else tokenizer
    vocab = gguf_write.vocab(tok, c.vocab_size)
    tensors = gguf_write.tensors(hf_state(model, params, "float32", drop_head=True)[0], c, dtype)
    return lambda tmp: gguf_write.write(tmp / GGUF_FILE, c, tensors, vocab, dtype)


# --- the entry point: check everything, fold, write beside, rename ---

def export_merged(model, params, path, format: str = "hf", dtype: str = "float32", tokenizer=None,
                  drop_head: bool = False) -> Path:
    """Write the merged model (active LoRA/IA3 folded into the base) to directory `path`; returns the path.

    format "hf": config.json, model.safetensors (HF names; a mapped classification head as HF's
    classifier) and the tokenizer's files. format "gguf" (Llama models): `path`/model.gguf, written
    with the gguf package as llama.cpp's convert_hf_to_gguf.py writes Llama (tokenizer required).
    dtype: "float32" or "float16" (HF also "bfloat16"). tokenizer: a transformers tokenizer
    (`base.tokenizer`) or a directory to copy tokenizer files from (`base.source` of an HF dir).
    drop_head: export the base without an unmappable head. Refusals (InteropError / ConfigError)
    happen before anything is written; an existing non-empty `path` must be a previous export.
    """
    if format not in FORMATS:
        raise ConfigError(f"format={format!r}; choose one of {sorted(FORMATS)}")
    if dtype not in FORMATS[format]:
        raise ConfigError(f"dtype={dtype!r} for format={format!r}; choose one of {list(FORMATS[format])}")
    dest = Path(path)
    check_destination(dest)
    folded = list(model.adapters.active if model.adapters else ())
    plain, params = fold(model, params)
    if format == "gguf":
        write = prepare_gguf(plain, params, dtype, tokenizer, drop_head)
    else:
        tokenizer_files(tokenizer)  # a directory without tokenizer files is refused here, before writing
        tensors, config = hf_state(plain, params, dtype, drop_head)
        write = lambda tmp: _write_hf(tmp, tensors, config, tokenizer)  # noqa: E731
    info = {"format": "adapters_jax.export/1", "file_format": format, "dtype": dtype,
            "model_type": model.config.model_type, "folded": {n: model.adapters.get(n).spec for n in folded},
            "merged_before": list(model.adapters.merged) if model.adapters else [],
            "head": None if plain.head is None or drop_head else type(plain.head).__name__}
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = _beside(dest, "export")
    try:
        tmp.mkdir()
        write(tmp)
        (tmp / MARKER).write_text(json.dumps(info, indent=1, sort_keys=True) + "\n")
        _swap_in(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def _write_hf(tmp: Path, tensors: dict, config: dict, tokenizer) -> None:
    from safetensors.numpy import save_file

    save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    write_tokenizer(tokenizer, tmp)


def check_destination(dest: Path) -> None:
    """Refuse a file, or a non-empty directory that is not a previous export (it is never clobbered)."""
    if dest.exists() and not dest.is_dir():
        raise ConfigError(f"{dest} exists and is not a directory; export_merged writes a directory")
    if dest.is_dir() and any(dest.iterdir()) and not (dest / MARKER).is_file():
        raise ConfigError(f"{dest} holds files and is not a previous export (no {MARKER}); choose a new or empty "
                          "directory: nothing was written")


def _beside(dest: Path, what: str) -> Path:
    return dest.with_name(f".{dest.name}.{what}-{uuid.uuid4().hex[:12]}")


def _swap_in(tmp: Path, dest: Path) -> None:
    """tmp becomes dest; an existing dest is moved aside first and removed only after the rename."""
    mode = (tmp / MARKER).stat().st_mode & 0o777  # what open() gave under the umask (safetensors writes 0600)
    for f in tmp.iterdir():
        f.chmod(mode)
    if not dest.exists():
        tmp.rename(dest)
        return
    old = _beside(dest, "old")
    dest.rename(old)
    tmp.rename(dest)
    shutil.rmtree(old)
