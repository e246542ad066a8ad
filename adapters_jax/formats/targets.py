"""Which modules an adapter acts on, in three spellings: our regex + leave_out, PEFT's target_modules, AdapterHub's keys.

Each translation goes through the one exact thing all three describe: the set of
module paths (ours: `encoder/layer_0/attention/self/query`) an adapter hooks.
Reading, a peer's config is evaluated on this model's modules (PEFT's matching
rule ported as it is in peft 0.21 `check_target_module_exists`); writing, the
set is spelled in the peer's terms and evaluated back, so a spelling that would
select other modules is never written.
"""
from __future__ import annotations

import re
from collections import defaultdict

from adapters_jax import paths
from adapters_jax.errors import InteropError
from adapters_jax.formats.base import ModelInfo

_SPLIT = re.compile(r"^(?P<pre>.*?)(?P<cont>layers?)_(?P<i>\d+)/(?P<rest>.+)$")
# PEFT's defaults when a config has no target_modules (peft.utils.constants, 0.21), per family
PEFT_DEFAULT_LORA = {"bert": ["query", "value"], "llama": ["q_proj", "v_proj"]}
PEFT_DEFAULT_IA3 = {"bert": (["key", "value", "output.dense"], ["output.dense"]),
                    "llama": (["k_proj", "v_proj", "down_proj"], ["down_proj"])}
# the projections AdapterHub 1.3 wraps for LoRA/IA3, by its keys (models/bert/mixin_bert.py, models/llama/mixin_llama.py)
AH_LINEAR = {
    "bert": {"q": "attention/self/query", "k": "attention/self/key", "v": "attention/self/value",
             "intermediate": "intermediate/dense", "output": "output/dense"},
    "llama": {"q": "self_attn/q_proj", "k": "self_attn/k_proj", "v": "self_attn/v_proj",
              "intermediate": "mlp/down_proj", "output": "mlp/up_proj"},
}


def split_layer(path: str):
    m = _SPLIT.match(path)
    return (m.group("pre"), m.group("cont"), int(m.group("i")), m.group("rest")) if m else None


def layers_of(mods) -> set[int]:
    return {s[2] for s in map(split_layer, mods) if s is not None}


# --- ours: target regex (re.search on module paths) + leave_out ---

def our_regex(mods: set[str], leave_out: set[int], info: ModelInfo) -> str:
    """A target regex that, with `leave_out`, selects exactly `mods` among the hookable modules."""
    keep = set(range(info.num_layers)) - set(leave_out)
    groups: dict = defaultdict(set)
    alts = []
    for m in sorted(mods):
        s = split_layer(m)
        if s is None:
            alts.append(f"^{m}$")
        else:
            groups[(s[1], s[3])].add(s[2])
    by_layers: dict = defaultdict(list)
    for (cont, rest), ls in groups.items():
        by_layers[(cont, frozenset(ls))].append(rest)
    for (cont, ls), rests in sorted(by_layers.items(), key=lambda kv: (kv[0][0], sorted(kv[0][1]))):
        lay = r"\d+" if ls == keep else "(" + "|".join(str(i) for i in sorted(ls)) + ")"
        body = rests[0] if len(rests) == 1 else "(" + "|".join(sorted(rests)) + ")"
        alts.append(f"{cont}_{lay}/{body}$")
    rx = "|".join(alts)
    got = {m for m in info.hookable if re.search(rx, m) and paths.layer_index(m) not in leave_out}
    if got != set(mods):
        raise InteropError(f"internal: target regex {rx!r} selects {sorted(got ^ set(mods))[:4]} differently")
    return rx


def leave_out_for(mods, info: ModelInfo) -> tuple[int, ...]:
    used = layers_of(mods)
    return tuple(i for i in range(info.num_layers) if i not in used) if used else ()


# --- PEFT: target_modules (list of name suffixes, or a regex fullmatched), layers_to_transform, exclude_modules ---

def peft_match(cfg: dict, key: str) -> bool:
    """peft 0.21's check_target_module_exists, for a module named `key` on the torch side."""
    ex = cfg.get("exclude_modules")
    if ex:
        if isinstance(ex, str):
            if re.fullmatch(ex, key):
                return False
        elif key in ex or any(key.endswith(f".{e}") for e in ex):
            return False
    if any(re.match(rf"(^|.*\.){m}($|\..*)", key) for m in cfg.get("modules_to_save") or ()):
        return False
    tm = cfg.get("target_modules")
    if isinstance(tm, str):
        return re.fullmatch(tm, key) is not None
    if key in tm:
        return True
    found = any(key.endswith(f".{t}") for t in tm)
    lt, lp = cfg.get("layers_to_transform"), cfg.get("layers_pattern")
    if found and lt is not None and (lt != [] if isinstance(lt, list) else True):
        if not lp:
            m = re.match(r".*?\.[^.]*\.(?P<idx>\d+)\.", key)
        else:
            for pattern in [lp] if isinstance(lp, str) else lp:
                m = re.match(rf"(?:^|.*?\.){pattern}\.(?P<idx>\d+)\.", key)
                if m is not None:
                    break
        if m is None:
            return False
        idx = int(m.group("idx"))
        return idx == lt if isinstance(lt, int) else idx in lt
    return found


def peft_modules(cfg: dict, info: ModelInfo, prefix: str, where: str, field: str = "target_modules") -> set[str]:
    """Our module paths a PEFT config's `field` selects (every base module is tried; a non-Linear is refused)."""
    sub = {**cfg, "target_modules": cfg.get(field)}
    kinds = info.kinds
    hit = {m for m in kinds if peft_match(sub, prefix + paths.hf_dotted(m))}
    for m in sorted(hit):
        if kinds[m] == "embed":
            raise InteropError(f"{where}: {field} selects the embedding {paths.hf_dotted(m)}; LoRA on embeddings "
                               "(lora_embedding_A/B) has no equivalent in adapters_jax (only projections take LoRA)")
        if kinds[m] != "linear" or m not in info.hookable:
            raise InteropError(f"{where}: {field} selects {paths.hf_dotted(m)}, which has no LoRA/IA3 hook in "
                               "adapters_jax (only the attention and feed-forward projections and lm_head do)")
    return hit


def peft_spelling(mods: set[str], info: ModelInfo, prefix: str,
                  layers_ok: bool = True) -> tuple[list[str], list[int] | None]:
    """(target_modules, layers_to_transform) selecting exactly `mods` among the base's modules under PEFT's rule.

    Names are `prefix` + dotted; a layer-wise suffix (`attention.self.query`) where it is exact,
    else full names; layers_to_transform only where `layers_ok` (PEFT's IA3 has none).
    """
    names = {m: prefix + paths.hf_dotted(m) for m in info.kinds}
    layers = layers_of(mods)
    in_layers = all(split_layer(m) is not None for m in mods)
    lt = sorted(layers) if layers_ok and in_layers and layers != set(range(info.num_layers)) else None
    groups: dict = defaultdict(set)
    for m in mods:
        s = split_layer(m)
        groups[s[3] if s else m].add(m)
    tm: list[str] = []
    for rest, ms in sorted(groups.items()):
        suffix = paths.hf_dotted(rest)
        same = {m for m, n in names.items() if n.endswith("." + suffix) and (lt is None or paths.layer_index(m) in lt)}
        tm += [suffix] if same == ms else sorted(paths.hf_dotted(m) for m in ms)
    for cand in ((tm, lt), (sorted(paths.hf_dotted(m) for m in mods), None)):
        cfg = {"target_modules": cand[0], "layers_to_transform": cand[1]}
        if {m for m, n in names.items() if peft_match(cfg, n)} == set(mods):
            return cand
    raise InteropError(f"cannot spell modules {sorted(mods)[:4]} ... as PEFT target_modules exactly")


def peft_pattern_key(patterns, key: str):
    """peft's get_pattern_key: the rank_pattern/alpha_pattern key that applies to module `key`, or None."""
    return next((p for p in patterns if re.match(rf"(.*\.)?({p})$", key)), None)


# --- AdapterHub: selfattn_lora + attn_matrices, intermediate_lora, output_lora, leave_out ---

def ah_modules(cfg: dict, info: ModelInfo) -> set[str]:
    """Our module paths AdapterHub's LoRA/IA3 keys select on this model."""
    table = AH_LINEAR[info.family]
    rests = set()
    if cfg.get("selfattn_lora"):
        rests |= {table[k] for k in cfg.get("attn_matrices", ()) if k in ("q", "k", "v")}
    rests |= {table[k] for k in ("intermediate", "output") if cfg.get(f"{k}_lora")}
    out = set()
    for m in info.hookable:
        s = split_layer(m)
        if s is not None and s[3] in rests and s[2] not in (cfg.get("leave_out") or ()):
            out.add(m)
    return out


def ah_spelling(mods: set[str], info: ModelInfo, what: str) -> dict:
    """AdapterHub's keys selecting exactly `mods`, or InteropError naming the modules its keys cannot reach."""
    table = AH_LINEAR[info.family]
    rests = {s[3] for s in map(split_layer, mods) if s is not None}
    keys = dict(selfattn_lora=False, attn_matrices=[k for k in ("q", "k", "v") if table[k] in rests],
                intermediate_lora=table["intermediate"] in rests, output_lora=table["output"] in rests,
                leave_out=list(leave_out_for(mods, info)))
    keys["selfattn_lora"] = bool(keys["attn_matrices"])
    if not keys["attn_matrices"]:
        keys["attn_matrices"] = ["q", "v"]
    if ah_modules(keys, info) != set(mods):
        extra = sorted(paths.hf_dotted(m) for m in set(mods) - ah_modules(keys, info))
        raise InteropError(
            f"AdapterHub 1.3's {what} reaches only {sorted(table.values())} of each layer, the same set in every "
            f"layer it keeps; this adapter also acts on {extra[:4] or 'a different set per layer'}: save it as PEFT "
            "or ours")
    return keys
