"""Generation with the KV cache: exact against the full forward pass for every adapter method, batched rows
equal to each row alone, sampling controls, bad input, and greedy parity with transformers on SmolLM2-135M."""
import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import adapters_jax as aj
from adapters_jax.errors import ConfigError
from adapters_jax.decoding import generate
from adapters_jax.modules.hooks import prompt_length
from adapters_jax.models import kv_cache

ROOT = Path(__file__).resolve().parents[1]
FIX = Path(__file__).parent / "fixtures"
SPECS = [None, "lora[r=4]", "ia3", "houlsby[bottleneck=8]", "par_bn[bottleneck=8]", "prefix_tuning[prefix_length=3]",
         "prompt_tuning[prompt_length=2]", "lora[r=2]|prefix_tuning[prefix_length=2]|prompt_tuning[prompt_length=3]"]


def adapted(fixture, spec, seed=1):
    """The fixture model with adapter `spec` and every param perturbed (so no adapter is a no-op)."""
    base = aj.load(FIX / fixture)
    model, params = (base.model, base.params) if spec is None else aj.add_adapters(base, spec)
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    leaves = [x + 0.02 * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)]
    return model, jax.tree.unflatten(tree, leaves)


@pytest.mark.parametrize("fixture,spec", [("tiny-llama", s) for s in SPECS] + [("tiny-mistral", SPECS[0]),
                                                                              ("tiny-mistral", SPECS[-1])])
def test_cached_decoding_equals_the_full_forward(fixture, spec):
    """Prefill 6 tokens, then decode 3 one by one: every real position's logits equal the uncached forward's
    (padding on the left in one row, on the right in another; tiny-mistral's window of 4 is shorter than 9)."""
    model, params = adapted(fixture, spec)
    ids = jnp.asarray(np.random.default_rng(0).integers(3, 200, (3, 9)), jnp.int32)
    mask = jnp.asarray([[0, 0, 1, 1, 1, 1, 1, 1, 1], [1] * 9, [1, 1, 1, 1, 1, 0, 0, 0, 0]], jnp.int32)
    pos = jnp.maximum(jnp.cumsum(mask, 1) - 1, 0)
    full = jax.jit(lambda p: model.apply({"params": p}, ids, mask, positions_BxT=pos))(params)

    @jax.jit
    def step(p, ids_BxT, mask_BxT, pos_BxT, cache, prefill):  # compiled once for the prefill, once for a step
        h, cache = model.apply({"params": p}, ids_BxT, mask_BxT, positions_BxT=pos_BxT, cache=cache, prefill=prefill)
        return model.apply({"params": p}, h, method=model.logits), cache

    step = jax.jit(step.__wrapped__, static_argnums=(5,))
    logits, cache = step(params, ids[:, :6], mask[:, :6], pos[:, :6], kv_cache.init(model.config, 3, 16), True)
    outs = [logits]
    for t in range(6, 9):
        logits, cache = step(params, ids[:, t:t + 1], mask[:, t:t + 1], pos[:, t:t + 1], cache, False)
        outs.append(logits)
    got = jnp.concatenate(outs, 1)
    # measured 0.8e-6 .. 1.2e-6 (float32 reduction order of the cached attention); bound 5x
    assert float(jnp.abs(got - full)[mask > 0].max()) < 5e-6
    assert int(cache["index"]) == 9 + prompt_length(model)


@pytest.mark.parametrize("spec", [None, "lora[r=4]", "prefix_tuning[prefix_length=3]", "prompt_tuning[prompt_length=2]"])
def test_batched_rows_equal_each_alone(spec):
    model, params = adapted("tiny-llama", spec)
    prompts = [[5, 9, 17], [40, 41, 42, 43, 44, 45, 46], [100]]
    batched = generate(model, params, prompts, 12, ignore_eos=True)
    for p, b in zip(prompts, batched):
        alone = generate(model, params, [p], 12, ignore_eos=True)[0]
        assert b.ids == alone.ids and b.finish_reason == "length" and len(b.ids) == 12


def test_sampling_controls():
    model, params = adapted("tiny-llama", None)
    p = [[5, 9, 17, 3]]
    greedy = generate(model, params, p, 10, ignore_eos=True)[0].ids
    assert generate(model, params, p, 10, temperature=1.0, top_k=1, seed=3, ignore_eos=True)[0].ids == greedy
    assert generate(model, params, p, 10, temperature=0.7, top_p=1e-6, seed=3, ignore_eos=True)[0].ids == greedy
    a = generate(model, params, p * 4, 10, temperature=1.5, seed=7, ignore_eos=True)
    b = generate(model, params, p * 4, 10, temperature=1.5, seed=7, ignore_eos=True)
    assert [o.ids for o in a] == [o.ids for o in b]  # same seed, same draws
    assert len({tuple(o.ids) for o in a}) > 1  # rows draw independently
    c = generate(model, params, p, 10, temperature=1.5, seed=8, ignore_eos=True)
    assert c[0].ids != a[0].ids


def test_eos_stops_a_row_and_is_not_returned():
    model, params = adapted("tiny-llama", None)
    full = generate(model, params, [[5, 9, 17]], 10, ignore_eos=True)[0].ids
    eos = full[4]
    out = generate(model, params, [[5, 9, 17]], 10, eos_token_id=eos)[0]
    assert out.ids == full[:full.index(eos)] and out.finish_reason == "stop"


def test_bad_input_is_refused():
    model, params = adapted("tiny-llama", None)
    ctx = model.config.max_position_embeddings
    with pytest.raises(ConfigError, match="max_new_tokens=0 must be >= 1"):
        generate(model, params, [[1, 2]], 0)
    with pytest.raises(ConfigError, match=rf"prompt 1 has {ctx} tokens .* more than the model's context \({ctx}"):
        generate(model, params, [[1], [2] * ctx], 4)
    with pytest.raises(ConfigError, match="prompt 0 is text but no tokenizer"):
        generate(model, params, ["hello"], 4)
    with pytest.raises(ConfigError, match="prompt 0 is empty"):
        generate(model, params, [[]], 4)
    with pytest.raises(ConfigError, match="outside the vocabulary"):
        generate(model, params, [[1, 10**6]], 4)
    with pytest.raises(ConfigError, match="top_p=0.0"):
        generate(model, params, [[1]], 4, temperature=1.0, top_p=0.0)
    bert = aj.load(FIX / "tiny-roberta")
    with pytest.raises(ConfigError, match="needs a decoder"):
        generate(bert.model, bert.params, [[1, 2]], 4)


FIXTURE = FIX / "smollm2_generate.json"


def lora_from_rule(model, params, name, rule_names):
    """The fixture's LoRA weights, rebuilt from its rule: sorted PEFT names, standard normal * 0.05, seed 0."""
    sd = aj.interop.to_peft(model, params, name)
    assert sorted(sd) == rule_names, "our PEFT names differ from the fixture's"
    rng = np.random.default_rng(0)
    filled = {k: (rng.standard_normal(sd[k].shape) * 0.05).astype(np.float32) for k in sorted(sd)}
    return aj.interop.from_peft(filled, model, params, name)


@pytest.mark.skipif(not FIXTURE.exists(), reason="tests/fixtures/smollm2_generate.json not made yet")
def test_smollm2_greedy_equals_transformers_generate(smollm2):
    """32 greedy tokens for each committed prompt, base and with a LoRA adapter (q,v r=8, PEFT weights from the
    fixture's rule), equal to transformers' generate token for token (fixture: scripts/make_fixtures_generate.py)."""
    ref = json.loads(FIXTURE.read_text())
    prompts = [r["prompt_ids"] for r in ref["prompts"]]
    assert ref["prompts"][0]["prompt_ids"] == smollm2.tokenizer(ref["prompts"][0]["prompt"], add_special_tokens=False)["input_ids"]
    # min_new_tokens bans EOS for all 32 steps, as the fixture's min_new_tokens=32 did (it was the argmax 3 times)
    base = generate(smollm2.model, smollm2.params, prompts, 32, min_new_tokens=32)
    model, params = aj.add_adapters(smollm2, "lora[r=8,alpha=16]", name="t")
    params = lora_from_rule(model, params, "t", ref["lora"]["names_sorted"])
    lora = generate(model, params, prompts, 32, min_new_tokens=32)
    for r, b, lo in zip(ref["prompts"], base, lora):
        assert b.ids == r["base_greedy_ids"], (r["prompt"], b.ids, r["base_greedy_ids"])
        assert lo.ids == r["lora_greedy_ids"], (r["prompt"], lo.ids, r["lora_greedy_ids"])
    assert sum(b.ids != lo.ids for b, lo in zip(base, lora)) >= 3  # the adapter changes the text


def test_generate_script_prints_completions_and_refuses_bad_input(tmp_path):
    fx = str(FIX / "tiny-llama")
    run = lambda *a: subprocess.run([sys.executable, str(ROOT / "scripts/generate.py"), "--model", fx, *a],
                                    capture_output=True, text=True, timeout=300, cwd=ROOT)
    ok = run("--prompt_ids", "5,9,17", "--max_new_tokens", "4", "--ignore_eos")
    assert ok.returncode == 0, ok.stderr
    out = json.loads(ok.stdout.strip().splitlines()[-1])
    assert len(out["ids"]) == 4 and out["finish_reason"] == "length"
    bad = run("--prompt_ids", "5,9", "--max_new_tokens", "0")
    assert bad.returncode != 0
    lines = [ln for ln in bad.stderr.strip().splitlines() if ln.strip()]
    assert lines == [lines[0]] and lines[0].startswith("error: ") and "max_new_tokens=0" in lines[0]
    assert "Traceback" not in bad.stderr




def word_tokenizer(n: int, eos: int):
    """Words w0..w{n-1} split on spaces, w{eos} the end of sequence: decode then encode gives the same ids back,
    so a reference made by decoding a completion has exactly its length (byte-level BPE does not promise this)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    t = Tokenizer(models.WordLevel({f"w{i}": i for i in range(n)} | {"[UNK]": n}, unk_token="[UNK]"))
    t.pre_tokenizer, t.decoder = pre_tokenizers.WhitespaceSplit(), decoders.WordPiece(prefix="##")
    return PreTrainedTokenizerFast(tokenizer_object=t, unk_token="[UNK]", eos_token=f"w{eos}")


def test_exact_match_scores_each_prompt_against_its_own_reference():
    """kinds.exact_match batches prompts by length (less padding), not in data order: every prompt must still be
    scored against its own reference. The references: a prompt's own greedy completion (made alone) where it ends
    within 6 tokens, else a wrong string 6 tokens long; prompts in three length buckets, unsorted."""
    import collections
    import types

    from adapters_jax.train.kinds import exact_match

    model, params = adapted("tiny-llama", "lora[r=4]")
    rng = np.random.default_rng(3)
    prompts = [list(rng.integers(3, 200, n)) for n in rng.permutation([3, 5, 9, 14, 20, 27, 33, 40, 47, 60])]
    free = [generate(model, params, [p], 7, ignore_eos=True, eos_token_id=0)[0].ids for p in prompts]
    eos = collections.Counter(t for ids in free for t in ids[1:5]).most_common(1)[0][0]  # often 2nd-5th token
    tok = word_tokenizer(model.config.vocab_size, eos)
    wrong = " ".join(["unknown"] * 6)  # the longest reference: exact_match generates 6 tokens + the end token
    own = [generate(model, params, [p], 7, tokenizer=tok)[0] for p in prompts]
    hit = [o.finish_reason == "stop" and 0 < len(o.ids) <= 6 for o in own]
    assert 2 <= sum(hit) <= len(prompts) - 2, (eos, free)  # some of each, or the test shows nothing
    responses = [o.text if h else wrong for o, h in zip(own, hit)]
    enc = types.SimpleNamespace(prompts=prompts, responses=responses)
    assert exact_match(model, params, enc, tok, batch_size=4) == sum(hit) / len(prompts)
    assert exact_match(model, params, enc, tok, batch_size=3, limit=5) == sum(hit[:5]) / 5
