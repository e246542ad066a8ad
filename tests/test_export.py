"""Merged-model export (adapters_jax/export.py): our loader and transformers read our exports back.

transformers' side comes from tests/fixtures/export_ref.{npz,json} (scripts/make_fixtures_export.py: it
exported these same cases with our code and ran transformers 5 on them; no torch here). Each test
re-exports, checks the bytes are those transformers read (a hash), then compares outputs.
"""
import dataclasses
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

import adapters_jax as aj
from adapters_jax import paths
from adapters_jax.errors import ConfigError, InteropError
from adapters_jax import export as ex
from adapters_jax.models import heads
from adapters_jax.models import gguf as gguf_models

ROOT = Path(__file__).resolve().parents[1]
FIX = ROOT / "tests" / "fixtures"
_spec = importlib.util.spec_from_file_location("make_fixtures_export", ROOT / "scripts" / "make_fixtures_export.py")
fx = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fx)

F32_TOL = 1e-5  # measured (export_ref.json): logits 3.9e-6 (tiny Llama), log-probs 4.8e-6 (tiny SmolLM2-shaped)
# float16 GGUF against the float32 adapter model: the weights' rounding (2^-11 relative), measured 4.3e-3 on the
# tiny model's next-token log-probs; 4x, rounded up. Against the same float16 file read by us: F32_TOL.
F16_TOL = 2e-2
TEXT = json.loads((FIX / "smollm2_ref.json").read_text())["text"]


@pytest.fixture(scope="module")
def ref():
    return dict(np.load(FIX / "export_ref.npz")), json.loads((FIX / "export_ref.json").read_text())


@pytest.fixture(scope="module")
def built(smollm2_tokenizer):  # SmolLM2's tokenizer (conftest: read from the GGUF file alone, once per session)
    return {case: fx.build(case, smollm2_tokenizer) for case in fx.SPECS}


@pytest.fixture(scope="module")
def exported(built, tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    return {name: fx.export(name, built[case], root / name) for name, (case, _, _) in fx.EXPORTS.items()}


@pytest.fixture(scope="module")
def ours(built):
    return {case: fx.our_outputs(b) for case, b in built.items()}


def test_exports_are_the_bytes_transformers_read(exported, ref):
    assert {n: fx.export_hash(p) for n, p in exported.items()} == ref[1]["hashes"]
    # so what the fixture script checked of these bytes holds: the GGUF's 12 tokenizer.* fields are those
    # llama.cpp's converter wrote into the SmolLM2 file (tokens, types, merges, pre, special ids, template)
    assert ref[1]["smol_gguf_tokenizer_fields_differing_from_smollm2_file"] == []
    classes = {n: ref[1][f"{n}/class"] for n in fx.EXPORTS}
    assert classes["bert"] == "BertForSequenceClassification"
    assert classes["roberta"] == "RobertaForSequenceClassification"


@pytest.mark.parametrize("name", list(fx.EXPORTS))
def test_transformers_outputs_equal_the_adapter_models(name, exported, ours, built, ref):
    case = fx.EXPORTS[name][0]
    key = "logits" if "logits" in ours[case] else "target_logp"
    m = built[case]["mask"].astype(bool) if case == "llama" else Ellipsis  # padded positions are not compared
    diff = np.abs(ours[case][key][m] - ref[0][f"{name}/{key}"][m]).max()
    assert diff <= (F16_TOL if name.endswith("f16") else F32_TOL), diff
    if case == "smol":  # transformers tokenized the text with the exported tokenizer: SmolLM2's own ids
        assert ref[1][f"{name}/tokenizer_ids_equal"]
        top1 = ref[0][f"{name}/top5_ids"][:, 0] == ours[case]["top5_ids"][:, 0]
        assert top1.mean() >= (0.9 if name.endswith("f16") else 1.0)


def _head_params(directory: Path, model) -> dict:
    """Our head leaves read back from HF's classifier tensors (the inverse of the export's naming)."""
    tensors = load_file(str(directory / "model.safetensors"))
    out = {}
    for ours_module, hf in paths.HF_HEAD_NAMES[model.config.model_type].items():
        out[f"{ours_module}/kernel"] = tensors[f"{hf}.weight"].T
        out[f"{ours_module}/bias"] = tensors[f"{hf}.bias"]
    return out


@pytest.mark.parametrize("name", ["llama", "bert", "roberta", "smol_hf"])
def test_hf_round_trip_with_our_loader(name, exported, built, ours):
    case = fx.EXPORTS[name][0]
    b = built[case]
    back = aj.load(exported[name])
    # RobertaForSequenceClassification has no pooler: the export says add_pooling_layer=false, which we read
    pooler = case != "roberta"
    assert back.config == dataclasses.replace(b["model"].config, add_pooling_layer=pooler) if case in (
        "bert", "roberta") else back.config == b["model"].config
    params = paths.flat(back.params)
    if b["model"].head is not None:
        params.update(_head_params(exported[name], b["model"]))
    model = b["model"].clone(adapters=None, config=back.config)
    out = fx.our_outputs({**b, "model": model, "params": paths.unflat(params)})
    key = next(iter(out)) if "logits" in out else "target_logp"
    m = b["mask"].astype(bool) if case == "llama" else Ellipsis
    assert np.abs(out[key][m] - ours[case][key][m]).max() <= F32_TOL
    if case == "smol":
        assert back.tokenizer(TEXT)["input_ids"] == b["ids"][0].tolist()
        # a class name transformers 4 (PEFT's users) loads too, not transformers 5's "TokenizersBackend"
        assert json.loads((exported[name] / "tokenizer_config.json").read_text())["tokenizer_class"] == \
            "PreTrainedTokenizerFast"


def test_gguf_round_trip_with_our_loader(exported, built, ours, ref):
    name = "smol_gguf_f16"  # (float32: the same path without the cast; transformers read both, above)
    back = aj.load(exported[name] / ex.GGUF_FILE)
    want = fx.tiny_smol_config()
    assert back.config == dataclasses.replace(want, rms_norm_eps=back.config.rms_norm_eps)
    assert back.config.rms_norm_eps == pytest.approx(want.rms_norm_eps, rel=1e-6)  # stored as float32
    assert back.tokenizer(TEXT)["input_ids"] == built["smol"]["ids"][0].tolist()
    out = fx.our_outputs({**built["smol"], "model": back.model, "params": back.params})
    # the same file in transformers and here: equal to float32 rounding, whatever the file type
    assert np.abs(out["target_logp"] - ref[0][f"{name}/target_logp"]).max() <= F32_TOL
    assert np.abs(out["target_logp"] - ours["smol"]["target_logp"]).max() <= F16_TOL


def test_names_invert_the_loaders(built):
    for case in ("llama", "bert"):
        flat = paths.flat(built[case]["params"])
        family = aj.models.family_of(built[case]["model"].config.model_type).FAMILY
        for p in (k for k in flat if paths.is_base(k)):
            name, transposed = paths.path_to_hf(p)
            assert paths.hf_to_path(name, family, flat) == p and transposed == p.endswith("/kernel")
            if case == "llama":
                assert gguf_models.hf_name(gguf_models.gguf_name(name)) == name
    w = np.arange(2 * 4 * 8 * 3.0).reshape(2 * 4 * 8, 3)
    assert np.array_equal(gguf_models.unpermute_rows(gguf_models.permute_rows(w, 4), 4), w)


@pytest.mark.parametrize("fixture", ["tiny-llama", "tiny-mistral", "tiny-qwen2", "tiny-roberta", "tiny-bert-bf16"])
def test_config_json_gives_the_config_back(fixture):
    d = json.loads((FIX / fixture / "config.json").read_text())
    family = aj.models.family_of(d["model_type"])
    c = family.config_from_hf(d)
    assert family.config_from_hf(ex.hf_config(c, "X", "float32")) == c


def test_refusals_name_the_problem_and_write_nothing(built, tmp_path):
    b = built["bert"]
    model, params = b["model"], b["params"]
    dest = tmp_path / "out"
    with pytest.raises(ConfigError, match="format='onnx'"):
        ex.export_merged(model, params, dest, format="onnx")
    with pytest.raises(ConfigError, match="dtype='int8'"):
        ex.export_merged(model, params, dest, dtype="int8")
    with pytest.raises(InteropError, match="Llama models.*'bert'"):
        ex.export_merged(model, params, dest, format="gguf")
    with pytest.raises(ConfigError, match="needs the tokenizer"):
        ex.export_merged(built["smol"]["model"], built["smol"]["params"], dest, format="gguf")
    setup = model.adapters
    for spec, why in (("houlsby", "bottleneck: it adds down/up"), ("prefix_tuning", "prefix_tuning: it adds key/value"),
                      ("prompt_tuning", "prompt_tuning: it prepends")):
        other = model.clone(adapters=setup.add("x", spec).activate("task", "x"))
        with pytest.raises(InteropError, match=f"'x' \\({why}"):
            ex.export_merged(other, params, dest)
    mean = model.clone(head=heads.Classification(3, pooling="mean"))
    with pytest.raises(InteropError, match="pooling='mean'.*drop_head=True"):
        ex.export_merged(mean, params, dest)
    assert not dest.exists() and list(tmp_path.iterdir()) == []
    out = ex.export_merged(mean, params, dest, drop_head=True)  # the encoder alone, as BertModel
    assert json.loads((out / "config.json").read_text())["architectures"] == ["BertModel"]
    assert not any(k.startswith(("classifier", "bert.")) for k in load_file(str(out / "model.safetensors")))


def test_destination_is_never_clobbered(built, tmp_path, monkeypatch):
    b = built["bert"]
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    with pytest.raises(ConfigError, match="not a previous export"):
        ex.export_merged(b["model"], b["params"], mine)
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="not a directory"):
        ex.export_merged(b["model"], b["params"], tmp_path / "file")
    dest = ex.export_merged(b["model"], b["params"], tmp_path / "out")
    good = fx.export_hash(dest)

    def broken(tmp, *a):
        (tmp / "model.safetensors").write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(ex, "_write_hf", broken)
    with pytest.raises(OSError, match="disk full"):
        ex.export_merged(b["model"], b["params"], dest)
    assert fx.export_hash(dest) == good and sorted(p.name for p in tmp_path.iterdir()) == ["file", "mine", "out"]
    monkeypatch.undo()
    again = ex.export_merged(b["model"], b["params"], dest)  # a previous export is replaced
    assert fx.export_hash(again) == good and sorted(p.name for p in tmp_path.iterdir()) == ["file", "mine", "out"]


def test_unadapted_base_is_its_checkpoint_and_bf16_casts(tmp_path):
    """A model without adapters (full fine-tuning) is written as it is: the source's own tensors, bit for bit."""
    base = aj.load(FIX / "tiny-roberta")
    out = ex.export_merged(base.model, base.params, tmp_path / "f32")
    assert json.loads((out / ex.MARKER).read_text())["folded"] == {}
    mine, source = (load_file(str(d / "model.safetensors")) for d in (out, FIX / "tiny-roberta"))
    assert sorted(mine) == sorted(source) and all(np.array_equal(mine[k], source[k]) for k in source)
    half = aj.load(ex.export_merged(base.model, base.params, tmp_path / "bf16", dtype="bfloat16"))
    for k, v in paths.flat(base.params).items():
        np.testing.assert_allclose(paths.flat(half.params)[k], v, rtol=2 ** -8, atol=1e-30)


def test_adapter_drop_layers_keep_the_base_kernels(built):
    b = built["llama"]
    whole, dropped = (paths.flat(ex.fold(m, b["params"])[1]) for m in (b["model"], aj.adapter_drop(b["model"], 1)))
    base = paths.flat(b["params"])
    q = "model/layers_{}/self_attn/q_proj/kernel"
    assert np.array_equal(dropped[q.format(0)], base[q.format(0)])
    assert not np.array_equal(whole[q.format(0)], base[q.format(0)])
    assert np.array_equal(dropped[q.format(1)], whole[q.format(1)])


def test_tokenizer_from_a_directory_is_copied(exported, built, tmp_path):
    b = built["smol"]
    out = ex.export_merged(b["model"], b["params"], tmp_path / "o", tokenizer=exported["smol_hf"])
    assert (out / "tokenizer.json").read_bytes() == (exported["smol_hf"] / "tokenizer.json").read_bytes()
    with pytest.raises(ConfigError, match="not a directory holding tokenizer files"):
        ex.export_merged(b["model"], b["params"], tmp_path / "p", tokenizer=tmp_path)
    assert not (tmp_path / "p").exists()
