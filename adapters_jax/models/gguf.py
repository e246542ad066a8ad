"""GGUF files (llama.cpp's format): dequantized weights, config and tokenizer from one file.

The `gguf` package reads the file; every tensor (Q4_1, Q8_0, F16, F32, ...) is
dequantized to float32 numpy, renamed to its Hugging Face name (`hf_name`;
unknown names stay as they are) and then goes through the same `hf.to_params`
as a safetensors checkpoint, so missing or mis-shaped tensors get the same errors
(naming the GGUF tensor).

llama.cpp's converter permutes the rows of q_proj and k_proj (within each
head, from HF's "halves" RoPE layout to interleaved pairs); we undo it, as
transformers' own GGUF loader does, so the weights run through our HF-layout
RoPE unchanged.

The tokenizer is rebuilt from the metadata (`tokenizer.ggml.*`): byte-level BPE
(vocab + merges, `tokenizer.ggml.model == "gpt2"`) with the GPT-2
pre-tokenizer (SmolLM2's `smollm` variant also splits digits one by one, as
its tokenizer.json does), wrapped in transformers' `PreTrainedTokenizerFast`.
Other tokenizer kinds load the model with `tokenizer=None` and a warning.
"""
from __future__ import annotations

import re
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from adapters_jax.errors import CheckpointError
from adapters_jax.models import hf, llama
from adapters_jax.models.registry import Loaded, abstract_params, fingerprint

SUPPORTED_ARCHITECTURES = ("llama",)

_GLOBAL_NAMES = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}
_BLOCK_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
_BLOCK_RE = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)$")
_GLOBAL_RE = re.compile(r"(\w+)\.(weight|bias)$")


def hf_name(gguf_name: str) -> str:
    """GGUF tensor name -> HF name; an unknown name is returned as it is (then reported as unexpected)."""
    m = _BLOCK_RE.match(gguf_name)
    if m and m.group(2) in _BLOCK_NAMES:
        return f"model.layers.{m.group(1)}.{_BLOCK_NAMES[m.group(2)]}.{m.group(3)}"
    m = _GLOBAL_RE.match(gguf_name)
    if m and m.group(1) in _GLOBAL_NAMES:
        return f"{_GLOBAL_NAMES[m.group(1)]}.{m.group(2)}"
    return gguf_name


def gguf_name(hf: str) -> str | None:
    """Inverse of hf_name (Llama tensors): `model.layers.3.mlp.up_proj.weight` -> `blk.3.ffn_up.weight`, else None."""
    module, _, leaf = hf.rpartition(".")
    for gg, name in _GLOBAL_NAMES.items():
        if module == name:
            return f"{gg}.{leaf}"
    m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)", module)
    block = {v: k for k, v in _BLOCK_NAMES.items()}.get(m.group(2)) if m else None
    return f"blk.{m.group(1)}.{block}.{leaf}" if block else None


def permute_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's q/k row permutation (convert_hf_to_gguf.py LlamaModel.permute): per head, halves to pairs."""
    half = w.shape[0] // n_head // 2
    return w.reshape(n_head, 2, half, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's q/k row permutation: per head, interleaved pairs back to two halves."""
    half = w.shape[0] // n_head // 2
    return w.reshape(n_head, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def metadata(reader) -> dict:
    """Scalar and string metadata as Python values; the long token arrays are read separately."""
    out = {}
    for key, field in reader.fields.items():
        if key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type", "tokenizer.ggml.scores"):
            continue
        out[key] = field.contents()
    return out


def config_from_gguf(meta: dict, tensor_names: set[str], where: str, **overrides) -> llama.Config:
    arch = meta.get("general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise CheckpointError(
            f"{where}: GGUF architecture {arch!r} is not supported; supported: {list(SUPPORTED_ARCHITECTURES)}"
        )

    def need(key):
        if f"{arch}.{key}" not in meta:
            raise CheckpointError(f"{where}: GGUF metadata lacks {arch}.{key}")
        return meta[f"{arch}.{key}"]

    scaling = meta.get(f"{arch}.rope.scaling.type", "none")
    if scaling != "none" or "rope_freqs.weight" in tensor_names:
        raise CheckpointError(f"{where}: RoPE scaling ({scaling!r} / rope_freqs) is not supported")
    hidden, heads = need("embedding_length"), need("attention.head_count")
    vocab = meta.get(f"{arch}.vocab_size") or meta.get("tokenizer.ggml.vocab_size")
    cfg = llama.Config(
        model_type="llama",
        vocab_size=vocab or 0,  # 0: taken from token_embd below
        hidden_size=hidden,
        intermediate_size=need("feed_forward_length"),
        num_hidden_layers=need("block_count"),
        num_attention_heads=heads,
        num_key_value_heads=meta.get(f"{arch}.attention.head_count_kv", heads),
        head_dim=meta.get(f"{arch}.attention.key_length") or meta.get(f"{arch}.rope.dimension_count") or hidden // heads,
        rms_norm_eps=float(need("attention.layer_norm_rms_epsilon")),
        rope_theta=float(meta.get(f"{arch}.rope.freq_base", 10000.0)),
        max_position_embeddings=meta.get(f"{arch}.context_length", 2048),
        tie_word_embeddings="output.weight" not in tensor_names,
        attention_bias="blk.0.attn_q.bias" in tensor_names,
        o_bias="blk.0.attn_output.bias" in tensor_names,
        pad_token_id=meta.get("tokenizer.ggml.padding_token_id"),
        bos_token_id=meta.get("tokenizer.ggml.bos_token_id"),
        eos_token_id=meta.get("tokenizer.ggml.eos_token_id"),
    )
    return llama.replace(cfg, **overrides)


def load_gguf(path: str | Path, dtype=jnp.float32, param_dtype=jnp.float32, **overrides) -> Loaded:
    """A llama-architecture GGUF file -> `Loaded` (model, float params, tokenizer, config, fingerprint)."""
    import gguf

    path = Path(path)
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as e:  # the reader raises ValueError/struct errors of its own on bad files
        raise CheckpointError(f"{path}: cannot read as GGUF ({e})") from e
    meta = metadata(reader)
    raw = {t.name: t for t in reader.tensors}
    config = config_from_gguf(meta, set(raw), str(path), **overrides)
    if config.vocab_size == 0 and "token_embd.weight" in raw:
        config = llama.replace(config, vocab_size=int(raw["token_embd.weight"].shape[-1]))

    tensors, names = {}, {}
    for name, t in raw.items():
        w = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32)
        kind = name.split(".")[-2] if name.startswith("blk.") else None
        heads = {"attn_q": config.num_attention_heads, "attn_k": config.num_key_value_heads}.get(kind)
        if heads is not None and w.shape[0] == heads * config.head_dim:  # else to_params reports the shape
            w = unpermute_rows(w, heads)
        tensors[hf_name(name)], names[hf_name(name)] = w, name

    model = llama.Model(config, dtype=dtype, param_dtype=param_dtype)
    params = hf.to_params(
        tensors,
        abstract_params(model, config),
        llama.FAMILY,
        dtype=np.dtype(param_dtype),
        where=str(path),
        source_names=names,
    )
    params = jax.tree.map(jnp.asarray, params)
    # Hashes the dequantized params, like every other loader, so a restore can recompute it.
    fp = fingerprint(config, params)
    return Loaded(model, params, tokenizer_from_gguf(reader, meta, str(path)), config, fp, str(path))


def load_tokenizer(path: str | Path):
    """Only the tokenizer of a GGUF file (no weights are read), or None if it has none."""
    import gguf

    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as e:  # as load_gguf
        raise CheckpointError(f"{path}: cannot read as GGUF ({e})") from e
    return tokenizer_from_gguf(reader, metadata(reader), str(path))


def tokenizer_from_gguf(reader, meta: dict, where: str):
    """Byte-level BPE from `tokenizer.ggml.*`, as a PreTrainedTokenizerFast; None if the file has none."""
    kind = meta.get("tokenizer.ggml.model")
    if kind is None:
        return None
    pre = meta.get("tokenizer.ggml.pre", "default")
    if kind != "gpt2" or pre not in ("default", "gpt2", "gpt-2", "smollm"):
        warnings.warn(
            f"{where}: tokenizer {kind!r} with pre-tokenizer {pre!r} is not rebuilt from GGUF metadata "
            "(byte-level BPE with the gpt2/smollm pre-tokenizer only); loading with tokenizer=None"
        )
        return None
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    tokens = reader.fields["tokenizer.ggml.tokens"].contents()
    token_types = reader.fields["tokenizer.ggml.token_type"].contents() if "tokenizer.ggml.token_type" in reader.fields else []
    merges = reader.fields["tokenizer.ggml.merges"].contents()
    # Tokens are stored in the byte-to-unicode alphabet; a few writers store raw UTF-8 instead.
    spelling = bytes_to_unicode()
    alphabet = set(spelling.values())
    respell = lambda t: t if set(t) <= alphabet else "".join(spelling[b] for b in t.encode("utf-8"))
    vocab = {respell(t): i for i, t in enumerate(tokens)}
    bpe = models.BPE(vocab=vocab, merges=[tuple(m.split(" ", 1)) for m in merges], fuse_unk=False)
    tk = Tokenizer(bpe)
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=bool(meta.get("tokenizer.ggml.add_space_prefix", False)))
    digits = [pre_tokenizers.Digits(individual_digits=True)] if pre == "smollm" else []
    tk.pre_tokenizer = pre_tokenizers.Sequence(digits + [byte_level])
    tk.decoder = decoders.ByteLevel()
    control = 3  # llama.cpp's token type for special tokens such as <|im_start|>
    tk.add_special_tokens(
        [AddedToken(t, special=True, normalized=False) for t, ty in zip(tokens, token_types) if ty == control]
    )

    def token(key):
        i = meta.get(f"tokenizer.ggml.{key}")
        return tokens[i] if i is not None and 0 <= i < len(tokens) else None

    bos = token("bos_token_id")
    if meta.get("tokenizer.ggml.add_bos_token", False) and bos is not None:
        tk.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, vocab[respell(bos)])]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token=bos,
        eos_token=token("eos_token_id"),
        unk_token=token("unknown_token_id"),
        pad_token=token("padding_token_id"),
        chat_template=meta.get("tokenizer.chat_template"),
    )
