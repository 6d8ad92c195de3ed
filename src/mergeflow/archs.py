"""Which architecture names exist, answered without importing torch or open_clip.

An architecture is a JSON config: ours in ``mergeflow/models/configs/``, open_clip's bundled with it. The
configuration check (every stage's first step, and Snakemake's) asks here, so that a mistyped
``model.arch`` stops the run before its first stage rather than at the first stage that builds a model.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

OURS = Path(__file__).parent / "models" / "configs"


def config_file(arch: str) -> Path | None:
    """The JSON config of ``arch`` (ours, or open_clip's bundled one); None when no such architecture."""
    if not arch or "/" in arch or "\\" in arch:
        return None
    ours = OURS / f"{arch}.json"
    if ours.is_file():
        return ours
    spec = importlib.util.find_spec("open_clip")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(folder) / "model_configs" / f"{arch}.json"
        if candidate.is_file():
            return candidate
    return None
