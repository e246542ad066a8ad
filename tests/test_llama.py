"""Decoder parity against transformers (fixtures from scripts/make_fixtures_llama.py; no torch here)."""
import json
import shutil
from pathlib import Path

import gguf
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import adapters_jax as aj
from adapters_jax.models import CheckpointError, llama, load_hf_dir
from adapters_jax.models.gguf import load_gguf

FIX = Path(__file__).parent / "fixtures"
TINY = ["tiny-qwen2", "tiny-mistral", "tiny-llama", "tiny-llama-bf16"]
# Max abs differences to transformers, measured with oneDNN dots / XLA's default dots (ADAPTERS_JAX_ONEDNN=0),
# jax 0.10.2 on the 2-core CPU; each bound is 4x the larger, rounded up to 1, 2 or 5. README's Models table
# quotes SMOLLM2_TOL.
SMOLLM2_TOL = 1e-4  # SmolLM2-135M log-prob of each next token: 2.4e-5 / 2.5e-5 (same dequantized Q4_1 weights)
SMOLLM2_TOP5_TOL = 2e-4  # its top-5 log-probs: 3.2e-5 / 3.4e-5
TINY_TOL = 1e-5  # tiny Qwen2, Mistral, Llama (f32, bf16 weights) logits: at most 1.5e-6 / 1.7e-6


def unpadded_maxdiff(logits, ref, mask):
    return float(np.abs(np.asarray(logits, np.float32) - ref)[mask.astype(bool)].max())


@pytest.fixture(scope="module")
def smollm2():
    return aj.load("smollm2-135m")


@pytest.fixture(scope="module")
def smollm2_ref():
    return np.load(FIX / "smollm2_ref.npz"), json.loads((FIX / "smollm2_ref.json").read_text())


def test_smollm2_config_and_tokenizer(smollm2, smollm2_ref):
    arrays, meta = smollm2_ref
    c = smollm2.config
    assert (c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.num_key_value_heads) == (30, 576, 9, 3)
    assert c.tie_word_embeddings and c.rope_theta == 1e5 and c.vocab_size == 49152
    assert smollm2.fingerprint["num_params"] == 134_515_008
    tok = smollm2.tokenizer
    ids = tok(meta["text"])["input_ids"]
    assert ids == arrays["input_ids"].tolist()  # same ids as transformers' own GGUF tokenizer
    assert tok.decode(ids) == meta["text"]
    assert tok("<|im_start|>user")["input_ids"][0] == tok.convert_tokens_to_ids("<|im_start|>")
    assert tok.eos_token_id == 2 and tok.bos_token_id == 1
    assert tok("in 1984")["input_ids"][-4:] == [tok.convert_tokens_to_ids(d) for d in "1984"]  # smollm: one digit each


def test_smollm2_next_token_logprobs(smollm2, smollm2_ref):
    arrays, _ = smollm2_ref
    ids = jnp.asarray(arrays["input_ids"])[None]
    logits = smollm2.model.apply({"params": smollm2.params}, ids)[0, :-1]
    logp = np.asarray(jax.nn.log_softmax(logits, -1))
    target = np.take_along_axis(logp, arrays["input_ids"][1:, None], -1)[:, 0]
    diff = np.abs(target - arrays["target_logp"]).max()
    assert (logp.argmax(-1) == arrays["top5_ids"][:, 0]).all()
    top5 = np.take_along_axis(logp, arrays["top5_ids"], -1)
    diff5 = np.abs(top5 - arrays["top5_logp"]).max()
    print(f"SmolLM2 next-token log-probs: max abs diff {diff:.2e}, top-5 {diff5:.2e}")
    assert diff <= SMOLLM2_TOL and diff5 <= SMOLLM2_TOP5_TOL


def greedy(model, params, prompt_ids, steps):
    """Greedy decoding without a KV cache: one fixed-length buffer, so one compile.

    Positions after the prompt hold padding, which causal attention never lets
    the earlier positions see.
    """
    n = len(prompt_ids)
    buf = np.zeros((1, n + steps), np.int32)
    buf[0, :n] = prompt_ids
    forward = jax.jit(lambda p, ids: model.apply({"params": p}, ids))
    for i in range(n, n + steps):
        buf[0, i] = int(jnp.argmax(forward(params, jnp.asarray(buf))[0, i - 1]))
    return buf[0, n:].tolist()


def test_smollm2_greedy_paris(smollm2, smollm2_ref):
    _, meta = smollm2_ref
    prompt_ids = smollm2.tokenizer(meta["prompt"])["input_ids"]
    assert prompt_ids == meta["prompt_ids"]
    new_ids = greedy(smollm2.model, smollm2.params, prompt_ids, 3)
    assert smollm2.tokenizer.decode(new_ids).startswith(" Paris")
    assert new_ids == meta["greedy_ids"][:3]


def test_smollm2_bf16_compute(smollm2, smollm2_ref):
    """float32 params, bf16 compute: the model runs, logits stay float32, predictions mostly agree."""
    arrays, _ = smollm2_ref
    model = smollm2.model.clone(dtype=jnp.bfloat16)
    ids = jnp.asarray(arrays["input_ids"])[None]
    hidden = model.apply({"params": smollm2.params}, ids, return_hidden=True)
    assert hidden.dtype == jnp.bfloat16
    logits = model.apply({"params": smollm2.params}, ids)[0, :-1]
    assert logits.dtype == jnp.float32
    logp = np.asarray(jax.nn.log_softmax(logits, -1))
    target = np.take_along_axis(logp, arrays["input_ids"][1:, None], -1)[:, 0]
    # 30 layers of 8-bit mantissas; measured: target log-probs max 0.09 / mean 0.025 off, top-1 39 of 40.
    assert np.abs(target - arrays["target_logp"]).mean() <= 0.1
    assert (logp.argmax(-1) == arrays["top5_ids"][:, 0]).mean() >= 0.9


@pytest.mark.parametrize("name", TINY)
def test_tiny_parity(name):
    loaded = load_hf_dir(FIX / name)
    ref = np.load(FIX / name / "reference.npz")
    logits = loaded.model.apply({"params": loaded.params}, ref["input_ids"], ref["attention_mask"])
    assert logits.shape == ref["logits"].shape and logits.dtype == jnp.float32
    assert unpadded_maxdiff(logits, ref["logits"], ref["attention_mask"]) <= TINY_TOL


def test_tiny_configs_cover_the_variants():
    cfg = {n: load_hf_dir(FIX / n).config for n in TINY}
    assert cfg["tiny-qwen2"].attention_bias and not cfg["tiny-qwen2"].o_bias and cfg["tiny-qwen2"].tie_word_embeddings
    assert cfg["tiny-mistral"].sliding_window == 4 and cfg["tiny-mistral"].head_dim == 8
    assert not cfg["tiny-llama"].tie_word_embeddings
    header = (FIX / "tiny-llama-bf16" / "model.safetensors").read_bytes()[:2000]
    assert b'"BF16"' in header and b'"F32"' not in header


def test_bf16_params_and_compute_run():
    loaded = load_hf_dir(FIX / "tiny-llama", dtype=jnp.bfloat16)
    ref = np.load(FIX / "tiny-llama" / "reference.npz")
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(loaded.params))
    logits = loaded.model.apply({"params": loaded.params}, ref["input_ids"], ref["attention_mask"])
    # logits up to ~2.7 through 2 bf16 layers (8-bit mantissas): measured 0.025 (bf16 params: 0.03).
    assert unpadded_maxdiff(logits, ref["logits"], ref["attention_mask"]) <= 5e-2
    bf16 = load_hf_dir(FIX / "tiny-llama", dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
    assert all(p.dtype == jnp.bfloat16 for p in jax.tree.leaves(bf16.params))
    logits = bf16.model.apply({"params": bf16.params}, ref["input_ids"], ref["attention_mask"])
    assert unpadded_maxdiff(logits, ref["logits"], ref["attention_mask"]) <= 1e-1


def test_remat_dropout_and_hidden():
    loaded = load_hf_dir(FIX / "tiny-llama")
    ref = np.load(FIX / "tiny-llama" / "reference.npz")
    ids, mask = ref["input_ids"], ref["attention_mask"]
    p = {"params": loaded.params}
    remat = llama.Model(llama.replace(loaded.config, remat=True))
    loss = lambda m: lambda p: m.apply(p, ids, mask).mean()
    g0, g1 = jax.grad(loss(loaded.model))(p), jax.grad(loss(remat))(p)
    assert max(float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1))) < 1e-6
    drop = llama.Model(llama.replace(loaded.config, dropout=0.1, attention_dropout=0.1))
    det = drop.apply(p, ids, mask)
    assert unpadded_maxdiff(det, ref["logits"], mask) <= TINY_TOL
    noisy = drop.apply(p, ids, mask, deterministic=False, rngs={"dropout": jax.random.PRNGKey(0)})
    assert unpadded_maxdiff(noisy, ref["logits"], mask) > 1e-2
    hidden = loaded.model.apply(p, ids, mask, return_hidden=True)
    assert hidden.shape == (*ids.shape, loaded.config.hidden_size)


def test_positions_shift_left_padding():
    """Explicit positions: a left-padded row with positions counted from its first token
    gives the same logits as the unpadded sequence."""
    loaded = load_hf_dir(FIX / "tiny-llama")
    ids = np.arange(10, 18, dtype=np.int32)[None]
    padded = np.concatenate([np.zeros((1, 3), np.int32), ids], 1)
    mask = np.concatenate([np.zeros((1, 3), np.int32), np.ones_like(ids)], 1)
    positions = np.clip(np.cumsum(mask, 1) - 1, 0, None)
    apply = lambda *a, **k: loaded.model.apply({"params": loaded.params}, *a, **k)
    np.testing.assert_allclose(apply(padded, mask, positions_BxT=positions)[:, 3:], apply(ids), atol=1e-5)


# --- GGUF: a tiny GGUF written from tiny-llama, the way llama.cpp's converter writes one ---


def permute_rows(w, n_head):
    """llama.cpp's convert_hf_to_gguf permutation of q/k rows (what load_gguf undoes)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_tiny_gguf(path, arch="llama", drop=(), reshape=()):
    cfg = json.loads((FIX / "tiny-llama" / "config.json").read_text())
    tensors = load_file(str(FIX / "tiny-llama" / "model.safetensors"))
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    parts = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
    w = gguf.GGUFWriter(str(path), arch=arch)
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(cfg["num_key_value_heads"])
    w.add_rope_freq_base(cfg["rope_parameters"]["rope_theta"])
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    for hf, value in sorted(tensors.items()):
        if hf.startswith("model.layers."):
            layer, rest = hf.split(".")[2], ".".join(hf.split(".")[3:-1])
            name = f"blk.{layer}.{parts[rest]}.weight"
        else:
            name = names[hf]
        if name.endswith("attn_q.weight"):
            value = permute_rows(value, cfg["num_attention_heads"])
        elif name.endswith("attn_k.weight"):
            value = permute_rows(value, cfg["num_key_value_heads"])
        if name in drop:
            continue
        if name in reshape:
            value = value[:-1]
        w.add_tensor(name, np.ascontiguousarray(value, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_gguf_roundtrip_matches_hf(tmp_path):
    """q/k rows permuted as llama.cpp does; load_gguf must undo it to reproduce transformers' logits."""
    loaded = load_gguf(write_tiny_gguf(tmp_path / "tiny.gguf"))
    ref = np.load(FIX / "tiny-llama" / "reference.npz")
    assert loaded.tokenizer is None and not loaded.config.tie_word_embeddings
    logits = loaded.model.apply({"params": loaded.params}, ref["input_ids"], ref["attention_mask"])
    assert unpadded_maxdiff(logits, ref["logits"], ref["attention_mask"]) <= TINY_TOL


def test_gguf_unsupported_architecture(tmp_path):
    with pytest.raises(CheckpointError, match="GGUF architecture 'falcon' is not supported"):
        load_gguf(write_tiny_gguf(tmp_path / "falcon.gguf", arch="falcon"))


def test_gguf_missing_and_misshaped_tensor(tmp_path):
    with pytest.raises(CheckpointError, match=r"missing tensors .*model/layers_1/mlp/up_proj/kernel"):
        load_gguf(write_tiny_gguf(tmp_path / "a.gguf", drop=("blk.1.ffn_up.weight",)))
    with pytest.raises(CheckpointError, match=r"tensor 'blk.0.attn_k.weight' has shape \(64, 31\)"):
        load_gguf(write_tiny_gguf(tmp_path / "b.gguf", reshape=("blk.0.attn_k.weight",)))


def test_gguf_not_a_gguf(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file at all")
    with pytest.raises(CheckpointError, match="cannot read as GGUF"):
        load_gguf(bad)


# --- HF directories broken at test time ---


def broken_copy(tmp_path, edit_tensors=None, edit_config=None):
    out = tmp_path / "broken"
    shutil.copytree(FIX / "tiny-qwen2", out)
    if edit_tensors:
        tensors = load_file(str(out / "model.safetensors"))
        edit_tensors(tensors)
        save_file(tensors, str(out / "model.safetensors"))
    if edit_config:
        cfg = json.loads((out / "config.json").read_text())
        edit_config(cfg)
        (out / "config.json").write_text(json.dumps(cfg))
    return out


def test_hf_unsupported_architecture(tmp_path):
    out = broken_copy(tmp_path, edit_config=lambda c: c.update(model_type="gpt_neox"))
    with pytest.raises(CheckpointError, match="model_type='gpt_neox'"):
        load_hf_dir(out)


def test_hf_missing_tensor(tmp_path):
    out = broken_copy(tmp_path, edit_tensors=lambda t: t.pop("model.layers.1.self_attn.v_proj.bias"))
    with pytest.raises(CheckpointError, match=r"missing tensors .*model/layers_1/self_attn/v_proj/bias"):
        load_hf_dir(out)


def test_hf_misshaped_tensor(tmp_path):
    def shrink(t):
        t["model.layers.0.mlp.gate_proj.weight"] = t["model.layers.0.mlp.gate_proj.weight"][:100]

    with pytest.raises(CheckpointError, match=r"tensor 'model.layers.0.mlp.gate_proj.weight' has shape \(64, 100\)"):
        load_hf_dir(broken_copy(tmp_path, edit_tensors=shrink))


def test_config_refusals():
    base = json.loads((FIX / "tiny-llama" / "config.json").read_text())
    with pytest.raises(CheckpointError, match="rope_type='llama3'"):
        llama.config_from_hf({**base, "rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5}})
    with pytest.raises(CheckpointError, match="hidden_act='gelu'"):
        llama.config_from_hf({**base, "hidden_act": "gelu"})
    with pytest.raises(ValueError, match="unknown llama Config fields"):
        llama.config_from_hf(base, no_such_field=1)


def test_classification_head_on_decoder():
    loaded = load_hf_dir(FIX / "tiny-qwen2")
    ref = np.load(FIX / "tiny-qwen2" / "reference.npz")
    model, params = aj.add_adapters(loaded, None, head=aj.heads.Classification(3, pooling="last"))
    out = model.apply({"params": params}, ref["input_ids"], ref["attention_mask"])
    assert out.shape == (3, 3)
    assert "head" in params and "embed_tokens" in params["model"]


def test_attention_kv_layouts_agree():
    """The KV cache's heads-major layout ([B, N, S, K]) computes what the projections' slot-major one does:
    grouped-query heads, a padding/causal bias, dropout with the same key, and prefix keys/values in front."""
    from adapters_jax import primitives
    from adapters_jax.modules.prefix import prepend

    ks = jax.random.split(jax.random.PRNGKey(0), 6)
    b, t, s, h, n, k = 2, 3, 5, 6, 2, 8
    q = jax.random.normal(ks[0], (b, t, h, k))
    key, val = jax.random.normal(ks[1], (b, s, n, k)), jax.random.normal(ks[2], (b, s, n, k))
    bias = jnp.where(jax.random.uniform(ks[3], (b, 1, t, s)) < 0.3, jnp.finfo(jnp.float32).min, 0.0)
    heads_major = lambda x: x.transpose(0, 2, 1, 3)
    for rate, deterministic in ((0.0, True), (0.4, False)):
        ref = primitives.attention(q, key, val, bias, rate, ks[4], deterministic)
        got = primitives.attention(q, heads_major(key), heads_major(val), bias, rate, ks[4], deterministic,
                                   kv_layout="BNSK")
        np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=1e-6, atol=1e-6)
    prefix = (jax.random.normal(ks[5], (b, 4, n, k)), jax.random.normal(ks[4], (b, 4, n, k)),
              jnp.asarray([[True, True, False, True], [False, True, True, True]]))
    pk, pv, pbias = prepend(prefix, key, val, bias)
    hk, hv, hbias = prepend(prefix, heads_major(key), heads_major(val), bias, kv_layout="BNSK")
    np.testing.assert_array_equal(np.asarray(hk), np.asarray(heads_major(pk)))
    np.testing.assert_array_equal(np.asarray(hbias), np.asarray(pbias))
    ref = primitives.attention(q, pk, pv, pbias)
    got = primitives.attention(q, hk, hv, hbias, kv_layout="BNSK")
    np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="kv_layout"):
        primitives.attention(q, key, val, bias, kv_layout="SBNK")
