"""PEFT 0.21 adapter directories (adapter_config.json + adapter_model.safetensors) <-> our config strings.

Read: LoRA (r, lora_alpha, use_rslora, target_modules as a list or a regex, exclude_modules,
layers_to_transform/layers_pattern, rank_pattern/alpha_pattern as one LoRA per (r, alpha)
group), IA3 (target_modules, feedforward_modules) and prompt tuning (num_virtual_tokens);
`modules_to_save` becomes our head where one is equal (BERT's `classifier` on the pooler).
Every other field that changes what the adapter computes is refused, naming it.
Write: the same three methods, one method per adapter (PEFT's rule), loadable by
`PeftModel.from_pretrained`.
"""
from __future__ import annotations

import re
from collections import Counter, defaultdict

import numpy as np

from adapters_jax import configs, paths
from adapters_jax.configs import IA3, LoRA, PromptTuning
from adapters_jax.errors import InteropError
from adapters_jax.formats import targets as tg
from adapters_jax.formats.base import Foreign, ModelInfo
from adapters_jax.models import heads
from adapters_jax.modules.hooks import targets as hook_mode

ROOT = "base_model.model."
_ADAPTER = re.compile(r".*\.(lora_[AB]|ia3_l|lora_embedding_[AB]|lora_magnitude_vector)(\.[^.]+)*$|prompt_embeddings$"
                      r"|prompt_encoder\..*")
# fields read by kind; anything else must hold its default (None/False/empty/"none") or is refused
_USED = {
    "LORA": {"r", "lora_alpha", "use_rslora", "lora_dropout", "target_modules", "exclude_modules", "layers_to_transform",
             "layers_pattern", "rank_pattern", "alpha_pattern", "modules_to_save", "bias", "init_lora_weights"},
    "IA3": {"target_modules", "exclude_modules", "feedforward_modules", "modules_to_save"},
    "PROMPT_TUNING": {"num_virtual_tokens", "token_dim", "num_transformer_submodules", "modules_to_save"},
}
_IGNORED = {"peft_type", "peft_version", "task_type", "base_model_name_or_path", "revision", "inference_mode",
            "auto_mapping", "init_ia3_weights", "megatron_core", "qalora_group_size", "num_attention_heads",
            "num_layers", "prompt_tuning_init", "prompt_tuning_init_text", "tokenizer_name_or_path",
            "tokenizer_kwargs", "ensure_weight_tying", "eva_config"}
_WHY = {
    "use_dora": "DoRA's magnitude vector (lora_magnitude_vector) has no leaf in adapters_jax's LoRA",
    "bias": "bias='all'/'lora_only' trains the base's biases; adapters_jax keeps the base frozen",
    "lora_bias": "a bias on lora_B has no leaf in adapters_jax's LoRA",
    "fan_in_fan_out": "transposed (Conv1D, GPT-2 style) weights; the models here use Linear",
    "target_parameters": "LoRA on nn.Parameter (MoE experts) has no equivalent",
    "trainable_token_indices": "trainable embedding rows have no equivalent",
    "layer_replication": "replicated layers change the base model",
    "loftq_config": "LoftQ's adapter belongs to the quantized base its init produced",
}
_BASE_CHANGING_INIT = ("pissa", "olora", "corda", "loftq")
_HEADS = {"bert": "classifier"}  # model_type -> PEFT's SEQ_CLS head module equal to heads.Classification(pooling="pooler")


def _default(v) -> bool:
    return v is None or v is False or v == {} or v == [] or (isinstance(v, str) and v.lower() == "none")


def _refuse_fields(cfg: dict, kind: str, where: str) -> None:
    for key, v in cfg.items():
        if key in _USED[kind] or key in _IGNORED or _default(v):
            continue
        why = _WHY.get(key, "it changes what the adapter computes and adapters_jax has no equivalent")
        raise InteropError(f"{where}: {key}={v!r} is not supported: {why}")
    if kind == "LORA" and str(cfg.get("bias", "none")).lower() != "none":
        raise InteropError(f"{where}: bias={cfg['bias']!r} is not supported: {_WHY['bias']}")
    init = str(cfg.get("init_lora_weights", True)).lower()
    if kind == "LORA" and init.startswith(_BASE_CHANGING_INIT):
        raise InteropError(f"{where}: init_lora_weights={cfg['init_lora_weights']!r} changed the base weights; convert "
                           "the adapter with PEFT (path_initial_model_for_weight_conversion) before reading it")


def _prefix(tensors: dict, info: ModelInfo) -> str:
    """The task model's base prefix in the names (`bert.` under BertForSequenceClassification), else ''."""
    for k in tensors:
        rest = k[len(ROOT):] if k.startswith(ROOT) else k
        for p in ("bert.", "roberta."):
            if info.family == "bert" and rest.startswith(p):
                return p
    return ""


def _head(cfg: dict, tensors: dict, info: ModelInfo, where: str):
    """(heads.Classification or None, {our head path: (name, value)}) from the non-adapter tensors."""
    saved = {k: v for k, v in tensors.items() if not _ADAPTER.fullmatch(k)}
    if not saved:
        return None, {}
    out, want = {}, _HEADS.get(info.model_type)
    for k, v in saved.items():
        m = re.fullmatch(rf"(?:{re.escape(ROOT)})?(?P<mod>.+?)(?:\.modules_to_save\.[^.]+)?\.(?P<leaf>weight|bias)", k)
        if m is None or m.group("mod") != want:
            raise InteropError(
                f"{where}: modules_to_save {cfg.get('modules_to_save')} saved {k!r}; adapters_jax maps only BERT's "
                "sequence-classification head (`classifier`) to a head and keeps every base module frozen")
        leaf = "kernel" if m.group("leaf") == "weight" else "bias"
        out[f"head/out_proj/{leaf}"] = (k, v.T if leaf == "kernel" else v)
    if "head/out_proj/kernel" not in out:
        raise InteropError(f"{where}: the head {want!r} has no weight tensor")
    n = out["head/out_proj/kernel"][1].shape[1]
    return heads.Classification(n, pooling="pooler"), out


def _lora(cfg: dict, info: ModelInfo, prefix: str, where: str):
    tm = cfg.get("target_modules") or tg.PEFT_DEFAULT_LORA[info.family]
    if isinstance(tm, str) and tm.lower() == "all-linear":
        linear = [paths.hf_dotted(m) for m, k in info.modules if k == "linear" and paths.role_of(m) != "lm_head"]
        mods = tg.peft_modules({**cfg, "target_modules": linear}, info, prefix, where)  # exclude_modules applies
    else:
        mods = tg.peft_modules({**cfg, "target_modules": tm}, info, prefix, where)
    if not mods:
        raise InteropError(f"{where}: target_modules={tm!r} (layers_to_transform={cfg.get('layers_to_transform')}) "
                           f"selects no module of this {info.model_type} model; its projections are named like "
                           f"{sorted(paths.hf_dotted(m) for m in info.hookable)[:4]}")
    groups = defaultdict(set)
    for m in mods:
        key = prefix + paths.hf_dotted(m)
        rk, ak = (tg.peft_pattern_key(cfg.get(p) or {}, key) for p in ("rank_pattern", "alpha_pattern"))
        r = (cfg.get("rank_pattern") or {}).get(rk, cfg.get("r", 8))
        alpha = (cfg.get("alpha_pattern") or {}).get(ak, cfg.get("lora_alpha", 8))
        groups[(int(r), float(alpha))].add(m)
    methods = []
    for (r, alpha), ms in sorted(groups.items()):
        lo = tg.leave_out_for(ms, info)
        methods.append(LoRA(r=r, alpha=alpha, use_rslora=bool(cfg.get("use_rslora")),
                            dropout=float(cfg.get("lora_dropout") or 0.0), target=tg.our_regex(ms, lo, info),
                            leave_out=lo))
    return methods, {"lora": mods}, {m: r for (r, _), ms in groups.items() for m in ms}


def _ia3(cfg: dict, info: ModelInfo, prefix: str, where: str):
    tm, ff = cfg.get("target_modules"), cfg.get("feedforward_modules")
    if tm is None:
        tm, ff = tg.PEFT_DEFAULT_IA3[info.family]
    mods = tg.peft_modules({**cfg, "target_modules": tm}, info, prefix, where)
    if not mods:
        raise InteropError(f"{where}: target_modules={tm!r} selects no module of this {info.model_type} model")
    ff = ff or []
    is_ff = (lambda n: re.fullmatch(ff, n) is not None) if isinstance(ff, str) else \
        (lambda n: any(n.endswith(t) for t in ff))
    ffm = {m for m in mods if is_ff(prefix + paths.hf_dotted(m))}
    lo = tg.leave_out_for(mods, info)
    out = mods - ffm
    method = IA3(target=tg.our_regex(out or ffm, lo, info), feedforward=tg.our_regex(ffm, lo, info) if ffm else None,
                 leave_out=lo)
    return [method], {"ia3": mods}


def read(cfg: dict, tensors: dict, info: ModelInfo, where: str) -> Foreign:
    """A PEFT adapter_config.json (+ its tensors) -> Foreign (our spec, the tensors, a head)."""
    kind = str(cfg.get("peft_type", "")).upper()
    if kind not in _USED:
        raise InteropError(f"{where}: peft_type={cfg.get('peft_type')!r} has no equivalent here; adapters_jax reads "
                           "PEFT's LORA, IA3 and PROMPT_TUNING")
    _refuse_fields(cfg, kind, where)
    head, head_tensors = _head(cfg, tensors, info, where)
    adapter = {k: v for k, v in tensors.items() if k not in {src for src, _ in head_tensors.values()}}
    prefix = _prefix(adapter, info)
    hooks = {}
    if kind == "LORA":
        methods, hooks, ranks = _lora(cfg, info, prefix, where)
        for k, v in adapter.items():
            m = re.fullmatch(r"(?P<mod>.+?)\.lora_A(?:\.[^.]+)?\.weight", k)
            mod = paths.hf_module_path(m.group("mod")) if m else None
            if mod in ranks and v.shape[0] != ranks[mod]:
                raise InteropError(f"{where} gives {paths.hf_dotted(mod)} rank {ranks[mod]} (r / rank_pattern), but "
                                   f"tensor {k!r} has rank {v.shape[0]} {tuple(v.shape)}")
    elif kind == "IA3":
        methods, hooks = _ia3(cfg, info, prefix, where)
    else:
        if (cfg.get("num_transformer_submodules") or 1) != 1:
            raise InteropError(f"{where}: num_transformer_submodules={cfg['num_transformer_submodules']} (an "
                               "encoder-decoder prompt) has no equivalent; the models here have one stack")
        if cfg.get("token_dim") not in (None, info.hidden_size):
            raise InteropError(f"{where}: token_dim={cfg['token_dim']} but this model's hidden size is "
                               f"{info.hidden_size}; the prompt was trained for another base")
        methods = [PromptTuning(prompt_length=int(cfg["num_virtual_tokens"]))]
    return Foreign("peft", configs.to_string(tuple(methods)), adapter, "default", hooks, head, head_tensors)


# --- write ---

def _num(x: float):
    return int(x) if float(x).is_integer() else float(x)


def config(methods, leaves: dict, info: ModelInfo, head, name: str) -> tuple[dict, str]:
    """(adapter_config.json, the task model's prefix for tensor names) of our adapter with `leaves` ({path: array})."""
    kinds = {m.method for m in methods}
    if kinds - {"lora", "ia3", "prompt_tuning"}:
        bad = sorted(kinds - {"lora", "ia3", "prompt_tuning"})
        raise InteropError(f"adapter {name!r}: PEFT has no {bad} (bottleneck adapters and prefix tuning are "
                           "AdapterHub methods); save it with format='adapterhub' or 'ours'")
    if len(kinds) != 1:
        raise InteropError(f"adapter {name!r} unites {sorted(kinds)}; a PEFT adapter holds one method: add and "
                           "save each method as its own adapter")
    prefix, task = "", ("CAUSAL_LM" if info.family == "llama" else "FEATURE_EXTRACTION")
    extra: dict = {}
    if head is not None:
        if not (isinstance(head, heads.Classification) and head.pooling == "pooler" and head.hidden_layers == 0
                and info.model_type in _HEADS):
            raise InteropError(f"adapter {name!r}: PEFT's sequence-classification models have no head equal to "
                               f"{head!r} here (only BERT's classifier on the pooler: pooling='pooler', "
                               "hidden_layers=0); save without it (with_head=False)")
        prefix, task = info.model_type + ".", "SEQ_CLS"
        extra["modules_to_save"] = ["classifier", "score"]
    mods = defaultdict(set)
    for k in leaves:
        p = paths.parse(k)
        mods[p.method].add(p.module)
    kind = next(iter(kinds))
    cfg = {"base_model_name_or_path": None, "inference_mode": True, "task_type": task, "revision": None, **extra}
    if kind == "lora":
        by_module = {m: next(c for c in methods if hook_mode(c, m) == "output") for m in mods["lora"]}
        if len({(c.use_rslora, c.dropout) for c in methods}) != 1:
            raise InteropError(f"adapter {name!r}: its LoRA parts differ in use_rslora/dropout; PEFT has one of each")
        (r, alpha), _ = Counter((c.r, c.alpha) for _, c in sorted(by_module.items())).most_common(1)[0]
        tm, lt = tg.peft_spelling(mods["lora"], info, prefix)
        cfg.update(peft_type="LORA", r=r, lora_alpha=_num(alpha), use_rslora=methods[0].use_rslora,
                   lora_dropout=methods[0].dropout, target_modules=tm, layers_to_transform=lt, bias="none",
                   fan_in_fan_out=False, init_lora_weights=True, use_dora=False,
                   rank_pattern={paths.hf_dotted(m): c.r for m, c in sorted(by_module.items()) if c.r != r},
                   alpha_pattern={paths.hf_dotted(m): _num(c.alpha) for m, c in sorted(by_module.items())
                                  if c.alpha != alpha})
    elif kind == "ia3":
        (c,) = methods
        ff = {m for m in mods["ia3"] if hook_mode(c, m) == "input"}
        tm, ffm = _ia3_lists(mods["ia3"], ff, info, prefix)
        cfg.update(peft_type="IA3", target_modules=tm, feedforward_modules=ffm, fan_in_fan_out=False,
                   init_ia3_weights=True)
    else:
        (c,) = methods
        cfg.update(peft_type="PROMPT_TUNING", num_virtual_tokens=c.prompt_length, token_dim=info.hidden_size,
                   num_transformer_submodules=1, num_attention_heads=info.num_heads, num_layers=info.num_layers,
                   prompt_tuning_init="RANDOM")
    return cfg, prefix


def _ia3_lists(mods: set, ff: set, info: ModelInfo, prefix: str) -> tuple[list, list]:
    """(target_modules, feedforward_modules): PEFT wants the second a subset of the first's strings, and marks a
    targeted module feed-forward when its name ends with one of them (no dot: peft 0.21's IA3 rule)."""
    names = {m: prefix + paths.hf_dotted(m) for m in mods}
    tm, _ = tg.peft_spelling(mods, info, prefix, layers_ok=False)
    for targets_ in (tm, sorted(paths.hf_dotted(m) for m in mods)):
        ffm = [t for t in targets_ if all(m in ff for m, n in names.items() if n == t or n.endswith("." + t))]
        if {m for m, n in names.items() if any(n.endswith(t) for t in ffm)} == ff:
            return targets_, ffm
    raise InteropError(f"cannot spell IA3's feed-forward modules {sorted(ff)[:4]} ... for PEFT exactly")


def head_tensors(head_params: dict) -> dict:
    """Our head leaves ({path: array}) as PEFT's saved `classifier` tensors."""
    return {f"{ROOT}classifier.weight": np.asarray(head_params["head/out_proj/kernel"]).T,
            f"{ROOT}classifier.bias": np.asarray(head_params["head/out_proj/bias"])}
