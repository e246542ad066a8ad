"""Bottleneck adapters (Houlsby, Pfeiffer, parallel), with AdapterHub's placement semantics.

At a hook point the model hands over the sublayer output `h` (after its dense
and dropout), the sublayer input `x_in` (the residual) and the block's own
LayerNorm (None for pre-LN decoders, where the hook also adds the residual).
Without adapters the hook computes LayerNorm(h + x_in). With adapters it runs
AdapterHub's pre_forward / forward / post_forward for each active adapter in
turn (its Stack), so `original_ln_before`, `residual_before_ln`, `ln_before`,
`ln_after`, `adapter_residual_before_ln` and `original_ln_after` mean what they
mean there.
"""
from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from adapters_jax.configs import Bottleneck
from adapters_jax.primitives import Dropout, LayerNorm, Linear, activation

def kaiming_uniform_sqrt5(key, shape, dtype=jnp.float32):
    """torch's default Linear init, kaiming_uniform_(a=sqrt(5)): U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(shape[0])
    return jax.random.uniform(key, shape, dtype, -bound, bound)


def _inits(init_weights: str, std: float = 1e-2):
    """(down kernel init, up kernel init) for AdapterHub's init_weights names (+ our 'zero'); `std` is the
    houlsby init's (AdapterHub fixes it at 1e-2; Houlsby et al. Fig. 6 sweeps it)."""
    normal = nn.initializers.normal(0.02)
    trunc = nn.initializers.truncated_normal(std)  # truncated at 2 std, as AdapterHub's houlsby init
    zeros = nn.initializers.zeros
    return {
        "zero": (normal, zeros),
        "bert": (normal, normal),
        "mam_adapter": (kaiming_uniform_sqrt5, zeros),
        "houlsby": (trunc, trunc),
    }[init_weights]


class BottleneckAdapter(nn.Module):
    """down -> non-linearity -> up, times scaling, dropout, with AdapterHub's residual/LN options.

    Params: adapter_down/{kernel,bias}, adapter_up/{kernel,bias}, optional scaling,
    adapter_norm_before, adapter_norm_after.
    """

    config: Bottleneck
    dtype: object = jnp.float32

    @nn.compact
    def __call__(self, x_BxTxD, residual_BxTxD, deterministic):
        c = self.config
        d = x_BxTxD.shape[-1]
        down_init, up_init = _inits(c.init_weights, c.init_std)
        h = LayerNorm(1e-5, self.dtype, name="adapter_norm_before")(x_BxTxD) if c.ln_before else x_BxTxD
        down_BxTxM = Linear(c.size(d), kernel_init=down_init, dtype=self.dtype, name="adapter_down")(h)
        up_BxTxD = Linear(d, kernel_init=up_init, dtype=self.dtype, name="adapter_up")(activation(c.non_linearity)(down_BxTxM))
        if c.scaling == "learned":
            up_BxTxD = up_BxTxD * self.param("scaling", nn.initializers.ones, (1,)).astype(self.dtype)
        elif c.scaling == "channel":
            up_BxTxD = up_BxTxD * self.param("scaling", nn.initializers.ones, (d,)).astype(self.dtype)
        elif c.scaling != 1.0:
            up_BxTxD = up_BxTxD * c.scaling
        out_BxTxD = Dropout(c.dropout)(up_BxTxD, deterministic=deterministic)
        if c.is_parallel:  # the residual is added by the caller (post_forward)
            if c.ln_after:
                out_BxTxD = LayerNorm(1e-5, self.dtype, name="adapter_norm_after")(out_BxTxD)
            return out_BxTxD
        if c.adapter_residual_before_ln:
            out_BxTxD = out_BxTxD + residual_BxTxD
        if c.ln_after:
            out_BxTxD = LayerNorm(1e-5, self.dtype, name="adapter_norm_after")(out_BxTxD)
        if not c.adapter_residual_before_ln:
            out_BxTxD = out_BxTxD + residual_BxTxD
        return out_BxTxD


def _add_and_norm(h, x_in, layer_norm):
    h = h if x_in is None else h + x_in
    return layer_norm(h) if layer_norm is not None else h


def apply_stack(adapters, configs, h_BxTxD, x_in_BxTxD, layer_norm, deterministic):
    """AdapterHub's Stack of bottleneck adapters at one hook point (one adapter = a Stack of one)."""
    input_h_BxTxD = h_BxTxD
    for adapter, c in zip(adapters, configs):
        if c.is_parallel:  # pre_forward of a parallel adapter: it reads the sublayer input
            h_BxTxD = adapter(x_in_BxTxD, x_in_BxTxD, deterministic)
            continue
        residual = h_BxTxD if c.residual_before_ln is True else None
        if c.original_ln_before:
            if x_in_BxTxD is not None:
                h_BxTxD = h_BxTxD + x_in_BxTxD
            if c.residual_before_ln == "post_add":
                residual = h_BxTxD
            if layer_norm is not None:
                h_BxTxD = layer_norm(h_BxTxD)
        if not c.residual_before_ln:
            residual = h_BxTxD
        h_BxTxD = adapter(h_BxTxD, residual, deterministic)
    last = configs[-1]
    if last.is_parallel:  # post_forward of a parallel adapter: add the sublayer output
        h_BxTxD = h_BxTxD + input_h_BxTxD
    if last.original_ln_after:
        h_BxTxD = _add_and_norm(h_BxTxD, x_in_BxTxD, layer_norm)
    return h_BxTxD
