"""LoRA and IA3: adapters that act on a Linear projection.

LoRA adds (alpha/r) * dropout(x) @ A @ B to the projection's output, with
A [in, r] initialised as torch's Linear (kaiming uniform, PEFT's default) and
B [r, out] zero, so a fresh adapter is the identity. `merge` folds it into the
kernel; `unmerge` takes it out again.
IA3 multiplies the projection's output (keys, values) or input (the FFN
activation, for targets in `feedforward`) by a learned vector, ones at init.
"""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from adapters_jax.configs import LoRA
from adapters_jax.primitives import Dropout
from adapters_jax.modules.bottleneck import kaiming_uniform_sqrt5


class LoRAUpdate(nn.Module):
    """Params lora_A [in, r], lora_B [r, out]; returns the update to add to the projection's output."""

    config: LoRA
    features: int
    dtype: object = jnp.float32

    @nn.compact
    def __call__(self, x_BxTxI, deterministic):
        c = self.config
        b_init = nn.initializers.normal(0.02) if c.init_weights == "bert" else nn.initializers.zeros
        a_IxR = self.param("lora_A", kaiming_uniform_sqrt5, (x_BxTxI.shape[-1], c.r))
        b_RxO = self.param("lora_B", b_init, (c.r, self.features))
        x_BxTxI = Dropout(c.dropout)(x_BxTxI, deterministic=deterministic)
        h_BxTxR = jnp.dot(x_BxTxI, a_IxR.astype(self.dtype))
        return jnp.dot(h_BxTxR, b_RxO.astype(self.dtype)) * jnp.asarray(c.scaling, self.dtype)


class IA3Scale(nn.Module):
    """Param ia3_l [n], ones at init."""

    size: int
    dtype: object = jnp.float32

    @nn.compact
    def __call__(self, h):
        return h * self.param("ia3_l", nn.initializers.ones, (self.size,)).astype(self.dtype)


def lora_delta_kernel(lora_params: dict, config: LoRA):
    """The kernel-shaped update A @ B * scaling of one LoRA adapter ([in, out])."""
    return (lora_params["lora_A"] @ lora_params["lora_B"]) * config.scaling
