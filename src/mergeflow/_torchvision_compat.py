"""Make ``import torchvision`` work on a CPU-only torch build.

Why this exists: the only ``torchvision==0.28.0`` wheel on PyPI is a CUDA build. Paired with the CPU
wheel of ``torch==2.13.0`` its compiled extension cannot load, so the ``torchvision::nms`` operator is
never defined, and ``torchvision/_meta_registrations.py`` then fails at import time with
"operator torchvision::nms does not exist" while registering fake kernels for it. open_clip imports
torchvision, so without this nothing of ours could build a model.

The fix defines the missing operator *schemas* (no kernels: calling them still raises) before the first
torchvision import, and only when the extension really cannot load. On a CUDA torch, where the extension
loads and defines the operators itself, this module does nothing. Import it before torchvision:
``from mergeflow import _torchvision_compat  # noqa: F401``.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch

_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_library = None  # kept alive: dropping the Library object would unregister the schemas


def _extension_loads() -> bool:
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return True  # no torchvision at all: nothing to patch
    for location in spec.submodule_search_locations:
        for lib in Path(location).glob("_C*.so"):
            try:
                torch.ops.load_library(str(lib))
                return True
            except (OSError, RuntimeError):
                return False
    return False


def _define_missing_schemas() -> None:
    global _library
    if "torchvision" in sys.modules:
        return  # already imported (successfully, or the caller dealt with it)
    if _extension_loads():
        return
    missing = {name: schema for name, schema in _SCHEMAS.items() if not _op_exists(name)}
    if missing:
        _library = torch.library.Library("torchvision", "DEF")  # noqa: TOR901 - schemas only
        for schema in missing.values():
            _library.define(schema)


def _op_exists(name: str) -> bool:
    try:
        torch._C._dispatch_find_schema_or_throw(f"torchvision::{name}", "")
        return True
    except RuntimeError:
        return False


_define_missing_schemas()
