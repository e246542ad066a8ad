"""The param path grammar, written once: what a path means, how HF names map to it, which projection is which.

Every param of a model is addressed by a `/`-joined path (flax's
`flatten_dict(..., sep="/")`). A path is one of:

    base      encoder/layer_3/attention/self/query/kernel     mirrors HF `encoder.layer.3.attention.self.query.weight`
    adapter   <module>/<GROUP>/<NAME>/<leaf...>                adapter NAME of the method that GROUP names
    head      head/<leaf...>                                   the task head

GROUP is the segment before the adapter's name, one per method family:

    adapters, attention_adapters, output_adapters   bottleneck (BERT's output modules; a Llama layer's two points)
    lora, ia3                                        on a projection, as a child of that Linear
    prefix_tuning                                    the prefix pool at the model root
    prompt_tuning                                    the soft prompt beside the word embeddings

HF names: a dotted name maps to a path by dropping a family prefix (`bert.`,
`roberta.`, `base_model.model.`), joining a numeric segment to the one before
it (`layer.3` -> `layer_3`) and mapping the leaf (`weight` -> `kernel` for a
Linear (transposed), `embedding` for an Embedding, `scale` for a norm); `path_to_hf`
is the inverse (merged-model export).

Projection roles (the q/k/v/FFN names AdapterHub's keys and tensor-parallel
rules use) are regexes over the Linear module paths of both families, in
`ROLES`. This module imports nothing from the library, so every layer may ask it.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Mapping

from flax.traverse_util import flatten_dict, unflatten_dict

SEP = "/"

# The segment before an adapter's name, per method family.
GROUPS = {
    "adapters": "bottleneck",
    "attention_adapters": "bottleneck",
    "output_adapters": "bottleneck",
    "lora": "lora",
    "ia3": "ia3",
    "prefix_tuning": "prefix_tuning",
    "prompt_tuning": "prompt_tuning",
}
HEAD = "head"
# Where a family's bottleneck adapters hang, per location (AdapterHub's names): BERT's two output
# modules each hold "adapters"; a Llama decoder layer holds one group per location.
BOTTLENECK_GROUP = {
    "bert": {"mh_adapter": "adapters", "output_adapter": "adapters"},
    "llama": {"mh_adapter": "attention_adapters", "output_adapter": "output_adapters"},
}

# Projection roles, matched against the end of Linear/Embed module paths, BERT family | Llama family.
ROLES = {
    "q": r"(attention/self/query|self_attn/q_proj)",
    "k": r"(attention/self/key|self_attn/k_proj)",
    "v": r"(attention/self/value|self_attn/v_proj)",
    "attn_out": r"(attention/output/dense|self_attn/o_proj)",
    "ffn_in": r"(intermediate/dense|mlp/(gate_proj|up_proj))",
    "ffn_out": r"(layers?_\d+/output/dense|mlp/down_proj)",
    "embed": r"(word_embeddings|embed_tokens)",
    "lm_head": r"lm_head",
}
# Megatron tensor parallelism: column-parallel in-projections, row-parallel out-projections.
COLUMN_ROLES = ("q", "k", "v", "ffn_in")
ROW_ROLES = ("attn_out", "ffn_out")

# HF name prefixes dropped on the way in (a task model's base prefix, PEFT's wrapper).
HF_PREFIXES = ("base_model.model.", "bert.", "roberta.")
# HF tensors with no param here: buffers and other libraries' task heads, per family.
HF_DROP = {
    "bert": r"(position_ids$|^(cls|lm_head|qa_outputs|classifier)\.)",
    "llama": r"rotary_emb\.inv_freq$",
}
# Our classification head's modules under HF's task-model names, per model_type (BertForSequenceClassification's
# linear on the pooler; RobertaClassificationHead's dense + out_proj on the first token).
HF_HEAD_NAMES = {
    "bert": {"head/out_proj": "classifier"},
    "roberta": {"head/dense_0": "classifier.dense", "head/out_proj": "classifier.out_proj"},
}
_HF_LEAF = {"weight": ("kernel", "embedding", "scale"), "bias": ("bias",)}
_LAYER = re.compile(r"layers?_(\d+)(/|$)")


def flat(tree: Mapping) -> dict[str, Any]:
    """{path: leaf} of a nested param dict."""
    return flatten_dict(tree, sep=SEP)


def unflat(leaves: Mapping[str, Any]) -> dict:
    """Inverse of `flat`."""
    return unflatten_dict(dict(leaves), sep=SEP)


@dataclasses.dataclass(frozen=True)
class Parsed:
    """What a param path means: kind "base" | "adapter" | "head"; for adapters, the method, name and module."""

    kind: str
    module: str  # the path above the group (adapters), or the path without its leaf (base)
    leaf: str
    method: str | None = None
    group: str | None = None
    name: str | None = None


def parse(path: str) -> Parsed:
    parts = path.split(SEP)
    if parts[0] == HEAD:
        return Parsed("head", HEAD, SEP.join(parts[1:]))
    for i, p in enumerate(parts):
        if p in GROUPS and i + 2 < len(parts):  # <group>/<name>/<leaf...>
            return Parsed("adapter", SEP.join(parts[:i]), SEP.join(parts[i + 2:]), GROUPS[p], p, parts[i + 1])
    return Parsed("base", SEP.join(parts[:-1]), parts[-1])


def adapter_of(path: str) -> str | None:
    """The adapter name a param path belongs to (None for base and head params)."""
    return parse(path).name


def is_head(path: str) -> bool:
    return parse(path).kind == "head"


def is_base(path: str) -> bool:
    return parse(path).kind == "base"


def rename_adapter(path: str, old: str, new: str) -> str:
    """The same leaf under adapter name `new` (the segment after the group, nothing else)."""
    p = parse(path)
    if p.name != old:
        return path
    return SEP.join(x for x in (p.module, p.group, new, p.leaf) if x)


def layer_index(path: str) -> int | None:
    m = _LAYER.search(path)
    return int(m.group(1)) if m else None


def layers_regex(indices) -> str:
    """A regex matching every path inside the transformer layers `indices`."""
    return rf"layers?_({'|'.join(str(i) for i in indices)})/"


def role_of(module_path: str) -> str | None:
    """"q", "k", "v", "attn_out", "ffn_in", "ffn_out", "embed", "lm_head" or None for a Linear/Embed path."""
    return next((role for role, rx in ROLES.items() if re.search(rx + "$", module_path)), None)


def roles_regex(roles) -> str:
    """One regex matching the module paths of any of `roles` (append `$` or a leaf such as `/kernel$`)."""
    return "(" + "|".join(ROLES[r] for r in roles) + ")"


def _strip(dotted: str) -> str:
    for prefix in HF_PREFIXES:
        if dotted.startswith(prefix):
            dotted = dotted[len(prefix):]
    return dotted


def hf_module_path(dotted: str) -> str:
    """`bert.encoder.layer.0.output` -> `encoder/layer_0/output` (prefixes dropped, numbers joined)."""
    dotted = _strip(dotted)
    parts: list[str] = []
    for p in dotted.split(".") if dotted else []:
        if p.isdigit() and parts:
            parts[-1] = f"{parts[-1]}_{p}"
        else:
            parts.append(p)
    return SEP.join(parts)


def hf_dotted(module_path: str) -> str:
    """Inverse of hf_module_path (without a prefix): `encoder/layer_0/attention` -> `encoder.layer.0.attention`."""
    return ".".join(re.sub(r"^(\w+?)_(\d+)$", r"\1.\2", p) for p in module_path.split(SEP))


def hf_to_path(hf_name: str, family: str, params: Mapping[str, Any]) -> str | None:
    """An HF tensor name -> the path of the param it fills in `params` (a `flat` dict); None if dropped or absent.

    `family` is "bert" or "llama" (which buffers to drop). A `weight` fills whichever of
    kernel / embedding / scale the model holds at that module.
    """
    if is_dropped(hf_name, family):
        return None
    module, _, leaf = _strip(hf_name).rpartition(".")
    module = hf_module_path(module)
    return next((f"{module}{SEP}{c}" for c in _HF_LEAF.get(leaf, (leaf,)) if f"{module}{SEP}{c}" in params), None)


_LEAF_HF = {"kernel": "weight", "embedding": "weight", "scale": "weight", "bias": "bias"}


def path_to_hf(path: str, prefix: str = "") -> tuple[str, bool]:
    """Inverse of hf_to_path for a base param: (`prefix` + the HF tensor name, whether the value is transposed).

    `encoder/layer_0/attention/self/query/kernel` -> (`encoder.layer.0.attention.self.query.weight`, True):
    a Linear kernel [in, out] is torch's weight [out, in]; embeddings, norm scales and biases keep their layout.
    """
    module, _, leaf = path.rpartition(SEP)
    if leaf not in _LEAF_HF or not module:
        raise ValueError(f"{path}: no HF tensor name for leaf {leaf!r} (base params end in {sorted(_LEAF_HF)})")
    return f"{prefix}{hf_dotted(module)}.{_LEAF_HF[leaf]}", leaf == "kernel"


def is_dropped(hf_name: str, family: str) -> bool:
    """True for HF tensors that have no param here by design (buffers, other libraries' task heads)."""
    return re.search(HF_DROP[family], _strip(hf_name)) is not None
