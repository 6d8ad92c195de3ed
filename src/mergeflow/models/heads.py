"""Zero-shot heads from the text tower: class names × templates, encoded and averaged."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from mergeflow.models.factory import _open_clip


@torch.inference_mode()
def zeroshot_head(model, arch: str, classnames: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
    """``(classes, embed)``: each name in each template, encoded, normalised, averaged, normalised again."""
    tokenizer = _open_clip().get_tokenizer(arch)
    rows = []
    for name in classnames:
        tokens = tokenizer([t.format(name) for t in templates])
        emb = F.normalize(model.encode_text(tokens).float(), dim=-1)
        rows.append(F.normalize(emb.mean(0), dim=-1))
    return torch.stack(rows)
