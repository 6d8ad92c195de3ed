"""Prepared splits: decoded, resized uint8 tensors + labels, so later stages never decode images again.

``data/prepared/<task>/{train,val,test}.safetensors`` hold ``images`` (N, 3, S, S) uint8 and ``labels``
(N,) int64 at the configured model's image size; ``manifest.json`` records, per split, the sample count,
a hash of the index list it came from and the file's hash, plus the class names and templates.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from mergeflow import paths
from mergeflow.data.registry import SPLITS, get_task, load_split
from mergeflow.errors import MergeflowError
from mergeflow.io import hash_file, hash_tensor, load_tensors, read_json, save_tensors, write_json


def resize_center_crop(img: Image.Image, size: int) -> np.ndarray:
    """CLIP's preprocessing geometry: bicubic resize of the shorter side to ``size``, centre crop; (3, S, S)."""
    img = img.convert("RGB")
    w, h = img.size
    if (w, h) != (size, size):
        scale = size / min(w, h)
        img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.Resampling.BICUBIC)
        w, h = img.size
        left, top = (w - size) // 2, (h - size) // 2
        img = img.crop((left, top, left + size, top + size))
    return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)


def _indices(dataset) -> torch.Tensor:
    return torch.as_tensor(getattr(dataset, "indices", range(len(dataset))), dtype=torch.int64)


def prepare_task(task: str, raw_root: Path, size: int, out_dir: Path | None = None, *, val_fraction: float = 0.1,
                 max_val: int = 5000, split_seed: int = 0) -> dict:
    """Write the three prepared splits and the manifest of ``task``; returns the manifest."""
    spec = get_task(task)
    out_dir = Path(out_dir or paths.prepared(task))
    manifest = {"task": task, "image_size": size, "templates": list(spec.templates), "splits": {}}
    for split in SPLITS:
        ds = load_split(task, split, raw_root, val_fraction=val_fraction, max_val=max_val, seed=split_seed)
        if len(ds) == 0:
            raise MergeflowError(f"{raw_root}/{task}: the {split} split is empty")
        images = np.empty((len(ds), 3, size, size), np.uint8)
        labels = np.empty(len(ds), np.int64)
        for i in tqdm(range(len(ds)), desc=f"prepare {task}/{split}", leave=False, mininterval=2.0):
            img, label = ds[i]
            images[i] = resize_center_crop(img, size)
            labels[i] = label
        manifest["classnames"] = ds.classnames
        n_classes = len(ds.classnames)
        if labels.min() < 0 or labels.max() >= n_classes:
            raise MergeflowError(f"{raw_root}/{task}: {split} labels outside [0, {n_classes})")
        file = out_dir / f"{split}.safetensors"
        save_tensors(file, {"images": torch.from_numpy(images), "labels": torch.from_numpy(labels)})
        manifest["splits"][split] = {"count": int(len(labels)), "index_hash": hash_tensor(_indices(ds)),
                                     "file_sha256": hash_file(file)}
    write_json(out_dir / "manifest.json", manifest)
    return manifest


def load_prepared(task: str, split: str, root: Path | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images uint8 (N,3,S,S), labels int64 (N,))`` of a prepared split, checked for shape and consistency."""
    file = (Path(root) / task / f"{split}.safetensors") if root else paths.prepared(task, split)
    tensors = load_tensors(file)
    images, labels = tensors.get("images"), tensors.get("labels")
    if images is None or labels is None or images.ndim != 4 or images.shape[1] != 3 or images.dtype != torch.uint8 \
            or labels.shape != (images.shape[0],):
        raise MergeflowError(f"{file}: not a prepared split (expected uint8 'images' N×3×S×S and 'labels' N); "
                             f"rerun `mergeflow prepare --task {task}`")
    return images, labels


def classnames(task: str, root: Path | None = None) -> list[str]:
    """Class names recorded by ``prepare`` (they may come from the dataset itself)."""
    folder = Path(root) / task if root else paths.prepared(task)
    return list(read_json(folder / "manifest.json")["classnames"])
