"""Train state, losses and the jitted train/eval steps.

The state is a plain dict pytree (what Orbax saves): {"step", "trainable",
"opt_state", "rng"}. The frozen base enters each step as an argument that is
never differentiated: the gradient is taken w.r.t. `trainable` only, so XLA
computes no weight gradient for a frozen matrix, and passing it (rather than
closing over it) keeps it out of the compiled program's constants.

Dropout is keyed per example: example i of a batch draws its masks from
fold_in(fold_in(state rng, step), index_i), index_i being its global row in the
data set (batch["index"] from Batches; the row in the batch when absent). The
forward pass is vmapped over examples with those keys, so a step's randomness
does not depend on how the batch is split over devices or hosts.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import optax

from adapters_jax import bank
from adapters_jax.partition import merge


BATCH_KEYS = ("input_ids", "attention_mask", "labels", "example_mask", "index")  # what a classification step reads


def batch_spec(b: int, length: int) -> dict:
    """The abstract classification batch of `b` rows of `length` tokens (for ahead-of-time compilation)."""
    i32, row = jnp.int32, jax.ShapeDtypeStruct((b,), jnp.int32)
    return {"input_ids": jax.ShapeDtypeStruct((b, length), i32), "attention_mask": jax.ShapeDtypeStruct((b, length), i32),
            "labels": row, "example_mask": jax.ShapeDtypeStruct((b,), jnp.bool_), "index": row}


def init_state(trainable, optimizer: optax.GradientTransformation, seed: int) -> dict:
    return {
        "step": jnp.zeros((), jnp.int32),
        "trainable": trainable,
        "opt_state": optimizer.init(trainable),
        "rng": jax.random.PRNGKey(seed),
    }


def classification_loss(logits_BxC, labels_B, example_mask_B):
    """Mean cross-entropy over real rows (padding rows weigh 0), in float32."""
    logits_BxC = logits_BxC.astype(jnp.float32)
    nll_B = optax.softmax_cross_entropy_with_integer_labels(logits_BxC, labels_B)
    w_B = example_mask_B.astype(jnp.float32)
    return (nll_B * w_B).sum() / jnp.maximum(w_B.sum(), 1.0)


def causal_lm_loss(logits_BxTxV, input_ids_BxT, loss_mask_BxT):
    """Next-token cross-entropy on the positions where loss_mask is 1 (the target token's position)."""
    logits_BxTxV = logits_BxTxV[:, :-1].astype(jnp.float32)
    targets_BxT = input_ids_BxT[:, 1:]
    w_BxT = loss_mask_BxT[:, 1:].astype(jnp.float32)
    nll_BxT = optax.softmax_cross_entropy_with_integer_labels(logits_BxTxV, targets_BxT)
    return (nll_BxT * w_BxT).sum() / jnp.maximum(w_BxT.sum(), 1.0)


LM_LOSS_CHUNK = 128  # target tokens per chunk of the memory-lean LM loss


@jax.custom_vjp
def _lm_head_nll_sum(h_NxD, w_DxV, targets_N, weights_N):
    """sum_n weights_n * nll_n with logits_n = h_n @ w, computed chunk by chunk (never all [N, V] logits)."""
    return _lm_head_scan(h_NxD, w_DxV, targets_N, weights_N, grads=False)[0]


def _lm_head_scan(h_NxD, w_DxV, targets_N, weights_N, grads: bool):
    n, d = h_NxD.shape
    c = min(LM_LOSS_CHUNK, n)
    pad = -n % c
    chunks = lambda x: jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1)).reshape(-1, c, *x.shape[1:])
    w_DxV = w_DxV.astype(jnp.float32)

    def body(carry, xs):
        h_CxD, t_C, wt_C = xs
        logits_CxV = jnp.dot(h_CxD.astype(jnp.float32), w_DxV)
        lse_C = jax.nn.logsumexp(logits_CxV, axis=-1)
        nll_C = lse_C - jnp.take_along_axis(logits_CxV, t_C[:, None], axis=-1)[:, 0]
        loss = carry[0] + (nll_C * wt_C).sum()
        if not grads:
            return (loss,), None
        # d(sum wt * nll)/d logits = wt * (softmax - onehot): the gradient leaves the chunk as [C, D] and [D, V]
        dlogits_CxV = (jnp.exp(logits_CxV - lse_C[:, None]) - jax.nn.one_hot(t_C, w_DxV.shape[1])) * wt_C[:, None]
        dw_DxV = carry[1] + jnp.dot(h_CxD.astype(jnp.float32).T, dlogits_CxV)
        return (loss, dw_DxV), jnp.dot(dlogits_CxV, w_DxV.T)

    init = (jnp.zeros((), jnp.float32),) + ((jnp.zeros_like(w_DxV),) if grads else ())
    carry, dh = jax.lax.scan(body, init, (chunks(h_NxD), chunks(targets_N), chunks(weights_N.astype(jnp.float32))))
    if not grads:
        return carry[0], None, None
    return carry[0], dh.reshape(-1, d)[:n], carry[1]


def _lm_head_fwd(h_NxD, w_DxV, targets_N, weights_N):
    loss, dh_NxD, dw_DxV = _lm_head_scan(h_NxD, w_DxV, targets_N, weights_N, grads=True)
    return loss, (dh_NxD.astype(h_NxD.dtype), dw_DxV.astype(w_DxV.dtype), targets_N, weights_N)


def _lm_head_bwd(res, g):
    dh_NxD, dw_DxV, targets_N, weights_N = res
    # integer targets get a float0 cotangent; the weights are a constant mask (no gradient)
    zero_t = jnp.zeros(targets_N.shape, jax.dtypes.float0)
    return g * dh_NxD, g * dw_DxV, zero_t, jnp.zeros_like(weights_N)


_lm_head_nll_sum.defvjp(_lm_head_fwd, _lm_head_bwd)


def lm_output_matrix(params) -> jax.Array | None:
    """The [D, V] output projection of a causal LM's params if it is a plain matrix (tied embedding or an
    adapter-free lm_head); None when the LM head carries adapters (LoRA/IA3 on lm_head)."""
    head = params.get("lm_head")
    if head is not None:
        return head["kernel"] if set(head) == {"kernel"} else None
    embed = params.get("model", {}).get("embed_tokens", {})
    return embed["embedding"].T if set(embed) == {"embedding"} else None


def chunked_causal_lm_loss(h_BxTxD, w_DxV, input_ids_BxT, loss_mask_BxT):
    """causal_lm_loss from the final hidden state, without materializing [B, T, V] logits or their gradient.

    The logits are computed LM_LOSS_CHUNK target tokens at a time; under
    differentiation the forward pass also forms each chunk's gradient (softmax -
    onehot) and keeps only its products with the output matrix and the hidden
    state ([N, D] and [D, V]; the latter is dropped by XLA when that matrix is
    frozen). Peak memory falls by ~3 x B x T x V x 4 bytes (SmolLM2-135M, batch 8,
    seq 128: bench/results/README.md); no logits are recomputed.
    """
    h_NxD = h_BxTxD[:, :-1].reshape(-1, h_BxTxD.shape[-1])
    targets_N = input_ids_BxT[:, 1:].reshape(-1)
    w_N = loss_mask_BxT[:, 1:].reshape(-1).astype(jnp.float32)
    return _lm_head_nll_sum(h_NxD, w_DxV, targets_N, w_N) / jnp.maximum(w_N.sum(), 1.0)


def example_keys(rng, batch):
    """One dropout key per row: fold_in(rng, global example index) (packed rows: their first example)."""
    index_B = batch.get("index")
    if index_B is None:
        index_B = jnp.arange(batch["input_ids"].shape[0], dtype=jnp.int32)
    elif index_B.ndim == 2:
        index_B = index_B[:, 0]
    return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(rng, index_B)


def forward(model, params, batch, deterministic: bool, rng=None, **kw):
    """The model on a batch; batch["adapter_ids"] (when present) routes each row to its adapter bank slot."""
    slots = batch.get("adapter_ids")
    if deterministic:
        m = model if slots is None else bank.route(model, slots)
        return m.apply({"params": params}, batch["input_ids"], batch["attention_mask"], deterministic=True, **kw)

    def one(ids_T, mask_T, key, slot=None):
        m = model if slot is None else bank.route(model, slot[None])
        return m.apply({"params": params}, ids_T[None], mask_T[None], deterministic=False,
                       rngs={"dropout": key}, **kw)[0]

    args = (batch["input_ids"], batch["attention_mask"], example_keys(rng, batch)) + (() if slots is None else (slots,))
    return jax.vmap(one)(*args)


def loss_weight(batch, task: str):
    """What the loss is averaged over: real rows (classification) or target tokens (causal LM)."""
    if task == "classification":
        return batch["example_mask"].astype(jnp.float32).sum()
    return batch.get("loss_mask", batch["attention_mask"])[:, 1:].astype(jnp.float32).sum()


def batch_loss(model, params, batch, deterministic, rng, task: str):
    loss_mask = batch.get("loss_mask", batch["attention_mask"])
    if task == "lm" and (w_DxV := lm_output_matrix(params)) is not None:
        h_BxTxD = forward(model, params, batch, deterministic, rng, return_hidden=True)
        return chunked_causal_lm_loss(h_BxTxD, w_DxV, batch["input_ids"], loss_mask)
    logits = forward(model, params, batch, deterministic, rng)
    if task == "classification":
        return classification_loss(logits, batch["labels"], batch["example_mask"])
    return causal_lm_loss(logits, batch["input_ids"], loss_mask)


def make_train_step(model, optimizer: optax.GradientTransformation, task: str = "classification",
                    axis_name: str | None = None, drop_layers: int = 0) -> Callable:
    """train_step(state, frozen, batch) -> (state, metrics); jit it with donate_argnums=(0,).

    axis_name: inside pmap, the mapped axis. Each device's loss is its rows' sum over the global
    weight, and loss and grads are psum'd: the global mean (pmean of the per-device grads when the
    devices hold equally many real rows, and exact when they do not).
    drop_layers > 0: robust AdapterDrop (Rueckle et al.): each step runs no adapter in its lowest n
    layers, n drawn uniformly from 0..drop_layers by the step's rng (the same n on every device).
    """
    base_model = model

    def train_step(state, frozen, batch):
        rng = jax.random.fold_in(state["rng"], state["step"])
        model = base_model
        if drop_layers:
            n = jax.random.randint(jax.random.fold_in(rng, 0xAD), (), 0, drop_layers + 1)
            model = model.clone(adapters=dataclasses.replace(model.adapters, drop_n=n))
        scale = 1.0
        if axis_name is not None:
            local = jnp.maximum(loss_weight(batch, task), 1.0)
            scale = local / jnp.maximum(jax.lax.psum(loss_weight(batch, task), axis_name), 1.0)

        def loss_fn(trainable):
            return batch_loss(model, merge(trainable, frozen), batch, False, rng, task) * scale

        loss, grads = jax.value_and_grad(loss_fn)(state["trainable"])
        if axis_name is not None:
            loss, grads = jax.lax.psum((loss, grads), axis_name)
        updates, opt_state = optimizer.update(grads, state["opt_state"], state["trainable"])
        trainable = optax.apply_updates(state["trainable"], updates)
        new = {"step": state["step"] + 1, "trainable": trainable, "opt_state": opt_state, "rng": state["rng"]}
        return new, {"loss": loss, "grad_norm": optax.tree.norm(grads)}

    return train_step


def make_eval_step(model) -> Callable:
    """eval_step(trainable, frozen, batch) -> {"correct", "count", "loss_sum"} over real rows."""

    def eval_step(trainable, frozen, batch):
        logits_BxC = forward(model, merge(trainable, frozen), batch, True).astype(jnp.float32)
        w_B = batch["example_mask"].astype(jnp.float32)
        nll_B = optax.softmax_cross_entropy_with_integer_labels(logits_BxC, batch["labels"])
        correct_B = (logits_BxC.argmax(-1) == batch["labels"]).astype(jnp.float32)
        return {"correct": (correct_B * w_B).sum(), "count": w_B.sum(), "loss_sum": (nll_B * w_B).sum()}

    return eval_step
