"""A dataset of uint8 images held in memory, served as ``(PIL.Image, int)``."""

from __future__ import annotations

import torch
from PIL import Image
from torch.utils.data import Dataset


class TensorImageDataset(Dataset):
    """Images ``(N, H, W, 3)`` uint8 and labels ``(N,)``, returned as PIL RGB images and ints."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != torch.uint8:
            raise ValueError(f"images must be uint8 (N, H, W, 3), got {images.dtype} {tuple(images.shape)}")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = labels.long()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        return Image.fromarray(self.images[index].numpy(), mode="RGB"), int(self.labels[index])
