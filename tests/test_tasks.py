"""Tasks from the real archives, local files, the tokenisation cache, and bad input."""
from __future__ import annotations

import json
import re

import datasets
import numpy as np
import pytest

from adapters_jax.data import tasks, tokenize
from adapters_jax.data.tasks import DataError

# ASSETS.md: counts after the split rule.
COUNTS = {
    "rt_polarity": (10209, 1307, 1236),
    "tweet_sentiment": (29922, 3660, 3615),
    "bbc_news": (1677, 229, 221),
}
LABELS = {
    "rt_polarity": ("rotten", "fresh"),
    "tweet_sentiment": ("negative", "neutral", "positive"),
    "bbc_news": ("business", "entertainment", "politics", "sports", "tech"),
}


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_builtin_task_counts_and_disjoint_splits(name, real_task):
    task = real_task(name)
    assert isinstance(task.splits, datasets.DatasetDict) and task.name == name
    assert tuple(len(task[s]) for s in tasks.SPLITS) == COUNTS[name]
    assert task.label_names == LABELS[name] and task.num_labels == len(LABELS[name])
    assert task["train"].features["label"].names == list(LABELS[name])
    seen = {}
    for split in tasks.SPLITS:
        texts = task[split]["text"]
        assert len(set(texts)) == len(texts)
        for t in texts:
            assert seen.setdefault(t, split) == split, f"text in two splits: {t[:60]!r}"
            assert t == t.strip()
    sample = task["validation"]["text"][:50]
    assert all(tasks.split_of(t) == "validation" for t in sample)


def test_label_totals_match_assets_md(real_task):
    tweet = real_task("tweet_sentiment")
    totals = np.bincount(np.concatenate([tweet[s]["label"] for s in tasks.SPLITS]), minlength=3)
    assert totals.tolist() == [15955, 14431, 6811]
    rt = real_task("rt_polarity")
    fresh = np.mean(np.concatenate([rt[s]["label"] for s in tasks.SPLITS]))
    assert round(float(fresh), 2) == 0.58
    bbc = real_task("bbc_news")
    assert any("\u00a315.8m" in t for t in bbc["train"]["text"])  # the one cp1252 article, read as such


def _rows(task, n_per_split):
    rows = []
    for split in tasks.SPLITS:
        d = task[split][:n_per_split]
        rows += [{"review": t, "sentiment": task.label_names[l], "part": split} for t, l in zip(d["text"], d["label"])]
    return rows


def test_local_csv_with_split_column_matches_builtin_structure(real_task, tmp_path):
    import pandas as pd

    rt = real_task("rt_polarity")
    rows = _rows(rt, 40)
    rows[3]["part"] = "dev"  # an alias of validation
    path = tmp_path / "reviews.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    task = tasks.load(str(path), text_column="review", label_column="sentiment", split_column="part",
                      label_names=["rotten", "fresh"])
    assert isinstance(task, tasks.Task) and task.name == "reviews"
    assert task.splits["train"].features == rt.splits["train"].features
    assert task.label_names == rt.label_names
    assert [len(task[s]) for s in tasks.SPLITS] == [39, 41, 40]
    assert task["test"]["text"] == rt["test"]["text"][:40]
    assert task["test"]["label"] == rt["test"]["label"][:40]


def test_local_file_without_split_column_uses_the_hash_rule(real_task, tmp_path):
    rt = real_task("rt_polarity")
    rows = [{"text": " " + r["review"] + " ", "label": r["sentiment"]} for r in _rows(rt, 10**6)]
    path = tmp_path / "all.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = tasks.load_local(path, label_names=rt.label_names)
    assert [len(task[s]) for s in tasks.SPLITS] == list(COUNTS["rt_polarity"])
    for split in tasks.SPLITS:
        assert sorted(zip(task[split]["text"], task[split]["label"])) == sorted(zip(rt[split]["text"], rt[split]["label"]))


def test_local_parquet_with_integer_labels(tmp_path):
    import pandas as pd

    texts = [f"example number {i}" for i in range(300)]
    pd.DataFrame({"text": texts, "label": [i % 3 for i in range(300)]}).to_parquet(tmp_path / "d.parquet")
    task = tasks.load(str(tmp_path / "d.parquet"))
    assert task.label_names == ("0", "1", "2") and sum(len(task[s]) for s in tasks.SPLITS) == 300


@pytest.fixture
def csv_file(tmp_path):
    def write(rows, name="data.csv"):
        import pandas as pd

        path = tmp_path / name
        pd.DataFrame(rows).to_csv(path, index=False)
        return path

    return write


def _many(n=60, label=lambda i: ["neg", "pos"][i % 2], split=lambda i: ["train", "validation", "test"][i % 3]):
    return [{"text": f"text {i}", "label": label(i), "split": split(i)} for i in range(n)]


def test_bad_input_missing_file(tmp_path):
    with pytest.raises(DataError, match=f"{tmp_path / 'nope.csv'}: no such file"):
        tasks.load(str(tmp_path / "nope.csv"))


def test_bad_input_absent_columns(csv_file):
    path = csv_file(_many())
    with pytest.raises(DataError, match=rf"{path}: no column 'review' \(text_column\); columns: \['text', 'label', 'split'\]"):
        tasks.load_local(path, text_column="review")
    with pytest.raises(DataError, match=rf"{path}: no column 'stars' \(label_column\)"):
        tasks.load_local(path, label_column="stars")
    with pytest.raises(DataError, match=rf"{path}: no column 'fold' \(split_column\)"):
        tasks.load_local(path, split_column="fold")


def test_bad_input_labels_outside_declared_names(csv_file):
    rows = _many()
    rows[7]["label"] = "maybe"
    path = csv_file(rows)
    with pytest.raises(DataError, match=rf"{path} label column: 1 labels outside the declared names \['neg', 'pos'\]: 'maybe'"):
        tasks.load_local(path, split_column="split", label_names=["neg", "pos"])
    ints = csv_file(_many(label=lambda i: i % 3), "ints.csv")
    with pytest.raises(DataError, match=r"labels outside the declared names \['neg', 'pos'\]: '2'"):
        tasks.load_local(ints, split_column="split", label_names=["neg", "pos"])


def test_bad_input_empty_split(csv_file):
    path = csv_file(_many(split=lambda i: ["train", "test"][i % 2]))
    with pytest.raises(DataError, match=rf"{path} split column: split 'validation' is empty"):
        tasks.load_local(path, split_column="split")
    weird = csv_file(_many(split=lambda i: ["train", "holdout", "test"][i % 3]), "weird.csv")
    with pytest.raises(DataError, match=r"values \['holdout'\] are not train/validation/test"):
        tasks.load_local(weird, split_column="split")
    tiny = csv_file(_many(n=3), "tiny.csv")
    with pytest.raises(DataError, match=r"tiny.csv \(hash split\): split '(train|validation|test)' is empty"):
        tasks.load_local(tiny)


def test_unknown_task_name_says_what_is_known(monkeypatch):
    monkeypatch.setattr(tasks.assets, "hub_reachable", lambda: False)
    with pytest.raises(DataError, match="not a built-in task \\(bbc_news, rt_polarity, tweet_sentiment\\).*not reachable"):
        tasks.load("glue/sst2")


def test_tokenisation_matches_tokenizer_and_is_cached(real_task, minilm_tokenizer, tmp_path, monkeypatch):
    monkeypatch.setenv("ADAPTERS_JAX_CACHE", str(tmp_path))
    task = real_task("rt_polarity")
    enc = tokenize.encode_task(task, minilm_tokenizer, max_length=64)
    assert [len(enc[s]) for s in tasks.SPLITS] == list(COUNTS["rt_polarity"])
    texts = task["test"]["text"][:32]
    ref = minilm_tokenizer(texts, truncation=True, max_length=64, padding=False)["input_ids"]
    assert [x.tolist() for x in enc["test"].ids[:32]] == ref  # MiniLM's tokenizer.json pads to 128: not here
    assert enc["train"].lengths.max() <= 64 and enc["train"].labels.tolist() == task["train"]["label"]
    files = sorted(p.name for p in tokenize.cache_dir(task, minilm_tokenizer, 64).iterdir())
    assert files == ["test.npz", "train.npz", "validation.npz"]

    monkeypatch.setattr(tokenize, "encode_texts", lambda *a: pytest.fail("tokenised again"))
    again = tokenize.encode_task(task, minilm_tokenizer, max_length=64)
    assert np.array_equal(again["train"].flat, enc["train"].flat)
    assert tokenize.cache_dir(task, minilm_tokenizer, 32) != tokenize.cache_dir(task, minilm_tokenizer, 64)


def test_data_script_prints_counts_and_lengths(asset_path):
    import subprocess
    import sys
    from pathlib import Path

    asset_path("bbc_news")
    script = Path(__file__).resolve().parents[1] / "scripts" / "data.py"
    out = subprocess.run([sys.executable, str(script), "bbc_news", "--tokenizer", "none"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert re.search(r"^train\s+1677\s", out.stdout, re.M) and "sports" in out.stdout and "p99" in out.stdout
    bad = subprocess.run([sys.executable, str(script), "missing.csv"], capture_output=True, text=True)
    assert bad.returncode == 1 and "missing.csv: no such file" in bad.stderr
