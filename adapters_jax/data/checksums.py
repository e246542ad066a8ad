"""Hashing an asset's files and checking them against the catalog's pins.

`check_dir(asset, root)` re-hashes what `root` holds and raises `AssetError`
naming the first file whose bytes differ (for a `Tree`, the files that differ,
when the folder's own SHA256SUMS is intact). `hash_cached` memoises a file's
hash by (inode, size, mtime) within the process, so a test suite that fetches
the same 90 MB model many times hashes it once.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

from adapters_jax.data.catalog import Asset, Tree
from adapters_jax.errors import AssetError

SUMS = "SHA256SUMS"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def sums_text(listing: dict[str, str]) -> str:
    """`sha256sum` format, sorted by path."""
    return "".join(f"{digest}  {rel}\n" for rel, digest in sorted(listing.items()))


def tree_files(root: Path, tree: Tree) -> list[str]:
    base = root / tree.folder
    if not base.is_dir():
        return []
    return sorted(p.relative_to(root).as_posix() for p in base.rglob("*") if p.is_file() and p.name.endswith(tree.suffix))


def mismatch(asset: Asset, what: str, expected: str, got: str, action: str = "") -> AssetError:
    return AssetError(f"{asset.name}: {what} has sha256 {got}, expected {expected}{action}")


# In-process memo: a file already hashed, unchanged since (inode, size, mtime), is not re-read.
_checked: dict[str, tuple] = {}


def hash_cached(path: Path) -> str:
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
    hasher = hash_cached if memo else sha256_file
    listing = {}
    for rel, expected in asset.files:
        p = root / rel
        if not p.is_file():
            raise AssetError(f"{asset.name}: missing file {p}")
        got = hasher(p)
        if got != expected:
            raise mismatch(asset, str(p), expected, got)
        listing[rel] = got
    if asset.tree is not None:
        tree = asset.tree
        found = {rel: hasher(root / rel) for rel in tree_files(root, tree)}
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
        want = dict(line.split("  ", 1)[::-1] for line in text.splitlines() if "  " in line)
        want = {k: v for k, v in want.items() if k.startswith(tree.folder + "/")}
        if hashlib.sha256(sums_text(want).encode()).hexdigest() == tree.sha256:
            bad = [f"{root / k}: sha256 {found[k]}, expected {v}" for k, v in want.items() if k in found and found[k] != v]
            bad += [f"{root / k}: missing" for k in want if k not in found]
            bad += [f"{root / k}: unexpected" for k in found if k not in want]
            msg += "; " + "; ".join(bad[:5])
    return msg
