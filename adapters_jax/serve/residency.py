"""Which adapters a server knows (registry), holds in host memory (LRU, a byte budget) and in bank slots (LRU).

An adapter is read from its directory once into bank layout (`HostAdapter`: one
slot's arrays, padded to the bank's rank / bottleneck size, keyed by the bank's
leaf paths), so putting it into a slot is one in-place update of the bank leaves
and never changes the model: every slot of the serving model carries the same
placeholder config, so its static LoRA scaling is the same for all slots, and a
member's own scaling is folded into its `lora_B` (exact when the scalings agree,
one rounding otherwise). The fold is what keeps adapters of different alpha/r on
one compiled step: adapter_setup.Bank compares the slots' scalings, so bank.write of an
adapter with the same scaling keeps the model (and its compiled steps), one with
another scaling would not.
"""
from __future__ import annotations

import collections
import dataclasses
import json
from pathlib import Path

import numpy as np

from adapters_jax import configs, paths
from adapters_jax.bank import _shape_of
from adapters_jax.adapter_setup import LENGTH_FIELDS
from adapters_jax.configs import AdapterConfigError, LoRA, NamedAdapter

SAVED_FORMAT = "adapters_jax.adapter/1"


@dataclasses.dataclass(frozen=True)
class Template:
    """What a slot looks like: the bank's name and methods, its per-slot leaves, its head's."""

    bank: str
    methods: tuple
    hidden: int
    leaves: dict  # bank leaf path -> (slot shape, dtype)
    head_leaves: dict  # head/slots/... path -> (slot shape, dtype); empty without a head
    max_labels: int

    @property
    def scaling(self) -> float:
        lora = [m for m in self.methods if isinstance(m, LoRA)]
        return lora[0].scaling if lora else 1.0


@dataclasses.dataclass
class HostAdapter:
    name: str
    member: NamedAdapter
    tensors: dict  # bank leaf path (and head/slots/... path) -> one slot's array
    labels: list | None
    path: str

    @property
    def nbytes(self) -> int:
        return sum(v.nbytes for v in self.tensors.values())


def read_config(path: Path, fingerprint: dict, template: Template, name: str) -> tuple[dict, NamedAdapter]:
    """The saved adapter's metadata and config, refused (naming the cause) for another base or a bank misfit."""
    cfg_file = path / "adapter_config.json"
    if not cfg_file.is_file():
        raise AdapterConfigError(f"{path} is not a saved adapter directory (no adapter_config.json)")
    try:
        meta = json.loads(cfg_file.read_text())
    except (OSError, ValueError) as e:
        raise AdapterConfigError(f"{cfg_file} cannot be read: {e}") from None
    if meta.get("format") != SAVED_FORMAT:
        return meta, None  # another format: adapters_jax.load_adapter reads it (read() below)
    if meta.get("base_fingerprint") != fingerprint:
        raise AdapterConfigError(f"adapter {name!r} ({path}) was trained on another base model "
                                 f"({meta.get('base_fingerprint')}), not the one this server serves ({fingerprint})")
    member = NamedAdapter(name, meta.get("spec", meta["canonical"]), configs.parse(meta["canonical"]))
    check_fits(member, template)
    return meta, member


def check_fits(member: NamedAdapter, template: Template) -> None:
    as_bank = NamedAdapter("the server's bank", "", template.methods)
    if _shape_of([as_bank, member], template.hidden) != template.methods:
        raise AdapterConfigError(f"adapter {member.name!r} ({member.spec}) does not fit the server's bank "
                                 f"({configs.to_string(template.methods)}): larger rank or bottleneck; start the "
                                 "server with a larger --bank")
    for cls, attr in LENGTH_FIELDS:
        lengths = lambda methods: [getattr(m, attr) for m in methods if isinstance(m, cls)]  # noqa: E731
        if lengths(member.methods) != lengths(template.methods):  # every slot runs the placeholder's (static) length
            what = attr.split("_")[0]
            raise AdapterConfigError(f"adapter {member.name!r} has {what} length {lengths(member.methods)}, the "
                                     f"server's bank {lengths(template.methods)}: a server serves {what} adapters "
                                     "of one length")


def read(path, name: str, base, template: Template) -> HostAdapter:
    """Read adapter directory `path` into bank layout; AdapterConfigError naming the cause if it cannot serve."""
    path = Path(path)
    meta, member = read_config(path, base.fingerprint, template, name)
    if member is not None:
        from safetensors.numpy import load_file

        w_file = path / "adapter.safetensors"
        try:
            leaves = load_file(str(w_file))
        except Exception as e:  # safetensors raises its own error types for truncated or corrupt files
            raise AdapterConfigError(f"adapter {name!r}: {w_file} cannot be read ({type(e).__name__}: {e})") from None
        saved = meta["name"]
    else:  # any other format adapters_jax.load_adapter understands (it checks the base itself)
        from adapters_jax.adapters import load_adapter

        model, params = load_adapter((base.model, base.params), path, name=name)
        member = model.adapters.get(name)
        check_fits(member, template)
        leaves = {k: np.asarray(v) for k, v in paths.flat(params).items() if paths.adapter_of(k) == name}
        saved = name
    tensors = {}
    ratio = _lora_scaling(member) / template.scaling
    for bank_path, (shape, dtype) in template.leaves.items():
        src = paths.rename_adapter(bank_path, template.bank, saved)
        if src not in leaves:
            raise AdapterConfigError(f"adapter {name!r} ({path}) has no tensor {src}")
        v = np.asarray(leaves.pop(src), dtype)
        if v.ndim != len(shape) or any(a > b for a, b in zip(v.shape, shape)):
            raise AdapterConfigError(f"adapter {name!r}: {src} {v.shape} does not fit the bank's slot {shape}")
        if ratio != 1.0 and paths.parse(bank_path).method == "lora" and bank_path.endswith("lora_B"):
            v = v * np.asarray(ratio, dtype)
        tensors[bank_path] = np.pad(v, [(0, b - a) for a, b in zip(v.shape, shape)])
    if leaves:
        raise AdapterConfigError(f"adapter {name!r} ({path}) holds tensors the bank has no place for: "
                                 f"{sorted(leaves)[:3]}")
    labels = None
    if template.head_leaves:
        labels = _read_head(path, name, template, tensors)
    for bank_path, v in tensors.items():  # a NaN in one slot must not reach the others' rows (banked.lora's
        if not np.isfinite(v).all():      # small-batch path sums every slot's product, weighted 0 but for one)
            raise AdapterConfigError(f"adapter {name!r} ({path}): {bank_path} holds NaN or infinite values")
    return HostAdapter(name, member, tensors, labels, str(path))


def _lora_scaling(member: NamedAdapter) -> float:
    lora = member.of(LoRA)
    return lora[0].scaling if lora else 1.0


def _read_head(path: Path, name: str, template: Template, tensors: dict) -> list:
    """head.safetensors (the Classification layout, as multi-task training saves it) into the slot head."""
    from safetensors.numpy import load_file

    h_file = path / "head.safetensors"
    if not h_file.is_file():
        raise AdapterConfigError(f"adapter {name!r} ({path}) has no head.safetensors; classify needs a head per adapter")
    try:
        head = load_file(str(h_file))
    except Exception as e:
        raise AdapterConfigError(f"adapter {name!r}: {h_file} cannot be read ({type(e).__name__}: {e})") from None
    n_labels = None
    for slot_path, (shape, dtype) in template.head_leaves.items():
        src = "head/" + slot_path[len("head/slots/"):]
        if src not in head:
            raise AdapterConfigError(f"adapter {name!r}: {h_file} has no tensor {src} (the server's head: "
                                     f"{sorted(template.head_leaves)})")
        v = np.asarray(head[src], dtype)
        if "out_proj" in src:
            n_labels = v.shape[-1]
            if n_labels > template.max_labels:
                raise AdapterConfigError(f"adapter {name!r} has {n_labels} labels, more than the server's "
                                         f"--max-labels {template.max_labels}")
        if v.ndim != len(shape) or any(a > b for a, b in zip(v.shape, shape)):
            raise AdapterConfigError(f"adapter {name!r}: {src} {v.shape} does not fit the head's slot {shape}")
        tensors[slot_path] = np.pad(v, [(0, b - a) for a, b in zip(v.shape, shape)])
    labels = [f"LABEL_{i}" for i in range(n_labels)]
    cfg = path / "head_config.json"
    if cfg.is_file():
        given = json.loads(cfg.read_text()).get("labels")
        if given is not None:
            if len(given) != n_labels:
                raise AdapterConfigError(f"adapter {name!r}: {cfg} names {len(given)} labels, the head has {n_labels}")
            labels = [str(x) for x in given]
    return labels


class HostCache:
    """Adapters read into host memory, least recently used dropped first beyond `budget` bytes."""

    def __init__(self, budget: int):
        self.budget, self.used = budget, 0
        self.entries: collections.OrderedDict[str, HostAdapter] = collections.OrderedDict()
        self.evictions = 0

    def get(self, name: str) -> HostAdapter | None:
        a = self.entries.get(name)
        if a is not None:
            self.entries.move_to_end(name)
        return a

    def put(self, a: HostAdapter) -> None:
        self.drop(a.name)
        self.entries[a.name] = a
        self.used += a.nbytes
        while self.used > self.budget and len(self.entries) > 1:
            _, old = self.entries.popitem(last=False)
            self.used -= old.nbytes
            self.evictions += 1

    def drop(self, name: str) -> None:
        old = self.entries.pop(name, None)
        if old is not None:
            self.used -= old.nbytes


class SlotTable:
    """K bank slots: which adapter each holds, how many running requests use it, least recently used first."""

    def __init__(self, k: int):
        self.names: list[str | None] = [None] * k
        self.users = [0] * k
        self.order = collections.OrderedDict((s, None) for s in range(k))  # least recently used first
        self.evictions = 0

    def slot_of(self, name: str) -> int | None:
        try:
            return self.names.index(name)
        except ValueError:
            return None

    def touch(self, slot: int) -> None:
        self.order.move_to_end(slot)

    def victim(self) -> int | None:
        """A free slot, else the least recently used slot no running request uses; None if all are busy."""
        for s in self.order:
            if self.names[s] is None:
                return s
        for s in self.order:
            if self.users[s] == 0:
                return s
        return None

    def take(self, slot: int) -> None:
        """A running request uses `slot` (-1, the base, is no slot)."""
        if slot >= 0:
            self.users[slot] += 1
            self.touch(slot)

    def release(self, slot: int) -> None:
        if slot >= 0:
            self.users[slot] -= 1

    def assign(self, slot: int, name: str) -> None:
        if self.names[slot] is not None:
            self.evictions += 1
        self.names[slot] = name
        self.touch(slot)

    def free(self, name: str) -> None:
        s = self.slot_of(name)
        if s is not None and self.users[s] == 0:
            self.names[s] = None

    @property
    def resident(self) -> int:
        return sum(n is not None for n in self.names)
