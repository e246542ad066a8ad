"""Adapter-to-adapter merging (adapters_jax/merging.py): PEFT 0.21's add_weighted_adapter, and cases by hand.

The fixture (scripts/make_fixtures_merge.py, torch side) holds three LoRA
adapters (r 4, 4 with rsLoRA, 2) and two IA3 adapters on tiny BERT, under
PEFT's names, and PEFT's merged tensors per case. Here they are read into our
model with interop.from_peft and merged with merge_adapters. What is compared:

- LoRA linear, ties (total, frequency), magnitude_prune, dare_* at density 1 (PEFT
  prunes nothing there), cat, one adapter: the merged A and B, to 1e-6 (measured:
  bitwise equal).
- the svd types: the merged update B A, to 1e-5 of its largest entry per module
  (measured 5.9e-6; 9.7e-6 absolute). The whole difference is PEFT's float32 SVD:
  ours is the float64 SVD of the same float32 update, and torch's float32 SVD of
  it is 8.6e-6 from torch's float64 one on the worst module. A and B are
  defined only up to each singular direction's sign and are compared after
  aligning it, to 1e-4 of their largest entry (singular vectors of nearly equal
  singular values, 4.32 and 4.26 on one module, are less accurate than the update).
  svd_clamp clips at a quantile of the factors' entries, which depends on those
  signs (in PEFT too): that case is compared only because numpy picks torch's
  signs on it, which the test asserts first.
- DARE at density 0.5: torch's Bernoulli draws cannot be reproduced, so every
  entry of PEFT's result and of ours must be one of the 2^N values that a
  keep/drop pattern of the N adapters gives, and (dare_linear) each adapter's
  entries are kept at a rate near the density.
- IA3 linear: PEFT's IA3Model.add_weighted_adapter (a weighted sum), to 1e-6.
Bottleneck and IA3 merges are checked against hand-computed values, and every
refusal is checked to leave the model and params as they were.
"""
from __future__ import annotations

import functools
import itertools
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import adapters_jax as aj
from adapters_jax import interop, merging, paths
from adapters_jax.errors import ConfigError
from adapters_jax.models import family_of, load_hf_dir
from adapters_jax.modules.lora import lora_delta_kernel

FIX = Path(__file__).parent / "fixtures"
CASE_TOL = 1e-6  # A/B of the types without an SVD: measured 0 (bitwise)
SVD_TOL = 1e-5  # the update B A, relative to its largest entry: measured 5.9e-6
SVD_FACTOR_TOL = 1e-4  # sign-aligned A and B, relative: measured 1.8e-5 (A) and 9.5e-6 (B)


@functools.cache
def _fixture():
    z = np.load(FIX / "peft_merge.npz")
    return {k: z[k] for k in z.files if k != "meta"}, json.loads(str(z["meta"]))


# bottleneck 2 on hidden 32, with two leaves whose identity is 1: the LayerNorm scale and the learned scaling
BN = "seq_bn[ln_after=true,scaling=learned]"
OTHERS = {"qonly": "lora[r=4,target=attention/self/query$]", "bn": "seq_bn", "bn2": "seq_bn[non_linearity=swish]",
          "x1": BN, "x2": BN, "x3": BN, "union": "lora[r=4]|ia3"}


def _with_adapters(model, params, specs: dict):
    """`model` plus adapters {name: config string}, their new leaves zero: one abstract init (no eager forward)."""
    setup = model.adapters or aj.AdapterSetup()
    for name, spec in specs.items():
        setup = setup.add(name, spec)
    model = model.clone(adapters=setup.activate(*specs))
    ids = family_of(model.config.model_type).dummy_inputs(model.config)
    shapes = jax.eval_shape(lambda p: model.apply({"params": p}, ids, mutable=["params"],
                                                  rngs={"params": jax.random.PRNGKey(0)})[1]["params"], params)
    flat = paths.flat(params)
    flat.update({k: jnp.zeros(v.shape, v.dtype) for k, v in paths.flat(shapes).items() if k not in flat})
    return model.clone(adapters=setup.activate()), paths.unflat(flat)


@functools.cache
def _peft_model():
    """Tiny BERT with the fixture's LoRA adapters t1, t2, t3 and IA3 adapters i1, i2 read from PEFT's tensors,
    and the zero adapters OTHERS."""
    arrays, meta = _fixture()
    base = load_hf_dir(FIX / "adapters" / "tiny-bert")
    model, params = _with_adapters(base.model, base.params, {**{n: a["ours"] for n, a in meta["adapters"].items()},
                                                             **OTHERS})
    for name in meta["adapters"]:
        tensors = {k[len(f"w/{name}/"):]: v for k, v in arrays.items() if k.startswith(f"w/{name}/")}
        params = interop.from_peft(tensors, model, params, name)
    return model, params


def _cases(deterministic: bool):
    return [c for c in _fixture()[1]["cases"] if c["deterministic"] == deterministic]


def _merge(case: dict, **over):
    model, params = _peft_model()
    return merging.merge_adapters(model, params, case["adapters"], case["weights"], "m", **{**case["kwargs"], **over})


def _peft_modules(case: dict) -> dict:
    """{our module path: {"lora_A": [r, in], "lora_B": [out, r], "delta"?, "ia3_l"?}} of PEFT's merged adapter."""
    out: dict = {}
    prefix = f"case/{case['case']}/"
    for k, v in _fixture()[0].items():
        if k.startswith(prefix):
            mod, leaf = k[len(prefix):].rsplit("/", 1)
            out.setdefault(paths.hf_module_path(mod), {})[leaf] = v
    return out


def _ours(params, module: str, leaf: str, group: str = "lora") -> np.ndarray:
    return np.asarray(paths.flat(params)[f"{module}/{group}/m/{leaf}"])


@pytest.mark.parametrize("case", [c["case"] for c in _cases(True) if c["method"] == "lora"])
def test_lora_merge_matches_peft(case):
    c = next(x for x in _fixture()[1]["cases"] if x["case"] == case)
    model, params = _merge(c)
    cfg = model.adapters.get("m").methods[0]
    assert (cfg.r, cfg.alpha, cfg.scaling) == (c["peft_new_r"], c["peft_new_alpha"], 1.0)
    assert model.adapters.active == ("m",)
    svd = c["kwargs"]["combination_type"].endswith("svd") and len(c["adapters"]) > 1
    for mod, ref in _peft_modules(c).items():
        a_RxI, b_OxR = _ours(params, mod, "lora_A").T, _ours(params, mod, "lora_B").T
        if not svd:
            np.testing.assert_allclose(a_RxI, ref["lora_A"], rtol=0, atol=CASE_TOL, err_msg=f"{case} {mod} A")
            np.testing.assert_allclose(b_OxR, ref["lora_B"], rtol=0, atol=CASE_TOL, err_msg=f"{case} {mod} B")
            continue
        scale = np.abs(ref["delta"]).max()
        assert np.abs(b_OxR @ a_RxI - ref["delta"]).max() <= SVD_TOL * scale, f"{case} {mod}: update B A"
        sign_R = np.sign((a_RxI * ref["lora_A"]).sum(1))
        if c["kwargs"].get("svd_clamp") is not None:  # the clamp quantile depends on the signs: they must agree
            assert (sign_R > 0).all(), f"{case} {mod}: numpy's SVD signs differ from torch's here {sign_R}"
        for ours, peft in ((a_RxI * sign_R[:, None], ref["lora_A"]), (b_OxR * sign_R[None, :], ref["lora_B"])):
            assert np.abs(ours - peft).max() <= SVD_FACTOR_TOL * np.abs(peft).max(), f"{case} {mod}: A or B"


@pytest.mark.parametrize("case", [c["case"] for c in _cases(False)])
def test_dare_is_a_keep_drop_pattern_like_peft(case):
    """Each entry, PEFT's and ours, is the merge of some keep/drop pattern; dare_linear keeps near `density`."""
    c = next(x for x in _fixture()[1]["cases"] if x["case"] == case)
    model, params = _peft_model()
    cfgs = [model.adapters.get(n).methods[0] for n in c["adapters"]]
    ws = [w * cfg.scaling for w, cfg in zip(c["weights"], cfgs)]
    w_ab = {"lora_A": [np.sign(v) * abs(v) ** 0.5 for v in ws], "lora_B": [abs(v) ** 0.5 for v in ws]}
    d, kind = c["kwargs"]["density"], c["kwargs"]["combination_type"]
    flat = paths.flat(params)
    _, merged = _merge(c, seed=3)
    merged = paths.flat(merged)
    kept = {"peft": [], "ours": []}
    for mod, ref in _peft_modules(c).items():
        for leaf in ("lora_A", "lora_B"):
            xs = [np.asarray(flat[f"{mod}/lora/{n}/{leaf}"]) for n in c["adapters"]]
            patterns = list(itertools.product([0, 1], repeat=len(xs)))
            cands = np.stack([merging.combine([m * x / d for m, x in zip(p, xs)], w_ab[leaf],
                                              "linear" if kind == "dare_linear" else "ties", density=1.0)
                              for p in patterns])
            for who, got in (("peft", ref[leaf].T), ("ours", np.asarray(merged[f"{mod}/lora/m/{leaf}"]))):
                dist = np.abs(cands - got[None])
                assert dist.min(0).max() <= 1e-6 * np.abs(cands).max(), f"{who} {case} {mod} {leaf}: no pattern fits"
                kept[who].append(np.asarray(patterns)[dist.argmin(0)].reshape(-1, len(xs)))
    if kind == "dare_linear":  # a dropped entry is told apart by its value here: the rate each adapter is kept at
        for who in kept:
            rate = np.concatenate(kept[who]).mean(0)
            assert np.all(np.abs(rate - d) < 0.05), f"{who}: kept rates {rate}, density {d}"
    leaf = f"{mod}/lora/m/lora_A"
    assert np.array_equal(paths.flat(_merge(c, seed=3)[1])[leaf], merged[leaf]), "the same seed, other masks"
    assert not np.array_equal(paths.flat(_merge(c, seed=4)[1])[leaf], merged[leaf]), "another seed, the same masks"


def test_ia3_linear_matches_peft():
    c = next(x for x in _fixture()[1]["cases"] if x["case"] == "ia3_linear")
    model, params = _merge(c)
    assert model.adapters.get("m").methods == model.adapters.get("i1").methods
    for mod, ref in _peft_modules(c).items():
        np.testing.assert_allclose(_ours(params, mod, "ia3_l", "ia3"), ref["ia3_l"].reshape(-1), rtol=0, atol=CASE_TOL)


def test_cat_is_exact_and_its_leaves_fit_its_config():
    """cat is exact: its update is sum w_i B_i A_i s_i; its leaves are the ones its config creates, and it runs."""
    model, params = _peft_model()
    names, weights = ["t1", "t2", "t3"], [0.5, -0.3, 0.8]
    merged_model, merged = merging.merge_adapters(model, params, names, weights, "m", combination_type="cat")
    assert set(paths.flat(merged)) - set(paths.flat(params)) == {
        paths.rename_adapter(k, "t1", "m") for k in paths.flat(params) if paths.adapter_of(k) == "t1"}
    _, fresh = _with_adapters(model, params, {"m2": merged_model.adapters.get("m").spec})
    new = {paths.rename_adapter(k, "m2", "m"): v.shape for k, v in paths.flat(fresh).items()
           if paths.adapter_of(k) == "m2"}
    assert new == {k: v.shape for k, v in paths.flat(merged).items() if paths.adapter_of(k) == "m"}
    flat, cfg = paths.flat(merged), merged_model.adapters.get("m").methods[0]
    for mod in {paths.parse(k).module for k in new}:
        want = sum(w * lora_delta_kernel({ab: flat[f"{mod}/lora/{n}/{ab}"] for ab in ("lora_A", "lora_B")},
                                         model.adapters.get(n).methods[0]) for n, w in zip(names, weights))
        got = lora_delta_kernel({ab: flat[f"{mod}/lora/m/{ab}"] for ab in ("lora_A", "lora_B")}, cfg)
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=0, atol=1e-6)
    ids = jnp.array([[5, 9, 17, 3]])
    out = jax.eval_shape(lambda p: merged_model.apply({"params": p}, ids), merged)  # every leaf fits its use
    assert out.shape == (1, 4, 32)


def test_rslora_first_adapter_gives_scaling_one():
    """PEFT 0.21 copies use_rslora into the merged config (scaling sqrt(r)); ours keeps scaling 1: one adapter,
    weight 1, gives back the same update."""
    model, params = _peft_model()
    merged_model, merged = merging.merge_adapters(model, params, ["t2"], [1.0], "m", combination_type="svd")
    flat, mod = paths.flat(merged), "encoder/layer_0/intermediate/dense"
    assert merged_model.adapters.get("m").methods[0].scaling == 1.0
    get = lambda n: lora_delta_kernel({ab: flat[f"{mod}/lora/{n}/{ab}"] for ab in ("lora_A", "lora_B")},
                                      merged_model.adapters.get(n).methods[0])
    np.testing.assert_allclose(np.asarray(get("m")), np.asarray(get("t2")), rtol=1e-6, atol=1e-6)


# --- bottleneck and IA3, by hand ---

def _with_leaves(params, fill) -> dict:
    flat = paths.flat(params)
    return paths.unflat({k: jnp.asarray(fill(k, v), v.dtype) if paths.adapter_of(k) in ("x1", "x2", "x3") else v
                         for k, v in flat.items()})


def test_bottleneck_linear_is_the_weighted_average():
    model, params = _peft_model()
    rng = np.random.default_rng(0)
    params = _with_leaves(params, lambda k, v: rng.normal(size=v.shape))
    weights = [0.2, 0.3, 0.5]
    _, merged = merging.merge_adapters(model, params, ["x1", "x2", "x3"], weights, "m")
    flat, new = paths.flat(params), paths.flat(merged)
    leaves = [k for k in flat if paths.adapter_of(k) == "x1"]
    assert len(leaves) == 2 * 7  # per layer: down/up kernel and bias, norm_after scale and bias, scaling
    for k in leaves:
        want = sum(w * np.asarray(flat[paths.rename_adapter(k, "x1", n)], np.float64)
                   for n, w in zip(["x1", "x2", "x3"], weights))
        np.testing.assert_allclose(np.asarray(new[paths.rename_adapter(k, "x1", "m")]), want, rtol=1e-6, atol=1e-6)


def test_bottleneck_ties_by_hand():
    """Three adapters, density 3/32: each keeps its 3 largest |entries| of adapter_up/bias [32] (zero elsewhere)."""
    model, params = _peft_model()
    up_bias = {"x1": [3, -1, 2, 0.5], "x2": [-2, -4, 1, 0.1], "x3": [1, 2, -6, 0.2]}
    scaling = {"x1": 1.5, "x2": 0.5, "x3": 1.25}  # task vectors 0.5, -0.5, 0.25: k = int(3/32 * 1) = 0 prunes all

    def fill(k, v):
        name, leaf = paths.adapter_of(k), paths.parse(k).leaf
        if leaf == "adapter_up/bias":
            return np.pad(np.asarray(up_bias[name], np.float32), (0, v.shape[0] - 4))
        if leaf == "scaling":
            return np.full(v.shape, scaling[name])
        return np.ones(v.shape) if leaf == "adapter_norm_after/scale" else np.zeros(v.shape)

    params = _with_leaves(params, fill)
    # kept: x1 [3,-1,2,.], x2 [-2,-4,1,.], x3 [1,2,-6,.]; elected sign by sum: +, -, -, (0: +)
    # entry 0: x1, x3 agree -> (1*3 + 1*1)/2; entry 1: x1, x2 -> (1*-1 + 0.5*-4)/2; entry 2: x3 alone -> -6
    # by count (frequency) entry 2 elects + instead: x1, x2 -> (1*2 + 0.5*1)/2
    for method, head in (("total", [2.0, -1.5, -6.0]), ("frequency", [2.0, -1.5, 1.25])):
        _, merged = merging.merge_adapters(model, params, ["x1", "x2", "x3"], [1.0, 0.5, 1.0], "m",
                                           combination_type="ties", density=3 / 32, majority_sign_method=method)
        got = {paths.parse(k).leaf: np.asarray(v) for k, v in paths.flat(merged).items()
               if paths.adapter_of(k) == "m" and "layer_0/output/" in k}
        np.testing.assert_array_equal(got["adapter_up/bias"], np.pad(np.float32(head), (0, 29)))
        np.testing.assert_array_equal(got["scaling"], [1.0])  # every task vector pruned: the identity, not 0
        np.testing.assert_array_equal(got["adapter_norm_after/scale"], np.ones(32))  # task vectors 0
        np.testing.assert_array_equal(got["adapter_down/kernel"], np.zeros((32, 2)))


def test_ia3_linear_weighted_sum_and_ties_on_task_vectors():
    """linear is PEFT's weighted sum of the vectors; ties works on l - 1 and adds the 1 back."""
    model, params = _peft_model()
    flat, mod = paths.flat(params), "encoder/layer_1/attention/self/key"
    l1, l2 = (np.asarray(flat[f"{mod}/ia3/{n}/ia3_l"]) for n in ("i1", "i2"))
    _, lin = merging.merge_adapters(model, params, ["i1", "i2"], [2.0, 1.0], "m")
    np.testing.assert_allclose(_ours(lin, mod, "ia3_l", "ia3"), 2 * l1 + l2, rtol=1e-6)
    _, ties = merging.merge_adapters(model, params, ["i1", "i2"], [2.0, 1.0], "m", combination_type="ties",
                                     density=1.0)
    t1, t2 = l1 - 1, l2 - 1
    agree = np.sign(t1) == np.sign(t2)
    want = 1 + np.where(agree, (2 * t1 + t2) / 2, np.where(np.sign(t1 + t2) == np.sign(t1), 2 * t1, t2))
    np.testing.assert_allclose(_ours(ties, mod, "ia3_l", "ia3"), want, rtol=1e-6)


# --- refusals: each a ConfigError naming the problem; nothing added ---

REFUSALS = [
    (dict(names=["t1", "t2"], weights=[1.0]), "1 weights for 2 adapters"),
    (dict(names=["t1", "nope"], weights=[1, 1]), "no adapter named 'nope'"),
    (dict(names=["t1", "i1"], weights=[1, 1]), "different methods"),
    (dict(names=["t1", "qonly"], weights=[1, 1], combination_type="cat"), "same modules"),
    (dict(names=["t1", "t3"], weights=[1, 1]), "needs equal ranks"),
    (dict(names=["bn", "bn"], weights=[1, 1], combination_type="svd"), "cannot merge bottleneck"),
    (dict(names=["i1", "i2"], weights=[1, 1], combination_type="cat"), "cannot merge ia3"),
    (dict(names=["t1", "t2"], weights=[1, 1], combination_type="ties"), "density=None"),
    (dict(names=["t1", "t2"], weights=[1, 1], combination_type="ties", density=0.0), "in \\(0, 1\\]"),
    (dict(names=["t1", "t2"], weights=[1, 1], combination_type="dare_linear", density=1.5), "in \\(0, 1\\]"),
    (dict(names=["t1", "t2"], weights=[1, 1], combination_type="ties", density=0.5, majority_sign_method="max"),
     "majority_sign_method"),
    (dict(names=["t1", "t2"], weights=[1, 1], combination_type="average"), "combination_type='average'"),
    (dict(names=["t1", "t2"], weights=[1, 1], combination_type="svd", svd_rank=40), "svd_rank=40 exceeds"),
    (dict(names=["t1", "t2"], weights=[1, 1], combination_type="svd", svd_clamp=2.0), "svd_clamp"),
    (dict(names=["t1", "t2"], weights=[1, 1], new_name="t3"), "already exists"),
    (dict(names="t1", weights=[1]), "list of adapter names"),
    (dict(names=["t1", "t2"], weights=[1, float("nan")]), "finite"),
    (dict(names=["t1", "t2"], weights=["x", 1]), "one number per adapter"),
    (dict(names=["t1", "union"], weights=[1, 1]), "'union' is a union"),
    (dict(names=["i1", "i_in"], weights=[1, 1]), "scale different sides of encoder/layer_0/attention/self/value"),
]


@functools.cache
def _refusal_model():
    """Plus i_in: i1's leaves and shapes, but it scales value's input (added apart: one Linear holds one IA3 group)."""
    return _with_adapters(*_peft_model(), {"i_in": "ia3[feedforward=attention/self/value$]"})


@pytest.mark.parametrize("kw,match", REFUSALS, ids=[m for _, m in REFUSALS])
def test_refusals(kw, match):
    model, params = _refusal_model()
    kw = {"new_name": "m", **kw}
    before = set(paths.flat(params))
    with pytest.raises(ConfigError, match=match):
        merging.merge_adapters(model, params, **kw)
    assert set(paths.flat(params)) == before and "m" not in model.adapters.names


def test_bottleneck_configs_must_match():
    model, params = _peft_model()
    with pytest.raises(ConfigError, match="different configs.*non_linearity"):
        merging.merge_adapters(model, params, ["bn", "bn2"], [0.5, 0.5], "m")
