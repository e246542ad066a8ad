"""What the directory formats exchange: the facts of a base model they need, and what reading a directory gives."""
from __future__ import annotations

import dataclasses

from adapters_jax import paths


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """What the translations need to know of a base model (adapters.model_info builds it)."""

    model_type: str
    family: str  # "bert" | "llama"
    num_layers: int
    hidden_size: int
    num_heads: int
    modules: tuple  # ((module path, "linear" | "embed" | "norm"), ...) of the base params

    @property
    def kinds(self) -> dict:
        return dict(self.modules)

    @property
    def hookable(self) -> set:
        """The projections LoRA and IA3 can act on here: every Linear with a role in paths.ROLES but the embeddings."""
        return {m for m, k in self.modules if k == "linear" and paths.role_of(m) not in (None, "embed")}


@dataclasses.dataclass
class Foreign:
    """A PEFT or AdapterHub directory translated: our spec, the peer's tensors, and the head if one was saved."""

    format: str
    spec: str  # our config string (configs.parse), the adapter to add before filling
    tensors: dict  # the adapter's tensors under the peer's names (interop.from_peft / from_adapterhub read them)
    name: str  # the adapter's name in the peer's files (AdapterHub's `name`; PEFT's "default")
    hooks: dict = dataclasses.field(default_factory=dict)  # method -> module paths it must hook (checked after adding)
    head: object = None  # a heads.Classification to add, or None
    head_tensors: dict = dataclasses.field(default_factory=dict)  # our head path -> (peer name, value)
    base_tensors: dict = dataclasses.field(default_factory=dict)  # HF name -> value that must equal the base's
