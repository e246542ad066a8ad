"""Config strings: every key of every method round-trips, `parse(to_string(x)) == x`.

The generator draws each dataclass field from its type (no list of keys to keep in step): a field of a
type it does not know fails the test, so a new kind of field comes with a generator for it.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from adapters_jax import configs
from adapters_jax.configs import AdapterConfigError, parse, to_string

CLASSES = (configs.Bottleneck, configs.LoRA, configs.IA3, configs.PrefixTuning, configs.PromptTuning)
# regexes that need quoting in a config string: , | ] [ quotes, spaces, the word none, the empty string
REGEXES = (r"attention/self/(query|value)$", "q_proj|v_proj", r"layer_\d+/output/dense", "x{1,3}", "[qv]_proj",
           "[,|]", r"a\]|\[b", "it's", '"quoted"', " spaced ", "none", "None", "", "(?=key)", "k'|\"v")
# fields whose strings are validated: the values valid for them
CHOICES = {
    (configs.Bottleneck, "non_linearity"): configs.NON_LINEARITIES,
    (configs.PrefixTuning, "non_linearity"): configs.NON_LINEARITIES,
    (configs.Bottleneck, "init_weights"): ("zero", "bert", "mam_adapter", "houlsby"),
    (configs.LoRA, "init_weights"): ("lora", "bert"),
    (configs.PromptTuning, "prompt_init"): ("vocab", "random_uniform"),
}


def _float(rng) -> float:
    return float(rng.choice([0.5, 1.0, 2.0, 16.0, 1e-7, 1 / 3, 123456.789, rng.uniform(1e-3, 100)]))


def _value(cls, f: dataclasses.Field, rng):
    t = str(f.type)
    if (cls, f.name) in CHOICES:
        return str(rng.choice(CHOICES[cls, f.name]))
    if t == "bool":
        return bool(rng.integers(2))
    if t == "int":
        return int(rng.integers(1, 1000))
    if t == "int | None":
        return None if rng.random() < 0.3 else int(rng.integers(1, 1000))
    if t == "float":
        return _float(rng)
    if t == "str | None":
        return None if rng.random() < 0.3 else str(rng.choice(REGEXES))
    if t == "Union[bool, str]":
        return [True, False, "post_add"][rng.integers(3)]
    if t == "Union[float, str]":
        return [_float(rng), "learned", "channel"][rng.integers(3)]
    if t == "tuple[int, ...]":
        return tuple(int(i) for i in rng.choice(24, size=rng.integers(0, 5), replace=False))
    if t == "tuple[str, ...]" and f.name == "attn_matrices":
        return tuple(str(m) for m in rng.choice(["q", "k", "v"], size=rng.integers(1, 4), replace=False))
    raise AssertionError(f"no generator for {cls.__name__}.{f.name}: {t}; add one here")


def _config(cls, rng):
    while True:
        kw = {f.name: _value(cls, f, rng) for f in dataclasses.fields(cls) if rng.random() < 0.6}
        if cls is configs.Bottleneck and not kw.get("mh_adapter", False) and not kw.get("output_adapter", True):
            continue  # an adapter at no hook point is refused, rightly
        return cls(**kw)


def _union(rng) -> tuple:
    return tuple(_config(CLASSES[i], rng) for i in rng.integers(len(CLASSES), size=rng.integers(1, 4)))


def test_every_key_round_trips_over_generated_configs():
    rng = np.random.default_rng(0)
    seen: set = set()
    for _ in range(400):
        x = _union(rng)
        s = to_string(x)
        assert parse(s) == x, s
        assert to_string(parse(s)) == s  # the canonical string is a fixed point
        seen |= {(type(c).__name__, f.name) for c in x for f in dataclasses.fields(c)
                 if getattr(c, f.name) != f.default}
    every = {(c.__name__, f.name) for c in CLASSES for f in dataclasses.fields(c)}
    assert seen == every, every - seen  # each key was drawn non-default at least once


@pytest.mark.parametrize("ident", sorted(configs.PRESETS) + sorted(configs.UNIONS))
def test_presets_round_trip(ident):
    x = parse(ident)
    assert parse(to_string(x)) == x


@pytest.mark.parametrize("spec, key, value", [
    ("houlsby[leave_out=10]", "leave_out", (10,)),  # was (1, 0): a bare value split into characters
    ("houlsby[leave_out=[10]]", "leave_out", (10,)),
    ("houlsby[leave_out=[0, 11]]", "leave_out", (0, 11)),
    ("houlsby[leave_out=[]]", "leave_out", ()),
    ("lora[attn_matrices=q]", "attn_matrices", ("q",)),
    ("lora[attn_matrices=['q','k']]", "attn_matrices", ("q", "k")),
    ('lora[attn_matrices=["q", "v"]]', "attn_matrices", ("q", "v")),
    ("lora[target=attention/self/(query|value)$]", "target", "attention/self/(query|value)$"),  # unquoted: | in []
    ("lora[target='x{1,3}|it''s']", "target", "x{1,3}|it's"),
    ("lora[target='none']", "target", "none"),
    ("lora[target=none]", "target", None),
    ("houlsby[residual_before_ln=post_add]", "residual_before_ln", "post_add"),
    ("par_bn[scaling=channel]", "scaling", "channel"),
])
def test_values(spec, key, value):
    assert getattr(parse(spec)[0], key) == value


def test_to_string_quotes_what_would_split():
    lora = configs.LoRA(target="attention/self/(query|value)$", leave_out=(3,))
    assert to_string((lora,)) == "lora[target='attention/self/(query|value)$',leave_out=[3]]"
    assert to_string((configs.IA3(target="it's"),)) == "ia3[target='it''s']"
    assert to_string((configs.IA3(target=r"layer_\d+/output/dense"),)) == r"ia3[target=layer_\d+/output/dense]"


@pytest.mark.parametrize("spec, match", [
    ("lora[target='q_proj]", "unclosed quote"),
    ("lora[target='a'b']", "unclosed quote"),
    ("lora[target='a'x]", "quoted value is one"),
    ("lora[r=4]]", "unbalanced brackets"),
])
def test_bad_quoting_is_named(spec, match):
    with pytest.raises(AdapterConfigError, match=match):
        parse(spec)


def test_resume_compares_adapter_setups_as_parsed_configs():
    """A checkpoint's adapter_setup written before values were quoted still resumes (same parsed setup);
    a different setup is still refused."""
    from adapters_jax import checkpoint

    checkpoint.check_meta({"adapter_setup": "lora[target=(query|value)$]"},
                          {"adapter_setup": "lora[target='(query|value)$']"}, "ckpt")
    with pytest.raises(checkpoint.CheckpointError, match="adapter_setup"):
        checkpoint.check_meta({"adapter_setup": "lora[r=4]"}, {"adapter_setup": "lora[r=8]"}, "ckpt")
