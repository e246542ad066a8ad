"""Tasks from the real archives, local files, the tokenisation cache, and bad input."""
from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import datasets
import numpy as np
import pytest

from adapters_jax.data import tasks, tokenize
from adapters_jax.data.tasks import DataError

ROOT = Path(__file__).resolve().parents[1]
# docs/assets.md: counts after the split rule (test_docs_state_these_counts holds the doc to them).
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


def test_docs_state_these_counts(real_task):
    doc = (ROOT / "docs" / "assets.md").read_text()
    for name, counts in COUNTS.items():
        stated = re.findall(rf"`{name}`.*train ([\d,]+) / validation ([\d,]+) / test ([\d,]+)", doc)
        assert [tuple(int(n.replace(",", "")) for n in row) for row in stated] == [counts], name
    rt = real_task("rt_polarity")  # the rule recorded on the task: what a run's report states
    assert rt.split_rule.startswith("sha1 rule (docs/assets.md)") and "1 validation" in rt.split_rule
    assert rt.split_rule.endswith(": train 10,209 / validation 1,307 / test 1,236")
    assert rt.split_counts == dict(zip(tasks.SPLITS, COUNTS["rt_polarity"]))


def test_alpaca_demo_is_a_prompt_response_task_with_the_documented_counts(real_task):
    t = real_task("alpaca_demo")
    assert tuple(len(t[s]) for s in tasks.SPLITS) == (773, 113, 99) and t.num_labels == 985
    doc = (ROOT / "docs" / "assets.md").read_text()
    assert re.search(r"`alpaca_demo` \| 999 \| 985 \| 0 \| 985 distinct responses \| train 773 / validation 113 / "
                     r"test 99", doc)
    d = t["train"]
    with_input = [x for x in d["text"] if "\n\n" in x]
    assert 0.3 < len(with_input) / len(d) < 0.5  # 412 of 999 rows have an input, after the instruction and a blank line
    assert all(len(t.label_names[y]) > 0 for y in d["label"])


def test_label_totals_match_the_docs(real_task):
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
    path = csv_file(_many(split=lambda i: ["train", "validation"][i % 2]))
    with pytest.raises(DataError, match=rf"{path} split column: split 'test' is empty \(no row says 'test'\)"):
        tasks.load_local(path, split_column="split")
    weird = csv_file(_many(split=lambda i: ["train", "holdout", "test"][i % 3]), "weird.csv")
    with pytest.raises(DataError, match=r"values \['holdout'\] are not train/validation/test"):
        tasks.load_local(weird, split_column="split")
    tiny = csv_file(_many(n=3), "tiny.csv")
    with pytest.raises(DataError, match=r"tiny.csv \(hash split\): split '(train|validation|test)' is empty"):
        tasks.load_local(tiny)


# --- a file with train and test only: validation carved out of train, or none ---

@pytest.fixture(scope="module")
def train_test_file(real_task, tmp_path_factory):
    """rt_polarity rows as a file with train and test only: its "train" rows are 1,000 of the task's
    train and 150 of its validation (so the hash rule's validation bucket is known), in mixed order."""
    import pandas as pd

    rt = real_task("rt_polarity")
    train = [(t, l) for t, l in zip(rt["train"]["text"][:1000], rt["train"]["label"][:1000])]
    val = [(t, l) for t, l in zip(rt["validation"]["text"][:150], rt["validation"]["label"][:150])]
    test = [(t, l) for t, l in zip(rt["test"]["text"][:200], rt["test"]["label"][:200])]
    mixed = [r for pair in zip(train[:150], val) for r in pair] + train[150:]
    rows = [{"review": t, "stars": l, "part": "train"} for t, l in mixed]
    rows += [{"review": t, "stars": l, "part": "test"} for t, l in test]
    path = tmp_path_factory.mktemp("tt") / "reviews.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path, {"train": train, "validation": val, "test": test}


def _pairs(task, split):
    return list(zip(task[split]["text"], task[split]["label"]))


def test_train_and_test_only_file_gets_validation_carved_from_train(train_test_file):
    path, want = train_test_file
    kw = dict(text_column="review", label_column="stars", split_column="part")
    task = tasks.load_local(path, **kw)  # refused before: "split 'validation' is empty"
    assert task.split_counts == {"train": 1000, "validation": 150, "test": 200}
    # The rule: a train row whose sha1(text) % 10 == 1 goes to validation; rows keep the file's order.
    assert _pairs(task, "validation") == want["validation"]
    assert _pairs(task, "train") == want["train"] and _pairs(task, "test") == want["test"]
    assert not set(task["train"]["text"]) & set(task["validation"]["text"])
    assert task.split_rule == ("the split column's train and test; validation carved out of its train rows by "
                               "sha1(text) % 10 == 1 (docs/assets.md): train 1,000 / validation 150 / test 200")
    again = tasks.load_local(path, **kw)
    assert again.fingerprint == task.fingerprint  # deterministic


def test_train_and_test_only_file_without_validation_when_asked(train_test_file, csv_file, minilm_tokenizer):
    path, want = train_test_file
    kw = dict(text_column="review", label_column="stars", split_column="part")
    task = tasks.load_local(path, validation="none", **kw)
    assert task.split_counts == {"train": 1150, "test": 200}
    assert sorted(_pairs(task, "train")) == sorted(want["train"] + want["validation"])
    assert task.split_rule == ("the split column's train and test; no validation (validation='none'): "
                               "train 1,150 / test 200")
    with pytest.raises(DataError, match=r"task reviews has no 'validation' split \(the split column's train and test; no"):
        task["validation"]
    assert sorted(tokenize.encode_task(task, minilm_tokenizer, 32, cache=False)) == ["test", "train"]

    no_column = tasks.load_local(path, text_column="review", label_column="stars", validation="none")
    assert set(no_column.split_counts) == {"train", "test"} and "0 test, else train" in no_column.split_rule
    three = csv_file(_many())
    with pytest.raises(DataError, match=rf"{three} split column: 20 rows say 'validation' but validation='none'"):
        tasks.load_local(three, split_column="split", validation="none")
    with pytest.raises(DataError, match=r"validation='dev'; choose one of \('from_train', 'none'\)"):
        tasks.load_local(three, split_column="split", validation="dev")
    tiny = csv_file(_many(n=6, split=lambda i: ["train", "test"][i % 2]), "tiny_tt.csv")
    with pytest.raises(DataError, match=r"carving them out of the 3 train rows by sha1\(text\) % 10 == 1 leaves "
                                        r"validation empty; add validation rows or pass validation='none'"):
        tasks.load_local(tiny, split_column="split")


def test_file_with_one_split_gets_the_hash_rule(real_task, csv_file):
    rt = real_task("rt_polarity")
    rows = [{"text": t, "label": l, "split": "train"} for s in tasks.SPLITS for t, l in zip(*(rt[s][c][:300] for c in ("text", "label")))]
    task = tasks.load_local(csv_file(rows), split_column="split", label_names=rt.label_names)
    assert task.split_counts == {"train": 300, "validation": 300, "test": 300}  # refused before
    assert task.split_rule.startswith("the split column says only 'train': sha1 rule (docs/assets.md)")
    for split in tasks.SPLITS:
        assert _pairs(task, split) == list(zip(rt[split]["text"][:300], rt[split]["label"][:300]))


def test_hub_set_with_train_and_test_keeps_them_and_carves_validation(real_task, monkeypatch):
    rt = real_task("rt_polarity")
    parts = {"train": (rt["train"][:50], rt["validation"][:10]), "test": (rt["test"][:20],)}

    def fake_load(name, config):
        ds = {s: datasets.Dataset.from_dict({"text": sum((d["text"] for d in p), []), "label": sum((d["label"] for d in p), [])},
                                            features=rt["train"].features) for s, p in parts.items()}
        ds["unsupervised"] = datasets.Dataset.from_dict({"text": ["no label"], "label": [-1]})  # as imdb has
        return datasets.DatasetDict(ds)

    monkeypatch.setattr(tasks.assets, "hub_reachable", lambda: True)
    monkeypatch.setattr(tasks.datasets, "load_dataset", fake_load)
    task = tasks.load("someone/reviews")  # before: pooled with the unsupervised row, refused for its label -1
    assert task.split_counts == {"train": 50, "validation": 10, "test": 20}
    assert task["test"]["text"] == rt["test"]["text"][:20] and task.label_names == rt.label_names
    assert "validation carved out of its train rows" in task.split_rule

    def missing(name, config):
        raise FileNotFoundError(f"Dataset '{name}' doesn't exist on the Hub")

    monkeypatch.setattr(tasks.datasets, "load_dataset", missing)
    with pytest.raises(DataError, match="hub data set someone/nope: cannot load: FileNotFoundError: Dataset"):
        tasks.load("someone/nope")


def test_tokenisation_cache_unreadable_or_unwritable(tmp_path, monkeypatch, minilm_tokenizer):
    task = tasks.from_records("tiny", [f"text number {i}" for i in range(60)], [i % 2 for i in range(60)], None, where="tiny")
    monkeypatch.setenv("ADAPTERS_JAX_CACHE", str(tmp_path / "cache"))
    first = tokenize.encode_task(task, minilm_tokenizer, 16)
    (tokenize.cache_dir(task, minilm_tokenizer, 16) / "train.npz").write_bytes(b"half a file")
    with pytest.warns(UserWarning, match=r"train\.npz: unreadable tokenisation cache .*tokenising again"):
        again = tokenize.encode_task(task, minilm_tokenizer, 16)
    assert np.array_equal(again["train"].flat, first["train"].flat)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # rewritten in place: read without a warning now
        tokenize.encode_task(task, minilm_tokenizer, 16)

    (tmp_path / "file").write_text("")
    monkeypatch.setenv("ADAPTERS_JAX_CACHE", str(tmp_path / "file"))
    with pytest.raises(DataError, match=rf"cannot write the tokenisation cache {tmp_path / 'file'}/tokenized/.*ADAPTERS_JAX_CACHE"):
        tokenize.encode_task(task, minilm_tokenizer, 16)


def test_unknown_task_name_says_what_is_known(monkeypatch):
    monkeypatch.setattr(tasks.assets, "hub_reachable", lambda: False)
    with pytest.raises(DataError, match="not a built-in task \\(alpaca_demo, bbc_news, rt_polarity, tweet_sentiment\\).*not reachable"):
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


def test_data_script_prints_counts_and_lengths(asset_path, csv_file):
    import os
    import subprocess
    import sys

    asset_path("bbc_news")
    script = ROOT / "scripts" / "data.py"
    out = subprocess.run([sys.executable, str(script), "bbc_news", "--tokenizer", "none"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert re.search(r"^train\s+1677\s", out.stdout, re.M) and "sports" in out.stdout and "p99" in out.stdout
    assert "splits: sha1 rule (docs/assets.md)" in out.stdout and "train 1,677 / validation 229 / test 221" in out.stdout
    bad = subprocess.run([sys.executable, str(script), "missing.csv"], capture_output=True, text=True)
    assert bad.returncode == 1 and "missing.csv: no such file" in bad.stderr
    # A tokenizer that cannot be loaded is one error line, not a traceback.
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    bad = subprocess.run([sys.executable, str(script), str(csv_file(_many())), "--tokenizer", "/nonexistent/tok"],
                         capture_output=True, text=True, env=env)
    assert bad.returncode == 1 and "error: /nonexistent/tok: cannot load a tokenizer" in bad.stderr
    assert "Traceback" not in bad.stderr
