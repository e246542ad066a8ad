"""The memory-lean causal-LM loss (train/step.py): same value and gradients as the plain [B, T, V] logits path."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import adapters_jax as aj
from adapters_jax.models import llama
from adapters_jax.partition import merge, split
from adapters_jax.train import step as step_lib


def tiny(tie: bool):
    conf = llama.Config(vocab_size=101, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, head_dim=8, tie_word_embeddings=tie,
                        dropout=0.1, attention_dropout=0.1)
    model = llama.Model(conf)
    params = model.init(jax.random.PRNGKey(0), jnp.ones((1, 8), jnp.int32))["params"]
    return model, params


def batch():
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 101, (3, 13))
    mask = np.ones((3, 13), np.int32)
    mask[1, 9:] = 0  # right padding
    loss_mask = mask.copy()
    loss_mask[2, :5] = 0  # a prompt that is not scored
    return {"input_ids": jnp.asarray(ids, jnp.int32), "attention_mask": jnp.asarray(mask),
            "loss_mask": jnp.asarray(loss_mask)}


def plain_loss(model, params, b, rng):
    logits = step_lib.forward(model, params, b, False, rng)
    return step_lib.causal_lm_loss(logits, b["input_ids"], b["loss_mask"])


@pytest.mark.parametrize("tie", [True, False])
@pytest.mark.parametrize("spec", [None, "houlsby[bottleneck=8]"])
def test_chunked_matches_plain(monkeypatch, tie, spec):
    monkeypatch.setattr(step_lib, "LM_LOSS_CHUNK", 7)  # 36 target tokens: 6 chunks, the last one padded
    model, params = aj.add_adapters(tiny(tie), spec, rng=jax.random.PRNGKey(1))
    if spec:  # non-zero adapters, so their gradients are not trivially equal
        params = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(jax.random.PRNGKey(2), x.shape), params)
    extra = [(".*", "base")] if spec is None else []
    labels = aj.labels(model, params, extra=extra)
    trainable, frozen = split(params, labels)
    b, rng = batch(), jax.random.PRNGKey(3)
    assert step_lib.lm_output_matrix(params) is not None
    chunked = lambda t: step_lib.batch_loss(model, merge(t, frozen), b, False, rng, "lm")
    plain = lambda t: plain_loss(model, merge(t, frozen), b, rng)
    l1, g1 = jax.jit(jax.value_and_grad(chunked))(trainable)
    l2, g2 = jax.jit(jax.value_and_grad(plain))(trainable)
    np.testing.assert_allclose(l1, l2, rtol=1e-6)
    for (path, a), c in zip(jax.tree_util.tree_leaves_with_path(g1), jax.tree.leaves(g2)):
        scale = float(jnp.abs(c).max()) + 1e-12
        assert float(jnp.abs(a - c).max()) / scale < 1e-5, jax.tree_util.keystr(path)
    # no differentiation: the primal path gives the same value
    np.testing.assert_allclose(jax.jit(chunked)(trainable), l2, rtol=1e-6)


def test_lm_head_with_adapters_uses_plain_logits():
    model, params = aj.add_adapters(tiny(False), "lora[target=lm_head]", rng=jax.random.PRNGKey(1))
    assert step_lib.lm_output_matrix(params) is None
    model, params = aj.add_adapters(tiny(True), None)
    np.testing.assert_array_equal(step_lib.lm_output_matrix(params), params["model"]["embed_tokens"]["embedding"].T)
