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

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from adapters_jax.partition import merge


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


def example_keys(rng, batch):
    """One dropout key per row: fold_in(rng, global example index) (packed rows: their first example)."""
    index_B = batch.get("index")
    if index_B is None:
        index_B = jnp.arange(batch["input_ids"].shape[0], dtype=jnp.int32)
    elif index_B.ndim == 2:
        index_B = index_B[:, 0]
    return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(rng, index_B)


def forward(model, params, batch, deterministic: bool, rng=None):
    if deterministic:
        return model.apply({"params": params}, batch["input_ids"], batch["attention_mask"], deterministic=True)

    def one(ids_T, mask_T, key):
        return model.apply({"params": params}, ids_T[None], mask_T[None], deterministic=False,
                           rngs={"dropout": key})[0]

    return jax.vmap(one)(batch["input_ids"], batch["attention_mask"], example_keys(rng, batch))


def loss_weight(batch, task: str):
    """What the loss is averaged over: real rows (classification) or target tokens (causal LM)."""
    if task == "classification":
        return batch["example_mask"].astype(jnp.float32).sum()
    return batch.get("loss_mask", batch["attention_mask"])[:, 1:].astype(jnp.float32).sum()


def batch_loss(model, params, batch, deterministic, rng, task: str):
    logits = forward(model, params, batch, deterministic, rng)
    if task == "classification":
        return classification_loss(logits, batch["labels"], batch["example_mask"])
    return causal_lm_loss(logits, batch["input_ids"], batch.get("loss_mask", batch["attention_mask"]))


def make_train_step(model, optimizer: optax.GradientTransformation, task: str = "classification",
                    axis_name: str | None = None) -> Callable:
    """train_step(state, frozen, batch) -> (state, metrics); jit it with donate_argnums=(0,).

    axis_name: inside pmap, the mapped axis. Each device's loss is its rows' sum over the global
    weight, and loss and grads are psum'd: the global mean (pmean of the per-device grads when the
    devices hold equally many real rows, and exact when they do not).
    """

    def train_step(state, frozen, batch):
        rng = jax.random.fold_in(state["rng"], state["step"])
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
