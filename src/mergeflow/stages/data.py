"""Data stages: raw data per task, prepared splits, exemplar indices."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from mergeflow import paths
from mergeflow.config import Config
from mergeflow.data import get_task
from mergeflow.data.prepared import prepare_task
from mergeflow.errors import MergeflowError
from mergeflow.features.exemplars import sample_exemplars
from mergeflow.io import read_json, replace_dir, write_json
from mergeflow.models.factory import image_size
from mergeflow.workers import cpu_cores, run_jobs
from mergeflow.workspace import FETCH_MARKER

# Written into <raw_dir>/<task>/ by fetch before this marker existed: such a folder is the pipeline's too.
_LEGACY_MARKER = "info.json"


def reads_in_place(cfg: Config, task: str) -> bool:
    """Whether ``task`` is read from the user's own copy in ``<data.local_dir>/<task>/`` (never written)."""
    return get_task(task).kind == "real" and not cfg.data.download


def raw_root(cfg: Config, task: str) -> Path:
    """The folder whose ``<task>/`` holds ``task``'s raw data: ``data.local_dir`` for a copy read in place,
    else the pipeline's ``data.raw_dir``."""
    return Path(cfg.raw["data"]["local_dir"] if reads_in_place(cfg, task) else cfg.data.raw_dir)


def _claim(target: Path) -> None:
    """Refuse to replace or write into ``target`` unless ``fetch`` made it (its marker is there)."""
    if target.exists() and not ((target / FETCH_MARKER).is_file() or (target / _LEGACY_MARKER).is_file()):
        raise MergeflowError(f"{target}: not made by `mergeflow fetch` (no {FETCH_MARKER}), so it is not replaced: "
                             "move your copy elsewhere and name that folder in data.local_dir with data.download: "
                             "false (read in place, never written), or remove this folder")


def fetch(cfg: Config, task: str) -> Path:
    """Make ``<data.raw_dir>/<task>/``: generate or download the data into it, or, for a copy read in place,
    check ``<data.local_dir>/<task>/`` and record where it is. Nothing outside ``<raw_dir>/<task>/`` is
    written, and a folder there that fetch did not make is never replaced (:func:`_claim`)."""
    spec = get_task(task)
    target = Path(cfg.data.raw_dir) / task
    options = {**cfg.data.generate.to_dict(), "download": cfg.data.download}
    _claim(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    if spec.kind == "real" and cfg.data.download:  # in place: a download resumes what an interrupted one left
        target.mkdir(exist_ok=True)
        write_json(target / FETCH_MARKER, {"task": task, "source": "download", "complete": False})
        spec.fetch(target, options)
        write_json(target / FETCH_MARKER, {"task": task, "source": "download", "complete": True})
        return target
    for stale in target.parent.glob(f".{task}.*"):  # what an interrupted or killed fetch of this task left
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{task}.", dir=target.parent))
    try:
        if spec.kind == "real":
            source = raw_root(cfg, task) / task
            spec.load(source, "test")  # raises with the expected layout when absent
            record = {"task": task, "source": "local copy, read in place", "path": str(source)}
        else:
            spec.fetch(tmp, options)
            record = {"task": task, "source": "generated"}
        write_json(tmp / FETCH_MARKER, record)
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
        prepare_task(task, raw_root(cfg, task), image_size(cfg.model.arch), tmp, val_fraction=cfg.data.val_fraction,
                     max_val=cfg.data.max_val, split_seed=cfg.data.split_seed)
        replace_dir(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def exemplars(cfg: Config, task: str, seed: int | None = None) -> Path:
    """``data/exemplars/<task>.json``: a seeded list of ``exemplars.pool`` train indices."""
    seed = cfg.exemplars.seed if seed is None else seed
    manifest = read_json(paths.prepared(task) / "manifest.json", {"splits": {"train": {"count": int}}})
    n_train = manifest["splits"]["train"]["count"]
    indices = sample_exemplars(n_train, cfg.exemplars.pool, seed)
    out = paths.exemplars(task) if seed == cfg.exemplars.seed else paths.EXEMPLARS / f"{task}.seed{seed}.json"
    write_json(out, {"task": task, "seed": seed, "count": len(indices), "split": "train",
                     "split_index_hash": manifest["splits"]["train"]["index_hash"], "indices": indices})
    return out

