"""Community checkpoints as open_clip state dicts: task_vectors, TALL masks / TSV / Iso, Hugging Face CLIP.

Each reader returns a :class:`SourceModel` (the image tower in open_clip's names, the logit scale, the text
tower where the file has all of it, and the activation the file reveals) or a :class:`SourceHead`. Pickled
files go through :mod:`mergeflow.models.safe_pickle`, so nothing from a downloaded file runs.

Layouts (``root`` is the folder ``model.import.root`` names):

* ``task_vectors``: ``root/zeroshot.pt``, ``root/<Dataset>/finetuned.pt`` (whole pickled ``ImageEncoder``
  objects of open_clip 2.0.2) and ``root/head_<Dataset>.pt`` (pickled ``ClassificationHead``, logit scale
  folded into the weight);
* ``tall_masks``: ``root/MNISTVal/nonlinear_zeroshot.pt``, ``root/<Dataset>Val/nonlinear_finetuned.pt``
  (state dicts of the same encoder) and ``root/head_<Dataset>Val.pt``;
* ``hf``: one folder per model (``config.json`` + ``model.safetensors`` or ``pytorch_model.bin``) of
  ``CLIPModel``, ``CLIPVisionModelWithProjection`` or ``CLIPVisionModel``; heads come from the base's text
  tower.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mergeflow.errors import MergeflowError
from mergeflow.io import load_tensors
from mergeflow.models.safe_pickle import Record, load_object

FORMATS = ("task_vectors", "tall_masks", "hf")
ACTIVATIONS = ("gelu", "quick_gelu")
# open_clip's text tower outside its transformer blocks (the image-only ImageEncoder keeps these six)
_TEXT_TOP = ("token_embedding.weight", "positional_embedding", "text_projection", "ln_final.weight", "ln_final.bias")


@dataclass
class SourceModel:
    """One model read from a community file, in open_clip's parameter names."""

    visual: dict[str, torch.Tensor]
    logit_scale: torch.Tensor | None = None
    text: dict[str, torch.Tensor] | None = None  # the whole text tower, or None where the file lacks it
    activation: str | None = None  # what the file says (its modules or its config), None if it cannot tell
    files: list[Path] = field(default_factory=list)


@dataclass
class SourceHead:
    """A zero-shot head as the source stores it: ``logits = normalize(f) @ weightᵀ + bias``."""

    weight: torch.Tensor
    bias: torch.Tensor | None
    normalize: bool


# --- layouts ----------------------------------------------------------------------------------------------
def base_file(fmt: str, root: Path, base: str | None) -> Path:
    default = {"task_vectors": "zeroshot.pt", "tall_masks": "MNISTVal/nonlinear_zeroshot.pt", "hf": None}[fmt]
    name = base or default
    if name is None:
        raise MergeflowError("model.import.base: the hf format needs the base model's folder name under root")
    return root / name


def expert_file(fmt: str, root: Path, theirs: str) -> Path:
    return {"task_vectors": root / theirs / "finetuned.pt",
            "tall_masks": root / f"{theirs}Val" / "nonlinear_finetuned.pt", "hf": root / theirs}[fmt]


def head_file(fmt: str, root: Path, theirs: str) -> Path | None:
    return {"task_vectors": root / f"head_{theirs}.pt", "tall_masks": root / f"head_{theirs}Val.pt", "hf": None}[fmt]


def read_model(fmt: str, path: Path) -> SourceModel:
    """The model at ``path`` in format ``fmt`` (a file, or a folder for ``hf``). Whatever a file makes go
    wrong while it is read is one :class:`MergeflowError` naming it (the cause kept for ``--verbose``)."""
    if fmt not in FORMATS:
        raise MergeflowError(f"model.import.format: unknown format {fmt!r}; one of {', '.join(FORMATS)}")
    return _bounded(read_hf if fmt == "hf" else read_open_clip, path)


def _bounded(read, path: Path):
    try:
        return read(path)
    except MergeflowError:
        raise
    except Exception as exc:  # noqa: BLE001 - the one boundary around a stranger's file
        raise MergeflowError(f"{path}: unreadable checkpoint ({type(exc).__name__}: {str(exc)[:200]})") from exc


# --- open_clip encoders (task_vectors, TALL) -----------------------------------------------------------------
# A module tree's state dict may name a shared submodule under each of its paths (torch's does), so records
# that fan out to the same sub-records give exponentially many names: more than this is refused.
MAX_STATE_KEYS = 1 << 16


def module_state(record: Record, prefix: str = "", _path: frozenset[int] = frozenset(),
                 _count: list[int] | None = None) -> dict[str, torch.Tensor]:
    """The state dict an ``nn.Module`` record would give: parameters, persistent buffers, then submodules.
    A module that contains itself, or a tree with more than :data:`MAX_STATE_KEYS` entries, is refused."""
    if id(record) in _path:
        raise MergeflowError(f"{record.qualname()}: module {prefix.rstrip('.') or '(root)'} contains itself")
    _path = _path | {id(record)}
    _count = [0] if _count is None else _count
    _count[0] += 1  # records visited count too: a tree of empty modules shared along many paths is no cheaper
    attrs = record.attrs()
    out: dict[str, torch.Tensor] = {}
    skip = set(attrs.get("_non_persistent_buffers_set") or ())
    for group in ("_parameters", "_buffers"):
        for name, value in (attrs.get(group) or {}).items():
            if value is None or (group == "_buffers" and name in skip):
                continue
            if not isinstance(value, torch.Tensor):
                raise MergeflowError(f"{record.qualname()}: {prefix}{name} is {type(value).__name__}, not a tensor")
            out[prefix + name] = value
            _count[0] += 1
            if _count[0] > MAX_STATE_KEYS:
                raise MergeflowError(f"{record.qualname()}: over {MAX_STATE_KEYS} tensors and modules in the tree "
                                     "(submodules shared along many paths?)")
    for name, child in (attrs.get("_modules") or {}).items():
        if child is None:
            continue
        if not isinstance(child, Record):
            raise MergeflowError(f"{record.qualname()}: submodule {prefix}{name} is not a module")
        if _count[0] > MAX_STATE_KEYS:
            raise MergeflowError(f"{record.qualname()}: over {MAX_STATE_KEYS} tensors and modules in the tree "
                                 "(submodules shared along many paths?)")
        out.update(module_state(child, f"{prefix}{name}.", _path, _count))
    return out


def _class_names(record: Record, seen: set[int] | None = None) -> set[str]:
    seen = set() if seen is None else seen
    if id(record) in seen:
        return set()
    seen.add(id(record))
    names = {record.qualname()}
    for child in (record.attrs().get("_modules") or {}).values():
        if isinstance(child, Record):
            names |= _class_names(child, seen)
    return names


def activation_of(record: Record) -> str | None:
    """``quick_gelu`` when the module tree holds a QuickGELU, ``gelu`` when it holds torch's GELU."""
    names = _class_names(record)
    if any(n.endswith(".QuickGELU") for n in names):
        return "quick_gelu"
    if any(n.endswith(".GELU") for n in names):
        return "gelu"
    return None


def _state_of(obj, source: str) -> tuple[dict[str, torch.Tensor], str | None]:
    if isinstance(obj, Record):
        return module_state(obj), activation_of(obj)
    if isinstance(obj, dict):
        if "state_dict" in obj and isinstance(obj["state_dict"], dict):
            obj = obj["state_dict"]
        bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
        if bad:
            raise MergeflowError(f"{source}: entry {bad[0]!r} is {type(obj[bad[0]]).__name__}, not a tensor")
        return dict(obj), None
    raise MergeflowError(f"{source}: holds {type(obj).__name__}, neither a module nor a state dict")


def read_open_clip(path: Path) -> SourceModel:
    """An open_clip CLIP or task_vectors ``ImageEncoder``: a pickled object or its state dict."""
    state, activation = _state_of(load_object(path), str(path))
    keys = {k.removeprefix("module.").removeprefix("model."): v for k, v in state.items()}
    visual = {k[len("visual."):]: v for k, v in keys.items() if k.startswith("visual.")}
    if not visual:
        raise MergeflowError(f"{path}: no image-encoder weights (no 'visual.' or 'model.visual.' keys)")
    text = {k: v for k, v in keys.items() if not k.startswith("visual.") and k != "logit_scale"}
    has_tower = any(k.startswith("transformer.") for k in text) and all(k in text for k in _TEXT_TOP)
    return SourceModel(visual=visual, logit_scale=keys.get("logit_scale"), text=text if has_tower else None,
                       activation=activation, files=[path])


def read_head(path: Path) -> SourceHead:
    """A task's classification head (a pickled module or its weight), read within the loader's boundary."""
    return _bounded(_read_head, path)


def _read_head(path: Path) -> SourceHead:
    """A task_vectors/TALL ``ClassificationHead`` (a pickled ``nn.Linear`` subclass) or its state dict."""
    obj = load_object(path)
    state, _ = _state_of(obj, str(path))
    if "weight" not in state:
        raise MergeflowError(f"{path}: a head without a 'weight'")
    normalize = bool(obj.attrs().get("normalize", True)) if isinstance(obj, Record) else True
    return SourceHead(weight=state["weight"], bias=state.get("bias"), normalize=normalize)


def head_to_ours(head: SourceHead, logit_scale: float, source: str) -> torch.Tensor:
    """Our head ``H`` with ``logit_scale · normalize(f) @ Hᵀ`` equal to the source's logits."""
    if not head.normalize:
        raise MergeflowError(f"{source}: a head that does not normalise the features (normalize=False); "
                             "mergeflow's classifier always does")
    if head.bias is not None and float(head.bias.abs().max()) > 0:
        raise MergeflowError(f"{source}: a head with a non-zero bias; mergeflow's zero-shot heads have none")
    return head.weight.float() / logit_scale


# --- Hugging Face CLIP ------------------------------------------------------------------------------------
_HF_LAYER = re.compile(r"encoder\.layers\.(\d+)\.(.+)")
_HF_BLOCK = {"self_attn.out_proj.weight": "attn.out_proj.weight", "self_attn.out_proj.bias": "attn.out_proj.bias",
             "layer_norm1.weight": "ln_1.weight", "layer_norm1.bias": "ln_1.bias",
             "layer_norm2.weight": "ln_2.weight", "layer_norm2.bias": "ln_2.bias",
             "mlp.fc1.weight": "mlp.c_fc.weight", "mlp.fc1.bias": "mlp.c_fc.bias",
             "mlp.fc2.weight": "mlp.c_proj.weight", "mlp.fc2.bias": "mlp.c_proj.bias"}
_HF_VISION = {"embeddings.class_embedding": "class_embedding", "embeddings.patch_embedding.weight": "conv1.weight",
              "embeddings.position_embedding.weight": "positional_embedding", "pre_layrnorm.weight": "ln_pre.weight",
              "pre_layrnorm.bias": "ln_pre.bias", "post_layernorm.weight": "ln_post.weight",
              "post_layernorm.bias": "ln_post.bias"}
_HF_TEXT = {"embeddings.token_embedding.weight": "token_embedding.weight",
            "embeddings.position_embedding.weight": "positional_embedding",
            "final_layer_norm.weight": "ln_final.weight", "final_layer_norm.bias": "ln_final.bias"}


def hf_tower(state: dict[str, torch.Tensor], names: dict[str, str], source: str) -> dict[str, torch.Tensor]:
    """One HF CLIP tower (keys without the ``vision_model.``/``text_model.`` prefix) in open_clip's names:
    q, k, v projections concatenated in that order into ``in_proj_*``, ``position_ids`` dropped."""
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        if key.endswith("position_ids"):
            continue
        if key in names:
            out[names[key]] = value
            continue
        m = _HF_LAYER.fullmatch(key)
        if m is None:
            raise MergeflowError(f"{source}: unexpected key {key} for a CLIP tower")
        layer, rest = int(m.group(1)), m.group(2)
        proj = re.fullmatch(r"self_attn\.([qkv])_proj\.(weight|bias)", rest)
        if proj:
            qkv.setdefault((layer, proj.group(2)), {})[proj.group(1)] = value
        elif rest in _HF_BLOCK:
            out[f"transformer.resblocks.{layer}.{_HF_BLOCK[rest]}"] = value
        else:
            raise MergeflowError(f"{source}: unexpected key {key} for a CLIP tower")
    for (layer, kind), parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise MergeflowError(f"{source}: layer {layer} lacks one of its q/k/v {kind}s")
        out[f"transformer.resblocks.{layer}.attn.in_proj_{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return out


def _hf_state(folder: Path) -> dict[str, torch.Tensor]:
    """A Hugging Face folder's weights: ``model.safetensors``, its shards (``model.safetensors.index.json``), or
    ``pytorch_model.bin`` through the restricted unpickler."""
    if (folder / "model.safetensors").is_file():
        return load_tensors(folder / "model.safetensors")
    if (folder / SHARD_INDEX).is_file():
        state = {}
        for file in shard_files(folder / SHARD_INDEX):
            state.update(load_tensors(file))
        return state
    if (folder / "pytorch_model.bin").is_file():
        state, _ = _state_of(load_object(folder / "pytorch_model.bin"), str(folder / "pytorch_model.bin"))
        return state
    raise MergeflowError(f"{folder}: no model.safetensors, {SHARD_INDEX} or pytorch_model.bin (a Hugging Face model "
                         "folder)")


SHARD_INDEX = "model.safetensors.index.json"


MAX_INDEX_BYTES = 64 * 2**20  # an index of tensor names; a real one is well under 1 MB


def read_shard_index(index: Path) -> dict[str, Path]:
    """Tensor name → shard file, from a ``model.safetensors.index.json`` (every shard a file beside it)."""
    index = Path(index)
    try:
        if index.stat().st_size > MAX_INDEX_BYTES:
            raise ValueError(f"over {MAX_INDEX_BYTES} bytes")
        weight_map = json.loads(index.read_text())["weight_map"]
        items = list(weight_map.items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise MergeflowError(f"{index}: unreadable shard index ({exc})") from None
    for _, name in items:
        if not isinstance(name, str) or Path(name).name != name or name in (".", ".."):
            raise MergeflowError(f"{index}: shard {name!r} is not a file name in its folder")
    return {key: index.parent / name for key, name in items}


def shard_files(index: Path) -> list[Path]:
    """The shard files a ``model.safetensors.index.json`` names."""
    return sorted(set(read_shard_index(index).values()))


def hf_activation(config: dict) -> str:
    """The image tower's activation in a CLIPConfig or CLIPVisionConfig (transformers' default: quick_gelu)."""
    vision = config.get("vision_config") or config
    act = vision.get("hidden_act", "quick_gelu")
    if act not in ACTIVATIONS:
        raise MergeflowError(f"hidden_act {act!r}: open_clip's CLIP towers use gelu or quick_gelu")
    return act


MAX_CONFIG_BYTES = 1 << 20  # a Hugging Face config.json is a few kB


def read_hf(folder: Path) -> SourceModel:
    """A Hugging Face CLIP folder, mapped to open_clip's names."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise MergeflowError(f"{folder}: no config.json (a Hugging Face model folder)")
    if (folder / "config.json").stat().st_size > MAX_CONFIG_BYTES:
        raise MergeflowError(f"{folder / 'config.json'}: over {MAX_CONFIG_BYTES} bytes; not a model configuration")
    config = json.loads((folder / "config.json").read_text())
    if not isinstance(config, dict):
        raise MergeflowError(f"{folder / 'config.json'}: not a JSON object")
    state = _hf_state(folder)
    vision, text, top = {}, {}, {}
    for key, value in state.items():
        if key.startswith("vision_model."):
            vision[key[len("vision_model."):]] = value
        elif key.startswith("text_model."):
            text[key[len("text_model."):]] = value
        elif key.startswith(("embeddings.", "encoder.", "pre_layrnorm.", "post_layernorm.")):
            vision[key] = value  # a CLIPVisionModel saved without its prefix
        else:
            top[key] = value
    source = str(folder)
    if not vision:
        raise MergeflowError(f"{folder}: no vision tower (no vision_model.* keys)")
    visual = hf_tower(vision, _HF_VISION, source)
    if "visual_projection.weight" in top:
        visual["proj"] = top.pop("visual_projection.weight").t().contiguous()
    text_tower = None
    if text:
        text_tower = hf_tower(text, _HF_TEXT, source)
        if "text_projection.weight" in top:
            text_tower["text_projection"] = top.pop("text_projection.weight").t().contiguous()
    logit_scale = top.pop("logit_scale", None)
    if top:
        raise MergeflowError(f"{folder}: unexpected key {sorted(top)[0]} for a CLIP model")
    files = [p for p in (folder / "config.json", folder / "model.safetensors", folder / "pytorch_model.bin")
             if p.is_file()]
    return SourceModel(visual=visual, logit_scale=logit_scale, text=text_tower, activation=hf_activation(config),
                       files=files)
