"""Parity with AdapterHub 1.3 and PEFT 0.21, and the interop that reads their weights.

Each fixture (scripts/make_fixtures_adapters.py, torch side) holds random
non-zero adapter weights under the peer's tensor names, a padded batch and the
peer's last hidden state. Here (no torch) the same base is loaded, the adapter
is added from our config string, its leaves are filled by adapters_jax.interop,
and our hidden state must match the peer's within the case's bound (TOL) over the
unpadded positions, while the peer's output differs from the bare base's by more
than 1e-2 (so an adapter that is not wired in fails).
"""
from __future__ import annotations

import functools
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import adapters_jax as aj
from adapters_jax import interop
from adapters_jax.interop import InteropError
from adapters_jax.models import load_hf_dir

FIX = Path(__file__).parent / "fixtures" / "adapters"
CASES = sorted(p.stem for p in FIX.glob("*.npz"))
# Max abs difference to the peer over the unpadded positions, measured with oneDNN dots / XLA's default dots
# (ADAPTERS_JAX_ONEDNN=0), jax 0.10.2 on the 2-core CPU; each bound is 4x the larger, rounded up to 1, 2 or 5.
# README's Methods table quotes the MiniLM-L6 bounds.
TOL = {
    "minilm__double_seq_bn": 2e-5,  # 3.5e-6 / 2.8e-6
    "minilm__seq_bn": 1e-5,  # 2.4e-6 / 2.0e-6
    "minilm__par_bn": 1e-5,  # 2.1e-6 / 2.3e-6
    "minilm__lora": 2e-5,  # 3.0e-6 / 2.5e-6
    "minilm__rslora": 5e-5,  # 9.0e-6 / 4.4e-6
    "minilm__ia3": 2e-5,  # 4.6e-6 / 3.8e-6
    "minilm__prefix_tuning": 1e-5,  # 2.4e-6 / 2.4e-6
    "minilm__prompt": 1e-5,  # 2.4e-6 / 1.8e-6
}
TINY_TOL = 1e-5  # each tiny BERT and tiny Llama case: at most 1.6e-6 (tiny-llama__prompt, XLA's default dots)
EFFECT = 1e-2  # the peer's output must differ from the bare base's by more, or the fixture tests nothing


@functools.cache
def _base(base_name: str, minilm_dir: str | None):
    return load_hf_dir(minilm_dir if base_name == "minilm" else FIX / base_name)


def _case(case: str):
    z = np.load(FIX / f"{case}.npz")
    meta = json.loads(str(z["meta"]))
    weights = {k[2:]: z[k].astype(np.float32) for k in z.files if k.startswith("w/")}
    return meta, weights, z["input_ids"], z["attention_mask"], z["hidden"]


def _apply(model, params, ids, mask, llama: bool):
    kw = {"return_hidden": True} if llama else {}
    return np.asarray(model.apply({"params": params}, jnp.asarray(ids), jnp.asarray(mask), **kw))


def _run(case: str, asset_path) -> tuple[float, float]:
    """(max |ours - reference|, max |reference - base|) over the unpadded positions."""
    base_name = case.split("__")[0]
    base = _base(base_name, str(asset_path("minilm-l6")) if base_name == "minilm" else None)
    meta, weights, ids, mask, ref = _case(case)
    model, params = aj.add_adapters(base, meta["ours"], name="task")
    convert = interop.from_adapterhub if meta["library"] == "adapterhub" else interop.from_peft
    params = convert(weights, model, params, "task")
    h = _apply(model, params, ids, mask, meta["llama"])
    h0 = _apply(base.model, base.params, ids, mask, meta["llama"])
    ref = ref[:, meta["n_virtual"]:]  # PEFT's prompt tuning keeps the virtual-token positions; we drop them
    keep = mask.astype(bool)
    return float(np.abs(h - ref)[keep].max()), float(np.abs(ref - h0)[keep].max())


@pytest.mark.parametrize("case", CASES)
def test_parity(case, asset_path):
    diff, effect = _run(case, asset_path)
    tol = TOL.get(case, TINY_TOL)
    print(f"{case}: max abs diff {diff:.2e} (bound {tol:.0e}; adapter effect {effect:.2e})")
    assert effect > EFFECT, f"{case}: the reference barely differs from the base model; the fixture tests nothing"
    assert diff <= tol, f"{case}: max abs diff {diff:.3e} > {tol}"


def test_fixture_cases_present():
    want = {f"{b}__{c}" for b in ("tiny-bert", "minilm")
            for c in ("double_seq_bn", "seq_bn", "par_bn", "prefix_tuning", "lora", "rslora", "ia3", "prompt")}
    want |= {f"tiny-llama__{c}" for c in ("lora", "rslora", "ia3", "prompt")}
    assert want <= set(CASES) and set(TOL) == {c for c in CASES if c.startswith("minilm__")}
    assert all((FIX / d / "model.safetensors").stat().st_size < 300_000 for d in ("tiny-bert", "tiny-llama"))


# --- interop: names, errors, round trip (tiny BERT only) ---

def _tiny(case: str):
    meta, weights, *_ = _case(case)
    model, params = aj.add_adapters(_base("tiny-bert", None), meta["ours"], name="task")
    return model, params, weights


def test_peft_full_names_with_adapter_segment():
    """PeftModel.state_dict() names (`lora_A.default.weight`) read like the saved ones."""
    model, params, w = _tiny("tiny-bert__lora")
    full = {k.replace("lora_A.weight", "lora_A.default.weight").replace("lora_B.weight", "lora_B.default.weight"): v
            for k, v in w.items()}
    a = interop.from_peft(w, model, params, "task")
    b = interop.from_peft(full, model, params, "task")
    assert all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_peft_round_trip():
    for case in ("tiny-bert__lora", "tiny-bert__ia3", "tiny-bert__prompt"):
        model, params, w = _tiny(case)
        params = interop.from_peft(w, model, params, "task")
        back = interop.to_peft(model, params, "task")
        assert set(back) == set(w), case
        assert all(np.array_equal(back[k], w[k]) for k in w), case


def test_to_peft_refuses_bottleneck():
    model, params, _ = _tiny("tiny-bert__seq_bn")
    with pytest.raises(InteropError, match="no counterpart"):
        interop.to_peft(model, params, "task")


def test_unmapped_tensor_is_named():
    model, params, w = _tiny("tiny-bert__lora")
    with pytest.raises(InteropError, match="lora_embedding_A"):
        interop.from_peft({**w, "base_model.model.embeddings.word_embeddings.lora_embedding_A": w[next(iter(w))]},
                          model, params, "task")
    model, params, w = _tiny("tiny-bert__seq_bn")
    with pytest.raises(InteropError, match="adapters.t.gate.weight"):
        interop.from_adapterhub({**w, "encoder.layer.0.output.adapters.t.gate.weight": np.zeros((1, 32))},
                                model, params, "task")


def test_target_missing_in_model_is_named():
    """LoRA weights on key, but our adapter only has query and value."""
    model, params, w = _tiny("tiny-bert__lora")
    k = next(k for k in w if "query.lora_A" in k)
    with pytest.raises(InteropError, match="attention.self.key.lora_A"):
        interop.from_peft({**w, k.replace("query", "key"): w[k]}, model, params, "task")


def test_shape_mismatch_and_missing_leaves():
    model, params, w = _tiny("tiny-bert__lora")
    k = next(iter(w))
    with pytest.raises(InteropError, match="shape"):
        interop.from_peft({**w, k: w[k][:, :3]}, model, params, "task")
    partial = {kk: v for kk, v in w.items() if "layer.1." not in kk}
    with pytest.raises(InteropError, match="no tensor for 4 leaves"):
        interop.from_peft(partial, model, params, "task")
    interop.from_peft(partial, model, params, "task", strict=False)


def test_adapterhub_ia3_onto_our_default_ia3_explains_placement():
    """AdapterHub's IA3 scales intermediate.dense's output; our default scales the activation."""
    _, _, w = _tiny("tiny-bert__ah_ia3")
    model, params = aj.add_adapters(_base("tiny-bert", None), "ia3", name="task")
    with pytest.raises(InteropError, match="before the activation"):
        interop.from_adapterhub(w, model, params, "task")


def test_peft_ia3_feedforward_mismatch():
    """PEFT stores feed-forward IA3 as [1, in]; our adapter must scale that projection's input too."""
    _, _, w = _tiny("tiny-bert__ia3")
    spec = r"ia3[target=(attention/self/(key|value)|layer_\d+/output/dense)$]"  # scales output.dense's output
    model, params = aj.add_adapters(_base("tiny-bert", None), spec, name="task")
    with pytest.raises(InteropError, match="feedforward"):
        interop.from_peft(w, model, params, "task")


def test_several_adapters_need_a_choice():
    model, params, w = _tiny("tiny-bert__seq_bn")
    two = {**w, **{k.replace(".t.", ".u."): v for k, v in w.items()}}
    with pytest.raises(InteropError, match="several AdapterHub adapters"):
        interop.from_adapterhub(two, model, params, "task")
    interop.from_adapterhub(two, model, params, "task", adapter="u")
