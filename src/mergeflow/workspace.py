"""Paths from the configuration: where they may point, and which the pipeline owns.

Two rules keep a run from touching what it did not make. The pipeline writes only inside the workspace
(the folder of ``params.yaml``; ``data.raw_dir`` is its own folder of raw data, whose ``<task>/``
sub-folders ``fetch`` replaces). Paths it only reads (your dataset copies in ``data.local_dir``, community
checkpoints in ``model.import.root``, a ``model.pretrained`` checkpoint) stay inside the workspace too,
unless the configuration names an absolute path: then it is your explicit choice, and the engines track
it as a dependency like any other input. A relative path that climbs out (``..``) is refused either way.
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath

from mergeflow.errors import MergeflowError

# Characters that mean something to a shell or to DVC's ${...} interpolation; paths of the configuration
# never need them, and refusing them keeps every path a plain word wherever it is written.
_UNSAFE = re.compile(r"[\x00-\x1f\x7f$`\"'\\;&|<>(){}\[\]*?!~#%]")
# The marker that fetch writes into each <raw_dir>/<task>/ it makes: a folder without it is not replaced.
FETCH_MARKER = ".mergeflow-fetch.json"


def check_path(key: str, value: str, source: str, *, absolute_ok: bool) -> None:
    """Refuse a configured path that climbs out of the workspace, holds shell characters, or is absolute
    where only a workspace folder makes sense."""
    if not value or not value.strip():
        raise MergeflowError(f"{source}: {key} = {value!r}: must be a non-empty path")
    bad = _UNSAFE.search(value)
    if bad:
        raise MergeflowError(f"{source}: {key} = {value!r}: the character {bad.group()!r} is not allowed in a "
                             "path (no shell or interpolation characters)")
    path = PurePosixPath(value)
    if path.is_absolute():
        if not absolute_ok:
            raise MergeflowError(f"{source}: {key} = {value!r}: must be a folder inside the workspace (a relative "
                                 "path): the pipeline writes and replaces what is there")
        return
    if ".." in path.parts:
        raise MergeflowError(f"{source}: {key} = {value!r}: a relative path may not leave the workspace ('..'); "
                             + ("write an absolute path to read from elsewhere" if absolute_ok else
                                "the pipeline writes and replaces what is there"))


def overlaps(a: str, b: str) -> bool:
    """Whether one of two folders is the other or lies inside it (lexically, after normalisation)."""
    pa, pb = Path(a).absolute(), Path(b).absolute()
    pa, pb = Path(*_normal(pa.parts)), Path(*_normal(pb.parts))
    return pa == pb or pa in pb.parents or pb in pa.parents


def _normal(parts: tuple[str, ...]) -> list[str]:
    out: list[str] = []
    for part in parts:
        if part == "..":
            if len(out) > 1:
                out.pop()
        elif part != ".":
            out.append(part)
    return out


def is_path_like(value: str) -> bool:
    """Whether ``model.pretrained`` names a checkpoint file rather than a tag."""
    return "/" in value or "\\" in value or value.endswith((".safetensors", ".pt", ".pth", ".bin"))
