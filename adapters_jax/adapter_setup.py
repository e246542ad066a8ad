"""A model's named adapters: which exist, which run, the bank beside them (frozen, hashable dataclasses).

`AdapterSetup` is the linen attribute every hook reads (modules/hooks.py); `Bank` K adapters of one
setup on a slot axis (adapters_jax/bank.py). The method configs, the config-string grammar and
NamedAdapter (one adapter's parsed config) are configs.py.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field

from adapters_jax.configs import (AdapterConfigError, LoRA, MethodConfig, NamedAdapter, PrefixTuning, PromptTuning,
                                  parse, to_string)


# the methods whose members may differ in length within a bank, and that length's field (padded, masked)
LENGTH_FIELDS = ((PrefixTuning, "prefix_length"), (PromptTuning, "prompt_length"))


@dataclass(frozen=True)
class Bank:
    """K adapters of one setup stacked on a leading axis (adapters_jax/bank.py): each example picks a slot.

    `methods` is the slots' common shape (the largest LoRA rank, bottleneck size, prefix and
    soft-prompt length of the members; smaller members are zero-padded, which is exact: padded
    prefix and prompt positions are masked out of attention and not counted in positions);
    `slots[k]` is the adapter in slot k with its own configs (its LoRA scaling, its prefix and
    prompt lengths), or None for a free slot (the bank's shape). Two banks are equal (and a
    jitted step keyed on the model is reused) when their name, shape, per-slot LoRA scalings
    and lengths are: which adapter sits in a slot is data, so `bank.write` of another adapter
    with the same scaling and lengths keeps the compiled step.
    """

    name: str
    methods: tuple[MethodConfig, ...]
    slots: tuple[NamedAdapter | None, ...] = field(compare=False)
    scalings: tuple[float, ...] = field(init=False)  # [K] alpha/r (or rsLoRA's) per slot; 0 without LoRA
    # [K] per slot, the true prefix_length of each of the bank's prefix-tuning methods (in order)
    prefix_lengths: tuple[tuple[int, ...], ...] = field(init=False)
    # [K] per slot, the true prompt_length of each of the bank's prompt-tuning methods (in order)
    prompt_lengths: tuple[tuple[int, ...], ...] = field(init=False)

    def __post_init__(self):
        object.__setattr__(self, "scalings", tuple(
            float(a.of(LoRA)[0].scaling) if a is not None and a.of(LoRA) else 0.0 for a in self.slots))
        for cls, attr in LENGTH_FIELDS:
            full = tuple(getattr(m, attr) for m in self.of(cls))
            object.__setattr__(self, f"{attr}s", tuple(
                full if a is None else tuple(getattr(m, attr) for m in a.of(cls)) for a in self.slots))

    def lengths(self, config) -> tuple[int, ...]:
        """[K] the true length of bank method `config` (a prefix- or prompt-tuning config of `methods`) per slot."""
        same = [m for m in self.methods if m.method == config.method]
        per_slot = self.prefix_lengths if isinstance(config, PrefixTuning) else self.prompt_lengths
        return tuple(ls[same.index(config)] for ls in per_slot)

    @property
    def size(self) -> int:
        return len(self.slots)

    def of(self, cls):
        return [m for m in self.methods if isinstance(m, cls)]

    def slot(self, name: str) -> int:
        for k, a in enumerate(self.slots):
            if a is not None and a.name == name:
                return k
        raise AdapterConfigError(f"bank {self.name!r} holds no adapter named {name!r}; it holds "
                                 f"{[a.name for a in self.slots if a is not None]}")


@dataclass(frozen=True)
class AdapterSetup:
    """The named adapters of a model and which of them run in the forward pass.

    Hashable, so it is a linen module attribute: switching the active adapters is
    `model.clone(adapters=setup.activate("a", "b"))`. Several active bottleneck
    adapters at one hook point run as AdapterHub's Stack (in `active` order);
    active LoRA/IA3/prefix/prompt adapters all apply (sum, product, concat).
    `composition` is an AdapterHub composition block of bottleneck adapters
    (modules/composition.py: Stack, Parallel, Fuse, Average, BatchSplit), set by
    adapters.activate, which then also lists its adapters and fusion layers in `active`;
    `activate` with plain names clears it.
    `merged` names the LoRA adapters folded into the base kernels (adapters.merge_lora):
    they cannot be activated (their update would count twice) or merged again.
    """

    adapters: tuple[NamedAdapter, ...] = ()
    active: tuple[str, ...] = ()
    merged: tuple[str, ...] = ()
    bank: Bank | None = None  # runs beside the active adapters, a slot per example (bank.route)
    composition: object = None  # a composition block (hashable) run at the bottleneck hooks, or None
    # the slot of each example [B] (-1: none), set per call by bank.route; data, not part of the setup's identity
    ids: object = field(default=None, compare=False, hash=False, repr=False)
    # AdapterDrop (Rueckle et al. 2021): no adapter runs in layers < drop_below (static: skipped, faster), or
    # < drop_n (a traced int set per training step: computed and masked, so one compiled step serves every n)
    drop_below: int = 0
    drop_n: object = field(default=None, compare=False, hash=False, repr=False)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(a.name for a in self.adapters)

    def get(self, name: str) -> NamedAdapter:
        for a in self.adapters:
            if a.name == name:
                return a
        raise AdapterConfigError(f"no adapter named {name!r}; this model has {list(self.names)}")

    def add(self, name: str, spec) -> "AdapterSetup":
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name or ""):
            raise AdapterConfigError(f"adapter name {name!r} must be an identifier (letters, digits, _)")
        if name in self.names:
            raise AdapterConfigError(f"an adapter named {name!r} already exists; choose another name")
        methods = parse(spec)
        text = spec if isinstance(spec, str) else to_string(methods)
        return dataclasses.replace(self, adapters=self.adapters + (NamedAdapter(name, text, methods),))

    def activate(self, *names: str) -> "AdapterSetup":
        for n in names:
            self.get(n)
            if n in self.merged:
                raise AdapterConfigError(f"adapter {n!r} is merged into the base kernels; activating it would apply "
                                         "its update twice (unmerge_lora it first)")
        return dataclasses.replace(self, active=tuple(names), composition=None)

    def active_methods(self, cls) -> list[tuple[str, MethodConfig]]:
        return [(n, m) for n in self.active for m in self.get(n).of(cls)]

    def bank_methods(self, cls) -> list[tuple[str, MethodConfig]]:
        return [(self.bank.name, m) for m in self.bank.of(cls)] if self.bank is not None else []
