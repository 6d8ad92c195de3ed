"""Prepared splits: decoded, resized uint8 tensors + labels, so later stages never decode images again.

``data/prepared/<task>/{train,val,test}.safetensors`` hold ``images`` (N, 3, S, S) uint8 and ``labels``
(N,) int64 at the configured model's image size; ``manifest.json`` records, per split, the sample count,
a hash of the index list it came from and the file's hash, plus the class names and templates. Splits are
written image by image and read by index (:mod:`mergeflow.data.split_file`): at 224 px one split can be
larger than a machine's memory.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from mergeflow import paths
from mergeflow.data.registry import SPLITS, get_task, load_split
from mergeflow.data.split_file import LazyImages, SplitWriter, open_split
from mergeflow.errors import MergeflowError
from mergeflow.io import check_recorded, hash_file, hash_tensor, read_json, write_json


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


def write_split(dataset, file: Path, size: int, desc: str = "prepare", *, check_labels: int | None = None,
                where: str = "") -> np.ndarray:
    """Resize every ``(PIL image, label)`` of ``dataset`` to ``size`` and stream it into ``file``; the labels.

    One image is in memory at a time. ``check_labels``: the class count labels must stay below.
    """
    writer = SplitWriter(file, len(dataset), size)
    try:
        for i in tqdm(range(len(dataset)), desc=desc, leave=False, mininterval=2.0):
            img, label = dataset[i]
            writer.put(resize_center_crop(img, size), label)
        labels = writer.labels
        if check_labels is not None and len(labels) and (labels.min() < 0 or labels.max() >= check_labels):
            raise MergeflowError(f"{where} labels outside [0, {check_labels})")
    except BaseException:
        writer.abort()
        raise
    return writer.close()


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
        file = out_dir / f"{split}.safetensors"
        labels = write_split(ds, file, size, f"prepare {task}/{split}",
                             check_labels=len(ds.classnames), where=f"{raw_root}/{task}: {split}")
        manifest["classnames"] = ds.classnames
        manifest["splits"][split] = {"count": int(len(labels)), "index_hash": hash_tensor(_indices(ds)),
                                     "file_sha256": hash_file(file)}
    write_json(out_dir / "manifest.json", manifest)
    return manifest


def load_prepared(task: str, split: str, root: Path | None = None) -> tuple[LazyImages, torch.Tensor]:
    """``(images, labels int64 (N,))`` of a prepared split; ``images`` (N,3,S,S) uint8 is read as it is indexed."""
    folder = Path(root) / task if root else paths.prepared(task)
    file = folder / f"{split}.safetensors"
    manifest = folder / "manifest.json"
    recorded = read_json(manifest, {"splits": dict, "classnames": list}) if manifest.is_file() else None
    if recorded is not None:
        entry = recorded["splits"].get(split) or {}
        check_recorded(file, entry.get("file_sha256"), manifest, f"rerun `mergeflow prepare --task {task}`")
    try:
        images, labels = open_split(file)
    except MergeflowError as exc:
        if "not a prepared split" in str(exc):
            raise MergeflowError(f"{exc}; rerun `mergeflow prepare --task {task}`") from None
        raise
    n_classes = len(recorded["classnames"]) if recorded is not None else None
    if n_classes and len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= n_classes):
        raise MergeflowError(f"{file}: labels outside [0, {n_classes}) (the task's classes); rerun "
                             f"`mergeflow prepare --task {task}`")
    return images, labels


def classnames(task: str, root: Path | None = None) -> list[str]:
    """Class names recorded by ``prepare`` (they may come from the dataset itself)."""
    folder = Path(root) / task if root else paths.prepared(task)
    return list(read_json(folder / "manifest.json")["classnames"])
