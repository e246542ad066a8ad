"""What the ablation configs share: the recipe (the make-train run, cut to a budget) and named methods.

A method is a set of config settings (dotted keys), applied by `apply` in a config's finalize(), so a
sweep's factor can be a readable name ("bitfit", "houlsby_m16") instead of a config string.
"""
import ml_collections

from adapters_jax import paths
from adapters_jax.configs import LoRA, to_string
from adapters_jax.sweeps import grid
from experiments.configs import rt_houlsby

SEEDS = [0, 1, 2]


def recipe(max_steps: int = 0, epochs: int = 1, **ablation) -> ml_collections.ConfigDict:
    """The make-train recipe (MiniLM-L6, rt_polarity, batch 32, AdamW 1e-3, base dropout off) for
    `epochs` or `max_steps`, with the swept factors in config.ablation."""
    c = rt_houlsby.get_config()
    c.epochs, c.max_steps = epochs, max_steps
    c.ablation = ml_collections.ConfigDict(ablation)
    return c


def lora(r: int, roles=("q", "v"), alpha: float | None = None) -> str:
    """A LoRA config string on the attention projections `roles` (q, k, v, attn_out), alpha = r unless given."""
    alpha = float(r if alpha is None else alpha)
    if set(roles) <= {"q", "k", "v"}:
        return to_string((LoRA(r=r, alpha=alpha, attn_matrices=tuple(roles)),))
    return to_string((LoRA(r=r, alpha=alpha, target=paths.roles_regex(roles) + "$"),))


def houlsby(m: int, **kw) -> str:
    extra = "".join(f",{k}={v}" for k, v in kw.items())
    return f"houlsby[bottleneck={m},non_linearity=relu{extra}]"


METHODS = {
    "head": {"adapter": "none"},
    "layernorm": {"adapter": "none", "train_rules": [(r"LayerNorm/(scale|bias)$", "norm")]},
    "bitfit": {"adapter": "none", "train_rules": [(r"(^|/)bias$", "bias")]},
    "top2": {"adapter": "none", "train_rules": [(paths.layers_regex([4, 5]), "top")],
             "optimizer.lr": 1e-4},
    "full": {"adapter": "none", "full_finetune": True, "optimizer.lr": 5e-5},
    "houlsby": {"adapter": houlsby(64)},
    "pfeiffer": {"adapter": "pfeiffer[bottleneck=64,non_linearity=relu]"},
    "parallel": {"adapter": "par_bn[bottleneck=64]"},
    "lora": {"adapter": lora(8)},
    "ia3": {"adapter": "ia3", "optimizer.lr": 3e-3},
    "prefix": {"adapter": "prefix_tuning[prefix_length=10]", "optimizer.lr": 3e-3},
    **{f"houlsby_m{m}": {"adapter": houlsby(m)} for m in (1, 2, 4, 8, 16, 32, 64, 128, 256)},
}


def apply(c, settings: dict):
    """Set each dotted key of `settings` on the config (grid.set_value, as a sweep's overrides are)."""
    for key, value in settings.items():
        grid.set_value(c, key, value)
    return c
