"""Encoder parity against transformers (fixtures from scripts/make_fixtures_bert.py)."""
import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import adapters_jax as aj
from adapters_jax.models import CheckpointError, load_hf_dir

FIX = Path(__file__).parent / "fixtures"
# Max abs differences to transformers (unpadded positions), measured with oneDNN dots / XLA's default dots
# (ADAPTERS_JAX_ONEDNN=0), jax 0.10.2 on the 2-core CPU; each bound is 4x the larger, rounded up to 1, 2 or 5.
# README's Models table quotes these bounds.
MINILM_TOL = 2e-5  # MiniLM-L6 last hidden state: measured 2.9e-6 / 2.5e-6
POOLER_TOL = 1e-6  # MiniLM-L6 pooler output: 1.9e-7 / 1.7e-7
TINY_TOL = 5e-6  # tiny RoBERTa: 6.0e-7 / 4.8e-7; tiny BERT with bf16 weights: 4.8e-7 / 4.8e-7


def unpadded_maxdiff(h, ref, mask):
    return float(np.abs(np.asarray(h, np.float32) - ref)[mask.astype(bool)].max())


@pytest.fixture(scope="module")
def minilm():
    return aj.load("minilm-l6")


def test_minilm_matches_transformers(minilm):
    ref = np.load(FIX / "minilm_hidden.npz")
    ids, mask = jnp.asarray(ref["input_ids"]), jnp.asarray(ref["attention_mask"])
    h = minilm.model.apply({"params": minilm.params}, ids, mask)
    assert h.shape == ref["hidden"].shape
    assert unpadded_maxdiff(h, ref["hidden"], ref["attention_mask"]) <= MINILM_TOL
    assert minilm.fingerprint["num_params"] == 22_713_216
    assert minilm.config.hidden_size == 384 and minilm.config.num_hidden_layers == 6


def test_minilm_pooler_matches_transformers(minilm):
    """BertModel's pooler_output, read where a pooling="pooler" head reads it (an identity out_proj)."""
    ref = np.load(FIX / "minilm_hidden.npz")
    d = minilm.config.hidden_size
    model, params = aj.add_adapters(minilm, None, head=aj.heads.Classification(d, pooling="pooler", dropout=0.0))
    params = {**params, "head": {"out_proj": {"kernel": jnp.eye(d), "bias": jnp.zeros(d)}}}
    pooled = model.apply({"params": params}, jnp.asarray(ref["input_ids"]), jnp.asarray(ref["attention_mask"]))
    assert pooled.shape == ref["pooled"].shape
    diff = float(np.abs(np.asarray(pooled) - ref["pooled"]).max())
    print(f"pooler output: max abs diff {diff:.2e}")
    assert diff <= POOLER_TOL
    assert np.abs(ref["pooled"] - ref["hidden"][:, 0]).max() > 100 * POOLER_TOL  # not the [CLS] state itself


def test_minilm_bf16_compute_close(minilm):
    ref = np.load(FIX / "minilm_hidden.npz")
    model = minilm.model.clone(dtype=jnp.bfloat16)
    h = model.apply({"params": minilm.params}, jnp.asarray(ref["input_ids"]), jnp.asarray(ref["attention_mask"]))
    assert h.dtype == jnp.bfloat16
    assert jax.tree.leaves(minilm.params)[0].dtype == jnp.float32
    # bf16 has 8 mantissa bits: hidden states of norm ~1 agree to a few 1e-2
    assert unpadded_maxdiff(h, ref["hidden"], ref["attention_mask"]) < 0.1


def test_minilm_tokenizer(minilm):
    ref = np.load(FIX / "minilm_hidden.npz")
    ids = minilm.tokenizer("Hello world")["input_ids"]
    n = int(ref["attention_mask"][3].sum())
    assert list(ids) == list(ref["input_ids"][3, :n])


@pytest.mark.parametrize("name", ["tiny-roberta", "tiny-bert-bf16"])
def test_tiny_parity(name):
    ref = np.load(FIX / name / "reference.npz")
    base = load_hf_dir(FIX / name)
    h = base.model.apply({"params": base.params}, jnp.asarray(ref["input_ids"]), jnp.asarray(ref["attention_mask"]))
    assert unpadded_maxdiff(h, ref["hidden"], ref["attention_mask"]) <= TINY_TOL
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(base.params))


def test_dropout_changes_output_only_when_training():
    ref = np.load(FIX / "tiny-roberta" / "reference.npz")
    base = load_hf_dir(FIX / "tiny-roberta", hidden_dropout_prob=0.5)
    ids, mask = jnp.asarray(ref["input_ids"]), jnp.asarray(ref["attention_mask"])
    h_eval = base.model.apply({"params": base.params}, ids, mask)
    h_train = base.model.apply({"params": base.params}, ids, mask, deterministic=False,
                               rngs={"dropout": jax.random.PRNGKey(0)})
    assert unpadded_maxdiff(h_eval, ref["hidden"], ref["attention_mask"]) <= TINY_TOL
    assert float(jnp.abs(h_train - h_eval).max()) > 0.1


def test_remat_same_output_and_grads():
    ref = np.load(FIX / "tiny-roberta" / "reference.npz")
    base = load_hf_dir(FIX / "tiny-roberta")
    remat = load_hf_dir(FIX / "tiny-roberta", remat=True)
    ids, mask = jnp.asarray(ref["input_ids"]), jnp.asarray(ref["attention_mask"])
    f = lambda m: jax.grad(lambda p: m.apply({"params": p}, ids, mask).sum())(base.params)
    g0, g1 = f(base.model), f(remat.model)
    assert max(float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1))) < 1e-5


# --- bad input: each a clear error naming the problem ---

def copy_fixture(tmp_path, name="tiny-roberta"):
    d = tmp_path / name
    shutil.copytree(FIX / name, d)
    return d


def test_pickle_only_dir_refused(tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    shutil.copy(FIX / "tiny-roberta" / "config.json", d)
    (d / "pytorch_model.bin").write_bytes(b"not unpickled")
    with pytest.raises(CheckpointError, match="never unpickles.*safe_serialization"):
        load_hf_dir(d)


def test_unsupported_architecture(tmp_path):
    d = copy_fixture(tmp_path)
    cfg = json.loads((d / "config.json").read_text())
    cfg["model_type"] = "gpt2"
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="unsupported architecture model_type='gpt2'"):
        load_hf_dir(d)


def test_missing_and_misshaped_tensor(tmp_path):
    from safetensors.numpy import load_file, save_file

    d = copy_fixture(tmp_path)
    tensors = load_file(str(d / "model.safetensors"))
    broken = dict(tensors)
    del broken["encoder.layer.1.attention.self.key.weight"]
    save_file(broken, str(d / "model.safetensors"))
    with pytest.raises(CheckpointError, match="missing tensors.*encoder/layer_1/attention/self/key/kernel"):
        load_hf_dir(d)
    broken = dict(tensors)
    broken["encoder.layer.0.intermediate.dense.weight"] = np.zeros((63, 32), np.float32)
    save_file(broken, str(d / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"'encoder.layer.0.intermediate.dense.weight' has shape \(32, 63\)"):
        load_hf_dir(d)


def test_sharded_safetensors(tmp_path):
    from safetensors.numpy import load_file, save_file

    d = copy_fixture(tmp_path)
    tensors = load_file(str(d / "model.safetensors"))
    names = sorted(tensors)
    half = len(names) // 2
    shards = {"model-00001-of-00002.safetensors": names[:half], "model-00002-of-00002.safetensors": names[half:]}
    for fname, keys in shards.items():
        save_file({k: tensors[k] for k in keys}, str(d / fname))
    (d / "model.safetensors").unlink()
    index = {"weight_map": {k: f for f, ks in shards.items() for k in ks}}
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    ref = np.load(d / "reference.npz")
    base = load_hf_dir(d)
    h = base.model.apply({"params": base.params}, jnp.asarray(ref["input_ids"]), jnp.asarray(ref["attention_mask"]))
    assert unpadded_maxdiff(h, ref["hidden"], ref["attention_mask"]) <= TINY_TOL


def test_unknown_name_is_clear():
    with pytest.raises(CheckpointError, match="neither an existing path nor a known asset"):
        aj.load("no-such-model")
