"""Text generation with a KV cache for the decoder family, adapters of every method active.

    outs = aj.generate(model, params, ["The capital of France is"], max_new_tokens=32, tokenizer=tok)
    outs[0].text, outs[0].ids, outs[0].finish_reason        # " Paris.", [...], "stop" | "length"

Prompts of different lengths are left-padded to a length bucket (a power of
two, at least 16) and the cache holds a power-of-two number of slots, so one
compiled prefill and one compiled decode step serve every request of that
(batch, bucket, slots) shape: no recompilation per token or per prompt. Padding
slots are masked and each row's positions count its own tokens, so a row
computes what it would alone. Prefix-tuning prefixes are computed once by the
prefill and kept in the cache; a soft prompt is prepended once, by the prefill.

Sampling: `temperature=0` is greedy (argmax); otherwise logits / temperature,
then top-k, then top-p (nucleus), drawn from `jax.random.fold_in(PRNGKey(seed), step)`.
A row stops at its end-of-sequence token (unless `ignore_eos`) or a `stop`
string (the text ends before it, as OpenAI's API), else after `max_new_tokens`.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from adapters_jax.adapters import route
from adapters_jax.bank import check_ids
from adapters_jax.errors import ConfigError
from adapters_jax.models import kv_cache
from adapters_jax.modules.hooks import prompt_length


@dataclasses.dataclass
class Completion:
    ids: list[int]  # the generated token ids (an end-of-sequence token excluded)
    text: str | None  # decoded, cut before a stop string; None without a tokenizer
    finish_reason: str  # "stop" (end of sequence or a stop string) or "length"


def prompt_bucket(longest: int) -> int:
    """The padded prompt length: a power of two, at least 16."""
    return max(16, 1 << (max(longest, 1) - 1).bit_length())


def _sample(logits_BxV, key, temperature: float, top_k: int, top_p: float, banned):
    """One token per row; `banned` (an id, or -1 for none) can never be drawn (min_new_tokens masks EOS)."""
    neg = jnp.finfo(jnp.float32).min
    logits_BxV = jnp.where(jnp.arange(logits_BxV.shape[-1]) == banned, neg, logits_BxV.astype(jnp.float32))
    if temperature <= 0.0:
        return jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
    logits_BxV = logits_BxV / temperature
    if top_k > 0:
        kth_Bx1 = jax.lax.top_k(logits_BxV, top_k)[0][:, -1:]
        logits_BxV = jnp.where(logits_BxV < kth_Bx1, neg, logits_BxV)
    if top_p < 1.0:
        sorted_BxV = jnp.sort(logits_BxV, axis=-1)[:, ::-1]
        probs_BxV = jax.nn.softmax(sorted_BxV, axis=-1)
        before_BxV = jnp.cumsum(probs_BxV, axis=-1) - probs_BxV  # mass of the tokens ranked above
        cutoff_Bx1 = jnp.min(jnp.where(before_BxV < top_p, sorted_BxV, jnp.inf), axis=-1, keepdims=True)
        logits_BxV = jnp.where(logits_BxV < cutoff_Bx1, neg, logits_BxV)
    return jax.random.categorical(key, logits_BxV, axis=-1).astype(jnp.int32)


def _routed(model, slots_B):
    return model if slots_B is None else route(model, slots_B)


@functools.partial(jax.jit, static_argnums=(0, 7, 8, 9))
def _prefill(model, params, ids_BxT, mask_BxT, positions_BxT, cache, key, temperature, top_k, top_p, banned,
             slots_B=None):
    model = _routed(model, slots_B)
    variables = {"params": params}
    h_BxTxD, cache = model.apply(variables, ids_BxT, mask_BxT, positions_BxT=positions_BxT, cache=cache)
    logits_BxV = model.apply(variables, h_BxTxD[:, -1:], method=model.logits)[:, 0]  # left padded: last is real
    return _sample(logits_BxV, key, temperature, top_k, top_p, banned), cache


@functools.partial(jax.jit, static_argnums=(0, 6, 7, 8), donate_argnums=(4,))
def _decode(model, params, token_B, position_B, cache, key, temperature, top_k, top_p, banned, slots_B=None):
    model = _routed(model, slots_B)
    variables = {"params": params}
    ones_Bx1 = jnp.ones((token_B.shape[0], 1), jnp.int32)
    h_Bx1xD, cache = model.apply(variables, token_B[:, None], ones_Bx1, positions_BxT=position_B[:, None],
                                 cache=cache, prefill=False)
    logits_BxV = model.apply(variables, h_Bx1xD, method=model.logits)[:, 0]
    return _sample(logits_BxV, key, temperature, top_k, top_p, banned), cache


def _encode(prompts, tokenizer) -> list[list[int]]:
    out = []
    for i, p in enumerate(prompts):
        if isinstance(p, str):
            if tokenizer is None:
                raise ConfigError(f"prompt {i} is text but no tokenizer was given; pass tokenizer= or token ids")
            p = tokenizer(p, add_special_tokens=False)["input_ids"]
        p = [int(x) for x in p]
        if not p:
            raise ConfigError(f"prompt {i} is empty; give at least one token")
        out.append(p)
    return out


def _check(model, ids: list[list[int]], max_new_tokens: int, n_soft: int, temperature, top_k, top_p) -> None:
    config = model.config
    if not hasattr(config, "num_key_value_heads"):
        raise ConfigError(f"generate needs a decoder (the Llama family); this model is {config.model_type!r}")
    if max_new_tokens <= 0:
        raise ConfigError(f"max_new_tokens={max_new_tokens} must be >= 1")
    if temperature < 0 or top_k < 0 or not 0.0 < top_p <= 1.0:
        raise ConfigError(f"temperature={temperature} must be >= 0, top_k={top_k} >= 0 and top_p={top_p} in (0, 1]")
    for i, p in enumerate(ids):
        need = len(p) + n_soft + max_new_tokens
        if need > config.max_position_embeddings:
            raise ConfigError(
                f"prompt {i} has {len(p)} tokens{f' + {n_soft} soft-prompt positions' if n_soft else ''} + "
                f"max_new_tokens {max_new_tokens} = {need}, more than the model's context "
                f"({config.max_position_embeddings} positions); shorten the prompt or ask for fewer tokens")
        bad = [x for x in p if not 0 <= x < config.vocab_size]
        if bad:
            raise ConfigError(f"prompt {i} holds token ids outside the vocabulary (0..{config.vocab_size - 1}): {bad[:5]}")


def generate(model, params, prompts: Sequence[str | Sequence[int]], max_new_tokens: int = 32, *,
             temperature: float = 0.0, top_p: float = 1.0, top_k: int = 0, seed: int = 0,
             stop: Sequence[str] | None = None, tokenizer=None, eos_token_id: int | None = None,
             ignore_eos: bool = False, min_new_tokens: int = 0, adapter_ids=None) -> list[Completion]:
    """Complete each prompt (text, with `tokenizer`, or token ids); one `Completion` per prompt, in order.

    `ignore_eos` keeps going past the end-of-sequence token (it is returned like any token);
    `min_new_tokens` bans it for the first steps instead (vLLM's min_tokens, transformers' min_new_tokens).
    `adapter_ids`: with an adapter bank (adapters_jax/bank.py), each prompt's slot (-1: the base); the
    mix is data, so another mix does not recompile.
    """
    ids = _encode(prompts, tokenizer)
    slots_B = None
    if adapter_ids is not None:
        if len(adapter_ids) != len(ids):
            raise ConfigError(f"{len(adapter_ids)} adapter_ids for {len(ids)} prompts; give one per prompt")
        check_ids(model, adapter_ids)
        slots_B = jnp.asarray(adapter_ids, jnp.int32)
    n_soft = prompt_length(model)
    _check(model, ids, max_new_tokens, n_soft, temperature, top_k, top_p)
    if stop and tokenizer is None:
        raise ConfigError("stop strings need a tokenizer (to read the generated text)")
    if eos_token_id is None:
        eos_token_id = getattr(tokenizer, "eos_token_id", None)
        eos_token_id = model.config.eos_token_id if eos_token_id is None else eos_token_id
    ban = lambda step: jnp.int32(eos_token_id if eos_token_id is not None and step < min_new_tokens else -1)
    stop_id = None if ignore_eos else eos_token_id
    b, longest = len(ids), max(len(p) for p in ids)
    t = prompt_bucket(longest)
    slots = kv_cache.slots_for(t, n_soft, max_new_tokens)
    ids_BxT = np.zeros((b, t), np.int32)
    mask_BxT = np.zeros((b, t), np.int32)
    for i, p in enumerate(ids):  # left padding: every row's last column is its last prompt token
        ids_BxT[i, t - len(p):], mask_BxT[i, t - len(p):] = p, 1
    positions_BxT = np.maximum(np.cumsum(mask_BxT, axis=1) - 1, 0).astype(np.int32)
    cache = kv_cache.init(model.config, b, slots, model.dtype)
    key = jax.random.PRNGKey(seed)
    sampling = (float(temperature), int(top_k), float(top_p))
    token_B, cache = _prefill(model, params, ids_BxT, mask_BxT, positions_BxT, cache, key, *sampling, ban(0),
                              slots_B)
    position_B = np.asarray([len(p) for p in ids], np.int32)

    outs = [Completion([], None, "length") for _ in range(b)]
    done = [False] * b
    for step in range(max_new_tokens):
        tokens = np.asarray(token_B)
        for i in range(b):
            if done[i]:
                continue
            if stop_id is not None and int(tokens[i]) == stop_id:
                done[i], outs[i].finish_reason = True, "stop"
                continue
            outs[i].ids.append(int(tokens[i]))
            if stop:
                text = tokenizer.decode(outs[i].ids)
                cut = min((text.find(s) for s in stop if s in text), default=-1)
                if cut >= 0:
                    done[i], outs[i].finish_reason, outs[i].text = True, "stop", text[:cut]
        if all(done) or step == max_new_tokens - 1:
            break
        token_B, cache = _decode(model, params, token_B, position_B + step, cache,
                                 jax.random.fold_in(key, step + 1), *sampling, ban(step + 1), slots_B)
    if tokenizer is not None:
        for o in outs:
            if o.text is None:
                o.text = tokenizer.decode(o.ids)
    return outs
