"""Writing a Llama GGUF file as llama.cpp's convert_hf_to_gguf.py writes LlamaForCausalLM: the tensors
under GGUF names (q/k rows permuted), the hyperparameters and the byte-level BPE vocabulary.

    tensors = gguf_write.tensors(hf_state, config, "float16")     # HF name -> array, from export.hf_state
    gguf_write.write(path, config, tensors, gguf_write.vocab(tokenizer, config.vocab_size), "float16")

The reader is models/gguf.py (its name table and row permutation are used here, so each direction is
written once); adapters_jax.export checks a model and folds its adapters before calling this.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from adapters_jax.errors import InteropError
from adapters_jax.models import gguf


def tensors(hf: dict, c, dtype: str) -> dict:
    """HF-named float32 arrays -> GGUF-named arrays in the file's dtype (llama.cpp keeps 1-D norms float32)."""
    out = {}
    for name, v in hf.items():
        gname = gguf.gguf_name(name)
        kind = gname.split(".")[-2] if gname.startswith("blk.") else None
        n_head = {"attn_q": c.num_attention_heads, "attn_k": c.num_key_value_heads}.get(kind)
        v = gguf.permute_rows(v, n_head) if n_head else v
        out[gname] = v.astype(np.float16 if dtype == "float16" and v.ndim > 1 else np.float32)
    return out


def write(file: Path, c, tensors: dict, vocab: dict, dtype: str) -> None:
    import gguf as gg

    w = gg.GGUFWriter(str(file), "llama")
    f16 = dtype == "float16"
    kv = [(w.add_block_count, c.num_hidden_layers), (w.add_context_length, c.max_position_embeddings),
          (w.add_embedding_length, c.hidden_size), (w.add_feed_forward_length, c.intermediate_size),
          (w.add_head_count, c.num_attention_heads), (w.add_head_count_kv, c.num_key_value_heads),
          (w.add_rope_freq_base, c.rope_theta), (w.add_layer_norm_rms_eps, c.rms_norm_eps)]
    if c.head_dim != c.hidden_size // c.num_attention_heads:  # as llama.cpp: only a head_dim config.json names
        kv += [(w.add_key_length, c.head_dim), (w.add_value_length, c.head_dim)]
    kv += [(w.add_file_type, gg.LlamaFileType.MOSTLY_F16 if f16 else gg.LlamaFileType.ALL_F32),
           (w.add_vocab_size, c.vocab_size), (w.add_rope_dimension_count, c.head_dim),
           (w.add_tokenizer_model, "gpt2"), (w.add_tokenizer_pre, vocab["pre"]), (w.add_token_list, vocab["tokens"]),
           (w.add_token_types, vocab["token_types"]), (w.add_token_merges, vocab["merges"])]
    kv += [(getattr(w, f"add_{kind}_token_id"), i) for kind, i in vocab["ids"].items()]
    kv += [(w.add_add_bos_token, vocab["add_bos"]), (w.add_add_space_prefix, vocab["add_space_prefix"])]
    kv += [(w.add_chat_template, vocab["chat_template"])] if vocab["chat_template"] else []
    for add, value in kv + [(w.add_quantization_version, gg.GGML_QUANT_VERSION)]:
        add(value)
    for name, v in tensors.items():
        w.add_tensor(name, v)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def vocab(tok, vocab_size: int) -> dict:
    """tokenizer.ggml.* of a byte-level BPE tokenizer, as llama.cpp's get_vocab_base + SpecialVocab write them."""
    spec = json.loads(tok.backend_tokenizer.to_str())
    pre = _pre_name(spec.get("pre_tokenizer"))
    if spec["model"]["type"] != "BPE" or pre is None:
        raise InteropError(
            f"GGUF export writes byte-level BPE tokenizers with the GPT-2 or SmolLM pre-tokenizer (the ones our GGUF "
            f"reader rebuilds); this one is {spec['model']['type']} with pre-tokenizer {spec.get('pre_tokenizer')}")
    reverse = {i: t for t, i in tok.get_vocab().items()}
    if max(reverse) >= vocab_size:
        raise InteropError(f"the tokenizer has token id {max(reverse)} but the model's vocabulary is {vocab_size}")
    added, decoder = tok.get_added_vocab(), tok.added_tokens_decoder
    tokens, types = [], []
    for i in range(vocab_size):
        t, kind = reverse.get(i, f"[PAD{i}]"), 1 if i in reverse else 5  # NORMAL, UNUSED
        if t in added:
            if not decoder[i].normalized:
                t = tok.decode(tok.encode(t, add_special_tokens=False))
            special = decoder[i].special or t in ("<pad>", "<mask>") or (t.startswith("<|") and t.endswith("|>"))
            kind = 3 if special else 4  # CONTROL, USER_DEFINED
        tokens.append(t)
        types.append(kind)
    space = chr(ord(" ") + 256)  # gguf.SpecialVocab's spelling of a space inside a merge
    byte_level = spec["pre_tokenizer"] if pre == "gpt-2" else spec["pre_tokenizer"]["pretokenizers"][-1]
    merges = [m if isinstance(m, str) else " ".join(p.replace(" ", space) for p in m) for m in spec["model"]["merges"]]
    ids = {k: getattr(tok, f"{k}_token_id") for k in ("bos", "eos", "unk", "pad")}
    bos = ids["bos"]
    return {"pre": pre, "tokens": tokens, "token_types": types, "merges": merges,
            "ids": {k: int(v) for k, v in ids.items() if v is not None and v < vocab_size},
            "add_bos": bos is not None and tok("a")["input_ids"][:1] == [bos],
            "add_space_prefix": bool(byte_level.get("add_prefix_space", False)),
            "chat_template": tok.chat_template if isinstance(tok.chat_template, str) else None}


def _pre_name(pre: dict | None) -> str | None:
    """llama.cpp's tokenizer.ggml.pre for the pre-tokenizers our reader rebuilds: 'gpt-2' or 'smollm'."""
    if pre is None:
        return None
    if pre["type"] == "ByteLevel" and pre.get("use_regex", True):
        return "gpt-2"
    parts = pre.get("pretokenizers", []) if pre["type"] == "Sequence" else []
    if (len(parts) == 2 and parts[0]["type"] == "Digits" and parts[0].get("individual_digits")
            and parts[1]["type"] == "ByteLevel" and parts[1].get("use_regex", True)):
        return "smollm"
    return None
