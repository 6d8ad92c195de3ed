"""Model stages: community imports, the base (pre-trained, loaded or imported), zero-shot heads, experts."""

from __future__ import annotations

import copy
import hashlib
import json
import platform
import shutil
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

from mergeflow import paths
from mergeflow.config import Config
from mergeflow.data import corpus, get_task
from mergeflow.data.prepared import classnames, load_prepared
from mergeflow.device import resolve
from mergeflow.errors import MergeflowError
from mergeflow.evaluate import accuracy
from mergeflow.geometry import task_vector_norm_ratio
from mergeflow.io import hash_file, load_tensors, read_json, replace_dir, save_tensors, write_json
from mergeflow.models import create_model, save_base
from mergeflow.models.classifier import check_head
from mergeflow.models.factory import SHIPPED_DIR, image_size, shipped_checkpoint, shipped_tags
from mergeflow.models.heads import zeroshot_head
from mergeflow.models.importer import import_checkpoints
from mergeflow.stages.common import classifier, load_base_model, load_expert_file, logit_scale
from mergeflow.train.finetune import finetune as train_expert
from mergeflow.train.pretrain import pretrain_clip
from mergeflow.workers import cpu_cores, run_jobs, threads_per_job


def import_models(cfg: Config) -> Path:
    """Convert the community checkpoints of ``model.import`` into ``models/imported/`` (a manifest only
    when nothing is imported); see :mod:`mergeflow.models.importer`."""
    return import_checkpoints(cfg)


def _imported(kind: str, task: str | None = None) -> Path | None:
    """The imported base folder, expert or head, when ``mergeflow import`` wrote one."""
    manifest = paths.IMPORTED / "manifest.json"
    if not manifest.is_file() or read_json(manifest).get("format") is None:
        return None
    path = paths.IMPORTED / kind if task is None else paths.IMPORTED / kind / f"{task}.safetensors"
    return path if path.exists() else None


def _activation(cfg: Config) -> bool | None:
    return {"auto": None, "gelu": False, "quick_gelu": True}[cfg.raw["model"].get("activation", "auto")]


def base(cfg: Config) -> Path:
    """Pre-train the offline base on the generated corpus, load pre-trained weights, or adopt the imported
    base; save ``models/base/``."""
    arch, pretrained = cfg.model.arch, cfg.model.pretrained
    imported = _imported("base")
    if imported is not None:
        tmp = Path(tempfile.mkdtemp(prefix=".base.", dir=paths.BASE.parent))
        try:
            shutil.copytree(imported, tmp, dirs_exist_ok=True)
            write_json(tmp / "log.json", {"arch": arch, "imported": read_json(paths.IMPORTED / "manifest.json")})
            replace_dir(tmp, paths.BASE)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return paths.BASE
    if pretrained is None:
        model, log = _pretrain_base(cfg)
    else:
        model = create_model(arch, pretrained, seed=cfg.seed, quick_gelu=_activation(cfg))
        log = {"arch": arch, "pretrained": pretrained}
        if pretrained in shipped_tags(arch):
            ckpt = shipped_checkpoint(arch, pretrained)
            log.update(checkpoint=str(ckpt), checkpoint_sha256=hash_file(ckpt))
    save_base(model.cpu().eval(), arch, paths.BASE, {"pretrained": pretrained})
    write_json(paths.BASE / "log.json", {**log, "weights_sha256": hash_file(paths.base_weights())})
    return paths.BASE


def _pretrain_base(cfg: Config, steps: int | None = None):
    """A randomly initialised CLIP of ``model.arch`` pre-trained by the ``pretrain`` block (``steps`` overrides
    the number of steps taken, not the schedule: the first steps of a shortened run are those of the full one)."""
    arch, p = cfg.model.arch, cfg.pretrain
    model = create_model(arch, None, seed=cfg.seed)
    log = {"arch": arch, "pretrained": None}
    images, captions, log["corpus"] = pretraining_corpus(cfg, image_size(arch))
    log["pretrain"] = pretrain_clip(model, arch, images, captions, steps=p.steps, batch_size=p.batch_size, lr=p.lr,
                                    weight_decay=p.weight_decay, warmup_steps=p.warmup_steps, seed=p.seed,
                                    device=resolve(cfg.device), stop_after=steps)
    return model, log


def pretrain(cfg: Config, tag: str, out_dir: Path | None = None, steps: int | None = None) -> Path:
    """Pre-train ``model.arch`` by the ``pretrain`` block and write weights the project can ship.

    Writes ``<arch>-<tag>.safetensors`` and ``<arch>-<tag>.json`` (the recorded configuration, the corpus
    summary and the loss curve) to ``out_dir`` (default: the package's shipped-weights folder), so that
    ``model.pretrained: <tag>`` loads them. ``steps`` stops early (a check that the run starts as recorded).
    """


    out_dir = Path(out_dir) if out_dir is not None else SHIPPED_DIR
    model, log = _pretrain_base(cfg, steps)
    name = f"{cfg.model.arch}-{tag}"
    weights = out_dir / f"{name}.safetensors"
    save_tensors(weights, model.cpu().eval().state_dict(), {"arch": cfg.model.arch, "tag": tag})
    record = {"command": f"mergeflow --params {cfg.source} pretrain --tag {tag}", "arch": cfg.model.arch,
              "seed": cfg.seed, "pretrain_config": cfg.raw["pretrain"], "weights_sha256": hash_file(weights),
              "torch": torch.__version__, "python": platform.python_version(), "threads": torch.get_num_threads(),
              **log}
    write_json(out_dir / f"{name}.json", record)
    return weights


def pretraining_corpus(cfg: Config, size: int) -> tuple[torch.Tensor, list[str], dict]:
    """The generated image–caption corpus at the model's input size, and a summary of it for the log."""



    if "corpus_size" not in cfg.raw["pretrain"]:
        raise MergeflowError(f"{cfg.source}: pretrain.corpus_size is needed to pre-train the base "
                             "(model.pretrained is null); e.g. 30000")
    n = int(cfg.raw["pretrain"]["corpus_size"])
    seed = int(cfg.raw["pretrain"].get("corpus_seed", 0))
    images, captions = corpus.build(n, seed, workers=cpu_cores())
    x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    if x.shape[-1] != size:
        x = F.interpolate(x.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        x = x.round().clamp(0, 255).to(torch.uint8)
    summary = {"size": n, "seed": seed, "distinct_captions": len(set(captions)), "image_size": size,
               "images_sha256": hashlib.sha256(images.tobytes()).hexdigest(), "first_captions": captions[:5]}
    return x, captions, summary


def heads(cfg: Config, task: str) -> Path:
    """The zero-shot head of ``task`` from the base's text tower (or the imported one, when the source had it)."""


    names = classnames(task)
    imported = _imported("heads", task)
    if imported is not None:
        head = load_tensors(imported)["weight"]
        check_head(head, len(names), str(imported))
    else:
        model, arch = load_base_model()
        if not getattr(model, "has_text_tower", True):
            raise MergeflowError(f"{paths.BASE}: the imported base has no text tower and the source no head for "
                                 f"{task}; import its head_<Dataset>.pt too")
        head = zeroshot_head(model, arch, names, get_task(task).templates)
    save_tensors(paths.head(task), {"weight": head}, {"classnames": json.dumps(names)})
    return paths.head(task)


def finetune_tasks(cfg: Config, tasks: list[str]) -> list[Path]:
    """Fine-tune one expert per task: on CPU side by side in worker processes (see :mod:`mergeflow.workers`),
    on a GPU one after the other in this process."""
    workers = 1
    if resolve(cfg.device).type == "cpu":
        workers = min(len(tasks), max(1, cpu_cores() // threads_per_job(len(cfg.tasks))))
    return run_jobs(_finetune_job, [(cfg.raw, cfg.source, task) for task in tasks], workers)


def _finetune_job(raw: dict, source: str, task: str) -> Path:
    return finetune(Config(raw, source), task)


def finetune(cfg: Config, task: str) -> Path:
    """Fine-tune the base's image encoder on ``task`` with its frozen head; save the expert and a JSON log.

    On CPU the thread count follows from the configuration's task count (:func:`threads_per_job`), not from
    how the stage was launched, so an expert trained alone is bit-identical to one trained beside others.
    """
    device = resolve(cfg.device)
    if device.type == "cpu":
        torch.set_num_threads(threads_per_job(len(cfg.tasks)))
    model, _ = load_base_model()
    clf = classifier(copy.deepcopy(model.visual), task, logit_scale(model), len(classnames(task)))
    imported = _imported("experts", task)
    if imported is not None:  # the community expert, adopted as it is: scored on validation, not trained
        clf.visual.load_state_dict(load_expert_file(imported, model.visual.state_dict()))
        log = {"imported": str(imported), "imported_sha256": hash_file(imported)}
    else:
        images, labels = load_prepared(task, "train")
        f = cfg.finetune
        log = train_expert(clf, images, labels, steps=f.steps, batch_size=f.batch_size, lr=f.lr,
                           weight_decay=f.weight_decay, warmup_steps=f.warmup_steps, grad_clip=f.grad_clip, seed=f.seed,
                           device=device, task=task)
    val_images, val_labels = load_prepared(task, "val")
    log["val_accuracy"] = accuracy(clf, val_images, val_labels, batch_size=cfg.evaluate.batch_size, device=device)
    log["task"] = task
    state = clf.visual.cpu().state_dict()
    log["task_vector_norm_ratio"] = task_vector_norm_ratio(model.visual.state_dict(), state)
    save_tensors(paths.expert(task), state, {"task": task})
    write_json(paths.expert_log(task), {**log, "weights_sha256": hash_file(paths.expert(task))})
    return paths.expert(task)

