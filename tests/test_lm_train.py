"""Causal-LM training through the trainer (task kinds lm and instruct, train/kinds.py) on a tiny Llama
with SmolLM2's real tokenizer and real rt_polarity text: losses fall, metrics are what they say."""
import csv
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from experiments.configs import base as base_config  # noqa: E402

from adapters_jax.train import loop  # noqa: E402


@pytest.fixture(scope="module")
def tiny_lm_dir(tmp_path_factory, smollm2_tokenizer):
    """A 2-layer Llama (hidden 32, random weights) with SmolLM2's 49,152-token tokenizer, as an HF directory."""
    from safetensors.numpy import save_file

    d = tmp_path_factory.mktemp("tiny-lm")
    cfg = dict(model_type="llama", vocab_size=49152, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True,
               rms_norm_eps=1e-5, rope_theta=1e4, eos_token_id=smollm2_tokenizer.eos_token_id)
    (d / "config.json").write_text(json.dumps(cfg))
    g = np.random.default_rng(0)
    # embedding rows of norm ~3 (as trained LMs have), so frozen-base adapters can reach confident logits
    w = {"model.embed_tokens.weight": g.normal(0, 0.5, (49152, 32)), "model.norm.weight": np.ones(32)}
    for i in range(2):
        p = f"model.layers.{i}."
        w |= {p + "input_layernorm.weight": np.ones(32), p + "post_attention_layernorm.weight": np.ones(32),
              p + "self_attn.q_proj.weight": g.normal(0, 0.02, (32, 32)), p + "self_attn.k_proj.weight": g.normal(0, 0.02, (16, 32)),
              p + "self_attn.v_proj.weight": g.normal(0, 0.02, (16, 32)), p + "self_attn.o_proj.weight": g.normal(0, 0.02, (32, 32)),
              p + "mlp.gate_proj.weight": g.normal(0, 0.02, (64, 32)), p + "mlp.up_proj.weight": g.normal(0, 0.02, (64, 32)),
              p + "mlp.down_proj.weight": g.normal(0, 0.02, (32, 64))}
    save_file({k: v.astype(np.float32) for k, v in w.items()}, str(d / "model.safetensors"))
    smollm2_tokenizer.save_pretrained(str(d))
    return d


@pytest.fixture(scope="module")
def rt_file(tmp_path_factory, real_task):
    """A local CSV of real rt_polarity rows marked train and test only, so validation is carved out of train
    (the 80 rows of rt's own validation split among the 720 "train" rows come back out); 200 test rows."""
    t = real_task("rt_polarity")
    path = tmp_path_factory.mktemp("rt") / "rt.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label", "split"])
        for split, n, mark in (("train", 640, "train"), ("validation", 80, "train"), ("test", 200, "test")):
            d = t[split]
            w.writerows((d["text"][i], t.label_names[d["label"][i]], mark) for i in range(n))
    return path


def lm_config(model_dir, task_file, kind, adapter, steps=40, lr=3e-3):
    c = base_config.get_config()
    c.model, c.task, c.task_kind, c.adapter = str(model_dir), str(task_file), kind, adapter
    c.task_kwargs.split_column, c.task_kwargs.label_names = "split", ["rotten", "fresh"]
    c.max_length, c.buckets, c.batch_size, c.eval_batch_size = 48, (48,), 16, 256
    c.max_steps, c.eval_every, c.log_every, c.progress = steps, steps, 5, False
    c.optimizer.lr, c.optimizer.warmup = lr, 0.0
    c.instruct.prompt_template, c.instruct.response_names = "Review: {text}\nSentiment:", ["negative", "positive"]
    return c


def losses(workdir):
    rows = [json.loads(x) for x in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if r["kind"] == "train"]


def test_instruct_trains_on_the_response_and_reports_exact_match(tiny_lm_dir, rt_file, tmp_path):
    c = lm_config(tiny_lm_dir, rt_file, "instruct", "lora[r=8,alpha=16]", lr=1e-2)
    c.full_finetune = True  # a random tiny base: the adapter alone cannot reshape its output layer in 40 steps
    rep = loop.run(c, tmp_path / "run")
    assert rep["task_kind"] == "instruct" and rep["completed"]
    trace = losses(tmp_path / "run")
    # measured: 3.97 at step 5 -> 0.39 at step 40 (the response is one of two words plus the end token)
    assert trace[-1] < 0.5 * trace[0], trace
    assert 0.0 <= rep["test_accuracy"] <= 1.0 and 0.0 <= rep["val_accuracy"] <= 1.0
    # measured 0.515 (validation 0.66): the random tiny base learns the answer format (one of the two words
    # and the end token), hardly the sentiment; a generation or end-token bug would score near 0
    assert rep["test_accuracy"] > 0.40
    assert rep["split_counts"] == {"train": 640, "validation": 80, "test": 200} and "carved out of" in rep["split_rule"]


def test_lm_kind_reports_token_weighted_perplexity_for_every_method(tiny_lm_dir, rt_file, tmp_path):
    spec = "lora[r=4]|ia3|houlsby[bottleneck=8]|prefix_tuning[prefix_length=4]|prompt_tuning[prompt_length=3]"
    rep = loop.run(lm_config(tiny_lm_dir, rt_file, "lm", spec, steps=30, lr=1e-2), tmp_path / "run")
    trace = losses(tmp_path / "run")
    assert trace[-1] < trace[0] - 1.0, trace
    ppl = rep["test_perplexity"]
    assert math.isfinite(ppl) and ppl < math.exp(trace[0]) and "test_accuracy" not in rep


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory, real_task):
    """Prompt/response pairs as a user brings them: a JSONL file whose responses are free text, some of them
    numbers-looking ("5 stars") and one an integer string, which must stay strings."""
    t = real_task("rt_polarity")
    d = t["train"]
    words = {0: "2", 1: "5 stars"}
    rows = [{"prompt": f"Rate: {d['text'][i]}\n", "response": words[d["label"][i]]} for i in range(200)]
    path = tmp_path_factory.mktemp("pairs") / "pairs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path, rows


def test_a_prompt_response_file_trains_as_instruct_with_its_responses_verbatim(tiny_lm_dir, pairs_file, tmp_path):
    path, rows = pairs_file
    c = lm_config(tiny_lm_dir, path, "instruct", "lora[r=4]", steps=4)
    c.task_kwargs.split_column, c.task_kwargs.label_names = None, None
    c.task_kwargs.text_column, c.task_kwargs.response_column = "prompt", "response"
    c.instruct.prompt_template, c.instruct.response_template, c.instruct.response_names = "{text}", "{label}", []
    c.instruct.max_distinct = 1  # no exact-match generation: this test is about the encoding (generation: above)
    rep = loop.run(c, tmp_path / "run")
    assert rep["completed"] and rep["task_kind"] == "instruct"
    r = loop.prepare(c, tmp_path / "again")[0]
    assert sorted(r.task.label_names) == ["2", "5 stars"]  # strings, not label ids
    enc = r.enc["train"]
    for ids, mask in list(zip(enc.ids, enc.loss_masks))[:20]:
        prompt = r.tokenizer.decode(ids[mask == 0]).strip()  # long prompts lose tokens from their start
        response = r.tokenizer.decode(ids[mask == 1], skip_special_tokens=True)
        (row,) = [x for x in rows if x["prompt"].strip().endswith(prompt)]
        assert response == row["response"]  # the loss covers exactly the file's response (and the end token)


def test_bad_lm_input_is_refused_by_name_and_leaves_no_run_directory(tiny_lm_dir, rt_file, pairs_file, tmp_path):
    from transformers import AutoTokenizer

    from adapters_jax.errors import ConfigError, DataError

    path, rows = pairs_file
    c = lm_config(tiny_lm_dir, path, "lm", "lora[r=4]", steps=2)
    c.task_kwargs.split_column, c.task_kwargs.label_names = None, None
    c.task_kwargs.text_column, c.task_kwargs.response_column = "prompt", "response"
    with pytest.raises(ConfigError, match="response_column.*instruct"):
        loop.run(c, tmp_path / "a")
    bad = tmp_path / "empty_response.jsonl"
    bad.write_text("\n".join(json.dumps({**r, "response": "  " if i == 3 else r["response"]})
                             for i, r in enumerate(rows)))
    c.task, c.task_kind = str(bad), "instruct"
    with pytest.raises(DataError, match="empty responses.*rows \\[3\\]"):
        loop.run(c, tmp_path / "b")
    c = lm_config(tiny_lm_dir, rt_file, "instruct", "lora[r=4]", steps=2)
    c.instruct.response_template = " positive"
    with pytest.raises(DataError, match="response template.*does not contain \\{label\\}"):
        loop.run(c, tmp_path / "c")
    assert not any((tmp_path / x).exists() for x in "abc")  # nothing written for a refused run
    tok = AutoTokenizer.from_pretrained(str(tiny_lm_dir))
    tok.pad_token = None
    c.pad_token = ""
    with pytest.raises(ConfigError, match="no pad token.*pad_token='<\\|im_end\\|>'"):
        loop.pad_token_id(c, tok)
    c.pad_token = tok.eos_token
    assert loop.pad_token_id(c, tok) == tok.eos_token_id
    c.pad_token = "<no such token>"
    with pytest.raises(ConfigError, match="not a token"):
        loop.pad_token_id(c, tok)
