"""Adapter configs (frozen dataclasses) and AdapterHub-style config strings.

A config string names one or more methods with AdapterHub's ids and keys:

    "houlsby[bottleneck=64,non_linearity=relu]"       "double_seq_bn[reduction_factor=6]"
    "lora[r=8,alpha=16,attn_matrices=[q,k,v]]"        "prefix_tuning[prefix_length=10]|par_bn"
    "mam"                                             "ia3"

`|` joins methods into one adapter (a union, AdapterHub's ConfigUnion). A value
holding `,` `|` `[` `]` or a quote is written in quotes, a quote inside doubled
(`target='x{1,3}|it''s'`); `to_string` quotes so that `parse(to_string(x)) == x`.
A list value is `[a,b]`; a bare value is a list of one (`leave_out=10`). Each
id's defaults are AdapterHub's (adapters 1.3), with these deliberate deviations:

- bottleneck `init_weights` defaults to "zero" (down-projection as BERT's
  init, up-projection zero) so that every adapter starts as the identity;
  `init_weights=bert` gives AdapterHub's near-identity init, `mam_adapter` and
  `houlsby` its other two.
- `bottleneck=M` is our alias for `reduction_factor=hidden/M`.
- LoRA and IA3 also take `target=REGEX`, matched against our param paths of the
  Linear modules (e.g. `attention/self/(query|value)$`), PEFT's way of choosing
  modules; without it the AdapterHub keys (attn_matrices, selfattn_lora,
  intermediate_lora, output_lora) choose them.
- IA3 on the feed-forward scales the activation (the input of the FFN's output
  projection), as the IA3 paper and PEFT do; AdapterHub scales the output of
  the intermediate projection, before the activation.
- LoRA `use_rslora=true` scales by alpha/sqrt(r) (PEFT's rsLoRA).
- prompt tuning defaults to `prompt_init=vocab`: rows sampled from the frozen
  vocabulary embeddings (PEFT's SAMPLE_VOCAB; Lester et al.); the soft prompt is
  prepended to the word embeddings before positions are added, as PEFT does.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Union
from adapters_jax.errors import ConfigError as AdapterConfigError  # noqa: F401  (re-exported)


NON_LINEARITIES = ("relu", "gelu", "gelu_new", "swish", "silu", "tanh", "leakyrelu", "sigmoid", "identity")


@dataclass(frozen=True)
class Bottleneck:
    """Bottleneck adapter (AdapterHub BnConfig): sequential (Houlsby, Pfeiffer) or parallel (He et al.)."""

    mh_adapter: bool = False
    output_adapter: bool = True
    reduction_factor: float = 16.0
    bottleneck: int | None = None  # alias: reduction_factor = hidden / bottleneck
    non_linearity: str = "relu"
    original_ln_before: bool = True
    original_ln_after: bool = True
    residual_before_ln: Union[bool, str] = True  # True, False or "post_add"
    adapter_residual_before_ln: bool = False
    ln_before: bool = False
    ln_after: bool = False
    init_weights: str = "zero"
    init_std: float = 1e-2  # init_weights="houlsby": both projections ~ normal(0, std) truncated at 2 std
    is_parallel: bool = False
    scaling: Union[float, str] = 1.0  # a number, "learned" or "channel"
    dropout: float = 0.0
    leave_out: tuple[int, ...] = ()
    method = "bottleneck"

    def size(self, hidden: int) -> int:
        m = self.bottleneck if self.bottleneck is not None else int(hidden // self.reduction_factor)
        if m < 1 or m > hidden:
            raise AdapterConfigError(
                f"bottleneck size {m} (reduction_factor={self.reduction_factor}, bottleneck={self.bottleneck}) "
                f"must be between 1 and the hidden size {hidden}"
            )
        return m


@dataclass(frozen=True)
class LoRA:
    """LoRA (Hu et al.): W x + (alpha/r) B A dropout(x), B zero at init."""

    r: int = 8
    alpha: float = 8.0
    dropout: float = 0.0
    use_rslora: bool = False
    selfattn_lora: bool = True
    intermediate_lora: bool = False
    output_lora: bool = False
    attn_matrices: tuple[str, ...] = ("q", "v")
    target: str | None = None
    leave_out: tuple[int, ...] = ()
    init_weights: str = "lora"
    method = "lora"

    @property
    def scaling(self) -> float:
        return self.alpha / (self.r ** 0.5 if self.use_rslora else self.r)


@dataclass(frozen=True)
class IA3:
    """IA3 (Liu et al.): learned vectors scale keys, values and the FFN activation; ones at init."""

    selfattn_lora: bool = True
    intermediate_lora: bool = True
    output_lora: bool = False
    attn_matrices: tuple[str, ...] = ("k", "v")
    target: str | None = None
    feedforward: str | None = None  # regex of targets whose input (not output) is scaled
    leave_out: tuple[int, ...] = ()
    method = "ia3"


@dataclass(frozen=True)
class PrefixTuning:
    """Prefix tuning (Li & Liang): per-layer key/value prefixes from a reparameterisation MLP."""

    prefix_length: int = 30
    bottleneck_size: int = 512
    non_linearity: str = "tanh"
    dropout: float = 0.0
    flat: bool = False
    leave_out: tuple[int, ...] = ()
    method = "prefix_tuning"


@dataclass(frozen=True)
class PromptTuning:
    """Prompt tuning (Lester et al.): a soft prompt prepended to the word embeddings."""

    prompt_length: int = 10
    prompt_init: str = "vocab"  # "vocab" (sampled vocabulary rows) or "random_uniform"
    random_uniform_scale: float = 0.5
    method = "prompt_tuning"


MethodConfig = Union[Bottleneck, LoRA, IA3, PrefixTuning, PromptTuning]

# AdapterHub ids -> (config class, its defaults). Deprecated aliases kept, as AdapterHub keeps them.
_SEQ = dict(original_ln_before=True, mh_adapter=False, output_adapter=True, non_linearity="relu", reduction_factor=16)
_DOUBLE = dict(original_ln_before=False, mh_adapter=True, output_adapter=True, non_linearity="swish", reduction_factor=16)
_PAR = dict(original_ln_before=False, mh_adapter=False, output_adapter=True, non_linearity="relu", reduction_factor=2,
            init_weights="mam_adapter", is_parallel=True, scaling=4.0)
PRESETS: dict[str, tuple[type, dict]] = {
    "seq_bn": (Bottleneck, _SEQ),
    "pfeiffer": (Bottleneck, _SEQ),
    "double_seq_bn": (Bottleneck, _DOUBLE),
    "houlsby": (Bottleneck, _DOUBLE),
    "par_bn": (Bottleneck, _PAR),
    "parallel": (Bottleneck, _PAR),
    "scaled_par_bn": (Bottleneck, {**_PAR, "scaling": "learned"}),
    "scaled_parallel": (Bottleneck, {**_PAR, "scaling": "learned"}),
    "bottleneck": (Bottleneck, {}),
    "lora": (LoRA, {}),
    "ia3": (IA3, {}),
    "prefix_tuning": (PrefixTuning, {}),
    "prefix_tuning_flat": (PrefixTuning, {"flat": True}),
    "prompt_tuning": (PromptTuning, {}),
}
UNIONS = {"mam": "prefix_tuning[bottleneck_size=800]|par_bn"}


_QUOTES = "'\""
_SPECIAL = set(",|[]'\"")  # characters that end or split an unquoted value


def _split_top(s: str, sep: str) -> list[str]:
    """Split on `sep` outside brackets and quotes ('...' or "...": a quote inside is written twice)."""
    parts, depth, quote, cur = [], 0, None, ""
    for ch in s:
        if quote:
            quote = None if ch == quote else quote
        elif ch in _QUOTES:
            quote = ch
        elif ch == sep and depth == 0:
            parts.append(cur)
            cur = ""
            continue
        else:
            depth += (ch == "[") - (ch == "]")
            if depth < 0:
                break
        cur += ch
    if quote:
        raise AdapterConfigError(f"unclosed quote {quote} in adapter config {s!r}")
    if depth != 0:
        raise AdapterConfigError(f"unbalanced brackets in adapter config {s!r}")
    return parts + [cur]


def _unquote(raw: str, where: str) -> tuple[str, bool]:
    """('it''s' -> it's, True); an unquoted value comes back as it is (False)."""
    q = raw[:1]
    if not q or q not in _QUOTES:
        return raw, False
    inner = raw[1:-1]
    if len(raw) < 2 or raw[-1] != q or q in inner.replace(q * 2, ""):
        raise AdapterConfigError(f"{where}: cannot read {raw!r}: a quoted value is one {q}...{q}, "
                                 f"with a {q} inside it written twice")
    return inner.replace(q * 2, q), True


def _quote(text: str) -> str:
    """`text` as a value that parses back to itself: quoted when it holds , | [ ] or a quote."""
    if text and text == text.strip() and not (_SPECIAL & set(text)) and text.lower() != "none":
        return text
    return "'" + text.replace("'", "''") + "'"


def _coerce(cls, key: str, raw: str, where: str):
    t = str({f.name: f for f in dataclasses.fields(cls)}[key].type)
    raw = raw.strip()
    if t.startswith("tuple"):
        inner = raw[1:-1] if raw.startswith("[") and raw.endswith("]") else raw  # a bare value is one item
        items = [_unquote(v.strip(), where)[0] for v in _split_top(inner, ",") if v.strip()]
    text, quoted = _unquote(raw, where)
    low = text.lower()
    try:
        if t.startswith("tuple"):
            return tuple(int(v) for v in items) if "int" in t else tuple(items)
        if t.startswith("bool") or t == "Union[bool, str]":
            if low in ("true", "false"):
                return low == "true"
            if t == "Union[bool, str]" and low == "post_add":
                return low
            raise ValueError
        if t in ("int", "int | None"):
            return None if low == "none" and "None" in t else int(text)
        if t in ("float",):
            return float(text)
        if t == "Union[float, str]":
            return low if low in ("learned", "channel") else float(text)
        if t in ("str", "str | None"):
            return None if low == "none" and "None" in t and not quoted else text
    except ValueError:
        pass
    raise AdapterConfigError(f"{where}: {key}={raw!r} is not a valid {t}")


def _validate(cfg: MethodConfig, where: str) -> MethodConfig:
    if isinstance(cfg, Bottleneck):
        if cfg.non_linearity.lower() not in NON_LINEARITIES:
            raise AdapterConfigError(f"{where}: non_linearity={cfg.non_linearity!r}; valid: {NON_LINEARITIES}")
        if cfg.init_weights not in ("zero", "bert", "mam_adapter", "houlsby"):
            raise AdapterConfigError(f"{where}: init_weights={cfg.init_weights!r}; valid: zero, bert, mam_adapter, houlsby")
        if not cfg.init_std > 0:
            raise AdapterConfigError(f"{where}: init_std={cfg.init_std} must be > 0")
        if cfg.reduction_factor <= 0 or (cfg.bottleneck is not None and cfg.bottleneck < 1):
            raise AdapterConfigError(f"{where}: reduction_factor and bottleneck must be positive")
        if not (cfg.mh_adapter or cfg.output_adapter):
            raise AdapterConfigError(f"{where}: neither mh_adapter nor output_adapter is set: the adapter goes nowhere")
    if isinstance(cfg, LoRA):
        if cfg.r < 1:
            raise AdapterConfigError(f"{where}: r={cfg.r} must be >= 1")
        if cfg.init_weights not in ("lora", "bert"):
            raise AdapterConfigError(f"{where}: init_weights={cfg.init_weights!r}; valid: lora, bert")
    if isinstance(cfg, (LoRA, IA3)):
        bad = [m for m in cfg.attn_matrices if m not in ("q", "k", "v")]
        if bad:
            raise AdapterConfigError(f"{where}: attn_matrices {bad} not valid; choose from q, k, v")
        for rx in (cfg.target, getattr(cfg, "feedforward", None)):
            if rx is not None:
                try:
                    re.compile(rx)
                except re.error as e:
                    raise AdapterConfigError(f"{where}: target regex {rx!r} does not compile: {e}") from e
    if isinstance(cfg, PrefixTuning) and (cfg.prefix_length < 1 or cfg.bottleneck_size < 1):
        raise AdapterConfigError(f"{where}: prefix_length and bottleneck_size must be >= 1")
    if isinstance(cfg, PromptTuning):
        if cfg.prompt_length < 1:
            raise AdapterConfigError(f"{where}: prompt_length must be >= 1")
        if cfg.prompt_init not in ("vocab", "random_uniform"):
            raise AdapterConfigError(f"{where}: prompt_init={cfg.prompt_init!r}; valid: vocab, random_uniform")
    return cfg


def parse_one(item: str) -> tuple[MethodConfig, ...]:
    item = item.strip()
    m = re.fullmatch(r"([\w+]+)(?:\[(.*)\])?", item, flags=re.S)
    if not m:
        raise AdapterConfigError(f"cannot parse adapter config {item!r}; expected ID or ID[key=value,...]")
    ident, body = m.group(1), m.group(2)
    if ident in UNIONS:
        if body:
            raise AdapterConfigError(f"{ident!r} is a union; override its parts instead: {UNIONS[ident]!r}")
        return parse(UNIONS[ident])
    if ident not in PRESETS:
        raise AdapterConfigError(f"unknown adapter method {ident!r}; valid ids: {sorted(PRESETS) + sorted(UNIONS)}")
    cls, defaults = PRESETS[ident]
    kw = dict(defaults)
    valid = [f.name for f in dataclasses.fields(cls)]
    for pair in _split_top(body or "", ","):
        if not pair.strip():
            continue
        if "=" not in pair:
            raise AdapterConfigError(f"{ident}: expected key=value, got {pair!r}")
        key, raw = (s.strip() for s in pair.split("=", 1))
        if key not in valid:
            raise AdapterConfigError(f"{ident}: unknown key {key!r}; valid keys: {valid}")
        kw[key] = _coerce(cls, key, raw, ident)
    if "reduction_factor" in kw:
        kw["reduction_factor"] = float(kw["reduction_factor"])
    return (_validate(cls(**kw), ident),)


def parse(spec: str | MethodConfig | tuple) -> tuple[MethodConfig, ...]:
    """A config string (or config objects) -> a tuple of method configs."""
    if isinstance(spec, tuple):
        return tuple(c for s in spec for c in parse(s))
    if not isinstance(spec, str):
        return (_validate(spec, type(spec).__name__),)
    if not spec.strip():
        raise AdapterConfigError("empty adapter config string")
    return tuple(c for part in _split_top(spec, "|") for c in parse_one(part))


def to_string(methods: tuple[MethodConfig, ...]) -> str:
    """The canonical string of a union: every non-default field spelled out, parseable again."""
    parts = []
    ids = {Bottleneck: "bottleneck", LoRA: "lora", IA3: "ia3", PrefixTuning: "prefix_tuning", PromptTuning: "prompt_tuning"}
    for cfg in methods:
        kv = []
        for f in dataclasses.fields(cfg):
            v = getattr(cfg, f.name)
            if v == f.default:
                continue
            if isinstance(v, bool):
                v = str(v).lower()
            elif isinstance(v, tuple):
                v = "[" + ",".join(_quote(x) if isinstance(x, str) else str(x) for x in v) + "]"
            elif isinstance(v, str):
                v = _quote(v)
            kv.append(f"{f.name}={v}")
        parts.append(ids[type(cfg)] + (f"[{','.join(kv)}]" if kv else ""))
    return "|".join(parts)


@dataclass(frozen=True)
class NamedAdapter:
    name: str
    spec: str  # the string the user gave, kept for metadata
    methods: tuple[MethodConfig, ...]

    def of(self, cls):
        return [m for m in self.methods if isinstance(m, cls)]
