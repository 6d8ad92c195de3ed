"""The classifier of the task-arithmetic literature: image encoder → L2-normalised features → frozen head."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mergeflow.errors import MergeflowError

# CLIP's normalisation constants (open_clip.constants.OPENAI_DATASET_MEAN/STD)
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


def normalize_images(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``(N, 3, H, W)`` → float, CLIP-normalised."""
    x = images.float().div_(255.0)
    mean = torch.tensor(MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


class ImageClassifier(nn.Module):
    """``logits = scale · normalize(visual(x)) @ headᵀ`` with ``head`` (classes × embed) frozen."""

    def __init__(self, visual: nn.Module, head: torch.Tensor, logit_scale: float = 100.0):
        super().__init__()
        self.visual = visual
        self.register_buffer("head", head.detach().clone())
        self.logit_scale = float(logit_scale)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = F.normalize(self.visual(images), dim=-1)
        return self.logit_scale * features @ self.head.t()


def check_head(head: torch.Tensor, n_classes: int, source: str) -> None:
    if head.ndim != 2 or head.shape[0] != n_classes:
        raise MergeflowError(f"{source}: head has {head.shape[0] if head.ndim else '?'} classes but the dataset has "
                             f"{n_classes}; rebuild it with `mergeflow heads`")
