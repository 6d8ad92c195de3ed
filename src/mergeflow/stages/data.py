"""Data stages: raw data per task, prepared splits, exemplar indices."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from mergeflow import paths
from mergeflow.config import Config
from mergeflow.data import get_task
from mergeflow.data.prepared import prepare_task
from mergeflow.features.exemplars import sample_exemplars
from mergeflow.io import read_json, replace_dir, write_json
from mergeflow.models.factory import image_size
from mergeflow.workers import cpu_cores, run_jobs


def fetch(cfg: Config, task: str) -> Path:
    """Put ``task``'s raw data under ``<data.raw_dir>/<task>/`` (generate, download, or check it is there)."""
    spec = get_task(task)
    target = Path(cfg.data.raw_dir) / task
    options = {**cfg.data.generate.to_dict(), "download": cfg.data.download}
    if spec.kind == "real":
        if not cfg.data.download:
            spec.load(target, "test")  # raises with the expected layout when absent
            return target
        spec.fetch(target, options)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{task}.", dir=target.parent))
    try:
        spec.fetch(tmp, options)
        replace_dir(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def fetch_tasks(cfg: Config, tasks: list[str]) -> list[Path]:
    """:func:`fetch` every task, side by side in worker processes (generating or downloading a task is
    single-threaded work that takes seconds)."""
    return run_jobs(_fetch_job, [(cfg.raw, cfg.source, task) for task in tasks], min(len(tasks), cpu_cores()))


def _fetch_job(raw: dict, source: str, task: str) -> Path:
    return fetch(Config(raw, source), task)


def prepare(cfg: Config, task: str) -> Path:
    """Decode, resize and store the train/val/test splits of ``task`` at the model's image size."""
    get_task(task)
    target = paths.prepared(task)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{task}.", dir=target.parent))
    try:
        prepare_task(task, Path(cfg.data.raw_dir), image_size(cfg.model.arch), tmp, val_fraction=cfg.data.val_fraction,
                     max_val=cfg.data.max_val, split_seed=cfg.data.split_seed)
        replace_dir(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def exemplars(cfg: Config, task: str, seed: int | None = None) -> Path:
    """``data/exemplars/<task>.json``: a seeded list of ``exemplars.pool`` train indices."""
    seed = cfg.exemplars.seed if seed is None else seed
    manifest = read_json(paths.prepared(task) / "manifest.json")
    n_train = manifest["splits"]["train"]["count"]
    indices = sample_exemplars(n_train, cfg.exemplars.pool, seed)
    out = paths.exemplars(task) if seed == cfg.exemplars.seed else paths.EXEMPLARS / f"{task}.seed{seed}.json"
    write_json(out, {"task": task, "seed": seed, "count": len(indices), "split": "train",
                     "split_index_hash": manifest["splits"]["train"]["index_hash"], "indices": indices})
    return out

