"""Prompt tuning (Lester et al. 2021): a learned soft prompt in front of the input.

The prompt [P, D] is prepended to the word embeddings before positions and
token types are added (PEFT's placement); the attention mask grows by P ones.
`prompt_init=vocab` starts from P rows of the frozen vocabulary embedding
(PEFT's SAMPLE_VOCAB), `random_uniform` from U(-scale, scale) (AdapterHub's).
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from adapters_jax.configs import PromptTuning


class SoftPrompt(nn.Module):
    """Param prompt_embedding [P, D]."""

    config: PromptTuning
    vocab_table: object = None  # the bound word-embedding table, for prompt_init=vocab

    @nn.compact
    def __call__(self):
        c = self.config
        table = self.vocab_table

        def init(key, shape):
            if c.prompt_init == "vocab":
                rows = jax.random.randint(key, (shape[0],), 0, table.shape[0])
                return jnp.asarray(table)[rows].astype(jnp.float32)
            return jax.random.uniform(key, shape, jnp.float32, -c.random_uniform_scale, c.random_uniform_scale)

        return self.param("prompt_embedding", init, (c.prompt_length, table.shape[1]))
