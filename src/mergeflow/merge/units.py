"""How parameters of an open_clip ``VisionTransformer`` map to units (algorithms.md §1).

Linear units have a ``(d_out, d_in)`` view in PyTorch layout; ``proj`` is stored input-major and
``conv1`` is a linear map on unfolded patches, so both get reshaped views. Anything 1-D that is a bias,
``in_proj_bias`` or ``class_embedding`` is a shift unit; LayerNorm weights are scale units.
"""

from __future__ import annotations

import re

import torch

_LINEAR = re.compile(r"(attn\.in_proj_weight|attn\.out_proj\.weight|mlp\.c_fc\.weight|mlp\.c_proj\.weight)$")
_LN = re.compile(r"(^|\.)(ln_pre|ln_post|ln_1|ln_2)\.weight$")
_SHIFT = re.compile(r"(\.bias$|^bias$|in_proj_bias$|(^|\.)class_embedding$)")


def is_linear(key: str, extra: tuple[str, ...] = ()) -> bool:
    """A linear unit: the transformer's four matrices, plus ``conv1``/``proj`` when listed in ``extra``."""
    return bool(_LINEAR.search(key)) or ("conv1" in extra and key.endswith("conv1.weight")) or (
        "proj" in extra and key.split(".")[-1] == "proj")


def is_layernorm(key: str) -> bool:
    return bool(_LN.search(key))


def is_shift(key: str) -> bool:
    return bool(_SHIFT.search(key))


def as_matrix(key: str, tensor: torch.Tensor) -> torch.Tensor:
    """The ``(d_out, d_in)`` view of a linear unit's weight (a copy only for ``proj``)."""
    if key.split(".")[-1] == "proj":
        return tensor.t()
    return tensor.reshape(tensor.shape[0], -1)


def from_matrix(key: str, matrix: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Undo :func:`as_matrix`."""
    if key.split(".")[-1] == "proj":
        return matrix.t().contiguous()
    return matrix.reshape(like.shape)


def row_blocks(key: str, d_out: int, split_qkv: bool) -> list[slice]:
    """Row blocks that are separate units: q, k, v of ``in_proj_weight`` when split, else one block."""
    if split_qkv and key.endswith("in_proj_weight") and d_out % 3 == 0:
        w = d_out // 3
        return [slice(0, w), slice(w, 2 * w), slice(2 * w, 3 * w)]
    return [slice(0, d_out)]
