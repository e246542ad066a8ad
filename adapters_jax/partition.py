"""One labelling of what trains.

`labels(model, params)` gives every leaf a label: "frozen", "adapter" (leaves of
the adapters that train, by default the active ones), "head" (the task head),
or the label of a matching extra rule. Everything else derives from it: the
trainable mask, the trainable/frozen split (and merge back), the optimizer's
groups (one optax transform per label, "frozen" none), the checkpoint's
contents and the parameter report.

Extra rules are (regex over the param path, label) pairs, first match wins;
`rules` holds the usual ones (BitFit biases, LayerNorms, the top-k layers).
"""
from __future__ import annotations

import dataclasses
import re

import jax
import numpy as np

from adapters_jax import paths

FROZEN = "frozen"


class rules:  # noqa: N801 (a namespace of rule builders)
    """Builders of extra (regex, label) rules."""

    @staticmethod
    def bitfit(label: str = "bias"):
        return (r"(^|/)bias$", label)

    @staticmethod
    def layernorm(label: str = "norm"):
        return (r"(LayerNorm|layernorm|_norm|/norm)/(scale|bias)$", label)

    @staticmethod
    def top_layers(num_layers: int, k: int, label: str = "top"):
        """Every base param of the last k transformer layers."""
        return (paths.layers_regex(range(num_layers - k, num_layers)), label)


def labels(model, params, train: tuple[str, ...] | None = None, extra=()) -> dict:
    """A pytree (same structure as params) of string labels: the active adapters and the bank train by default."""
    setup = model.adapters
    bank = () if setup is None or setup.bank is None else (setup.bank.name,)
    train = tuple(setup.active if setup is not None else ()) + bank if train is None else tuple(train)
    if setup is not None:
        for n in train:
            if n not in bank:
                setup.get(n)  # raises naming the adapters that exist
    compiled = [(re.compile(rx), lab) for rx, lab in extra]
    out = {}
    for path in paths.flat(params):
        p = paths.parse(path)
        if p.kind == "adapter":
            lab = "adapter" if p.name in train else FROZEN
        elif p.kind == "head":
            lab = "head"
        else:
            lab = next((lab for rx, lab in compiled if rx.search(path)), FROZEN)
        out[path] = lab
    return paths.unflat(out)


def trainable_mask(model, params, train=None, extra=()) -> dict:
    """True where a leaf trains."""
    return jax.tree.map(lambda lab: lab != FROZEN, labels(model, params, train, extra))


def _as_mask(labels_or_mask):
    return jax.tree.map(lambda x: x if isinstance(x, (bool, np.bool_)) else x != FROZEN, labels_or_mask)


def split(params, labels_or_mask) -> tuple[dict, dict]:
    """(trainable, frozen): two nested dicts holding only their own leaves."""
    mask = paths.flat(_as_mask(labels_or_mask))
    flat = paths.flat(params)
    missing = set(flat) ^ set(mask)
    if missing:
        raise ValueError(f"mask and params differ at {sorted(missing)[:5]}")
    train = {k: v for k, v in flat.items() if mask[k]}
    frozen = {k: v for k, v in flat.items() if not mask[k]}
    return paths.unflat(train), paths.unflat(frozen)


def merge(trainable: dict, frozen: dict) -> dict:
    """Inverse of split."""
    a, b = paths.flat(trainable), paths.flat(frozen)
    both = set(a) & set(b)
    if both:
        raise ValueError(f"a leaf is both trainable and frozen: {sorted(both)[:5]}")
    return paths.unflat({**b, **a})


@dataclasses.dataclass(frozen=True)
class ParamReport:
    total: int
    trainable: int
    total_bytes: int
    trainable_bytes: int
    by_label: dict

    @property
    def share(self) -> float:
        """Trainable params in percent of the adapted model's total."""
        return 100.0 * self.trainable / max(self.total, 1)

    def __str__(self):
        groups = ", ".join(f"{k} {v:,}" for k, v in sorted(self.by_label.items()))
        return (f"trainable {self.trainable:,} of {self.total:,} params ({self.share:.2f}%), "
                f"{self.trainable_bytes / 2**20:.2f} MiB of {self.total_bytes / 2**20:.1f} MiB [{groups}]")


def param_report(params, labels_or_mask) -> ParamReport:
    flat = paths.flat(params)
    labs = paths.flat(labels_or_mask)
    by_label: dict[str, int] = {}
    total = trainable = total_b = train_b = 0
    for k, v in flat.items():
        n, nb = int(np.prod(v.shape)), int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize
        lab = labs[k]
        lab = ("trainable" if lab else FROZEN) if isinstance(lab, (bool, np.bool_)) else lab
        by_label[lab] = by_label.get(lab, 0) + n
        total += n
        total_b += nb
        if lab != FROZEN:
            trainable += n
            train_b += nb
    return ParamReport(total, trainable, total_b, train_b, by_label)
