"""AdapterHub and PEFT adapter weights, read into (and PEFT's written from) our adapter leaves.

    model, params = aj.add_adapters(base, "double_seq_bn", name="task")   # same config as the torch adapter
    params = from_adapterhub(torch_state_dict_as_numpy, model, params, "task")
    params = from_peft(peft_state_dict, model, params, "task")
    state_dict = to_peft(model, params, "task")                            # LoRA, IA3, prompt tuning
    state_dict = to_adapterhub(model, params, "task")                      # bottleneck, prefix, LoRA, IA3 (outputs)

The torch names are a rename plus a transpose away from our paths (docs/paths.md):

    encoder.layer.3.output.adapters.X.adapter_down.0.weight  -> encoder/layer_3/output/adapters/NAME/adapter_down/kernel (T)
    prefix_tuning.prefix_tunings.X.self_prefix.wte.weight    -> prefix_tuning/NAME/wte/embedding
    ...attention.self.query.lora_A.weight            [r, in] -> .../attention/self/query/lora/NAME/lora_A [in, r]
    ...attention.self.key.ia3_l                   [out, 1]   -> .../attention/self/key/ia3/NAME/ia3_l    [out]
    prompt_encoder.default.embedding.weight                  -> embeddings/prompt_tuning/NAME/prompt_embedding

The model must already hold adapter NAME with the config the weights were
trained with; these functions fill its leaves (a tensor that maps nowhere, a
shape that does not fit or, with strict=True, a leaf left unfilled is an
InteropError naming it). Any `bert.`/`roberta.`/`base_model.model.` prefix and
PEFT's adapter-name segment (`lora_A.default.weight`) are accepted. Whole
directories (config files included) are adapters.load_adapter / save_adapter's,
with the config translation in adapters_jax/formats/ (docs/interop.md).
"""
from __future__ import annotations

import re
from typing import Mapping

import jax.numpy as jnp
import numpy as np

from adapters_jax import paths
from adapters_jax.configs import IA3, Bottleneck
from adapters_jax.modules import hooks
from adapters_jax.errors import InteropError  # noqa: F401  (re-exported)


def _find_root(flat: dict, marker: str, where: str) -> str:
    """The unique path prefix ending in `marker` (prefix pools and soft prompts sit where the family puts them)."""
    roots = sorted({k[: k.index(marker) + len(marker)] for k in flat if marker in k})
    if len(roots) != 1:
        raise InteropError(f"{where}: this model holds {len(roots) or 'no'} `{marker}` groups {roots}; expected one "
                           "(was the adapter added with the same method?)")
    return roots[0]


def _pick(names: set, given: str | None, what: str) -> str | None:
    if given is not None:
        return given
    if len(names) > 1:
        raise InteropError(f"the state dict holds several {what} adapters {sorted(names)}; choose one with "
                           f"{'adapter' if what == 'AdapterHub' else 'peft_adapter'}=")
    return next(iter(names), None)


def fill(model, params, name: str, targets: dict, strict: bool, where: str):
    """targets: our leaf path -> (source tensor name, value). Checks leaf existence, shapes, duplicates, coverage."""
    flat = paths.flat(params)
    out = dict(flat)
    for path, (src, value) in targets.items():
        if path not in flat:
            raise InteropError(f"{where}: tensor {src!r} maps to {path}, which this model does not have; "
                               f"adapter {name!r} leaves: {sorted(k for k in flat if paths.adapter_of(k) == name)[:6]} ...")
        if tuple(value.shape) != tuple(flat[path].shape):
            raise InteropError(f"{where}: tensor {src!r} gives shape {tuple(value.shape)} but {path} is "
                               f"{tuple(flat[path].shape)}; was the adapter added with the same config?")
        out[path] = jnp.asarray(value, flat[path].dtype)
    if strict:
        missing = sorted(k for k in flat if paths.adapter_of(k) == name and k not in targets)
        if missing:
            raise InteropError(f"{where}: no tensor for {len(missing)} leaves of adapter {name!r}: {missing[:6]} "
                               "(pass strict=False to keep their current values)")
    return paths.unflat(out)


def _put(targets: dict, path: str, src: str, value: np.ndarray, where: str) -> None:
    if path in targets:  # AdapterHub repeats its shared prefix pool under every layer, and LN-before twice
        other, prev = targets[path]
        if prev.shape != value.shape or not np.array_equal(prev, value):
            raise InteropError(f"{where}: tensors {other!r} and {src!r} both map to {path} but differ")
        return
    targets[path] = (src, value)


_AH_BN = re.compile(r"(?P<mod>.*)\.adapters\.(?P<an>[^.]+)\.(?P<rest>.+)")
_AH_PREFIX = re.compile(r"(?:.*\.)?prefix_tunings\.(?P<an>[^.]+)\.(?P<loc>[^.]+)\.(?P<rest>.+)")
_AH_LORA = re.compile(r"(?P<mod>.*)\.loras\.(?P<an>[^.]+)\.(?P<rest>lora_[AB])")
_LEAF = {"weight": None, "bias": "bias"}


def from_adapterhub(state_dict: Mapping[str, np.ndarray], model, params, name: str, adapter: str | None = None,
                    strict: bool = True):
    """AdapterHub (adapters 1.x) tensors of one adapter -> params with adapter `name`'s leaves filled.

    Reads bottleneck adapters (`...adapters.X.adapter_down.0.weight`, LayerNorms, learned scaling),
    prefix tuning (`prefix_tuning[.pool].prefix_tunings.X.self_prefix.*`, per-layer copies accepted),
    LoRA and IA3 (`...loras.X.lora_A/lora_B`). `adapter` is X, the AdapterHub name in the tensor
    names (default: the only one there).
    """
    where = "AdapterHub state dict"
    sd = {k: np.asarray(v) for k, v in state_dict.items()}
    matches = (_AH_PREFIX.fullmatch(k) or _AH_BN.fullmatch(k) or _AH_LORA.fullmatch(k) for k in sd)
    found = {m.group("an") for m in matches if m}
    adapter = _pick(found, adapter, "AdapterHub")
    bns = model.adapters.get(name).of(Bottleneck)
    lin = 1 if bns and bns[0].ln_before else 0  # ln_before puts a LayerNorm first in the adapter_down Sequential
    flat = set(paths.flat(params))
    targets: dict = {}
    for key, value in sd.items():
        path = None
        m = _AH_PREFIX.fullmatch(key) or _AH_BN.fullmatch(key) or _AH_LORA.fullmatch(key)
        if m is not None and m.group("an") != adapter:
            continue  # another AdapterHub adapter in the same state dict
        if m is not None and m.re is _AH_PREFIX and m.group("loc") == "self_prefix":
            root = _find_root(flat, f"prefix_tuning/{name}/", where)
            rest = m.group("rest")
            if rest == "wte.weight":
                path = root + "wte/embedding"
            elif rest == "control_trans":
                path, value = root + "control_trans", value.reshape(-1)
            elif re.fullmatch(r"control_trans\.[02]\.(weight|bias)", rest):
                i, leaf = rest.split(".")[1:]
                path = f"{root}control_trans_{i}/" + ("kernel" if leaf == "weight" else "bias")
                value = value.T if leaf == "weight" else value
        elif m is not None and m.re is _AH_BN:
            mod = paths.hf_module_path(m.group("mod"))
            # Llama: AdapterHub's attention_adapters.adapters.X is our attention_adapters/NAME (one group, no nesting)
            group = mod.rsplit("/", 1)[-1]
            base = f"{mod}/{name}/" if group in paths.GROUPS else f"{mod}/{paths.BOTTLENECK_GROUP['bert']['output_adapter']}/{name}/"
            rest = m.group("rest")
            if (d := re.fullmatch(r"adapter_down\.(\d+)\.(weight|bias)", rest)) and int(d.group(1)) == lin:
                path = base + "adapter_down/" + ("kernel" if d.group(2) == "weight" else "bias")
                value = value.T if d.group(2) == "weight" else value
            elif (d := re.fullmatch(r"adapter_up\.(weight|bias)", rest)):
                path = base + "adapter_up/" + ("kernel" if d.group(1) == "weight" else "bias")
                value = value.T if d.group(1) == "weight" else value
            elif (d := re.fullmatch(r"(?:adapter_down\.0|adapter_norm_before)\.(weight|bias)", rest)) and lin == 1:
                path = base + "adapter_norm_before/" + ("scale" if d.group(1) == "weight" else "bias")
            elif (d := re.fullmatch(r"adapter_norm_after\.(weight|bias)", rest)):
                path = base + "adapter_norm_after/" + ("scale" if d.group(1) == "weight" else "bias")
            elif rest == "scaling":
                path = base + "scaling"
        elif m is not None and m.re is _AH_LORA:
            mod = paths.hf_module_path(m.group("mod"))
            if f"{mod}/lora/{name}/{m.group('rest')}" in flat:
                path, value = f"{mod}/lora/{name}/{m.group('rest')}", value.T
            elif m.group("rest") == "lora_B" and value.ndim == 2 and value.shape[1] == 1:  # IA3: a [out, 1] scale
                path, value = f"{mod}/ia3/{name}/ia3_l", value.reshape(-1)
                if path not in flat:
                    raise InteropError(
                        f"{where}: {key!r} is AdapterHub's IA3 scale of {mod}'s output, which adapter {name!r} does "
                        "not scale. AdapterHub's IA3 scales intermediate.dense's output (before the activation), "
                        "our `ia3` default the activation (PEFT, the paper): add the adapter with "
                        f"ia3[target=REGEX] where REGEX matches {mod}")
        if path is None:
            raise InteropError(f"{where}: tensor {key!r} maps to no leaf of adapter {name!r} (supported: bottleneck "
                               "adapter_down/adapter_up/norms/scaling, prefix self_prefix, loras lora_A/lora_B)")
        _put(targets, path, key, value, where)
    return fill(model, params, name, targets, strict, where)


_PEFT_LORA = re.compile(r"(?P<mod>.+?)\.(?P<ab>lora_[AB])(?:\.(?P<pn>[^.]+))?\.weight")
_PEFT_IA3 = re.compile(r"(?P<mod>.+?)\.ia3_l(?:\.(?P<pn>[^.]+))?")
_PEFT_PROMPT = re.compile(r"prompt_embeddings|prompt_encoder(?:\.(?P<pn>[^.]+))?\.embedding\.weight")


def _peft_adapter_of(key: str) -> str | None:
    for rx in (_PEFT_LORA, _PEFT_IA3, _PEFT_PROMPT):
        m = rx.fullmatch(key)
        if m:
            return m.group("pn") if "pn" in rx.groupindex else None
    return None


def _ia3_mode(model, name: str, mod: str) -> str | None:
    modes = {hooks.targets(c, mod) for c in model.adapters.get(name).of(IA3)} - {None}
    return next(iter(modes), None)


def from_peft(state_dict: Mapping[str, np.ndarray], model, params, name: str, peft_adapter: str | None = None,
              strict: bool = True):
    """PEFT (0.x) LoRA, IA3 or prompt-tuning tensors -> params with adapter `name`'s leaves filled.

    Accepts `get_peft_model_state_dict` names (`base_model.model.X.lora_A.weight`, `prompt_embeddings`)
    and full PeftModel names (`X.lora_A.default.weight`, `prompt_encoder.default.embedding.weight`);
    `peft_adapter` picks one PEFT adapter when the names hold several.
    """
    where = "PEFT state dict"
    sd = {k: np.asarray(v) for k, v in state_dict.items()}
    peft_adapter = _pick({p for k in sd if (p := _peft_adapter_of(k)) is not None}, peft_adapter, "PEFT")
    flat = set(paths.flat(params))
    targets: dict = {}
    for key, value in sd.items():
        path = None
        if (m := _PEFT_PROMPT.fullmatch(key)):
            if m.group("pn") not in (None, peft_adapter):
                continue
            path = _find_root(flat, f"prompt_tuning/{name}/", where) + "prompt_embedding"
        elif (m := _PEFT_LORA.fullmatch(key)):
            if m.group("pn") not in (None, peft_adapter):
                continue
            path, value = f"{paths.hf_module_path(m.group('mod'))}/lora/{name}/{m.group('ab')}", value.T
        elif (m := _PEFT_IA3.fullmatch(key)):
            if m.group("pn") not in (None, peft_adapter):
                continue
            mod = paths.hf_module_path(m.group("mod"))
            path = f"{mod}/ia3/{name}/ia3_l"
            peft_mode = "input" if value.ndim == 2 and value.shape[0] == 1 and value.shape[1] > 1 else "output"
            ours = _ia3_mode(model, name, mod)
            if ours is not None and ours != peft_mode:
                raise InteropError(
                    f"{where}: {key!r} scales {mod}'s {peft_mode} in PEFT (feedforward_modules "
                    f"{'includes' if peft_mode == 'input' else 'excludes'} it) but adapter {name!r} scales its "
                    f"{ours}; set ia3[feedforward=REGEX] to match")
            value = value.reshape(-1)
        if path is None:
            raise InteropError(f"{where}: tensor {key!r} maps to no leaf of adapter {name!r} (supported: "
                               "lora_A/lora_B of Linear layers, ia3_l, prompt embeddings)")
        _put(targets, path, key, value, where)
    return fill(model, params, name, targets, strict, where)


def to_peft(model, params, name: str) -> dict[str, np.ndarray]:
    """Adapter `name` (LoRA, IA3, prompt tuning) as PEFT's saved state dict (`get_peft_model_state_dict` names).

    Bottleneck adapters and prefix pools have no PEFT counterpart and raise InteropError.
    """
    out: dict[str, np.ndarray] = {}
    for k, v in paths.flat(params).items():
        p = paths.parse(k)
        if p.name != name:
            continue
        v = np.asarray(v)
        if p.method == "lora" and p.leaf in ("lora_A", "lora_B"):
            out[f"base_model.model.{paths.hf_dotted(p.module)}.{p.leaf}.weight"] = v.T
        elif p.method == "ia3" and p.leaf == "ia3_l":
            shape = (1, -1) if _ia3_mode(model, name, p.module) == "input" else (-1, 1)
            out[f"base_model.model.{paths.hf_dotted(p.module)}.ia3_l"] = v.reshape(shape)
        elif p.method == "prompt_tuning" and p.leaf == "prompt_embedding":
            out["prompt_embeddings"] = v
        else:
            raise InteropError(f"{k}: PEFT has no counterpart of this leaf (bottleneck and prefix adapters are "
                               "AdapterHub methods)")
    if not out:
        raise InteropError(f"params hold no leaves of adapter {name!r}")
    return out


_AH_LEAF = {"kernel": "weight", "scale": "weight", "bias": "bias", "embedding": "weight"}


def to_adapterhub(model, params, name: str, adapter: str | None = None) -> dict[str, np.ndarray]:
    """Adapter `name` as AdapterHub 1.3's saved tensors (`save_adapter` names, the adapter called `adapter` there).

    Bottleneck adapters, prefix tuning (the shared pool once, at the model root), LoRA, and IA3
    that scales outputs. IA3 on the FFN activation and prompt tuning have no AdapterHub counterpart.
    """
    x = adapter or name
    bns = model.adapters.get(name).of(Bottleneck)
    lin = 1 if bns and bns[0].ln_before else 0
    out: dict[str, np.ndarray] = {}
    for k, v in paths.flat(params).items():
        p = paths.parse(k)
        if p.name != name:
            continue
        v, sub, _, kind = np.asarray(v), *p.leaf.rpartition("/")
        t = v.T if kind == "kernel" else v
        dotted = paths.hf_dotted(p.module) + "." if p.module else ""
        if p.method == "bottleneck":
            base = dotted + ("" if p.group == "adapters" else f"{p.group}.") + f"adapters.{x}."
            if sub == "adapter_down":
                out[f"{base}adapter_down.{lin}.{_AH_LEAF[kind]}"] = t
            elif sub in ("adapter_up", "adapter_norm_after"):
                out[f"{base}{sub}.{_AH_LEAF[kind]}"] = t
            elif sub == "adapter_norm_before":  # AdapterHub saves it twice: by name and as adapter_down.0
                out[f"{base}adapter_norm_before.{_AH_LEAF[kind]}"] = out[f"{base}adapter_down.0.{_AH_LEAF[kind]}"] = t
            elif p.leaf == "scaling":
                out[f"{base}scaling"] = v
            else:
                raise InteropError(f"{k}: AdapterHub has no counterpart of this bottleneck leaf")
        elif p.method == "prefix_tuning":
            base = f"{dotted}prefix_tuning.prefix_tunings.{x}.self_prefix."
            if p.leaf == "control_trans":
                out[base + "control_trans"] = v
            else:
                out[base + sub.replace("control_trans_", "control_trans.") + "." + _AH_LEAF[kind]] = t
        elif p.method == "lora":
            out[f"{dotted}loras.{x}.{p.leaf}"] = v.T
        elif p.method == "ia3" and _ia3_mode(model, name, p.module) == "output":
            out[f"{dotted}loras.{x}.lora_B"] = v.reshape(-1, 1)
        else:
            raise InteropError(f"{k}: AdapterHub has no counterpart of this leaf (IA3 on the FFN activation and "
                               "prompt tuning are PEFT's)")
    if not out:
        raise InteropError(f"params hold no leaves of adapter {name!r}")
    return out
