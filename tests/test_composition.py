"""Composition blocks (Stack, Parallel, Fuse, Average, BatchSplit) and average_adapter against AdapterHub 1.3.

The fixture (scripts/make_fixtures_composition.py, torch side) holds four bottleneck adapters and
two fusion layers with random non-zero weights under AdapterHub's names, a padded batch of three
sentences and AdapterHub's last hidden state for each setup on MiniLM-L6's real weights. Here the
same adapters are added from our config strings and filled by interop.from_adapterhub, the fusion
layers by composition.fusion_from_adapterhub, and each block must give AdapterHub's output over the
unpadded positions (every row of a Parallel output) within TOL. Then: the refusals, each a
ConfigError that changes nothing.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import adapters_jax as aj
from adapters_jax import adapter_setup, composition, configs, interop, paths
from adapters_jax.composition import Average, BatchSplit, Fuse, Parallel, Stack
from adapters_jax.errors import ConfigError
from adapters_jax.models import load_hf_dir

FIX = Path(__file__).parent / "fixtures"
CASE_FILE = FIX / "adapterhub_composition.npz"
# Max abs difference to AdapterHub over the unpadded positions, measured with oneDNN dots (XLA_FLAGS as
# xla_flags.ONEDNN) / XLA's default dots, jax 0.10.2 on the 2-core CPU, beside each case; the bound is the
# AdapterHub parity tests' 5e-5 (over 10x the largest, 4.1e-6).
TOL = 5e-5
EFFECT = 1e-2  # AdapterHub's output must differ from the bare model's by more, or the case tests nothing
CASES = {
    "stack": Stack("c", "a", "b"),  # 2.4e-6 / 2.2e-6
    "parallel": Parallel("a", "b"),  # 3.3e-6 / 4.1e-6
    "parallel_cd": Parallel("c", "d"),  # 3.6e-6 / 3.4e-6
    "parallel_nested": Parallel(Stack("c", "d"), "d"),  # 3.6e-6 / 3.4e-6
    "fuse": Fuse("a", "b"),  # 2.2e-6 / 2.3e-6
    "fuse_cd": Fuse("c", "d"),  # 3.3e-6 / 3.6e-6
    "average": Average("a", "b", weights=[0.7, 0.3]),  # 1.9e-6 / 1.7e-6
    "average_cd": Average("c", "d"),  # 1.4e-6 / 1.4e-6
    "stack_average": Stack("c", Average("d", "c")),  # 1.3e-6 / 1.6e-6
    "batch_split": BatchSplit("a", "b", batch_sizes=[1, 2]),  # 3.3e-6 / 2.7e-6
    "batch_split_cd": BatchSplit("c", "d", batch_sizes=[2, 1]),  # 3.0e-6 / 3.1e-6
    "average_adapter": "cd_avg",  # 4.0e-6 / 3.3e-6 (average_adapter(["c", "d"], weights=[2, 1]) alone)
}


@pytest.fixture(scope="module")
def ref():
    z = np.load(CASE_FILE)
    return {k: z[k] for k in z.files} | {"meta": json.loads(str(z["meta"]))}


@pytest.fixture(scope="module")
def built(ref, asset_path):
    """MiniLM-L6 with adapters a, b, c, d, fusion layers "a,b" and "c,d" and cd_avg, all AdapterHub's weights."""
    meta = ref["meta"]
    base = load_hf_dir(asset_path("minilm-l6"))
    model, params = base.model, base.params
    weights = {k[2:]: v.astype(np.float32) for k, v in ref.items() if k.startswith("w/")}
    for name, cfg in meta["adapters"].items():
        model, params = aj.add_adapters((model, params), cfg["ours"], name=name)
        params = interop.from_adapterhub({k: v for k, v in weights.items() if f".adapters.{name}." in k},
                                         model, params, name)
    fresh = {}
    for fusion, names in meta["fusions"].items():
        model, params = composition.add_fusion((model, params), names)
        fresh[fusion] = {k: v for k, v in paths.flat(params).items() if paths.adapter_of(k) == fusion}
        params = composition.fusion_from_adapterhub(weights, model, params, fusion)
    avg = meta["average_adapter"]
    model, params = composition.average_adapter((model, params), avg["name"], avg["adapters"], avg["weights"])
    return base, model, params, weights, fresh


def _apply(model, params, ref):
    ids, mask = jnp.asarray(ref["input_ids"]), jnp.asarray(ref["attention_mask"])
    return np.asarray(model.apply({"params": params}, ids, mask))


@pytest.mark.parametrize("case", sorted(CASES))
def test_parity(case, built, ref):
    _, model, params, _, _ = built
    block = CASES[case]
    if isinstance(block, str):
        assert case == "average_adapter"
    else:
        assert repr(block) == ref["meta"]["cases"][case]  # the same block as AdapterHub's, by its own repr
    h = _apply(aj.activate(model, block), params, ref)
    want = ref[f"out/{case}"]
    assert h.shape == want.shape
    keep = np.tile(ref["attention_mask"], (h.shape[0] // ref["attention_mask"].shape[0], 1)).astype(bool)
    diff = float(np.abs(h - want)[keep].max())
    b = len(ref["input_ids"])
    effect = float(np.abs(want[:b] - ref["out/base"])[keep[:b]].max())
    print(f"{case}: max abs diff {diff:.2e} (bound {TOL:.0e}; effect {effect:.2e})")
    assert effect > EFFECT, f"{case}: AdapterHub's output barely differs from the base model's; the case tests nothing"
    assert diff <= TOL, f"{case}: max abs diff {diff:.3e} > {TOL}"


def test_stack_block_is_plain_names(built, ref):
    """Stack("c", "a", "b") computes exactly what activating the plain names does (modules/bottleneck.apply_stack)."""
    _, model, params, _, _ = built
    a = _apply(aj.activate(model, Stack("c", "a", "b")), params, ref)
    b = _apply(aj.activate(model, "c", "a", "b"), params, ref)
    assert np.array_equal(a, b)


def test_parallel_rows_per_adapter(built, ref):
    """Parallel: output [K*B, ...], rows k*B.. through child k; per_adapter names them (AdapterHub's per-head lists)."""
    _, model, params, _, _ = built
    block = Parallel("c", "d")
    out = _apply(aj.activate(model, block), params, ref)
    parts = composition.per_adapter(out, block)
    assert list(parts) == ["c", "d"] and all(p.shape == ref["out/base"].shape for p in parts.values())
    keep = ref["attention_mask"].astype(bool)
    for name in ("c", "d"):  # c and d share their options, so each slice is that adapter alone (batch 3 vs 6: 1e-5)
        alone = _apply(aj.activate(model, name), params, ref)
        assert np.abs(np.asarray(parts[name]) - alone)[keep].max() < 1e-5


def test_fusion_init_and_placement(built):
    """add_fusion initialises as AdapterHub (query/key: BERT init, zero bias; value: identity + 1e-6), shared hooks only."""
    _, _, _, _, fresh = built
    assert len(fresh["a,b"]) == 6 * 5 and len(fresh["c,d"]) == 2 * 6 * 5  # seq_bn: output hook; double: both
    assert all("/output/adapters/a,b/" in k and "attention" not in k for k in fresh["a,b"])
    for k, v in fresh["c,d"].items():
        v = np.asarray(v)
        if k.endswith("value/kernel"):
            assert np.array_equal(v, np.where(np.eye(384, dtype=bool), 1.0, np.float32(1e-6)))
        elif k.endswith("bias"):
            assert not v.any()
        else:
            assert 0.015 < v.std() < 0.025 and abs(v.mean()) < 1e-3


def test_fusion_regularization_and_training_labels(built):
    _, model, params, weights, _ = built
    want = sum(0.01 * np.square(np.eye(384) - w).sum() for k, w in weights.items() if k.endswith("value.weight"))
    model = aj.activate(model, Fuse("c", "d"))
    got = float(composition.fusion_regularization(model, params))
    assert got == pytest.approx(want, rel=1e-5) and got > 0
    flat = paths.flat(aj.labels(model, params, train=["c,d"]))  # AdapterHub's train_adapter_fusion: the layer alone
    assert {k for k, v in flat.items() if v == "adapter"} == {k for k in flat if paths.adapter_of(k) == "c,d"}
    default = {paths.adapter_of(k) for k, v in paths.flat(aj.labels(model, params)).items() if v == "adapter"}
    assert default == {"c", "d", "c,d"} and model.adapters.active == ("c", "d", "c,d")


def test_average_adapter_is_the_weighted_sum(built):
    _, model, params, _, _ = built
    flat = paths.flat(params)
    leaves = [k for k in flat if paths.adapter_of(k) == "cd_avg"]
    assert leaves and model.adapters.active != ("cd_avg",)  # added, not activated (AdapterHub's default)
    for k in leaves:
        c, d = (np.asarray(flat[paths.rename_adapter(k, "cd_avg", n)]) for n in ("c", "d"))
        np.testing.assert_allclose(np.asarray(flat[k]), 2 / 3 * c + 1 / 3 * d, rtol=1e-6, atol=1e-7)


def _with(model, name, spec):
    """The model's setup plus adapter `name` of `spec`, without params (refusals come before any params are read)."""
    setup = model.adapters
    extra = configs.NamedAdapter(name, spec, configs.parse(spec))
    return model.clone(adapters=dataclasses.replace(setup, adapters=setup.adapters + (extra,)))


def test_refusals_change_nothing(built, ref):
    _, model, params, weights, _ = built
    before_setup, before = model.adapters, paths.flat(params)
    refusals = [
        (lambda: composition.add_fusion((model, params), ["a", "zz"]), "'zz'"),
        (lambda: aj.activate(model, Fuse("a", "zz")), "'zz'"),
        (lambda: aj.activate(model, Stack("a", "zz")), "'zz'"),
        (lambda: aj.activate(model, Fuse("b", "a")), "no fusion layer named 'b,a'"),
        (lambda: aj.activate(model, Fuse("a", "c")), "different hooks"),
        (lambda: aj.activate(model, Stack("c", Average("a", "b"))), "different hooks"),  # AdapterHub: a KeyError
        (lambda: composition.add_fusion((model, params), ["a", "c"]), "different hooks"),
        (lambda: composition.add_fusion((model, params), ["a", "b"]), "already exists"),
        (lambda: composition.add_fusion((model, params), ["c", "d"], name="t", temperature=True), "temperature"),
        (lambda: composition.add_fusion((model, params), ["c", "d"], config="dynamo"), "unknown fusion config"),
        (lambda: Average("a", "b", weights=[1.0]), "1 weights"),
        (lambda: BatchSplit("a", "b", batch_sizes=[1]), "batch_sizes"),
        (lambda: _apply(aj.activate(model, BatchSplit("a", "b", batch_sizes=[1, 1])), params, ref), "sum to 2"),
        (lambda: aj.activate(model, Parallel(Fuse("a", "b"))), "cannot nest Fuse in Parallel"),
        (lambda: aj.activate(model, "a", Stack("b")), "one composition block"),
        (lambda: composition.average_adapter((model, params), "ab", ["a", "b"]), "different configs"),
        (lambda: composition.average_adapter((model, params), "cd", ["c", "d"], weights=[1]), "1 weights"),
        (lambda: composition.average_adapter((model, params), "x", ["c", "c,d"]), "fusion layer"),
        (lambda: aj.activate(_with(model, "l", "lora"), Stack("a", "l")), "'l' is lora"),
        (lambda: composition.add_fusion((_with(model, "n", "seq_bn[reduction_factor=64,ln_after=true]"), params),
                                        ["a", "n"]), "ln_after"),
        (lambda: aj.activate(model.clone(adapters=dataclasses.replace(before_setup, bank=adapter_setup.Bank("bk", (), ()))),
                             Stack("a")), "bank"),
    ]
    for call, match in refusals:
        with pytest.raises(ConfigError, match=match):
            call()
    with pytest.raises(interop.InteropError, match="no tensor"):
        composition.fusion_from_adapterhub(weights, aj.activate(model, Fuse("a", "b")), params, "a,b", fusion="x,y")
    assert model.adapters == before_setup
    after = paths.flat(params)
    assert after.keys() == before.keys() and all(after[k] is before[k] for k in before)


def test_decoder_blocks(tmp_path):
    """Tiny Llama (pre-LN: the hook adds the residual): Stack as plain names, Fuse/Average/BatchSplit run (dropout
    too), Parallel refused by name (it repeats an encoder's inputs)."""
    base = aj.load(FIX / "tiny-llama")
    model, params = base.model, base.params
    for i, spec in enumerate(["seq_bn[bottleneck=4,init_weights=bert]", "seq_bn[bottleneck=8,init_weights=bert]"]):
        model, params = aj.add_adapters((model, params), spec, name=f"a{i}", rng=jax.random.PRNGKey(i))
    model, params = composition.add_fusion((model, params), ["a0", "a1"])
    ids = jnp.asarray(np.random.default_rng(0).integers(3, 100, (3, 6)), jnp.int32)
    run = lambda m, **kw: np.asarray(m.apply({"params": params}, ids, return_hidden=True, **kw))  # noqa: E731
    assert np.array_equal(run(aj.activate(model, Stack("a0", "a1"))), run(aj.activate(model, "a0", "a1")))
    outs = [run(aj.activate(model, b)) for b in (Fuse("a0", "a1"), Average("a0", "a1"),
                                                 BatchSplit("a0", "a1", batch_sizes=[2, 1]))]
    assert all(np.isfinite(o).all() for o in outs) and np.abs(outs[0] - outs[1]).max() > 1e-4
    train = run(aj.activate(model, Fuse("a0", "a1")), deterministic=False, rngs={"dropout": jax.random.PRNGKey(0)})
    assert np.isfinite(train).all()
    with pytest.raises(ConfigError, match="Parallel repeats the batch"):
        aj.activate(model, Parallel("a0", "a1"))
