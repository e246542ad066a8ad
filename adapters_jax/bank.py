"""Many adapters on one base in one batch: the adapter bank.

    model, params = add_adapters(base, "lora[r=8]", name="a"); ...          # named adapters, as usual
    model, params = bank.build((model, params), ["a", "b", "c"])             # stacked: .../lora/bank/lora_A [3, in, 8]
    out = bank.route(model, ids).apply({"params": params}, input_ids, mask)  # ids [B]: a slot per example, -1 = base

A bank holds K adapters of one setup (the same methods, targets and options)
on a leading slot axis; which example uses which slot is data (`ids`), so a
batch mixes adapters in one compiled step and changing the mix never
recompiles. Members may differ in LoRA rank and alpha, in bottleneck size and
in prefix and soft-prompt length: smaller members are zero-padded to the largest,
which adds exactly nothing (padded LoRA columns of A meet zero rows of B; padded
bottleneck units have zero up-projection rows; padded prefix and prompt positions
are masked out of attention for the examples of a shorter member, and a shorter
soft prompt sits right before the tokens with positions counted over its own
length, so every token has the position it has with the member alone, and with
the base alone for id -1). Each example's output equals its adapter run alone
(tests/test_bank.py, every method). The math is adapters_jax/modules/banked.py.

`route` must be called inside the jitted function, on the traced ids. Free
slots (size > members) start as fresh adapters (LoRA and bottleneck: the
identity) until `write` puts an adapter there; a write that keeps the slot's
LoRA scaling returns a model equal to the old one (adapter_setup.Bank compares the
scalings, not the members' names), so a jitted step keyed on it is reused.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from adapters_jax import configs, paths
from adapters_jax.adapters import add_adapters, route  # noqa: F401  (route: this module's entry point)
from adapters_jax.adapter_setup import AdapterSetup, Bank
from adapters_jax.configs import AdapterConfigError, Bottleneck, LoRA, PrefixTuning, PromptTuning
from adapters_jax.models import Loaded, family_of

# The fields members may differ in (padded or per slot); every other field must be equal.
_MAY_DIFFER = {LoRA: ("r", "alpha", "use_rslora"), Bottleneck: ("bottleneck", "reduction_factor"),
               PrefixTuning: ("prefix_length",), PromptTuning: ("prompt_length",)}


def check_ids(model, ids_B) -> None:
    """Refuse host-side ids outside -1..K-1 (inside jit an id is clamped, so check before)."""
    if model.adapters is None or model.adapters.bank is None:
        raise AdapterConfigError("adapter ids were given but this model has no adapter bank (adapters_jax.bank.build)")
    k = model.adapters.bank.size
    ids_B = np.asarray(ids_B)
    bad = ids_B[(ids_B < -1) | (ids_B >= k)]
    if bad.size:
        raise AdapterConfigError(f"adapter ids {sorted(set(bad.tolist()))[:5]} out of range for bank "
                                 f"{model.adapters.bank.name!r} of {k} slots (-1 = the base alone)")


def _shape_of(members: list[configs.NamedAdapter], hidden: int) -> tuple:
    """The bank's methods: the members' common configs with the largest rank / bottleneck size."""
    first = members[0]
    kinds = [type(m) for m in first.methods]
    for a in members[1:]:
        if [type(m) for m in a.methods] != kinds:
            raise AdapterConfigError(f"adapters {first.name!r} ({first.spec}) and {a.name!r} ({a.spec}) have "
                                     "different methods; a bank holds adapters of one setup")
    out = []
    for i, m0 in enumerate(first.methods):
        differ = _MAY_DIFFER.get(type(m0), ())
        for a in members[1:]:
            m = a.methods[i]
            for f in dataclasses.fields(m0):
                if f.name not in differ and getattr(m, f.name) != getattr(m0, f.name):
                    raise AdapterConfigError(
                        f"adapters {first.name!r} and {a.name!r} differ in {m0.method}.{f.name} "
                        f"({getattr(m0, f.name)!r} vs {getattr(m, f.name)!r}); a bank's members may differ only in "
                        f"{', '.join(d for ds in _MAY_DIFFER.values() for d in ds)}")
        ms = [a.methods[i] for a in members]
        if isinstance(m0, LoRA):
            m0 = dataclasses.replace(m0, r=max(m.r for m in ms))
        elif isinstance(m0, Bottleneck):
            m0 = dataclasses.replace(m0, bottleneck=max(m.size(hidden) for m in ms))
        elif isinstance(m0, PrefixTuning):
            m0 = dataclasses.replace(m0, prefix_length=max(m.prefix_length for m in ms))
        elif isinstance(m0, PromptTuning):
            m0 = dataclasses.replace(m0, prompt_length=max(m.prompt_length for m in ms))
        out.append(m0)
    return tuple(out)


def build(base, names: list[str], name: str = "bank", size: int | None = None, rng=None, head=None,
          keep_members: bool = True):
    """Stack the named adapters `names` into bank `name` of `size` slots (default: one per name).

    Returns (model, params): the model's setup holds the bank; params gain the bank's [K, ...]
    leaves, slot k holding names[k] zero-padded to the bank's shape. The members stay as named
    adapters (each can still run alone) unless keep_members=False. `head`: a per-slot head
    (heads.SlotClassification, one per member) to attach and initialise.
    """
    model, params = (base.model, base.params) if isinstance(base, Loaded) else base
    setup = model.adapters or AdapterSetup()
    if setup.bank is not None:
        raise AdapterConfigError(f"this model already has bank {setup.bank.name!r}")
    if not names:
        raise AdapterConfigError("a bank needs at least one adapter")
    if len(set(names)) != len(names):
        raise AdapterConfigError(f"adapter names repeat in {names}")
    size = len(names) if size is None else size
    if size < len(names):
        raise AdapterConfigError(f"size={size} slots cannot hold {len(names)} adapters")
    members = [setup.get(n) for n in names]
    if not name.isidentifier() or name in setup.names:
        raise AdapterConfigError(f"bank name {name!r} must be an identifier and not an adapter's name")
    bank = Bank(name, _shape_of(members, model.config.hidden_size), tuple(members) + (None,) * (size - len(members)))
    model = model.clone(adapters=dataclasses.replace(setup, bank=bank), **({"head": head} if head else {}))
    params = _init_new_leaves(model, params, rng)
    flat = paths.flat(params)
    for k, member in enumerate(names):
        flat = _write_slot(flat, name, k, member)
    if not keep_members:
        flat = {k: v for k, v in flat.items() if paths.adapter_of(k) not in names}
        kept = dataclasses.replace(model.adapters, adapters=tuple(a for a in setup.adapters if a.name not in names),
                                   active=tuple(n for n in setup.active if n not in names))
        model = model.clone(adapters=kept)
    return model, paths.unflat(flat)


def _init_new_leaves(model, params, rng):
    """params plus the leaves a forward pass of `model` creates (the bank's, freshly initialised)."""
    cfg = model.config
    ids = family_of(cfg.model_type).dummy_inputs(cfg)
    routed = route(model, jnp.zeros((ids.shape[0],), jnp.int32))
    rng = jax.random.PRNGKey(0) if rng is None else rng
    old = paths.flat(params)

    def fresh(p):  # only the new leaves come out: under jit the forward pass init runs is dead code
        new = paths.flat(routed.apply({"params": p}, ids, mutable=["params"], rngs={"params": rng})[1]["params"])
        return {k: v for k, v in new.items() if k not in old}

    return paths.unflat({**old, **jax.jit(fresh)(params)})


def _write_slot(flat: dict, bank_name: str, k: int, member: str) -> dict:
    out = dict(flat)
    for path, leaf in flat.items():
        if paths.adapter_of(path) != bank_name:
            continue
        src = paths.rename_adapter(path, bank_name, member)
        if src not in flat:
            raise AdapterConfigError(f"adapter {member!r} has no leaf {src} for bank leaf {path}")
        v = np.asarray(flat[src], leaf.dtype)  # on the host: no program compiled per leaf shape
        if v.ndim != leaf.ndim - 1 or any(a > b for a, b in zip(v.shape, leaf.shape[1:])):
            raise AdapterConfigError(f"{src} {tuple(v.shape)} does not fit bank slot {tuple(leaf.shape[1:])}")
        stacked = np.array(leaf)
        stacked[k] = 0  # padding: zeros, exact (module docstring)
        stacked[(k, *(slice(0, n) for n in v.shape))] = v
        out[path] = jnp.asarray(stacked)
    return out


def write(model, params, slot: int, name: str):
    """Put named adapter `name` (already in params) into bank slot `slot`; returns (model, params).

    The bank's shape does not change, so a jitted step compiled for it runs the new slot
    without recompiling as long as the slot's LoRA scaling is unchanged (it is static): the
    returned model equals the old one then, even with the model as a static jit argument.
    """
    setup = model.adapters
    bank = setup.bank
    if bank is None:
        raise AdapterConfigError("this model has no adapter bank")
    if not 0 <= slot < bank.size:
        raise AdapterConfigError(f"slot {slot} out of range for bank {bank.name!r} of {bank.size} slots")
    member = setup.get(name)
    as_bank = configs.NamedAdapter(f"bank {bank.name}", "", bank.methods)
    shape = _shape_of([as_bank, member], model.config.hidden_size)
    if shape != bank.methods:
        raise AdapterConfigError(f"adapter {name!r} ({member.spec}) does not fit bank {bank.name!r}: larger rank or "
                                 "bottleneck or longer prefix or prompt than the bank's")
    flat = _write_slot(paths.flat(params), bank.name, slot, name)
    slots = bank.slots[:slot] + (member,) + bank.slots[slot + 1:]
    return model.clone(adapters=dataclasses.replace(setup, bank=dataclasses.replace(bank, slots=slots))), \
        paths.unflat(flat)


def unstack(model, params, slot: int, name: str):
    """Bank slot `slot` as named adapter `name` with its member's own config (padding cut off)."""
    bank = model.adapters.bank
    member = bank.slots[slot] if bank is not None and 0 <= slot < bank.size else None
    if member is None:
        raise AdapterConfigError(f"bank slot {slot} holds no adapter")
    active = model.adapters.active
    model, params = add_adapters((model, params), member.spec, name=name, init=False)  # every leaf is filled below
    flat = paths.flat(params)
    for path, leaf in list(flat.items()):
        if paths.adapter_of(path) == name:  # sliced on the host: no program compiled per leaf shape
            stacked = np.asarray(flat[paths.rename_adapter(path, name, bank.name)][slot])
            flat[path] = jnp.asarray(stacked[tuple(slice(0, n) for n in leaf.shape)])
    return model.clone(adapters=model.adapters.activate(*active)), paths.unflat(flat)


def slot_params(params, bank_name: str, slot: int) -> dict:
    """The [K, ...] bank leaves of one slot (padded shape), keyed by path."""
    return {k: v[slot] for k, v in paths.flat(params).items() if paths.adapter_of(k) == bank_name}

