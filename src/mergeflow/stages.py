"""The pipeline's stages: each reads its inputs from the layout in :mod:`mergeflow.paths`, does one job and
writes its outputs atomically. The CLI calls these; both engines call only the CLI.
"""

from __future__ import annotations

import copy
import shutil
import tempfile
import time
from pathlib import Path

import torch
from tqdm import tqdm

from mergeflow import paths
from mergeflow.config import Config, Variant
from mergeflow.errors import MergeflowError
from mergeflow.io import hash_file, load_tensors, read_json, save_tensors, write_json


def _replace_dir(tmp: Path, target: Path) -> None:
    if target.exists():
        shutil.rmtree(target)
    tmp.rename(target)


# --- data -------------------------------------------------------------------------------------------
def fetch(cfg: Config, task: str) -> Path:
    """Put ``task``'s raw data under ``<data.raw_dir>/<task>/`` (generate, download, or check it is there)."""
    from mergeflow.data import get_task

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
        _replace_dir(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def fetch_tasks(cfg: Config, tasks: list[str]) -> list[Path]:
    """:func:`fetch` every task, side by side in worker processes (generating or downloading a task is
    single-threaded work that takes seconds)."""
    from mergeflow.workers import cpu_cores, run_jobs

    return run_jobs(_fetch_job, [(cfg.raw, cfg.source, task) for task in tasks], min(len(tasks), cpu_cores()))


def _fetch_job(raw: dict, source: str, task: str) -> Path:
    return fetch(Config(raw, source), task)


def prepare(cfg: Config, task: str) -> Path:
    """Decode, resize and store the train/val/test splits of ``task`` at the model's image size."""
    from mergeflow.data import get_task
    from mergeflow.data.prepared import prepare_task
    from mergeflow.models.factory import image_size

    get_task(task)
    target = paths.prepared(task)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{task}.", dir=target.parent))
    try:
        prepare_task(task, Path(cfg.data.raw_dir), image_size(cfg.model.arch), tmp, val_fraction=cfg.data.val_fraction,
                     max_val=cfg.data.max_val, split_seed=cfg.data.split_seed)
        _replace_dir(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


# --- models -----------------------------------------------------------------------------------------
def import_models(cfg: Config) -> Path:
    """Convert the community checkpoints of ``model.import`` into ``models/imported/`` (a manifest only
    when nothing is imported); see :mod:`mergeflow.models.importer`."""
    from mergeflow.models.importer import import_checkpoints

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
    from mergeflow.models import create_model, save_base
    from mergeflow.models.factory import shipped_checkpoint, shipped_tags

    arch, pretrained = cfg.model.arch, cfg.model.pretrained
    imported = _imported("base")
    if imported is not None:
        tmp = Path(tempfile.mkdtemp(prefix=".base.", dir=paths.BASE.parent))
        try:
            shutil.copytree(imported, tmp, dirs_exist_ok=True)
            write_json(tmp / "log.json", {"arch": arch, "imported": read_json(paths.IMPORTED / "manifest.json")})
            _replace_dir(tmp, paths.BASE)
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
    write_json(paths.BASE / "log.json", log)
    return paths.BASE


def _pretrain_base(cfg: Config, steps: int | None = None):
    """A randomly initialised CLIP of ``model.arch`` pre-trained by the ``pretrain`` block (``steps`` overrides
    the number of steps taken, not the schedule: the first steps of a shortened run are those of the full one)."""
    from mergeflow.device import resolve
    from mergeflow.models import create_model
    from mergeflow.models.factory import image_size
    from mergeflow.train.pretrain import pretrain_clip

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
    import platform

    from mergeflow.models.factory import SHIPPED_DIR

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
    import hashlib

    import torch.nn.functional as F

    from mergeflow.data import corpus
    from mergeflow.workers import cpu_cores

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


def _load_base():
    from mergeflow.models import load_base

    if not (paths.BASE / "config.json").is_file():
        raise MergeflowError(f"{paths.BASE}: not found; run `mergeflow base` first (or the whole pipeline)")
    return load_base(paths.BASE)


def _logit_scale(model) -> float:
    return float(model.logit_scale.detach().exp())


def heads(cfg: Config, task: str) -> Path:
    """The zero-shot head of ``task`` from the base's text tower (or the imported one, when the source had it)."""
    import json

    from mergeflow.data import get_task
    from mergeflow.data.prepared import classnames
    from mergeflow.models.classifier import check_head
    from mergeflow.models.heads import zeroshot_head

    names = classnames(task)
    imported = _imported("heads", task)
    if imported is not None:
        head = load_tensors(imported)["weight"]
        check_head(head, len(names), str(imported))
    else:
        model, arch = _load_base()
        if not getattr(model, "has_text_tower", True):
            raise MergeflowError(f"{paths.BASE}: the imported base has no text tower and the source no head for "
                                 f"{task}; import its head_<Dataset>.pt too")
        head = zeroshot_head(model, arch, names, get_task(task).templates)
    save_tensors(paths.head(task), {"weight": head}, {"classnames": json.dumps(names)})
    return paths.head(task)


def load_head(task: str, n_classes: int | None = None) -> torch.Tensor:
    from mergeflow.models.classifier import check_head

    head = load_tensors(paths.head(task)).get("weight")
    if head is None:
        raise MergeflowError(f"{paths.head(task)}: no 'weight' tensor; rerun `mergeflow heads --task {task}`")
    if n_classes is not None:
        check_head(head, n_classes, str(paths.head(task)))
    return head


def _classifier(visual, task: str, scale: float, n_classes: int | None = None):
    from mergeflow.models import ImageClassifier

    return ImageClassifier(visual, load_head(task, n_classes), scale)


def finetune_tasks(cfg: Config, tasks: list[str]) -> list[Path]:
    """Fine-tune one expert per task: on CPU side by side in worker processes (see :mod:`mergeflow.workers`),
    on a GPU one after the other in this process."""
    from mergeflow.device import resolve
    from mergeflow.workers import cpu_cores, run_jobs, threads_per_job

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
    from mergeflow.data.prepared import classnames, load_prepared
    from mergeflow.device import resolve
    from mergeflow.evaluate import accuracy
    from mergeflow.train.finetune import finetune as run
    from mergeflow.workers import threads_per_job

    device = resolve(cfg.device)
    if device.type == "cpu":
        torch.set_num_threads(threads_per_job(len(cfg.tasks)))
    model, _ = _load_base()
    clf = _classifier(copy.deepcopy(model.visual), task, _logit_scale(model), len(classnames(task)))
    imported = _imported("experts", task)
    if imported is not None:  # the community expert, adopted as it is: scored on validation, not trained
        clf.visual.load_state_dict(load_expert_file(imported, model.visual.state_dict()))
        log = {"imported": str(imported), "imported_sha256": hash_file(imported)}
    else:
        images, labels = load_prepared(task, "train")
        f = cfg.finetune
        log = run(clf, images, labels, steps=f.steps, batch_size=f.batch_size, lr=f.lr, weight_decay=f.weight_decay,
                  warmup_steps=f.warmup_steps, grad_clip=f.grad_clip, seed=f.seed, device=device, task=task)
    val_images, val_labels = load_prepared(task, "val")
    log["val_accuracy"] = accuracy(clf, val_images, val_labels, batch_size=cfg.evaluate.batch_size, device=device)
    log["task"] = task
    state = clf.visual.cpu().state_dict()
    log["task_vector_norm_ratio"] = task_vector_norm_ratio(model.visual.state_dict(), state)
    save_tensors(paths.expert(task), state, {"task": task})
    write_json(paths.expert_log(task), log)
    return paths.expert(task)


def task_vector_norm_ratio(pre: dict[str, torch.Tensor], expert: dict[str, torch.Tensor]) -> float:
    """``‖T‖ / ‖θ_pre‖`` over the image encoder's floating-point weights."""
    num = sum(float((expert[k].double() - v.double()).pow(2).sum()) for k, v in pre.items() if v.is_floating_point())
    den = sum(float(v.double().pow(2).sum()) for v in pre.values() if v.is_floating_point())
    return (num / den) ** 0.5 if den > 0 else float("inf")


def task_vector_geometry(pre: dict[str, torch.Tensor], experts: dict[str, dict[str, torch.Tensor]]) -> dict:
    """Each task vector's size relative to the base and the pairwise cosines between task vectors."""
    keys = [k for k, v in pre.items() if v.is_floating_point()]
    vecs = torch.stack([torch.cat([(sd[k].double() - pre[k].double()).flatten() for k in keys])
                        for sd in experts.values()])
    unit = vecs / vecs.norm(dim=1, keepdim=True).clamp(min=1e-300)
    cos = unit @ unit.t()
    tasks = list(experts)
    pairs = {f"{a}|{b}": float(cos[i, j]) for i, a in enumerate(tasks) for j, b in enumerate(tasks) if i < j}
    return {"norm_ratio": {t: task_vector_norm_ratio(pre, experts[t]) for t in tasks}, "cosine": pairs}


def load_expert(task: str, reference: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An expert's state dict, checked against the base's image encoder."""
    return load_expert_file(paths.expert(task), reference)


def load_expert_file(path: Path, reference: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    from mergeflow.merge import check_inputs

    state = load_tensors(path)
    try:
        check_inputs(reference, {path.stem: state})
    except MergeflowError as exc:
        raise MergeflowError(f"{path}: does not match the base: {exc}") from None
    return state


# --- exemplars and features ---------------------------------------------------------------------------
def exemplars(cfg: Config, task: str, seed: int | None = None) -> Path:
    """``data/exemplars/<task>.json``: a seeded list of ``exemplars.pool`` train indices."""
    from mergeflow.features.exemplars import sample_exemplars

    seed = cfg.exemplars.seed if seed is None else seed
    manifest = read_json(paths.prepared(task) / "manifest.json")
    n_train = manifest["splits"]["train"]["count"]
    indices = sample_exemplars(n_train, cfg.exemplars.pool, seed)
    out = paths.exemplars(task) if seed == cfg.exemplars.seed else paths.EXEMPLARS / f"{task}.seed{seed}.json"
    write_json(out, {"task": task, "seed": seed, "count": len(indices), "split": "train",
                     "split_index_hash": manifest["splits"]["train"]["index_hash"], "indices": indices})
    return out


def _scaled_visual(model, task: str, scale: float):
    """A copy of the base's image encoder at ``θ_pre + scale · T_task``."""
    visual = copy.deepcopy(model.visual)
    if scale != 0.0:
        pre = visual.state_dict()
        expert = load_expert(task, pre)
        visual.load_state_dict({k: (pre[k].float() + scale * (expert[k].float() - pre[k].float())).to(pre[k].dtype)
                                for k in pre})
    return visual


def features(cfg: Config, task: str, variant: str) -> Path:
    """Statistics ``variant`` of ``task``: Grams/energies, Fisher or gradients, on its first n exemplars.

    A grid variant (scale ``auto``) is one file per non-zero value of ``evaluate.scale_grid``.
    """
    v = Variant.parse(variant)
    model, _ = _load_base()  # once: a grid variant scales the same base once per grid value
    if not v.is_grid:
        return _features_at(cfg, model, task, v, v.scale_value, paths.features(variant, task))
    out = paths.features(variant, task)
    for scale in cfg.evaluate.scale_grid:
        if float(scale) != 0.0:
            _features_at(cfg, model, task, v, float(scale), paths.features(variant, task, scale))
    return out.parent


def _features_at(cfg: Config, model, task: str, v: Variant, scale: float, out: Path) -> Path:
    from mergeflow.data.prepared import load_prepared
    from mergeflow.device import resolve
    from mergeflow.features.collect import collect_stats, fisher_diagonal, mean_abs_gradient
    from mergeflow.features.stats import TaskStats

    device = resolve(cfg.device)
    ex_file = paths.exemplars(task) if v.seed == cfg.exemplars.seed else paths.EXEMPLARS / f"{task}.seed{v.seed}.json"
    listing = read_json(ex_file)
    if v.count > listing["count"]:
        raise MergeflowError(f"variant {v.name}: {v.count} exemplars asked but {ex_file} lists {listing['count']}; "
                             "raise exemplars.pool")
    idx = torch.tensor(listing["indices"][:v.count])
    images, labels = load_prepared(task, "train")
    images, labels = images[idx], labels[idx]
    visual = _scaled_visual(model, task, scale).to(device)
    dtype = torch.float64 if cfg.features.dtype == "float64" else torch.float32
    stats = TaskStats()
    if v.kind == "gram":
        bs = cfg.features.batch_size
        stats = collect_stats(visual, (images[i:i + bs] for i in range(0, len(images), bs)), dtype=dtype, device=device)
    elif v.kind == "fisher":
        clf = _classifier(visual, task, _logit_scale(model))
        stats.fisher = fisher_diagonal(clf, images, labels if cfg.features.fisher_labels else None, device=device,
                                       seed=v.seed)
    else:
        clf = _classifier(visual, task, _logit_scale(model))
        stats.grad = mean_abs_gradient(clf, images, labels, batch_size=cfg.features.batch_size, device=device)
    meta = {"variant": v.name, "task": task, "scale": scale, "exemplars": str(ex_file),
            "exemplars_sha256": hash_file(ex_file), "base_sha256": hash_file(paths.base_weights())}
    if scale != 0.0:
        meta["expert_sha256"] = hash_file(paths.expert(task))
    save_tensors(out, stats.to_tensors(), meta)
    return out


def load_stats(variant: str, task: str, scale: float | None = None):
    from mergeflow.features.stats import TaskStats

    file = paths.features(variant, task, scale)
    rebuild = f"`mergeflow features --variant {variant}`"
    if not file.is_file():
        raise MergeflowError(f"{file}: not found; run {rebuild}")
    _check_recorded_inputs(file, rebuild)
    return TaskStats.from_tensors(load_tensors(file), str(file))


def _check_recorded_inputs(file: Path, rebuild: str) -> None:
    """Refuse statistics computed from another base, expert or exemplar list than the ones there now."""
    from mergeflow.io import hash_file_cached, load_metadata

    meta = load_metadata(file)
    task = meta.get("task")
    recorded = {"base_sha256": paths.base_weights(), "expert_sha256": paths.expert(task) if task else None,
                "exemplars_sha256": Path(meta["exemplars"]) if "exemplars" in meta else None}
    for key, source in recorded.items():
        if key in meta and source is not None and (not source.is_file() or hash_file_cached(source) != meta[key]):
            raise MergeflowError(f"{file}: stale, computed from another {source} than the one there now; "
                                 f"rebuild it with {rebuild}")


def _run_stats(cfg: Config, run, scale: float | None = None) -> dict | None:
    """Every task's statistics for ``run`` (the variants' fields joined); ``scale`` picks a grid variant's file."""
    if not run.variants:
        return None
    stats = {}
    for t in cfg.tasks:
        parts = [load_stats(v.name, t, scale if v.is_grid else None) for v in run.variants]
        merged_stats = parts[0]
        for extra in parts[1:]:
            for field in ("gram", "sqnorm", "rows", "fisher", "grad"):
                getattr(merged_stats, field).update(getattr(extra, field))
        stats[t] = merged_stats
    return stats


# --- merge and evaluate -------------------------------------------------------------------------------
def _val_sets(cfg: Config):
    from mergeflow.data.prepared import load_prepared

    return {t: load_prepared(t, "val") for t in cfg.tasks}


def _scale_rank(point: dict) -> tuple[float, float]:
    return point["val_normalized"], -point["scale"]


def choose_scale(curve: list[dict]) -> dict:
    """The grid point with the best average normalised validation accuracy (the smaller scale on a tie),
    and whether it lies on the grid's edge (then the grid, not the method, may be what limits it)."""
    if not curve:
        raise MergeflowError("evaluate.scale_grid is empty: no scale to choose")
    best = max(curve, key=_scale_rank)
    scales = [c["scale"] for c in curve]
    edge = len(scales) > 1 and best["scale"] in (min(scales), max(scales))
    return {"value": best["scale"], "on_edge": edge}


def _val_normalized(cfg: Config, model, visual, state: dict, val: dict, expert_val: dict, device) -> float:
    visual.load_state_dict(state)
    norm = []
    for t, (x, y) in val.items():
        acc = accuracy_of(_classifier(visual, t, _logit_scale(model)), x, y, cfg, device)
        norm.append(acc / expert_val[t] if expert_val[t] > 0 else 0.0)
    return sum(norm) / len(norm)


def accuracy_of(classifier, images, labels, cfg: Config, device) -> float:
    from mergeflow.evaluate import accuracy

    return accuracy(classifier, images, labels, batch_size=cfg.evaluate.batch_size, device=device)


def _merge_once(run, spec, hp, pre, experts, stats, device, data=None) -> tuple[dict, dict, float]:
    from mergeflow.merge import merge as do_merge

    dev_pre = {k: v.to(device) for k, v in pre.items()}
    dev_experts = {t: {k: v.to(device) for k, v in sd.items()} for t, sd in experts.items()}
    dev_stats = stats
    if stats is not None and device.type != "cpu":
        dev_stats = {t: s.to(device) for t, s in stats.items()}
    diagnostics: dict = {}
    start = time.time()
    merged = do_merge(run.method, dev_pre, dev_experts, stats=dev_stats, diagnostics=diagnostics, data=data, **hp)
    if device.type == "cuda":
        torch.cuda.synchronize()
    wall = time.time() - start
    if spec.task_aware:
        return merged, diagnostics, wall
    return {k: v.cpu() for k, v in merged.items()}, diagnostics, wall


def _task_data(cfg: Config, spec, hp: dict, model, device):
    """The encoder, heads and data the methods that run the model read (:class:`TaskData`)."""
    from torch.func import functional_call

    from mergeflow.data.prepared import load_prepared
    from mergeflow.merge.context import TaskData
    from mergeflow.models.classifier import normalize_images

    encoder = copy.deepcopy(model.visual).to(device).eval().requires_grad_(False)

    def encode(weights, images):
        return functional_call(encoder, weights, (normalize_images(images.to(device)),))

    split = hp.get("unlabeled", "test")
    unlabeled = {t: load_prepared(t, split)[0] for t in cfg.tasks} if "unlabeled" in spec.uses else {}
    val_accuracy = None
    if "validation" in spec.uses:
        val, scratch = _val_sets(cfg), copy.deepcopy(model.visual)

        def val_accuracy(weights, task):
            scratch.load_state_dict({k: v.cpu() for k, v in weights.items()})
            return accuracy_of(_classifier(scratch, task, _logit_scale(model)), *val[task], cfg, device)

    merged = {}
    if "merged" in spec.uses:
        merged[hp["base"]] = {k: v.to(device) for k, v in load_tensors(paths.merged(hp["base"])).items()}
    heads = {t: load_head(t).to(device) for t in cfg.tasks}
    return TaskData(encode, heads, _logit_scale(model), unlabeled, split, val_accuracy, merged)


def merge(cfg: Config, run_name: str) -> Path:
    """Merge with one configured run; an ``auto`` scale is chosen on the validation splits.

    For most methods the merged task vector is linear in the scale: one merge at scale 1 is rescaled to
    every grid value. A method whose statistics are recorded at the scale (CAT's α) merges once per
    non-zero grid value with that value's statistics; scale 0 is the pre-trained model.
    """
    from mergeflow.device import resolve
    from mergeflow.merge import METHODS

    run = cfg.run(run_name)
    spec = METHODS[run.method]
    device = resolve(cfg.device)
    model, _ = _load_base()
    pre = {k: v.clone() for k, v in model.visual.state_dict().items()}
    experts = {t: load_expert(t, pre) for t in cfg.tasks}
    hp = dict(run.hparams)
    scale_key = spec.scale
    auto = scale_key is not None and hp[scale_key] == "auto"
    per_scale = auto and any(v.is_grid for v in run.variants)
    scale_info = {"name": scale_key, "value": hp.get(scale_key) if scale_key else None, "chosen_by": "fixed"}
    data = _task_data(cfg, spec, hp, model, device) if spec.uses else None
    if not auto:
        merged, diagnostics, wall = _merge_once(run, spec, hp, pre, experts, _run_stats(cfg, run), device, data)
    else:
        val = _val_sets(cfg)
        expert_val = {t: read_json(paths.expert_log(t))["val_accuracy"] for t in cfg.tasks}
        scratch = copy.deepcopy(model.visual)
        curve, kept, wall = [], None, 0.0  # kept: the best per-scale merge so far (one model in memory)
        if not per_scale:
            one, diagnostics, wall = _merge_once(run, spec, {**hp, scale_key: 1.0}, pre, experts,
                                                 _run_stats(cfg, run), device, data)
            delta = {k: one[k].float() - pre[k].float() for k in pre if pre[k].is_floating_point()}
        for s in tqdm(cfg.evaluate.scale_grid, desc=f"{run.name}: {scale_key} on validation", mininterval=2.0):
            s = float(s)
            if per_scale:
                if s == 0.0:
                    state, diag, w = pre, {}, 0.0
                else:
                    state, diag, w = _merge_once(run, spec, {**hp, scale_key: s}, pre, experts,
                                                 _run_stats(cfg, run, s), device, data)
                wall += w
            else:
                state = {k: (pre[k].float() + s * delta[k]).to(pre[k].dtype) if k in delta else pre[k] for k in pre}
            curve.append({"scale": s, "val_normalized": _val_normalized(cfg, model, scratch, state, val, expert_val,
                                                                        device)})
            if per_scale and (kept is None or _scale_rank(curve[-1]) > _scale_rank(kept[0])):
                kept = (curve[-1], state, diag)
        choice = choose_scale(curve)
        best = choice["value"]
        if per_scale:
            _, merged, diagnostics = kept
        else:
            merged = {k: (pre[k].float() + best * delta[k]).to(pre[k].dtype) if k in delta else pre[k] for k in pre}
        scale_info = {"name": scale_key, "value": best, "chosen_by": "validation", "on_edge": choice["on_edge"],
                      "grid": curve}
    inputs = {str(paths.base_weights()): hash_file(paths.base_weights())}
    inputs.update({str(paths.expert(t)): hash_file(paths.expert(t)) for t in cfg.tasks})
    for v in run.variants:
        scales = [s for s in cfg.evaluate.scale_grid if float(s) != 0.0] if v.is_grid else [None]
        for t in cfg.tasks:
            for s in scales:
                inputs[str(paths.features(v.name, t, s))] = hash_file(paths.features(v.name, t, s))
    if "merged" in spec.uses:
        inputs[str(paths.merged(hp["base"]))] = hash_file(paths.merged(hp["base"]))
    extra_bytes = 0
    if spec.task_aware:  # a shared part and a per-task part, in one file (masks bit-packed)
        tensors, layout = merged.to_tensors()
        extra_bytes = merged.extra_bytes()
        save_tensors(paths.merged(run.name), tensors, {"run": run.name, "method": run.method, "task_aware": layout})
    else:
        save_tensors(paths.merged(run.name), merged, {"run": run.name, "method": run.method})
    write_json(paths.merge_report(run.name), {
        "run": run.name, "method": run.method, "pretty": spec.pretty, "paper": spec.paper,
        "hyperparameters": run.hparams, "sweep": list(run.sweep) if run.sweep else None, "scale": scale_info,
        "variants": [v.name for v in run.variants], "wall_s": round(wall, 3), "device": str(device),
        "task_aware": spec.task_aware, "extra_bytes": extra_bytes, "training": spec.training,
        "unlabeled_split": data.unlabeled_split if data is not None and data.unlabeled else None,
        "diagnostics": diagnostics, "inputs": inputs})
    return paths.merged(run.name)


def evaluate(cfg: Config, model_name: str) -> Path:
    """Test accuracy of ``zeroshot``, ``individual`` or a merge run on every task.

    Writes ``reports/metrics/<model>.json`` (numbers only: the DVC metric) and
    ``reports/evaluation/<model>.json`` (how they were produced).
    """
    from mergeflow.data.prepared import load_prepared
    from mergeflow.device import resolve
    from mergeflow.evaluate import accuracy, summarise

    device = resolve(cfg.device)
    model, _ = _load_base()
    pre = model.visual.state_dict()
    scale = _logit_scale(model)
    visual = copy.deepcopy(model.visual)
    per_task_part = None  # a task-aware result: each task scored with its own part
    if model_name not in ("zeroshot", "individual"):
        cfg.run(model_name)
        from mergeflow.io import load_metadata
        from mergeflow.models.factory import load_visual_state

        state = load_tensors(paths.merged(model_name))
        layout = load_metadata(paths.merged(model_name)).get("task_aware")
        if layout:
            from mergeflow.merge.task_aware import from_tensors

            per_task_part = from_tensors(state, layout)
        else:
            load_visual_state(visual, state, str(paths.merged(model_name)))
    per_task, inputs = {}, {}
    for t in cfg.tasks:
        images, labels = load_prepared(t, "test")
        encoder = visual
        if model_name == "individual":
            visual.load_state_dict(load_expert(t, pre))
            inputs[str(paths.expert(t))] = hash_file(paths.expert(t))
        elif per_task_part is not None:
            from mergeflow.merge.task_aware import AdaptedEncoder
            from mergeflow.models.factory import load_visual_state

            load_visual_state(visual, per_task_part.state(pre, t), str(paths.merged(model_name)))
            if per_task_part.kind == "adapted":
                encoder = AdaptedEncoder(visual, per_task_part.adapter(t))
        acc = accuracy(_classifier(encoder, t, scale, None), images, labels, batch_size=cfg.evaluate.batch_size,
                       device=device)
        per_task[t] = {"accuracy": acc, "count": int(len(labels))}
    individual, run_report = None, None
    if model_name not in ("zeroshot", "individual"):
        individual = {t: {"accuracy": a} for t, a in read_json(paths.metrics("individual"))["accuracy"].items()}
        inputs[str(paths.merged(model_name))] = hash_file(paths.merged(model_name))
        run_report = read_json(paths.merge_report(model_name))
    summary = summarise(per_task, individual)
    # the metrics file holds numbers only, so that `dvc metrics diff` and `dvc exp show` compare accuracies;
    # what produced them (device, inputs, counts, task-vector geometry) goes beside it, in reports/evaluation
    numbers = {"average": summary["average"]}
    if individual:
        numbers.update(normalized=summary["normalized"], drop_std=summary["drop_std"])
    if run_report is not None:
        if isinstance(run_report["scale"]["value"], (int, float)):
            numbers["scale"] = run_report["scale"]["value"]
        numbers["merge_wall_s"] = run_report["wall_s"]
    numbers["accuracy"] = {t: v["accuracy"] for t, v in per_task.items()}
    record = {"model": model_name, "device": str(device), "count": {t: v["count"] for t, v in per_task.items()}}
    if individual:
        record["normalized_per_task"] = summary["normalized_per_task"]
    if model_name == "individual":
        record["task_vectors"] = task_vector_geometry(pre, {t: load_expert(t, pre) for t in cfg.tasks})
    record["inputs"] = inputs
    write_json(paths.evaluation(model_name), record)
    write_json(paths.metrics(model_name), numbers)
    return paths.metrics(model_name)


