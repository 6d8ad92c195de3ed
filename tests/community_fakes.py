"""Tiny community checkpoints, made the way their projects make them, for the import tests.

task_vectors pickles whole ``src.modeling.ImageEncoder`` objects (open_clip's CLIP with the text
transformer deleted) and ``ClassificationHead(nn.Linear)`` heads with the logit scale folded in; TALL
masks saves the same encoder's state dict; Hugging Face saves ``CLIPModel``/``CLIPVisionModel`` folders.
The classes below get the names those files carry, so the pickles name the same globals.
"""

from __future__ import annotations

import pickle
import sys
import types
from pathlib import Path

import torch
import torch.nn.functional as F

from mergeflow import _torchvision_compat  # noqa: F401  (before open_clip)

ARCH = "mf-vit-micro"


class ImageEncoder(torch.nn.Module):
    """task_vectors' ``src.modeling.ImageEncoder``: a CLIP without its text transformer."""

    def __init__(self, model, preprocess=None):
        super().__init__()
        self.model = model
        self.train_preprocess = preprocess
        self.val_preprocess = preprocess
        self.cache_dir = None
        if hasattr(self.model, "transformer"):
            delattr(self.model, "transformer")

    def forward(self, images):
        return self.model.encode_image(images)


class ClassificationHead(torch.nn.Linear):
    """task_vectors' ``src.modeling.ClassificationHead``: the logit scale is already in ``weight``."""

    def __init__(self, normalize, weights):
        out, width = weights.shape
        super().__init__(width, out)
        self.normalize = normalize
        self.weight = torch.nn.Parameter(weights.clone())
        self.bias = torch.nn.Parameter(torch.zeros_like(self.bias))

    def forward(self, features):
        if self.normalize:
            features = F.normalize(features, dim=-1)
        return super().forward(features)


def _install_src_modeling() -> None:
    """Make the classes picklable as ``src.modeling.*`` (pickle checks that the name resolves)."""
    if "src.modeling" not in sys.modules:
        sys.modules.setdefault("src", types.ModuleType("src"))
        sys.modules["src.modeling"] = types.ModuleType("src.modeling")
    for cls in (ImageEncoder, ClassificationHead):
        cls.__module__ = "src.modeling"
        setattr(sys.modules["src.modeling"], cls.__name__, cls)


def clip(seed: int = 0, quick_gelu: bool = False):
    from mergeflow.models import create_model

    return create_model(ARCH, None, seed=seed, quick_gelu=quick_gelu or None)


def perturb(encoder: ImageEncoder, seed: int, scale: float = 0.02) -> ImageEncoder:
    """A copy of ``encoder`` with its image tower moved a little (an 'expert')."""
    import copy

    out = copy.deepcopy(encoder)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in out.model.visual.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return out


def head(n_classes: int, width: int, seed: int, scale: float = 100.0) -> ClassificationHead:
    g = torch.Generator().manual_seed(seed)
    return ClassificationHead(True, scale * F.normalize(torch.randn(n_classes, width, generator=g), dim=-1))


def save(obj, path: Path, container: str = "zip") -> Path:
    """``torch.save`` in the zip or legacy format, or a raw ``pickle.dump``."""
    _install_src_modeling()
    path.parent.mkdir(parents=True, exist_ok=True)
    if container == "zip":
        torch.save(obj, path)
    elif container == "legacy":
        torch.save(obj, path, _use_new_zipfile_serialization=False)
    else:
        with open(path, "wb") as f:
            pickle.dump(obj, f)
    return path


def task_vectors_folder(root: Path, tasks: dict[str, int], container: str = "zip", quick_gelu: bool = False):
    """``root/zeroshot.pt``, ``root/<task>/finetuned.pt``, ``root/head_<task>.pt``; the source models."""
    base = ImageEncoder(clip(0, quick_gelu))
    save(base, root / "zeroshot.pt", container)
    experts, heads = {}, {}
    for i, (task, n) in enumerate(tasks.items()):
        experts[task] = perturb(base, seed=10 + i)
        save(experts[task], root / task / "finetuned.pt", container)
        heads[task] = head(n, base.model.visual.output_dim, seed=20 + i)
        save(heads[task], root / f"head_{task}.pt", container)
    return base, experts, heads


def tall_masks_folder(root: Path, tasks: dict[str, int]):
    """TALL masks' layout: state dicts of the encoder, ``<Dataset>Val`` folders."""
    base = ImageEncoder(clip(0, quick_gelu=True))
    save(base.state_dict(), root / "MNISTVal" / "nonlinear_zeroshot.pt")
    experts, heads = {}, {}
    for i, (task, n) in enumerate(tasks.items()):
        experts[task] = perturb(base, seed=30 + i)
        save(experts[task].state_dict(), root / f"{task}Val" / "nonlinear_finetuned.pt")
        heads[task] = head(n, base.model.visual.output_dim, seed=40 + i)
        save(heads[task], root / f"head_{task}Val.pt")
    return base, experts, heads


def hf_config(act: str = "quick_gelu"):
    """A transformers CLIPConfig with the shapes of ``mf-vit-micro``."""
    from transformers import CLIPConfig

    return CLIPConfig(
        text_config=dict(hidden_size=16, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                         max_position_embeddings=16, vocab_size=49408, hidden_act=act),
        vision_config=dict(hidden_size=32, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                           image_size=16, patch_size=4, hidden_act=act),
        projection_dim=16)
