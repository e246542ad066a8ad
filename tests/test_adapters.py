"""The adapter zoo on real MiniLM-L6: identity at init, exact counts, named adapters, LoRA merge, errors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import adapters_jax as aj
from adapters_jax.configs import AdapterConfigError
from adapters_jax.models import load_hf_dir
from pathlib import Path

FIX = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def base():
    return aj.load("minilm-l6")


@pytest.fixture(scope="module")
def batch():
    ref = np.load(FIX / "minilm_hidden.npz")
    return jnp.asarray(ref["input_ids"]), jnp.asarray(ref["attention_mask"])


def paths(params):
    return aj.paths.flat(params)


def randomize(params, name, seed=0):
    """Non-zero values in every leaf of adapter `name` (so an adapter that is not wired in is seen)."""
    flat = paths(params)
    key = jax.random.PRNGKey(seed)
    for i, k in enumerate(sorted(flat)):
        if f"/{name}/" in f"/{k}":
            flat[k] = flat[k] + 0.05 * jax.random.normal(jax.random.fold_in(key, i), flat[k].shape)
    return aj.paths.unflat(flat)


@pytest.mark.parametrize("spec", ["houlsby", "pfeiffer", "par_bn", "scaled_par_bn", "lora", "lora[use_rslora=true]",
                                  "ia3", "lora|ia3|houlsby", "double_seq_bn[ln_before=true,ln_after=true]"])
def test_zero_init_is_bitwise_identity(base, batch, spec):
    h0 = base.model.apply({"params": base.params}, *batch)
    model, params = aj.add_adapters(base, spec, name="t")
    h = model.apply({"params": params}, *batch)
    assert bool((h == h0).all()), f"{spec}: max diff {float(jnp.abs(h - h0).max())}"
    # and the adapter is wired in: perturbing its leaves changes the output
    h2 = model.apply({"params": randomize(params, "t")}, *batch)
    assert float(jnp.abs(h2 - h0).max()) > 1e-3


def test_base_params_reused_as_is(base):
    model, params = aj.add_adapters(base, "houlsby", name="t")
    flat, flat0 = paths(params), paths(base.params)
    assert all(flat[k] is v for k, v in flat0.items())


def test_houlsby_count_closed_form(base):
    model, params = aj.add_adapters(base, "houlsby[bottleneck=64]", name="t", head=aj.heads.Classification(2))
    labels = aj.labels(model, params)
    rep = aj.param_report(params, labels)
    d, m, layers = 384, 64, 6
    assert rep.by_label["adapter"] == layers * 2 * (2 * m * d + d + m) == 595_200
    assert rep.by_label["head"] == d * 2 + 2
    assert rep.by_label["frozen"] == 22_713_216
    assert rep.trainable == 595_200 + 770
    assert rep.share == pytest.approx(100 * rep.trainable / (22_713_216 + rep.trainable))
    assert rep.trainable_bytes == 4 * rep.trainable


@pytest.mark.parametrize("spec,count", [
    ("pfeiffer", 6 * (2 * 24 * 384 + 384 + 24)),               # reduction 16 -> 24, FFN only
    ("lora", 6 * 2 * 8 * (384 + 384)),                         # q, v; r=8
    ("ia3", 6 * (384 + 384 + 1536)),                           # k, v, FFN activation
    ("prompt_tuning[prompt_length=7]", 7 * 384),
    ("prefix_tuning[prefix_length=4,bottleneck_size=16]", 4 * 384 + 384 * 16 + 16 + 16 * 6 * 2 * 384 + 6 * 2 * 384),
])
def test_counts(base, spec, count):
    model, params = aj.add_adapters(base, spec, name="t")
    assert aj.param_report(params, aj.labels(model, params)).by_label["adapter"] == count


def test_prompt_init_from_vocabulary(base):
    model, params = aj.add_adapters(base, "prompt_tuning[prompt_length=5]", name="t", rng=jax.random.PRNGKey(3))
    prompt = np.asarray(paths(params)["embeddings/prompt_tuning/t/prompt_embedding"])
    table = np.asarray(base.params["embeddings"]["word_embeddings"]["embedding"])
    for row in prompt:  # every row is a row of the real (not re-initialised) vocabulary table
        assert np.abs(table - row).sum(1).min() == 0.0


def test_houlsby_init_std_scales_both_projections(base):
    """init_weights=houlsby draws both projections from normal(0, init_std) truncated at 2 std (Houlsby et al.
    Fig. 6 sweeps it): the sample std is init_std times the truncated normal's 0.8796."""
    for std in (1e-4, 1.0):
        _, params = aj.add_adapters(base, f"houlsby[bottleneck=64,init_weights=houlsby,init_std={std}]",
                                    rng=jax.random.PRNGKey(0))
        for k, v in paths(params).items():
            if k.endswith(("adapter_down/kernel", "adapter_up/kernel")):
                v = np.asarray(v)
                assert np.abs(v).max() <= 2 * std * (1 + 1e-6), k
                assert v.std() == pytest.approx(0.8796 * std, rel=0.03), k
    with pytest.raises(AdapterConfigError, match="init_std=0.0 must be > 0"):
        aj.add_adapters(base, "houlsby[init_std=0]")


def test_two_named_adapters_coexist(base, batch):
    m1, p1 = aj.add_adapters(base, "houlsby", name="a")
    p1 = randomize(p1, "a", seed=1)
    m2, p2 = aj.add_adapters((m1, p1), "lora", name="b")
    p2 = randomize(p2, "b", seed=2)
    assert m2.adapters.names == ("a", "b") and m2.adapters.active == ("b",)
    only_a = m1.apply({"params": p1}, *batch)
    assert bool((aj.activate(m2, "a").apply({"params": p2}, *batch) == only_a).all())
    only_b = m2.apply({"params": p2}, *batch)
    assert float(jnp.abs(only_b - only_a).max()) > 1e-3
    # b alone equals b added directly to the base with the same leaves
    mb, pb = aj.add_adapters(base, "lora", name="b")
    flat_b = {k: v for k, v in paths(p2).items() if "/b/" in k}
    pb = aj.paths.unflat({**paths(pb), **flat_b})
    np.testing.assert_array_equal(mb.apply({"params": pb}, *batch), only_b)
    # labels: only the adapter being trained is trainable
    labs = paths(aj.labels(m2, p2))
    assert {k for k, v in labs.items() if v == "adapter"} == {k for k in labs if "/lora/b/" in k}
    labs_a = paths(aj.labels(m2, p2, train=("a",)))
    assert all("/adapters/a/" in k for k, v in labs_a.items() if v == "adapter")


def test_lora_merge_unmerge(base, batch):
    model, params = aj.add_adapters(base, "lora[r=4,alpha=8]", name="t")
    params = randomize(params, "t")
    h = model.apply({"params": params}, *batch)
    mm, pm = aj.merge_lora(model, params, "t")
    assert mm.adapters.active == ()
    hm = mm.apply({"params": pm}, *batch)
    assert float(jnp.abs(hm - h).max()) < 1e-4
    mu, pu = aj.unmerge_lora(mm, pm, "t")
    k = "encoder/layer_2/attention/self/query/kernel"
    np.testing.assert_allclose(paths(pu)[k], paths(params)[k], atol=1e-6)
    # the kernel comes back to float rounding (1e-6); outputs of norm ~1 to 1e-4
    assert float(jnp.abs(mu.apply({"params": pu}, *batch) - h).max()) < 1e-4


def test_unmerge_without_merge_and_double_merge_are_refused(base, batch):
    """Merge state is tracked: unmerging an unmerged adapter (or twice), merging twice, or activating a
    merged adapter would corrupt the kernels or count the update twice, so each is refused, params untouched."""
    model, params = aj.add_adapters(base, "lora[r=4,alpha=8]", name="t")
    params = randomize(params, "t")
    with pytest.raises(AdapterConfigError, match="'t' is not merged"):
        aj.unmerge_lora(model, params, "t")
    mm, pm = aj.merge_lora(model, params, "t")
    assert mm.adapters.merged == ("t",)
    with pytest.raises(AdapterConfigError, match="already merged"):
        aj.merge_lora(mm, pm, "t")
    with pytest.raises(AdapterConfigError, match="merged into the base kernels; activating"):
        aj.activate(mm, "t")
    mu, pu = aj.unmerge_lora(mm, pm, "t")
    assert mu.adapters.merged == () and mu.adapters.active == ("t",)
    with pytest.raises(AdapterConfigError, match="'t' is not merged"):
        aj.unmerge_lora(mu, pu, "t")


def test_split_merge_roundtrip(base):
    model, params = aj.add_adapters(base, "lora", name="t", head=aj.heads.Classification(3))
    labels = aj.labels(model, params, extra=[aj.partition.rules.layernorm()])
    train, frozen = aj.split(params, labels)
    assert all(k.endswith(("lora_A", "lora_B")) or k.startswith("head/") or "LayerNorm" in k for k in paths(train))
    back = aj.merge(train, frozen)
    assert paths(back).keys() == paths(params).keys()
    assert all(paths(back)[k] is v for k, v in paths(params).items())


def test_extra_rules_bitfit_and_top_layers(base):
    model, params = aj.add_adapters(base, "houlsby", name="t")
    labs = paths(aj.labels(model, params, extra=[aj.partition.rules.bitfit(), aj.partition.rules.top_layers(6, 2)]))
    assert labs["encoder/layer_0/attention/self/query/bias"] == "bias"
    assert labs["encoder/layer_0/attention/self/query/kernel"] == "frozen"
    assert labs["encoder/layer_5/attention/self/query/kernel"] == "top"
    assert labs["encoder/layer_0/output/adapters/t/adapter_up/kernel"] == "adapter"


def test_save_load_adapter(base, batch, tmp_path):
    model, params = aj.add_adapters(base, "houlsby[bottleneck=32]|lora", name="t")
    params = randomize(params, "t")
    h = model.apply({"params": params}, *batch)
    aj.save_adapter(tmp_path / "ad", model, params, "t")
    m2, p2 = aj.load_adapter(base, tmp_path / "ad")
    np.testing.assert_array_equal(m2.apply({"params": p2}, *batch), h)
    other = load_hf_dir(FIX / "tiny-roberta")
    with pytest.raises(AdapterConfigError, match="was trained on base .* not this base"):
        aj.load_adapter(other, tmp_path / "ad")


# --- bad input: each a clear error that names the problem ---

@pytest.mark.parametrize("spec,match", [
    ("housby", r"unknown adapter method 'housby'; valid ids: .*double_seq_bn"),
    ("lora[rank=4]", r"lora: unknown key 'rank'; valid keys: .*'r'"),
    ("lora[r=four]", r"lora: r='four' is not a valid int"),
    ("houlsby[ln_before=maybe]", r"ln_before='maybe' is not a valid bool"),
    ("lora[attn_matrices=[q,x]]", r"attn_matrices \['x'\] not valid"),
    ("houlsby[bottleneck=64", r"unbalanced brackets"),
    ("prompt_tuning[prompt_init=zeros]", r"prompt_init='zeros'; valid: vocab, random_uniform"),
])
def test_bad_config_strings(spec, match):
    with pytest.raises(AdapterConfigError, match=match):
        aj.parse(spec)


def test_bottleneck_larger_than_hidden(base):
    with pytest.raises(AdapterConfigError, match="bottleneck size 512 .* between 1 and the hidden size 384"):
        aj.add_adapters(base, "houlsby[bottleneck=512]", name="t")


def test_lora_target_matching_nothing(base):
    with pytest.raises(AdapterConfigError, match=r"target='q_proj\$' matches no module .*attention/self/query"):
        aj.add_adapters(base, "lora[target=q_proj$]", name="t")


def test_duplicate_and_unknown_adapter_names(base):
    model, params = aj.add_adapters(base, "lora", name="t")
    with pytest.raises(AdapterConfigError, match="already exists"):
        aj.add_adapters((model, params), "ia3", name="t")
    with pytest.raises(AdapterConfigError, match=r"no adapter named 'x'; this model has \['t'\]"):
        aj.activate(model, "x")


def test_config_string_roundtrip():
    for spec in ["houlsby[bottleneck=64,non_linearity=relu]", "mam", "lora[r=4,attn_matrices=[q,k,v]]|ia3"]:
        methods = aj.parse(spec)
        assert aj.parse(aj.configs.to_string(methods)) == methods
    houlsby = aj.parse("houlsby")[0]
    assert (houlsby.mh_adapter, houlsby.output_adapter, houlsby.non_linearity, houlsby.reduction_factor) == \
        (True, True, "swish", 16.0)
    assert aj.parse("mam")[0].bottleneck_size == 800 and aj.parse("mam")[1].scaling == 4.0
