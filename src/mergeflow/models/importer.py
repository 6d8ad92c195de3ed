"""``mergeflow import``: community checkpoints → our own artifacts in ``models/imported/``.

The stage writes ``base/`` (open_clip config and weights, as :func:`save_base` does), ``experts/<task>``
(image-encoder state dicts) and, where the source has them, ``heads/<task>`` (our head convention:
``logit_scale · normalize(f) @ Hᵀ``), with ``manifest.json`` naming every source file and its hash. The
``base``, ``heads`` and ``finetune`` stages adopt these instead of pre-training, building heads or
fine-tuning, so every later stage runs unchanged. Without ``model.import`` only the manifest is written.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import torch

from mergeflow import paths
from mergeflow.errors import MergeflowError
from mergeflow.io import hash_file, save_tensors, write_json
from mergeflow.merge import check_inputs
from mergeflow.models import community
from mergeflow.models.factory import create_model, load_towers_checked, save_base


def import_spec(cfg) -> dict | None:
    """``model.import`` with its defaults filled in, or None when nothing is imported."""
    spec = dict(cfg.raw["model"].get("import") or {})
    if spec.get("format") is None:
        return None
    tasks = dict(spec.get("tasks") or {})
    unknown = sorted(set(tasks) - set(cfg.tasks))
    if unknown:
        raise MergeflowError(f"{cfg.source}: model.import.tasks: {unknown[0]!r} is not in data.tasks")
    return {"format": spec["format"], "root": Path(spec.get("root") or paths.COMMUNITY), "base": spec.get("base"),
            "tasks": {t: tasks.get(t, t) for t in cfg.tasks}}


def source_files(cfg) -> list[Path]:
    """Every file an import reads (the engines' inputs): base, experts and heads."""
    spec = import_spec(cfg)
    if spec is None:
        return []
    fmt, root = spec["format"], spec["root"]
    out = [community.base_file(fmt, root, spec["base"])]
    for theirs in spec["tasks"].values():
        out.append(community.expert_file(fmt, root, theirs))
        head = community.head_file(fmt, root, theirs)
        if head is not None:
            out.append(head)
    expanded = []
    for p in out:  # an hf model is a folder
        expanded.extend(sorted(q for q in p.iterdir() if q.is_file()) if p.is_dir() else [p])
    return expanded


def choose_activation(asked: str, found: str | None, fmt: str, source: str) -> str:
    """The activation to build the model with: the one configured, checked against what the source says.

    ``auto`` takes the source's (its module classes, or an hf ``hidden_act``); a state dict that cannot tell
    holds OpenAI weights in both community formats, hence QuickGELU.
    """
    if asked not in ("auto", *community.ACTIVATIONS):
        raise MergeflowError(f"model.activation = {asked!r}: must be auto, gelu or quick_gelu")
    if asked != "auto" and found is not None and asked != found:
        raise MergeflowError(f"{source}: model.activation is {asked} but the checkpoint uses {found}; the wrong "
                             "activation loads silently and costs accuracy")
    if asked != "auto":
        return asked
    return found or "quick_gelu"


def check_expert(pre: dict[str, torch.Tensor], expert: dict[str, torch.Tensor], task: str, source: str) -> None:
    """Same keys and shapes as the base, finite (both checked as every merge checks its inputs), and not the
    base itself."""
    try:
        check_inputs(pre, {task: expert})
    except MergeflowError as exc:
        raise MergeflowError(f"{source}: does not match the base: {exc}") from None
    if all(torch.equal(expert[k], pre[k]) for k in pre):
        raise MergeflowError(f"{source}: identical to the base (a zero task vector): not a fine-tuned expert")


def _base_model(cfg, src: community.SourceModel, activation: str, source: str):

    model = create_model(cfg.model.arch, None, seed=cfg.seed, quick_gelu=activation == "quick_gelu")
    state = {f"visual.{k}": v for k, v in src.visual.items()}
    if src.logit_scale is None:
        raise MergeflowError(f"{source}: no logit_scale (the image-only ImageEncoder keeps it; an hf "
                             "CLIPVisionModel base has none: use the CLIPModel)")
    state["logit_scale"] = src.logit_scale.reshape(model.logit_scale.shape)
    towers = ("visual",)
    if src.text is not None:
        state.update(src.text)
        towers = ("visual", "text")
    own = model.state_dict()
    state = {k: v.to(own[k].dtype) if k in own else v for k, v in state.items()}
    load_towers_checked(model, state, towers, source)
    return model.eval(), towers


def import_checkpoints(cfg, out: Path = paths.IMPORTED) -> Path:
    """Convert ``model.import``'s checkpoints into ``out`` (see the module docstring)."""
    spec = import_spec(cfg)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".imported.", dir=out.parent))
    try:
        if spec is None:
            write_json(tmp / "manifest.json", {"format": None})
        else:
            _convert(cfg, spec, tmp, save_base)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _convert(cfg, spec: dict, tmp: Path, save_base) -> None:
    fmt, root = spec["format"], spec["root"]
    if not root.is_dir():
        raise MergeflowError(f"model.import.root: {root} is not a folder; put the {fmt} checkpoints there "
                             "(see the README's 'Importing community checkpoints')")
    base_path = community.base_file(fmt, root, spec["base"])
    src = community.read_model(fmt, base_path)
    activation = choose_activation(cfg.raw["model"].get("activation", "auto"), src.activation, fmt, str(base_path))
    model, towers = _base_model(cfg, src, activation, str(base_path))
    save_base(model, cfg.model.arch, tmp / "base", {"pretrained": None, "imported": fmt}, towers)
    pre = model.visual.state_dict()
    scale = float(model.logit_scale.detach().exp())
    files = {str(p): hash_file(p) for p in src.files}
    heads = []
    for task, theirs in spec["tasks"].items():
        path = community.expert_file(fmt, root, theirs)
        expert = community.read_model(fmt, path)
        if expert.activation is not None and expert.activation != activation:
            raise MergeflowError(f"{path}: uses {expert.activation} but the base uses {activation}")
        state = dict(expert.visual)
        if fmt == "hf" and "proj" not in state and "proj" in pre:
            state["proj"] = pre["proj"].clone()  # a CLIPVisionModel expert: the base's projection, T = 0 there
        state = {k: v.to(pre[k].dtype) if k in pre else v for k, v in state.items()}
        check_expert(pre, state, task, str(path))
        save_tensors(tmp / "experts" / f"{task}.safetensors", state, {"task": task, "source": str(path)})
        files.update({str(p): hash_file(p) for p in expert.files})
        head_path = community.head_file(fmt, root, theirs)
        if head_path is not None and head_path.is_file():
            head = community.head_to_ours(community.read_head(head_path), scale, str(head_path))
            if head.ndim != 2 or head.shape[1] != model.visual.output_dim:
                raise MergeflowError(f"{head_path}: head of shape {tuple(head.shape)} for an encoder of "
                                     f"{model.visual.output_dim} outputs")
            save_tensors(tmp / "heads" / f"{task}.safetensors", {"weight": head}, {"task": task})
            files[str(head_path)] = hash_file(head_path)
            heads.append(task)
        elif "text" not in towers:
            raise MergeflowError(f"{head_path or path}: no head for {task} and the base has no text tower to "
                                 "build one from")
    write_json(tmp / "manifest.json", {"format": fmt, "root": str(root), "activation": activation,
                                       "towers": list(towers), "tasks": spec["tasks"], "heads": heads,
                                       "files": files})
