"""The adapter bank: a batch whose examples use different adapters equals each example run with its adapter
alone, for every method, heterogeneous ranks and sizes, both model families; ids are data (no recompile)."""
import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import adapters_jax as aj
from adapters_jax import bank, paths
from adapters_jax.errors import ConfigError
from adapters_jax.modules import banked

FIX = Path(__file__).parent / "fixtures"
TOL = 1e-5

# (spec of each of the three members): methods one at a time, unions, and members that differ in rank / size
MEMBERS = {
    "lora": ["lora[r=2,alpha=4]", "lora[r=8,alpha=8]", "lora[r=4,alpha=16,use_rslora=true]"],
    "ia3": ["ia3"] * 3,
    "houlsby": ["houlsby[bottleneck=4]", "houlsby[bottleneck=16]", "houlsby[bottleneck=8]"],
    "par_bn": ["par_bn[bottleneck=8]", "par_bn[bottleneck=4]", "par_bn[bottleneck=8]"],
    # soft prompts of different lengths: padded to 4, a shorter one right before the tokens, positions counted
    # over the prompt each example sees (RoBERTa's and BERT's absolute positions, Llama's rotary ones)
    "prompt_het": [f"prompt_tuning[prompt_length={n}]" for n in (2, 4, 1)],
    # prefixes of different lengths: padded to 5, each example's padding masked out of attention
    "prefix_het": [f"prefix_tuning[prefix_length={n},bottleneck_size=8]" for n in (2, 3, 5)],
    "union": ["lora[r=2]|ia3|pfeiffer[bottleneck=4]|prefix_tuning[prefix_length=2,bottleneck_size=8]",
              "lora[r=4]|ia3|pfeiffer[bottleneck=8]|prefix_tuning[prefix_length=2,bottleneck_size=8]",
              "lora[r=2]|ia3|pfeiffer[bottleneck=8]|prefix_tuning[prefix_length=2,bottleneck_size=8]"],
}


def members(fixture, specs, seed=0):
    """The fixture base with three named adapters, every adapter leaf perturbed (none is the identity)."""
    base = aj.load(FIX / fixture)
    model, params = base.model, base.params
    for i, spec in enumerate(specs):
        model, params = aj.add_adapters((model, params), spec, name=f"a{i}", rng=jax.random.PRNGKey(i))
    flat = paths.flat(params)
    keys = iter(jax.random.split(jax.random.PRNGKey(seed), len(flat)))
    flat = {k: v + 0.05 * jax.random.normal(next(keys), v.shape, v.dtype) if not paths.is_base(k) else v
            for k, v in flat.items()}
    return model, paths.unflat(flat)


def inputs(b, t, vocab, seed=0):
    g = np.random.default_rng(seed)
    ids = jnp.asarray(g.integers(3, vocab, (b, t)), jnp.int32)
    lengths = g.integers(t // 2, t + 1, b)
    mask = jnp.asarray(np.arange(t)[None] < lengths[:, None], jnp.int32)
    return ids, mask


def alone(model, params, name, ids, mask):
    setup = dataclasses.replace(model.adapters, bank=None, active=() if name is None else (name,))
    return model.clone(adapters=setup).apply({"params": params}, ids, mask)


# the union (LoRA, IA3, Pfeiffer, prefix) covers IA3 and LoRA on Llama; heterogeneous LoRA ranks and prefix lengths
# run on RoBERTa (equal prefix lengths: the Llama union)
# LoRA twice: the few-tokens path (every slot's A and B, one-hot weights; T x K = 28 here) and the gather path
CASES = ([("tiny-roberta", m) for m in ("lora", "lora_gather", "houlsby", "prefix_het", "prompt_het")]
         + [("tiny-bert-bf16", "prompt_het"), ("tiny-mistral", "prompt_het")]
         + [("tiny-llama", m) for m in ("union", "par_bn", "prompt_het")])


@pytest.mark.parametrize("fixture,method", CASES)
def test_each_example_equals_its_adapter_alone(fixture, method, monkeypatch):
    if method == "lora_gather":
        monkeypatch.setattr(banked, "ALL_SLOTS_MAX_TK", 0)
    model, params = members(fixture, MEMBERS[method.removesuffix("_gather")])
    model, params = bank.build((model, params), ["a0", "a1", "a2"], size=4)
    model = aj.activate(model)  # only the bank runs
    ids, mask = inputs(6, 7, model.config.vocab_size)
    slots = [0, 2, -1, 1, 2, 0]
    fwd = jax.jit(lambda p, s: bank.route(model, s).apply({"params": p}, ids, mask))
    out = np.asarray(fwd(params, jnp.asarray(slots)))
    for s in sorted(set(slots)):  # the whole batch through adapter s alone; its rows are compared
        ref = np.asarray(jax.jit(lambda p: alone(model, p, None if s < 0 else f"a{s}", ids, mask))(params))
        for b in [b for b, x in enumerate(slots) if x == s]:
            real = np.asarray(mask[b], bool)
            got, want = out[b][-ids.shape[1]:][real], ref[b][-ids.shape[1]:][real]
            assert np.abs(got - want).max() <= TOL, (method, b, s, np.abs(got - want).max())
    # the mix is data: other ids, same compiled function, and slot 3 (free, fresh) is not an error
    before = fwd._cache_size()
    fwd(params, jnp.asarray([3, 1, 0, 2, 2, 1]))
    assert fwd._cache_size() == before


def test_unstack_and_write_round_trip_exactly():
    model, params = members("tiny-llama", MEMBERS["lora"])
    model, params = bank.build((model, params), ["a0", "a1", "a2"], size=4)
    m2, p2 = bank.unstack(model, params, 0, "back")  # rank 2 member out of the rank-8 bank
    flat = paths.flat(p2)
    for k, v in flat.items():
        if paths.adapter_of(k) == "back":
            np.testing.assert_array_equal(v, flat[paths.rename_adapter(k, "back", "a0")])
    m3, p3 = bank.write(model, params, 3, "a1")
    assert m3.adapters.bank.slots[3].name == "a1"
    for k, v in bank.slot_params(p3, "bank", 3).items():
        np.testing.assert_array_equal(v, bank.slot_params(p3, "bank", 1)[k])
    # which adapter sits in a slot is data: another adapter with the same LoRA scaling (alpha/r = 2) gives an equal
    # model, so a jitted step keyed on the model (a static argument) is reused; another scaling is another model
    wa, wb = bank.write(model, params, 3, "a0")[0].adapters.bank, bank.write(m2, p2, 3, "back")[0].adapters.bank
    assert wa.slots[3].name != wb.slots[3].name and wa == wb and hash(wa) == hash(wb)
    assert wa != m3.adapters.bank  # slot 3's scaling 2 vs 1


def test_bad_banks_are_refused_by_name():
    model, params = members("tiny-llama", ["lora[r=2]", "lora[r=4,attn_matrices=[q,k,v]]", "houlsby[bottleneck=4]",
                                           "lora[r=8]"])
    with pytest.raises(ConfigError, match="differ in lora.attn_matrices"):
        bank.build((model, params), ["a0", "a1"])
    with pytest.raises(ConfigError, match="different methods"):
        bank.build((model, params), ["a0", "a2"])
    with pytest.raises(ConfigError, match="no adapter named 'zz'"):
        bank.build((model, params), ["a0", "zz"])
    with pytest.raises(ConfigError, match="cannot hold"):
        bank.build((model, params), ["a0"], size=0)
    model, params = bank.build((model, params), ["a0"], size=2)
    with pytest.raises(ConfigError, match=r"ids \[2, 5\] out of range.*2 slots"):
        bank.check_ids(model, [0, 2, -1, 5])
    with pytest.raises(ConfigError, match="differ in lora.attn_matrices"):
        bank.write(model, params, 1, "a1")
    with pytest.raises(ConfigError, match="'a3'.*does not fit bank 'bank': larger rank"):
        bank.write(model, params, 1, "a3")
    model, params = members("tiny-llama", ["prompt_tuning[prompt_length=2]", "prompt_tuning[prompt_length=3]"])
    model, params = bank.build((model, params), ["a0"], size=2)
    with pytest.raises(ConfigError, match="'a1'.*does not fit bank 'bank'.*longer prefix or prompt"):
        bank.write(model, params, 1, "a1")


def test_generate_with_a_bank_gives_each_prompt_its_adapters_completion():
    """Greedy decoding with the KV cache, one prompt per slot (and one on the base), equals each prompt generated
    alone with its adapter active; LoRA + prefix unions whose prefix lengths differ (2 and 5: padded to 5 in the
    cache, each row's padding masked in prefill and every decode step)."""
    specs = ["lora[r=2]|prefix_tuning[prefix_length=2,bottleneck_size=8]",
             "lora[r=4]|prefix_tuning[prefix_length=5,bottleneck_size=8]"]
    model, params = members("tiny-llama", specs)
    model, params = bank.build((model, params), ["a0", "a1"])
    assert model.adapters.bank.prefix_lengths == ((2,), (5,))  # static per slot, part of the bank's identity
    assert bank.write(model, params, 1, "a0")[0].adapters.bank != model.adapters.bank  # slot 1: 5 -> 2
    model = aj.activate(model)
    prompts = [[5, 9, 12, 7], [3, 4], [8, 8, 8, 2, 11], [6]]
    slots = [1, 0, -1, 1]
    got = aj.generate(model, params, prompts, 6, adapter_ids=slots, ignore_eos=True)
    for p, s, out in zip(prompts, slots, got):
        setup = dataclasses.replace(model.adapters, bank=None, active=() if s < 0 else (f"a{s}",))
        want = aj.generate(model.clone(adapters=setup), params, [p], 6, ignore_eos=True)[0]
        assert out.ids == want.ids, (s, out.ids, want.ids)
    m, p = bank.unstack(model, params, 0, "back")  # the length-2 member comes out unpadded, bit-exact
    assert m.adapters.get("back").methods == aj.parse(specs[0])
    flat = paths.flat(p)
    for k, v in flat.items():
        if paths.adapter_of(k) == "back":
            np.testing.assert_array_equal(v, flat[paths.rename_adapter(k, "back", "a0")])
    with pytest.raises(ConfigError, match="out of range"):
        aj.generate(model, params, prompts, 2, adapter_ids=[0, 1, 2, 0])
    with pytest.raises(ConfigError, match="one per prompt"):
        aj.generate(model, params, prompts, 2, adapter_ids=[0, 1])


@pytest.mark.parametrize("fixture", ["tiny-llama", "tiny-mistral"])
def test_generate_with_a_prompt_bank_of_different_lengths_equals_each_alone(fixture):
    """Soft prompts of 1 and 3 positions (+ a LoRA) in one bank, and the base alone (-1): greedy decoding equals
    each prompt generated alone; the decode steps count each row's own prompt (tiny-mistral: a window of 4 slots,
    so a shorter prompt must sit right before the tokens, as it does alone)."""
    specs = ["lora[r=2]|prompt_tuning[prompt_length=1]", "lora[r=4]|prompt_tuning[prompt_length=3]"]
    model, params = members(fixture, specs)
    model, params = bank.build((model, params), ["a0", "a1"])
    assert model.adapters.bank.prompt_lengths == ((1,), (3,))
    model = aj.activate(model)
    prompts = [[5, 9, 12, 7], [3, 4], [8, 8, 8, 2, 11], [6], [7, 7]]
    slots = [1, 0, -1, 1, 0]
    got = aj.generate(model, params, prompts, 6, adapter_ids=slots, ignore_eos=True)
    for p, s, out in zip(prompts, slots, got):
        setup = dataclasses.replace(model.adapters, bank=None, active=() if s < 0 else (f"a{s}",))
        want = aj.generate(model.clone(adapters=setup), params, [p], 6, ignore_eos=True)[0]
        assert out.ids == want.ids, (s, out.ids, want.ids)
