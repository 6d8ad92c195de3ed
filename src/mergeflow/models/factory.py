"""Build open_clip models: the real ViTs (optionally with pre-trained weights) and our tiny ones.

Our architectures are data: JSON files in ``configs/`` registered with open_clip's model registry, so
``open_clip.create_model("mf-vit-small")`` works like any built-in name.
"""

from __future__ import annotations

import logging
import os
from functools import cache
from pathlib import Path

import torch

from mergeflow import _torchvision_compat  # noqa: F401  (must precede open_clip, which imports torchvision)
from mergeflow.archs import config_file
from mergeflow.errors import MergeflowError
from mergeflow.io import load_tensors, read_json, save_tensors, write_json

CONFIG_DIR = Path(__file__).parent / "configs"
# Weights the project ships, ``<arch>-<tag>.safetensors`` beside the log of the run that made them
# (``mergeflow pretrain --tag <tag>``): ``model.pretrained: <tag>`` loads them like an open_clip tag.
SHIPPED_DIR = Path(__file__).parent / "pretrained"
# open_clip's 'openai' weights were trained with QuickGELU; the architectures' -quickgelu twins match them.
_QUICKGELU_TAGS = {"openai"}


@cache
def _open_clip():
    os.environ.setdefault("HF_HUB_OFFLINE", os.environ.get("HF_HUB_OFFLINE", "0"))
    import open_clip

    open_clip.add_model_config(CONFIG_DIR)
    return open_clip


def known_architectures() -> list[str]:
    return list(_open_clip().list_models())


def _check_arch(arch: str) -> None:
    if arch not in known_architectures():
        raise MergeflowError(f"model.arch: unknown architecture {arch!r}; "
                             "e.g. mf-vit-small, ViT-B-32, ViT-B-16, ViT-L-14")


def model_config(arch: str) -> dict:
    _check_arch(arch)
    return _open_clip().get_model_config(arch)


def image_size(arch: str) -> int:
    """The input resolution of ``arch`` (cheap: reads the config file, does not import open_clip)."""
    file = config_file(arch)
    cfg = read_json(file) if file else model_config(arch)
    size = cfg["vision_cfg"]["image_size"]
    return int(size[0] if isinstance(size, list | tuple) else size)


def shipped_checkpoint(arch: str, tag: str) -> Path:
    """Where the project keeps (or :func:`mergeflow.stages.models.pretrain` writes) ``arch``'s weights for ``tag``."""
    return SHIPPED_DIR / f"{arch}-{tag}.safetensors"


def shipped_tags(arch: str) -> list[str]:
    return sorted(p.name[len(arch) + 1:-len(".safetensors")] for p in SHIPPED_DIR.glob(f"{arch}-*.safetensors"))


def _read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        return load_tensors(path)
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable checkpoint is a user error
        raise MergeflowError(f"{path}: unreadable checkpoint ({exc})") from None
    if isinstance(sd, dict) and "state_dict" in sd:
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise MergeflowError(f"{path}: expected a state dict, got {type(sd).__name__}")
    return {k.removeprefix("module."): v for k, v in sd.items()}


def load_state_checked(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str,
                       keys: list[str] | None = None) -> None:
    """Load ``state`` into ``model`` (only ``keys`` of it, when given: the rest keep their values); a
    missing/unexpected key or a shape mismatch names the first one."""
    full = model.state_dict()
    own = full if keys is None else {k: full[k] for k in keys}
    for key, ref in own.items():
        if key not in state:
            raise MergeflowError(f"{source}: key {key} missing for this architecture")
        if tuple(state[key].shape) != tuple(ref.shape):
            raise MergeflowError(f"{source}: {key} has shape {tuple(state[key].shape)}, the architecture expects "
                                 f"{tuple(ref.shape)}")
    extra = [k for k in state if k not in own]
    if extra:
        raise MergeflowError(f"{source}: unexpected key {extra[0]} for this architecture")
    model.load_state_dict(state if keys is None else {**full, **state})


def create_model(arch: str, pretrained: str | None = None, seed: int = 0,
                 quick_gelu: bool | None = None) -> torch.nn.Module:
    """An open_clip CLIP model: random init (seeded), an open_clip tag such as ``openai``, a tag of the weights
    the project ships (``offline``), or a checkpoint path.

    ``quick_gelu``: ``None`` keeps the architecture's activation (QuickGELU for the ``openai`` tag, whose
    weights were trained with it); ``True``/``False`` force QuickGELU or GELU. The wrong one loads silently
    and costs accuracy, so checkpoints of OpenAI weights need ``True`` said explicitly.
    """
    _check_arch(arch)
    oc = _open_clip()
    force = {} if quick_gelu is None else {"force_quick_gelu": True} if quick_gelu else {}
    if quick_gelu is False and model_config(arch).get("quick_gelu"):
        raise MergeflowError(f"model.activation: gelu, but {arch} is a QuickGELU architecture; use its plain twin")
    if pretrained is not None and pretrained in shipped_tags(arch):
        pretrained = str(shipped_checkpoint(arch, pretrained))
    if pretrained is None or Path(pretrained).is_file():
        torch.manual_seed(seed)
        # open_clip warns on the root logger that no pretrained weights were loaded: intended here.
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)
        try:
            model = oc.create_model(arch, pretrained=None, **force)
        finally:
            root.setLevel(level)
        if pretrained is not None:
            load_state_checked(model, _read_checkpoint(Path(pretrained)), str(pretrained))
        return model.eval()
    if any(sep in pretrained for sep in ("/", "\\")) or pretrained.endswith((".safetensors", ".pt", ".bin")):
        raise MergeflowError(f"model.pretrained: checkpoint {pretrained} not found")
    tags = [*oc.list_pretrained_tags_by_model(arch), *shipped_tags(arch)]
    if pretrained not in tags:
        raise MergeflowError(f"model.pretrained: {arch} has no pre-trained tag {pretrained!r}; tags: "
                             f"{', '.join(tags) or '(none)'}; or give a checkpoint path")
    twin = pretrained in _QUICKGELU_TAGS and quick_gelu is not False and f"{arch}-quickgelu" in oc.list_models()
    name = f"{arch}-quickgelu" if twin else arch
    try:
        model = oc.create_model(name, pretrained=pretrained, **force)
    except Exception as exc:  # noqa: BLE001 - network/hub failures of any kind
        raise MergeflowError(
            f"model.pretrained: the {pretrained!r} weights of {arch} cannot be fetched here "
            f"({type(exc).__name__}); download them where there is network and set model.pretrained to the "
            "checkpoint path (open_clip .bin/.pt or .safetensors)") from None
    return model.eval()


def uses_quick_gelu(model: torch.nn.Module) -> bool:
    from open_clip.transformer import QuickGELU

    return any(isinstance(m, QuickGELU) for m in model.modules())


def tower_keys(model: torch.nn.Module, towers: tuple[str, ...]) -> list[str]:
    """The state keys of ``towers``: ``visual`` is the image encoder and the logit scale, ``text`` the rest."""
    keys = list(model.state_dict())
    if "text" in towers:
        return keys
    return [k for k in keys if k.startswith("visual.") or k == "logit_scale"]


def save_base(model: torch.nn.Module, arch: str, folder: str | Path, extra: dict | None = None,
              towers: tuple[str, ...] = ("visual", "text")) -> None:
    """``folder/model.safetensors`` + ``folder/config.json`` (architecture, open_clip config, activation and
    which towers the weights hold: an imported image-only checkpoint has no text tower)."""
    folder = Path(folder)
    state = model.state_dict()
    save_tensors(folder / "model.safetensors", {k: state[k] for k in tower_keys(model, towers)})
    write_json(folder / "config.json", {"arch": arch, "open_clip_config": model_config(arch),
                                        "quick_gelu": uses_quick_gelu(model), "towers": list(towers), **(extra or {})})


def load_base(folder: str | Path) -> tuple[torch.nn.Module, str]:
    """The base CLIP model saved by :func:`save_base` (no network needed). Without a text tower the model's
    ``has_text_tower`` is False and its text weights are the seeded random initialisation."""
    folder = Path(folder)
    info = read_json(folder / "config.json")
    arch = info["arch"]
    if arch not in known_architectures():
        raise MergeflowError(f"{folder / 'config.json'}: unknown architecture {arch!r}")
    model = create_model(arch, None, quick_gelu=info.get("quick_gelu"))
    towers = tuple(info.get("towers", ("visual", "text")))
    load_towers_checked(model, load_tensors(folder / "model.safetensors"), towers, str(folder / "model.safetensors"))
    model.has_text_tower = "text" in towers
    return model.eval(), arch


def load_towers_checked(model: torch.nn.Module, state: dict[str, torch.Tensor], towers: tuple[str, ...],
                        source: str) -> None:
    """:func:`load_state_checked` on the keys of ``towers`` only."""
    load_state_checked(model, state, source, tower_keys(model, towers))


def load_visual_state(visual: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load an image-encoder state dict (an expert or a merged model) into ``visual``, checked."""
    load_state_checked(visual, state, source)
