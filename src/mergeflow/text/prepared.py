"""Token-sequence prepared splits: one safetensors file per split of a text task.

``input_ids`` (int32) and ``attention_mask`` (uint8), ``(N, max_length)``, ``token_type_ids`` where the
tokenizer sets them, and ``labels`` (int64 class ids, or float32 scores) — or, for a generation task,
``<s> prompt answer </s>`` with ``answer_mask`` on the answer's tokens (:func:`mergeflow.text.causal.encode_answers`,
no ``labels``: the answer is in the sequence); the metadata names the task, the
split and the SHA-256 of the tokenizer, so a split made with another tokenizer is refused. Validation is
carved out of train exactly as for the image tasks (:func:`mergeflow.data.registry.split_indices`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mergeflow.data.registry import split_indices
from mergeflow.errors import MergeflowError
from mergeflow.io import hash_file, load_metadata, load_tensors, save_tensors
from mergeflow.text.causal import encode_answers
from mergeflow.text.tasks import get_text_task
from mergeflow.text.tokenize import encode, load_tokenizer

SPLITS = ("train", "val", "test")


def prepare_text_task(name: str, raw_dir: Path | None, out_dir: Path, tokenizer_file: Path, *, max_length: int,
                      val_fraction: float = 0.1, max_val: int = 5000, seed: int = 0,
                      options: dict | None = None, pad_id: int | None = None,
                      metric: str | None = None) -> dict[str, int]:
    """Tokenise task ``name``'s train and test splits into ``out_dir/{train,val,test}.safetensors``
    (``pad_id``: the model's padding id where the tokenizer has none; ``metric``: the one the run scores the
    task by, recorded). Returns the size of each split."""
    task = get_text_task(name)
    tokenizer = load_tokenizer(tokenizer_file)
    digest = hash_file(tokenizer_file)
    sizes = {}
    for source in ("train",) if task.calibration else ("train", "test"):
        data = task.read(None if raw_dir is None else Path(raw_dir), source, options or {})
        if task.labels is not None and len(data) and int(data.labels.max()) >= len(task.labels):
            raise MergeflowError(f"{name}: label {int(data.labels.max())} outside 0..{len(task.labels) - 1}")
        if task.generative:
            arrays = encode_answers(tokenizer, data.texts_a, list(data.labels), max_length)
        else:
            arrays = encode(tokenizer, data.texts_a, data.texts_b, max_length, pad_id)
            if not task.calibration:  # a calibration text has no target: it only feeds the statistics
                arrays["labels"] = data.labels
        if task.calibration:
            parts = {"train": np.arange(len(data))}
        elif source == "test":
            parts = {"test": np.arange(len(data))}
        else:
            parts = {s: split_indices(len(data), s, val_fraction, max_val, seed).numpy() for s in ("train", "val")}
        for split, index in parts.items():
            tensors = {k: torch.from_numpy(np.ascontiguousarray(v[index])) for k, v in arrays.items()}
            meta = {"task": name, "split": split, "tokenizer_sha256": digest, "max_length": str(max_length),
                    "metric": metric or task.metric}
            save_tensors(Path(out_dir) / f"{split}.safetensors", tensors, meta)
            sizes[split] = len(index)
    return sizes


def load_text_split(folder: Path, split: str, tokenizer_sha256: str | None = None) -> dict[str, np.ndarray]:
    """A prepared split as NumPy arrays; with ``tokenizer_sha256``, refused when made with another tokenizer."""
    if split not in SPLITS:
        raise MergeflowError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    file = Path(folder) / f"{split}.safetensors"
    tensors = load_tensors(file)
    meta = load_metadata(file)
    target = ("answer_mask" if "answer_mask" in tensors else "labels",) if meta.get("metric") != "external" else ()
    for key in ("input_ids", "attention_mask", *target):
        if key not in tensors:
            raise MergeflowError(f"{file}: no {key!r}; not a prepared text split")
    if tokenizer_sha256 is not None and meta.get("tokenizer_sha256") != tokenizer_sha256:
        raise MergeflowError(f"{file}: made with another tokenizer; rerun `mergeflow prepare --task "
                             f"{meta.get('task', Path(folder).name)}`")
    return {k: v.numpy() for k, v in tensors.items()}
