"""AdapterHub (adapters 1.3) adapter directories <-> our config strings.

`save_adapter(dir, name, use_safetensors=True)` writes adapter_config.json
({"config": {...}, "model_class", "model_type", "hidden_size", "name", "version"})
and adapter.safetensors, plus head_config.json and model_head.safetensors with
its head. Read and written here: bottleneck adapters (the seq_bn/pfeiffer,
double_seq_bn/houlsby, par_bn family: every BnConfig field ours has), prefix
tuning, LoRA and IA3 (AdapterHub's LoRA with composition_mode="scale"),
unions of them, and a classification head. AdapterHub loads what is written here
with `model.load_adapter(dir, use_safetensors=True)`.
"""
from __future__ import annotations

import numpy as np

from adapters_jax import configs, paths
from adapters_jax.configs import IA3, Bottleneck, LoRA, PrefixTuning
from adapters_jax.errors import ConfigError, InteropError
from adapters_jax.formats import targets as tg
from adapters_jax.formats.base import Foreign, ModelInfo
from adapters_jax.models import heads
from adapters_jax.modules.hooks import targets as hook_mode

VERSION = "adapters.1.3.0"
_BN_FIELDS = ("mh_adapter", "output_adapter", "reduction_factor", "non_linearity", "original_ln_before",
              "original_ln_after", "residual_before_ln", "adapter_residual_before_ln", "ln_before", "ln_after",
              "init_weights", "is_parallel", "scaling", "dropout")
_BN_DEFAULTS = dict(cross_adapter=False, factorized_phm_W=True, factorized_phm_rule=False,
                    hypercomplex_nonlinearity="glorot-uniform", init_weights_seed=None, inv_adapter=None,
                    inv_adapter_reduction_factor=None, learn_phm=True, phm_bias=True, phm_c_init="normal", phm_dim=4,
                    phm_init_range=0.0001, phm_layer=False, phm_rank=1, shared_W_phm=False, shared_phm_rule=True,
                    stochastic_depth=0.0, use_gating=False)
_REFUSE = {  # field: (value that is fine, why another value has no equivalent)
    "phm_layer": (False, "Compacter's PHM layers have no equivalent"),
    "use_gating": (False, "gated adapters (UniPELT) have no equivalent"),
    "cross_adapter": (False, "cross-attention adapters need an encoder-decoder model"),
    "inv_adapter": (None, "invertible adapters on the embeddings have no equivalent"),
    "use_dora": (False, "DoRA's magnitude vector has no leaf here"),
    "vera_b": (None, "VeRA has no equivalent"),
    "vera_d": (None, "VeRA has no equivalent"),
}
_MODEL_CLASS = {"bert": ("BertModel", "BertAdapterModel"), "roberta": ("RobertaModel", "RobertaAdapterModel"),
                "llama": ("LlamaForCausalLM", "LlamaAdapterModel"), "mistral": ("MistralForCausalLM", "MistralAdapterModel")}


def _checked(method, where: str):
    try:
        return configs.parse(method)[0]
    except ConfigError as e:
        raise InteropError(f"{where}: {e}") from e


def _methods(c: dict, info: ModelInfo, where: str) -> tuple[list, dict]:
    arch = c.get("architecture") or "bottleneck"  # AdapterHub writes no `architecture` for bottleneck configs
    if arch == "union":
        out, hooks = [], {}
        for sub in c.get("configs", []):
            ms, hs = _methods(sub, info, where)
            out += ms
            hooks.update(hs)
        return out, hooks
    for key, (ok, why) in _REFUSE.items():
        if c.get(key, ok) != ok:
            raise InteropError(f"{where}: {key}={c[key]!r} is not supported: {why}")
    leave_out = tuple(int(i) for i in c.get("leave_out") or ())
    if arch == "bottleneck":
        if isinstance(c.get("reduction_factor"), dict):
            raise InteropError(f"{where}: a per-layer reduction_factor {c['reduction_factor']} has no equivalent")
        kw = {k: c[k] for k in _BN_FIELDS if k in c}
        kw["reduction_factor"] = float(kw.get("reduction_factor", 16))
        if kw.get("init_weights") not in ("zero", "bert", "mam_adapter", "houlsby"):
            kw["init_weights"] = "bert"  # only the initialisation differs; the weights are read
        return [_checked(Bottleneck(**kw, leave_out=leave_out), where)], {}
    if arch == "prefix_tuning":
        kw = {k: c[k] for k in ("prefix_length", "bottleneck_size", "non_linearity", "dropout", "flat") if k in c}
        return [_checked(PrefixTuning(**kw, leave_out=leave_out), where)], {}
    if arch == "lora":
        mode = c.get("composition_mode", "add")
        mods = tg.ah_modules(c, info)
        if not mods:
            raise InteropError(f"{where}: the LoRA keys (selfattn_lora, attn_matrices, intermediate_lora, "
                               "output_lora, leave_out) select no module")
        lo = tg.leave_out_for(mods, info)
        rx = tg.our_regex(mods, lo, info)
        if mode == "add":
            return [_checked(LoRA(r=int(c.get("r", 8)), alpha=float(c.get("alpha", 8)),
                                  dropout=float(c.get("dropout") or 0.0), target=rx, leave_out=lo), where)], {"lora": mods}
        if mode == "scale" and int(c.get("r", 1)) == 1:
            return [_checked(IA3(target=rx, leave_out=lo), where)], {"ia3": mods}
        raise InteropError(f"{where}: LoRA composition_mode={mode!r} with r={c.get('r')} has no equivalent "
                           "(add: LoRA; scale with r=1: IA3)")
    raise InteropError(f"{where}: AdapterHub architecture {arch!r} has no equivalent here (read: bottleneck, "
                       "prefix_tuning, lora, IA3, unions of them; AdapterHub's prompt tuning is not read)")


def read(cfg: dict, tensors: dict, info: ModelInfo, where: str, head_cfg: dict | None = None,
         head_weights: dict | None = None) -> Foreign:
    for key, ours in (("model_type", info.model_type), ("hidden_size", info.hidden_size)):
        if cfg.get(key) not in (None, ours):
            raise InteropError(f"{where}: saved for {key}={cfg[key]!r}, but this base has {key}={ours!r}")
    methods, hooks = _methods(cfg["config"] or {}, info, where)
    if head_cfg is not None and head_cfg.get("config") is None:  # a static model's own head (lm_head): the base's
        return Foreign("adapterhub", configs.to_string(tuple(methods)), tensors, cfg.get("name"), hooks,
                       base_tensors=head_weights)
    head, head_tensors = (None, {}) if head_cfg is None else _read_head(head_cfg, head_weights, info, where)
    return Foreign("adapterhub", configs.to_string(tuple(methods)), tensors, cfg.get("name"), hooks, head,
                   head_tensors)


def _read_head(head_cfg: dict, weights: dict, info: ModelInfo, where: str):
    c = head_cfg.get("config") or {}
    if c.get("head_type") != "classification" or info.family != "bert":
        raise InteropError(f"{where}: head_type={c.get('head_type')!r} on {info.model_type}: only classification "
                           "heads of BERT-family models are read; load the adapter without its head directory files")
    layers = int(c.get("layers", 2))
    if layers > 1 and c.get("activation_function") != "tanh":
        raise InteropError(f"{where}: head activation_function={c.get('activation_function')!r}; ours is tanh")
    x = head_cfg.get("name")
    names = {f"dense_{i}": 3 * i + 1 for i in range(layers - 1)} | {"out_proj": 3 * (layers - 1) + 1}
    out = {}
    for ours, idx in names.items():
        w = f"heads.{x}.{idx}.weight"
        if w not in weights:
            raise InteropError(f"{where}: head tensor {w!r} is missing (found {sorted(weights)[:4]})")
        out[f"head/{ours}/kernel"] = (w, weights[w].T)
        b = weights.get(f"heads.{x}.{idx}.bias")
        out[f"head/{ours}/bias"] = (f"heads.{x}.{idx}.bias", b if b is not None else np.zeros(weights[w].shape[0],
                                                                                               weights[w].dtype))
    extra = set(weights) - {src for src, _ in out.values()}
    if extra:
        raise InteropError(f"{where}: head tensors {sorted(extra)[:4]} map to no leaf of the classification head")
    pooling = "pooler" if c.get("use_pooler") else "cls"
    return heads.Classification(int(c["num_labels"]), pooling=pooling, hidden_layers=layers - 1), out


# --- write ---

def _reduction_factor(cfg: Bottleneck, hidden: int) -> float:
    """A reduction_factor AdapterHub turns into our bottleneck size (it computes hidden // reduction_factor)."""
    m = cfg.size(hidden)
    rf = cfg.reduction_factor if cfg.bottleneck is None else hidden / m
    for cand in (rf, np.nextafter(rf, 0.0)):
        if int(hidden // cand) == m:
            return int(cand) if float(cand).is_integer() else float(cand)
    raise InteropError(f"bottleneck size {m} of hidden {hidden} has no AdapterHub reduction_factor")


def _config_of(method, mods: dict, info: ModelInfo, name: str) -> dict:
    if isinstance(method, Bottleneck):
        out = dict(_BN_DEFAULTS, **{k: getattr(method, k) for k in _BN_FIELDS}, leave_out=list(method.leave_out))
        out["reduction_factor"] = _reduction_factor(method, info.hidden_size)
        out["init_weights"] = "bert" if method.init_weights == "zero" else method.init_weights
        return out
    if isinstance(method, PrefixTuning):
        return dict(architecture="prefix_tuning", bottleneck_size=method.bottleneck_size, cross_prefix=True,
                    dropout=method.dropout, encoder_prefix=True, flat=method.flat, init_weights_seed=None,
                    leave_out=list(method.leave_out), non_linearity=method.non_linearity,
                    prefix_length=method.prefix_length, shared_gating=True, use_gating=False)
    common = dict(architecture="lora", dtype=None, init_weights_seed=None, use_dora=False, use_gating=False,
                  vera_b=None, vera_d=None)
    if isinstance(method, LoRA):
        if method.use_rslora:
            raise InteropError(f"adapter {name!r}: AdapterHub 1.3's LoRA has no rsLoRA scaling (alpha/sqrt(r)); "
                               "save it as PEFT or ours")
        keys = tg.ah_spelling(mods["lora"], info, "LoRA")
        return dict(common, **keys, alpha=method.alpha if not float(method.alpha).is_integer() else int(method.alpha),
                    r=method.r, composition_mode="add", dropout=method.dropout, init_weights="lora")
    if isinstance(method, IA3):
        if any(hook_mode(method, m) == "input" for m in mods["ia3"]):
            raise InteropError(
                f"adapter {name!r}: its IA3 scales the FFN activation (the input of the FFN's output projection), as "
                "PEFT and the IA3 paper do; AdapterHub's IA3 scales intermediate.dense's output, before the "
                "activation, which is not the same function: save it as PEFT or ours")
        keys = tg.ah_spelling(mods["ia3"], info, "IA3")
        return dict(common, **keys, alpha=1, r=1, composition_mode="scale", dropout=0.0, init_weights="ia3")
    raise InteropError(f"adapter {name!r}: {method.method} is not written for AdapterHub (its prompt tuning is "
                       "not equivalent); save it as PEFT or ours")


def config(methods, leaves: dict, info: ModelInfo, head, name: str, source: str = "") -> dict:
    """AdapterHub's adapter_config.json for our adapter `name` (its leaves {path: array} tell where it acts)."""
    mods: dict = {"lora": set(), "ia3": set()}
    for k in leaves:
        p = paths.parse(k)
        if p.method in mods:
            mods[p.method].add(p.module)
    if len(methods) > 1 and sum(isinstance(m, LoRA) for m in methods) > 1:
        raise InteropError(f"adapter {name!r} holds several LoRA parts (ranks per module); AdapterHub's LoRA has "
                           "one r and alpha: save it as PEFT or ours")
    cfgs = [_config_of(m, mods, info, name) for m in methods]
    if info.model_type not in _MODEL_CLASS:
        raise InteropError(f"AdapterHub model class for model_type {info.model_type!r} is not known here")
    plain, with_head = _MODEL_CLASS[info.model_type]
    return {"config": cfgs[0] if len(cfgs) == 1 else {"architecture": "union", "configs": cfgs},
            "hidden_size": info.hidden_size, "model_class": with_head if head is not None else plain,
            "model_name": source, "model_type": info.model_type, "name": name, "version": VERSION}


def head_files(head, head_params: dict, info: ModelInfo, name: str, source: str = "") -> tuple[dict, dict]:
    """(head_config.json, model_head.safetensors tensors) of our classification head, AdapterHub's layout."""
    if not (isinstance(head, heads.Classification) and head.pooling in ("cls", "pooler") and info.family == "bert"):
        raise InteropError(f"head {head!r}: AdapterHub's classification head pools the first token or the pooler "
                           "of a BERT-family model; this head has no AdapterHub equal: save without it (with_head=False)")
    layers = head.hidden_layers + 1
    tensors = {}
    for i in range(layers):
        ours = f"head/dense_{i}" if i < layers - 1 else "head/out_proj"
        tensors[f"heads.{name}.{3 * i + 1}.weight"] = np.asarray(head_params[f"{ours}/kernel"]).T
        tensors[f"heads.{name}.{3 * i + 1}.bias"] = np.asarray(head_params[f"{ours}/bias"])
    cfg = {"config": {"activation_function": "tanh", "bias": True, "dropout_prob": head.dropout,
                      "head_type": "classification", "label2id": {f"LABEL_{i}": i for i in range(head.num_labels)},
                      "layers": layers, "num_labels": head.num_labels, "use_pooler": head.pooling == "pooler"},
           "hidden_size": info.hidden_size, "model_class": _MODEL_CLASS[info.model_type][1], "model_name": source,
           "model_type": info.model_type, "name": name, "version": VERSION}
    return cfg, tensors
