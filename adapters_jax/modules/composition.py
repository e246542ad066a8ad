"""Composition blocks with AdapterHub's names and semantics, and how they run at a bottleneck hook.

    Stack("a", "b")                           a, then b, at every hook (plain active names mean this too)
    Parallel("a", "b")                        every example through each adapter: the batch is repeated K times
    Fuse("a", "b", name=None)                 AdapterFusion over the adapters' up-projections (its own params)
    Average("a", "b", weights=[0.7, 0.3])     the weighted mean of the adapters' outputs
    BatchSplit("a", "b", batch_sizes=[2, 3])  the first 2 examples through a, the next 3 through b

Children are adapter names or blocks, nested as AdapterHub allows (ALLOWED). The blocks
compose bottleneck adapters (what AdapterHub's Fuse and the hooks here compose); at each
bottleneck hook `compose` runs AdapterHub 1.3's ComposableAdapterLayerBase / BottleneckLayer
logic step for step: a block's first adapter prepares the state (`pre_forward`: residual and
the block's LayerNorm), each child runs on it, and the last adapter applied finishes
(`post_forward`). Two of AdapterHub's behaviours are kept for parity although they surprise:

- Average: AdapterHub 1.3 takes torch.mean over the *weighted* outputs, so the result is
  sum_k w_k h_k / K with weights normalised to sum to 1 (Average("a", "a") is not "a").
- Parallel, Average and BatchSplit prepare the state with their first adapter's options
  (residual_before_ln, original_ln_before) for every child.

Parallel repeats the batch at the model's input (`replicating`), where AdapterHub repeats it at
the first hook; every row computes the same either way, since nothing before that hook mixes rows.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from adapters_jax.errors import ConfigError
from adapters_jax.modules.blocks import Average, Block, Fuse, Fusion, Parallel, Stack
from adapters_jax.primitives import Dropout, Linear




def _value_init(key, shape, dtype=jnp.float32):
    """AdapterHub's value_initialized: identity, 1e-6 everywhere off the diagonal."""
    return jnp.where(jnp.eye(shape[0], shape[1], dtype=bool), 1.0, 1e-6).astype(dtype)


class FusionLayer(nn.Module):
    """AdapterHub's BertFusion: softmax(q(query) . k(up_k)) weighs v(up_k), plus the residual.

    Params: query/{kernel,bias}, key/{kernel,bias}, value/kernel (no bias), each present when
    its config flag is; query and key start as BERT's init (N(0, 0.02), zero bias), value as
    the identity (value_initialized) or BERT's init.
    """

    config: Fusion
    dropout: float = 0.0  # on the attention scores, as AdapterHub (before the softmax)
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, query_BxTxD, up_BxTxKxD, residual_BxTxD, deterministic):
        c = self.config
        d = query_BxTxD.shape[-1]
        bert = nn.initializers.normal(0.02)
        value_BxTxKxD = key_BxTxKxD = up_BxTxKxD
        if c.residual_before:  # AdapterHub adds it in place to the tensor that is both key and value
            value_BxTxKxD = key_BxTxKxD = up_BxTxKxD + residual_BxTxD[:, :, None, :]
        q_BxTxD = Linear(d, kernel_init=bert, dtype=self.dtype, name="query")(query_BxTxD) if c.query else query_BxTxD
        k_BxTxKxD = Linear(d, kernel_init=bert, dtype=self.dtype, name="key")(key_BxTxKxD) if c.key else key_BxTxKxD
        value = (Linear(d, use_bias=False, kernel_init=_value_init if c.value_initialized else bert, dtype=self.dtype,
                        name="value") if c.value else None)
        v_BxTxKxD = value(value_BxTxKxD) if value is not None and c.value_before_softmax else value_BxTxKxD
        scores_BxTxK = jnp.einsum("btd,btkd->btk", q_BxTxD, k_BxTxKxD)
        scores_BxTxK = Dropout(self.dropout)(scores_BxTxK, deterministic=deterministic)
        probs_BxTxK = jax.nn.softmax(scores_BxTxK / 1.0, axis=-1)  # T = 1: temperature annealing is refused
        ctx_BxTxD = jnp.einsum("btk,btkd->btd", probs_BxTxK, v_BxTxKxD)
        if value is not None and not c.value_before_softmax:
            ctx_BxTxD = value(ctx_BxTxD)
        if not c.residual_before:
            ctx_BxTxD = ctx_BxTxD + residual_BxTxD
        return ctx_BxTxD


# --- the forward pass at one hook ---

class State(NamedTuple):
    """AdapterHub's BottleneckState (its layer_norm is the hook's, beside it)."""

    hidden: Any
    input: Any  # the sublayer's input (the transformer residual)
    residual: Any  # the adapters' residual
    up: Any = None  # the last adapter's up-projection (what Fuse attends over)
    last: str | None = None  # the last adapter applied


def _slice(s: State, lo: int, hi: int) -> State:
    cut = lambda x: None if x is None else x[lo:hi]  # noqa: E731
    return State(cut(s.hidden), cut(s.input), cut(s.residual), cut(s.up), s.last)


def _concat(states: list[State]) -> State:
    cat = lambda xs: None if xs[0] is None else jnp.concatenate(xs, 0)  # noqa: E731
    return State(cat([s.hidden for s in states]), cat([s.input for s in states]),
                 cat([s.residual for s in states]), cat([s.up for s in states]), states[-1].last)


class _Hook:
    """One hook's composition: adapters {name: (module, config)}, fusion layers by name, its LayerNorm."""

    def __init__(self, adapters, fusion_layer, layer_norm, deterministic):
        self.adapters, self.fusion_layer = adapters, fusion_layer
        self.layer_norm, self.deterministic = layer_norm, deterministic

    def pre_forward(self, name: str, s: State, fusion: Fusion | None = None):
        """(hidden, query, residual): AdapterHub's Adapter.pre_forward (ParallelAdapter's for is_parallel)."""
        c = self.adapters[name][1]
        h, x_in = s.hidden, s.input
        if c.is_parallel:
            return x_in, (x_in if fusion is not None else None), x_in
        query = residual = None
        if c.residual_before_ln is True:
            residual = h
        if fusion is not None and fusion.query_before_ln:
            query = h
        if c.original_ln_before:
            if x_in is not None:
                h = h + x_in
            if c.residual_before_ln == "post_add":
                residual = h
            if self.layer_norm is not None:
                h = self.layer_norm(h)
        if not c.residual_before_ln:
            residual = h
        if fusion is not None and not fusion.query_before_ln:
            query = h
        return h, query, residual

    def pre_block(self, block, s: State) -> State:
        h, _, residual = self.pre_forward(block.first() if isinstance(block, Block) else block, s)
        return s._replace(hidden=h, residual=residual)

    def single(self, name: str, s: State, need_up: bool) -> State:
        adapter = self.adapters[name][0]
        out = adapter(s.hidden, s.residual, self.deterministic)
        # the up-projection alone (scaled, before dropout): the adapter with a zero residual and no dropout,
        # exact without ln_after (refused under Fuse)
        up = adapter(s.hidden, jnp.zeros_like(s.hidden), True) if need_up else None
        return s._replace(hidden=out, up=up, last=name)

    def compose(self, block: Block, s: State, need_up: bool = False) -> State:
        if isinstance(block, Stack):
            for c in block:
                if isinstance(c, Block):
                    s = self.compose(c, s, need_up)
                elif c in self.adapters:
                    s = self.single(c, self.pre_block(c, s), need_up)
            return s
        if isinstance(block, Fuse):
            return self.fuse(block, s)
        if isinstance(block, Average):
            s = self.pre_block(block, s)
            states = [self._child(c, s, need_up) for c in block if isinstance(c, Block) or c in self.adapters]
            w_K = jnp.asarray(block.weights, jnp.float32).astype(s.hidden.dtype)[:, None, None, None]
            mean = jnp.mean(jnp.stack([x.hidden for x in states], 0) * w_K, axis=0)  # AdapterHub 1.3's mean
            first = states[0]
            return State(mean, first.input, first.residual, first.up, states[-1].last)
        n = s.hidden.shape[0]
        if isinstance(block, Parallel):
            k = len(block)
            if n % k:
                raise ConfigError(f"{block!r}: the batch of {n} rows is not {k} repeats of one batch; call the model "
                                  "activated with this block (it repeats the inputs)")
            bounds = [(i * (n // k), (i + 1) * (n // k)) for i in range(k)]
        else:  # BatchSplit
            if sum(block.batch_sizes) != n:
                raise ConfigError(f"{block!r}: batch_sizes {list(block.batch_sizes)} sum to {sum(block.batch_sizes)}, "
                                  f"but the batch has {n} examples")
            ends = [sum(block.batch_sizes[: i + 1]) for i in range(len(block))]
            bounds = list(zip([0] + ends[:-1], ends))
        s = self.pre_block(block, s)
        parts = [_slice(s, lo, hi) for lo, hi in bounds]
        return _concat([self._child(c, p, need_up) if isinstance(c, Block) or c in self.adapters else p
                        for c, p in zip(block, parts)])

    def _child(self, c, s: State, need_up: bool) -> State:
        return self.compose(c, s, need_up) if isinstance(c, Block) else self.single(c, s, need_up)

    def fuse(self, block: Fuse, s: State) -> State:
        layer, cfg = self.fusion_layer(block.name)
        last = block.last()
        h, query_BxTxD, residual = self.pre_forward(last, s, cfg)  # the last adapter's options, as AdapterHub
        s = s._replace(hidden=h, residual=residual)
        ups = [self._child(c, s, True).up for c in block if isinstance(c, Block) or c in self.adapters]
        if ups:
            h = layer(query_BxTxD, jnp.stack(ups, axis=2), s.residual, self.deterministic)
        return s._replace(hidden=h, last=last)

    def post_forward(self, s: State, input_hidden):
        c = self.adapters[s.last][1]
        h = s.hidden
        if c.is_parallel:
            h = h + input_hidden
        if c.original_ln_after:
            h = h if s.input is None else h + s.input
            h = self.layer_norm(h) if self.layer_norm is not None else h
        return h


def compose(block: Block, adapters: dict, fusion_layer, h_BxTxD, x_in_BxTxD, layer_norm, deterministic):
    """A sublayer's end with `block` active: AdapterHub's BottleneckLayer.bottleneck_layer_forward.

    adapters: {name: (BottleneckAdapter, config)} of the block's adapters at this hook (at least one);
    fusion_layer(name) -> (FusionLayer, Fusion).
    """
    hook = _Hook(adapters, fusion_layer, layer_norm, deterministic)
    s = hook.compose(block, State(h_BxTxD, x_in_BxTxD, x_in_BxTxD))
    if s.last is None:
        raise ConfigError(f"{block!r}: no adapter of the block ran at this hook")
    return hook.post_forward(s, h_BxTxD)


# --- Parallel: the model repeats its inputs ---

def channels(setup) -> int:
    """How many times the active composition repeats the batch (1 without a Parallel block)."""
    block = getattr(setup, "composition", None)
    return block.parallel_channels if block is not None else 1


@functools.cache
def _replicating_class(cls):
    class Replicating(cls):
        """`cls` whose inputs are repeated once per Parallel channel of the active composition."""

        replicates = True

        def __call__(self, input_ids, attention_mask=None, token_type_ids=None, *args, **kwargs):
            k = channels(self.adapters)
            if k > 1:
                rep = lambda x: None if x is None else jnp.tile(x, (k,) + (1,) * (jnp.ndim(x) - 1))  # noqa: E731
                input_ids, attention_mask, token_type_ids = rep(input_ids), rep(attention_mask), rep(token_type_ids)
            return super().__call__(input_ids, attention_mask, token_type_ids, *args, **kwargs)

    Replicating.__name__ = Replicating.__qualname__ = cls.__name__
    return Replicating


def replicating(model):
    """The same model (same fields, same params) as a subclass that repeats its inputs for Parallel."""
    if getattr(type(model), "replicates", False):
        return model
    fields = {f.name: getattr(model, f.name) for f in dataclasses.fields(model) if f.name not in ("parent", "name")}
    return _replicating_class(type(model))(**fields)
