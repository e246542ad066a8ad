"""Adapter-to-adapter merging: a new named adapter made from weighted existing ones (PEFT's add_weighted_adapter).

    model, params = merge_adapters(model, params, ["a", "b"], [0.7, 0.3], "ab")                  # linear
    model, params = merge_adapters(model, params, ["a", "b", "c"], [1, 1, 1], "abc", combination_type="cat")
    model, params = merge_adapters(model, params, ["a", "b"], [1, 1], "t", combination_type="ties", density=0.5)

LoRA follows PEFT 0.21's `LoraModel.add_weighted_adapter` (docs/merging.md):
"linear"/"ties"/"dare_*"/"magnitude_prune" combine the A's and the B's separately
with weights sqrt(|w*scaling|) (the sign on A), "cat" stacks the A's (times
w*scaling) and the B's, and the "*svd" types combine the updates B A * scaling
and keep the top singular directions. The new LoRA adapter has alpha = r, so
scaling 1. Bottleneck, IA3, prefix and prompt adapters merge leaf by leaf:
"linear" is the weighted sum of each leaf (PEFT's IA3 merge); TIES, DARE and
magnitude pruning (bottleneck and IA3) act on task vectors, each leaf minus
its identity value (1 for IA3 vectors, LayerNorm scales and learned scalings,
0 elsewhere), and add the identity back.

The tensor-level functions (`prune_magnitude`, `prune_random`,
`majority_sign_mask`, `disjoint_merge`, `combine`) mirror peft/utils/merge_utils.py
on task tensors stacked on axis 0.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import jax.numpy as jnp
import numpy as np

from adapters_jax import paths
from adapters_jax.configs import LoRA
from adapters_jax.errors import ConfigError
from adapters_jax.modules import hooks

# the kinds merge_utils knows; a "*_svd" combination type is one of these on LoRA updates, then an SVD
KINDS = ("linear", "ties", "dare_linear", "dare_ties", "magnitude_prune")
SVD_TYPES = ("svd", "ties_svd", "dare_linear_svd", "dare_ties_svd", "magnitude_prune_svd")
COMBINATIONS = KINDS + ("cat",) + SVD_TYPES
# what each method can do; LoRA's A/B-wise kinds need equal ranks (PEFT's rule)
ALLOWED = {
    "lora": COMBINATIONS,
    "bottleneck": KINDS,
    "ia3": KINDS,
    "prefix_tuning": ("linear",),
    "prompt_tuning": ("linear",),
}
_ONES = ("ia3_l", "scaling", "scale")  # leaves whose identity value is 1 (IA3 vectors, learned scalings, LN scales)


# --- merge_utils on task tensors x_NxS (N adapters stacked on axis 0), in float32 numpy as PEFT's torch ---
# Merging runs once, on the host: numpy compiles nothing (eager jnp compiles every op for every new shape).

def prune_magnitude(x, density: float) -> np.ndarray:
    """Keep the int(density * size) largest |x|, zero the rest; density >= 1 keeps all (PEFT's `prune`)."""
    if density >= 1:
        return x
    k = int(density * x.size)
    keep = np.zeros(x.size, x.dtype)
    if k > 0:
        keep[np.argpartition(-np.abs(x).reshape(-1), k - 1)[:k]] = 1
    return x * keep.reshape(x.shape)


def prune_random(x, density: float, rng: np.random.Generator) -> np.ndarray:
    """DARE: keep each entry with probability `density` and rescale by 1/density; density >= 1 keeps all."""
    if density >= 1:
        return x
    return x * (rng.random(x.shape) < density).astype(x.dtype) / np.float32(density)


def majority_sign_mask(x_NxS, method: str = "total") -> np.ndarray:
    """Where each task tensor's sign agrees with the elected sign (by summed value or by count); zeros never agree."""
    sign_NxS = np.sign(x_NxS)
    votes_S = x_NxS.sum(0) if method == "total" else sign_NxS.sum(0)
    return sign_NxS == np.where(votes_S >= 0, 1, -1)


def disjoint_merge(weighted_NxS, mask_NxS) -> np.ndarray:
    """Mean of the agreeing (weighted) entries; 0 where none agrees."""
    kept_S = mask_NxS.sum(0).astype(weighted_NxS.dtype)
    return (weighted_NxS * mask_NxS).sum(0) / np.maximum(kept_S, 1)


def combine(tensors: Sequence, weights: Sequence[float], kind: str, density: float | None = None,
            majority_sign_method: str = "total", rng: np.random.Generator | None = None) -> np.ndarray:
    """One merged tensor from same-shaped task tensors: merge_utils' task_arithmetic / ties / dare_* / magnitude_prune.

    `rng` draws DARE's masks (one per tensor, in order).
    """
    xs = [np.asarray(t, np.float32) for t in tensors]
    if kind in ("ties", "magnitude_prune"):
        xs = [prune_magnitude(x, density) for x in xs]
    elif kind in ("dare_linear", "dare_ties"):
        rng = np.random.default_rng(0) if rng is None else rng
        xs = [prune_random(x, density, rng) for x in xs]
    x_NxS = np.stack(xs)
    w_NxS = np.asarray(weights, np.float32).reshape((-1,) + (1,) * (x_NxS.ndim - 1))
    if kind in ("ties", "dare_ties"):  # the sign is elected on the unweighted (pruned) tensors, as in PEFT
        return disjoint_merge(x_NxS * w_NxS, majority_sign_mask(x_NxS, majority_sign_method))
    return (x_NxS * w_NxS).sum(0)


# --- LoRA ---

def merge_lora_pair(loras: Sequence[dict], configs: Sequence[LoRA], weights: Sequence[float], combination_type: str,
                    new_rank: int, density: float | None = None, majority_sign_method: str = "total",
                    svd_clamp: float | None = None, rng: np.random.Generator | None = None) -> dict:
    """One module's merged {"lora_A" [in, r'], "lora_B" [r', out]} from adapters' {"lora_A" [in, r], "lora_B" [r, out]}.

    `weights` are the user's; each adapter's scaling comes from its config.
    """
    a_IxR = [np.asarray(p["lora_A"], np.float32) for p in loras]
    b_RxO = [np.asarray(p["lora_B"], np.float32) for p in loras]
    if combination_type == "cat":  # exact: [A_1 w_1 s_1 | A_2 w_2 s_2 ...] [B_1; B_2; ...]
        scaled = [a * np.float32(w * c.scaling) for a, c, w in zip(a_IxR, configs, weights)]
        return {"lora_A": np.concatenate(scaled, 1), "lora_B": np.concatenate(b_RxO, 0)}
    if combination_type in KINDS:  # A's and B's combined separately; the sign of w*scaling goes on A only
        ws = [w * c.scaling for w, c in zip(weights, configs)]
        w_a = [math.sqrt(abs(v)) * (1 if v >= 0 else -1) for v in ws]
        w_b = [math.sqrt(abs(v)) for v in ws]
        return {"lora_A": combine(a_IxR, w_a, combination_type, density, majority_sign_method, rng),
                "lora_B": combine(b_RxO, w_b, combination_type, density, majority_sign_method, rng)}
    # svd types: combine the updates in torch's [out, in] layout, keep the top new_rank directions. The SVD runs
    # in float64: PEFT's float32 one is itself up to 8e-6 off on the test fixture (docs/merging.md)
    kind = "linear" if combination_type == "svd" else combination_type[: -len("_svd")]
    deltas_OxI = [(a @ b * np.float32(c.scaling)).T for a, b, c in zip(a_IxR, b_RxO, configs)]
    delta_OxI = combine(deltas_OxI, weights, kind, density, majority_sign_method, rng).astype(np.float64)
    u_OxK, s_K, vh_KxI = np.linalg.svd(delta_OxI, full_matrices=False)
    u_OxR, vh_RxI = u_OxK[:, :new_rank] * s_K[:new_rank], vh_KxI[:new_rank]
    if svd_clamp is not None:  # PEFT clamps both factors to +-(the svd_clamp quantile of their entries)
        hi = np.quantile(np.concatenate([u_OxR.reshape(-1), vh_RxI.reshape(-1)]), svd_clamp)
        u_OxR, vh_RxI = np.clip(u_OxR, -hi, hi), np.clip(vh_RxI, -hi, hi)
    return {"lora_A": vh_RxI.T.astype(np.float32), "lora_B": u_OxR.T.astype(np.float32)}


# --- the model-level entry point ---

def merge_adapters(model, params, names: Sequence[str], weights: Sequence[float], new_name: str,
                   combination_type: str = "linear", density: float | None = None,
                   majority_sign_method: str = "total", svd_rank: int | None = None,
                   svd_clamp: float | None = None, seed: int = 0):
    """Add adapter `new_name`, the weighted combination of adapters `names`; returns (model, params).

    As PEFT: one adapter is always merged "linear"; LoRA's linear/ties/dare/magnitude_prune
    need equal ranks and keep it, "cat" gives the sum of the ranks, the svd types
    `svd_rank` (default: the largest rank); density (0, 1] is required by ties, dare and
    magnitude_prune; `seed` draws DARE's masks. Like add_adapters, the new adapter is
    the only active one; the merged adapters stay in params unchanged. Refused with
    ConfigError (nothing added): a weight count that differs from the name count, an
    unknown name, adapters of different methods, targets or configs, a combination
    type the method cannot do, density or svd settings out of range.
    """
    setup = model.adapters
    if setup is None or not setup.adapters:
        raise ConfigError("this model has no adapters to merge; add them with aj.add_adapters first")
    if isinstance(names, str) or not names:
        raise ConfigError(f"names={names!r}: give a non-empty list of adapter names, e.g. ['a', 'b']")
    names = list(names)
    try:
        weights = [float(w) for w in weights]
    except (TypeError, ValueError) as e:
        raise ConfigError(f"weights={weights!r}: give one number per adapter") from e
    if len(weights) != len(names):
        raise ConfigError(f"{len(weights)} weights for {len(names)} adapters {names}: give one weight per adapter")
    if not all(math.isfinite(w) for w in weights):
        raise ConfigError(f"weights={weights}: every weight must be finite")
    if combination_type not in COMBINATIONS:
        raise ConfigError(f"combination_type={combination_type!r}; valid: {list(COMBINATIONS)}")
    if new_name in setup.names:
        raise ConfigError(f"an adapter named {new_name!r} already exists; choose another new_name")
    named = [setup.get(n) for n in names]  # an unknown name raises, naming the model's adapters
    for a in named:
        if len(a.methods) != 1:
            raise ConfigError(f"adapter {a.name!r} is a union of {[m.method for m in a.methods]}; only adapters of "
                              "a single method can be merged")
    methods = {a.methods[0].method for a in named}
    if len(methods) != 1:
        raise ConfigError(f"adapters {names} are of different methods "
                          f"{ {a.name: a.methods[0].method for a in named} }; only adapters of one method merge")
    method = methods.pop()
    configs = [a.methods[0] for a in named]
    if len(names) == 1:
        combination_type = "linear"  # PEFT: a single adapter can only be scaled
    if combination_type not in ALLOWED[method]:
        raise ConfigError(f"combination_type={combination_type!r} cannot merge {method} adapters; "
                          f"{method} merges with {list(ALLOWED[method])}")
    kind = "linear" if combination_type in ("svd", "cat") else combination_type.removesuffix("_svd")
    if kind != "linear":
        if density is None or not 0 < density <= 1:
            raise ConfigError(f"density={density!r}: {combination_type} needs the kept fraction, in (0, 1]")
        if majority_sign_method not in ("total", "frequency"):
            raise ConfigError(f"majority_sign_method={majority_sign_method!r}; valid: 'total', 'frequency'")
    elif density is not None and not 0 < density <= 1:
        raise ConfigError(f"density={density!r} must be in (0, 1]")

    flat = paths.flat(params)
    leaves = [_leaves_of(flat, n, new_name) for n in names]
    _check_same_leaves(leaves, names, method)
    if method == "ia3":
        _check_ia3_modes(model, named, leaves[0])
    elif method != "lora":
        _check_same_configs(named)
    rng = np.random.default_rng(seed)

    if method == "lora":
        ranks = [c.r for c in configs]
        if combination_type in KINDS and len(set(ranks)) != 1:
            raise ConfigError(f"combination_type={combination_type!r} combines the A's and B's entry by entry and "
                              f"needs equal ranks; ranks are { dict(zip(names, ranks)) }: use 'cat' or an svd type")
        if combination_type == "cat":
            new_rank = sum(ranks)
        elif combination_type in SVD_TYPES:
            if svd_rank is not None and svd_rank < 1:
                raise ConfigError(f"svd_rank={svd_rank}: must be >= 1")
            if svd_clamp is not None and not 0 <= svd_clamp <= 1:
                raise ConfigError(f"svd_clamp={svd_clamp}: a quantile, in [0, 1]")
            new_rank = svd_rank or max(ranks)
        else:
            new_rank = ranks[0]
        merged = _merge_lora(leaves, configs, weights, combination_type, new_rank, density, majority_sign_method,
                             svd_clamp, rng)
        # alpha = r: scaling 1, as PEFT. PEFT 0.21 also copies use_rslora, which makes the scaling sqrt(r); we do not
        new_cfg = dataclasses.replace(configs[0], r=new_rank, alpha=float(new_rank), use_rslora=False)
    else:
        merged = _merge_leafwise(leaves, weights, kind, density, majority_sign_method, rng)
        new_cfg = configs[0]
    new_setup = setup.add(new_name, (new_cfg,)).activate(new_name)
    out = dict(flat)
    out.update({k: jnp.asarray(v, leaves[0][k].dtype) for k, v in merged.items()})
    return model.clone(adapters=new_setup), paths.unflat(out)


def _leaves_of(flat: dict, name: str, new_name: str) -> dict:
    """Adapter `name`'s leaves, keyed by the path they will have under `new_name`."""
    return {paths.rename_adapter(k, name, new_name): v for k, v in flat.items() if paths.adapter_of(k) == name}


def _check_same_leaves(leaves: list[dict], names: list[str], method: str) -> None:
    """The same leaf paths (so the same target modules) in every adapter; the same shapes except LoRA's rank."""
    if not leaves[0]:
        raise ConfigError(f"params hold no leaves of adapter {names[0]!r}")
    for name, other in zip(names[1:], leaves[1:]):
        extra, missing = sorted(set(other) - set(leaves[0])), sorted(set(leaves[0]) - set(other))
        if extra or missing:
            raise ConfigError(f"adapters {names[0]!r} and {name!r} do not sit on the same modules (different "
                              f"targets): only in {name!r}: {extra[:4]}, only in {names[0]!r}: {missing[:4]}")
        if method != "lora":
            bad = [k for k in other if other[k].shape != leaves[0][k].shape]
            if bad:
                raise ConfigError(f"adapters {names[0]!r} and {name!r} differ in shape at {bad[:4]}")


def _check_same_configs(named) -> None:
    """Leaf-wise merging is meaningful only between adapters of one architecture (init and dropout may differ)."""
    def norm(c):
        drop = {f: getattr(type(c), f) for f in ("init_weights", "dropout") if hasattr(c, f)}
        return dataclasses.replace(c, **drop) if drop else c

    first = norm(named[0].methods[0])
    for a in named[1:]:
        c = norm(a.methods[0])
        if c != first:
            diff = [f.name for f in dataclasses.fields(c) if getattr(c, f.name) != getattr(first, f.name)]
            raise ConfigError(f"adapters {named[0].name!r} and {a.name!r} have different configs ({diff}: "
                              f"{[getattr(first, f) for f in diff]} vs {[getattr(c, f) for f in diff]}); "
                              "only adapters of the same config merge leaf by leaf")


def _check_ia3_modes(model, named, leaves: dict) -> None:
    """IA3 vectors merge only where every adapter scales the same side (output, or input for feed-forward)."""
    for k in leaves:
        module = paths.parse(k).module
        modes = {a.name: hooks.targets(a.methods[0], module) for a in named}
        if len(set(modes.values())) != 1:
            raise ConfigError(f"IA3 adapters scale different sides of {module}: {modes} (set feedforward= alike)")


def _merge_lora(leaves, configs, weights, combination_type, new_rank, density, majority_sign_method,
                svd_clamp, rng) -> dict:
    groups = sorted(k[: -len("/lora_A")] for k in leaves[0] if k.endswith("/lora_A"))  # .../<module>/lora/<name>
    if combination_type in SVD_TYPES:
        for g in groups:
            i, o = leaves[0][f"{g}/lora_A"].shape[0], leaves[0][f"{g}/lora_B"].shape[1]
            if new_rank > min(i, o):
                raise ConfigError(f"svd_rank={new_rank} exceeds the largest rank {min(i, o)} that an update of "
                                  f"{paths.parse(g + '/lora_A').module} [{i}, {o}] can have")
    out = {}
    for g in groups:
        pairs = [{"lora_A": lv[f"{g}/lora_A"], "lora_B": lv[f"{g}/lora_B"]} for lv in leaves]
        merged = merge_lora_pair(pairs, configs, weights, combination_type, new_rank, density, majority_sign_method,
                                 svd_clamp, rng)
        out.update({f"{g}/{ab}": v for ab, v in merged.items()})
    return out


def _merge_leafwise(leaves, weights, kind, density, majority_sign_method, rng) -> dict:
    out = {}
    for k in sorted(leaves[0]):
        xs = [lv[k] for lv in leaves]
        if kind == "linear":  # the weighted sum of the leaves themselves (PEFT's IA3 merge)
            out[k] = combine(xs, weights, "linear")
            continue
        one = 1.0 if k.rsplit("/", 1)[-1] in _ONES else 0.0  # task vector: the leaf minus its identity value
        out[k] = one + combine([np.asarray(x, np.float32) - one for x in xs], weights, kind, density,
                               majority_sign_method, rng)
    return out
