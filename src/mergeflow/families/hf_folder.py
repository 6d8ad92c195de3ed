"""Hugging Face model folders of any ``transformers`` family: config and weights read, checked and keyed as the
family's models are built (``config.json`` and ``model.safetensors``, or ``pytorch_model.bin`` through the
restricted unpickler). The family is the one whose adapter lists the config's ``model_type``.

Two views of a folder: the *body* (``num_labels`` None: the task model's prefix stripped, its head dropped,
whatever the folder holds — a bare encoder, a masked or causal LM, a classifier) and a *sequence classifier*
with a head of ``num_labels`` outputs (a published GLUE checkpoint).
"""

from __future__ import annotations

from pathlib import Path

import torch

from mergeflow.errors import MergeflowError
from mergeflow.families import Family, family_for_model_type
from mergeflow.models.community import SHARD_INDEX

MAX_CONFIG_BYTES = 1 << 20  # a Hugging Face config.json is a few kB
# what a folder's config says about the checkpoint that does not describe the architecture
_NOT_ARCHITECTURE = ("architectures", "id2label", "label2id", "num_labels")


def family_of(config: dict, source: str) -> Family:
    """The adapter of a ``config.json``'s ``model_type``; one line naming the file when none has it."""
    return family_for_model_type(config.get("model_type"), source)


def with_padding(config: dict) -> dict:
    """A decoder's config with a padding id: GPT-2 and LLaMA-style checkpoints often have none, and a sequence
    classifier reads each sequence's last token before the padding. The end-of-text token pads, as FusionBench's
    GPT-2 GLUE experts were trained (their ``pad_token_id`` is GPT-2's ``eos_token_id``, 50256)."""
    if config.get("pad_token_id") is not None or config.get("eos_token_id") is None:
        return config
    eos = config["eos_token_id"]
    return {**config, "pad_token_id": eos[0] if isinstance(eos, list) else eos}


def read_config(folder: str | Path) -> dict:
    """A folder's ``config.json`` without what only describes the checkpoint's head (labels, architectures)."""
    from mergeflow.io import read_json

    file = Path(folder) / "config.json"
    if not file.is_file():
        raise MergeflowError(f"{folder}: no config.json (a Hugging Face model folder)")
    if file.stat().st_size > MAX_CONFIG_BYTES:
        raise MergeflowError(f"{file}: over {MAX_CONFIG_BYTES} bytes; not a model configuration")
    config = read_json(file)
    if not isinstance(config, dict):
        raise MergeflowError(f"{file}: not a JSON object")
    return {k: v for k, v in config.items() if k not in _NOT_ARCHITECTURE}


def shapes(file: Path) -> dict[str, tuple[int, ...]]:
    """Every tensor's shape from a safetensors header, without reading the tensors."""
    from safetensors import safe_open

    if not file.is_file():
        raise MergeflowError(f"{file}: file not found")
    try:
        with safe_open(str(file), framework="pt") as handle:
            return {k: tuple(handle.get_slice(k).get_shape()) for k in handle.keys()}
    except Exception as exc:  # noqa: BLE001 - safetensors' own errors come as several types
        raise MergeflowError(f"{file}: unreadable safetensors header ({str(exc).splitlines()[0][:160]})") from None


def weight_files(folder: str | Path) -> list[Path]:
    """The files holding a folder's weights: ``model.safetensors``, the shards its index names, or
    ``pytorch_model.bin``."""
    from mergeflow.models.community import shard_files

    folder = Path(folder)
    if (folder / "model.safetensors").is_file():
        return [folder / "model.safetensors"]
    if (folder / SHARD_INDEX).is_file():
        return shard_files(folder / SHARD_INDEX)
    if (folder / "pytorch_model.bin").is_file():
        return [folder / "pytorch_model.bin"]
    raise MergeflowError(f"{folder}: no model.safetensors, {SHARD_INDEX} or pytorch_model.bin (a Hugging Face "
                         "model folder)")


def _target(family: Family, config: dict, num_labels: int | None):
    """The state dict a folder must fill, and the task model's prefix (``roberta.``, ``transformer.``)."""
    model = family.build(config, num_labels if num_labels is not None else 1)
    wanted = model.state_dict() if num_labels is not None else model.base_model.state_dict()
    return wanted, f"{model.base_model_prefix}."


def read_folder(folder: str | Path, num_labels: int | None = None) -> tuple[dict, dict]:
    """The config and weights of a Hugging Face folder, under the names the family's models have.

    With ``num_labels`` None the body, else a sequence classifier's weights with a head of ``num_labels``
    outputs. A tensor the model needs and the folder lacks, or a head of another size, is one line naming it.
    """
    from mergeflow.models.community import _hf_state

    folder = Path(folder)
    config = read_config(folder)
    family = family_of(config, str(folder / "config.json"))
    state = {k: v for k, v in _hf_state(folder).items() if family.unit(k).kind != "excluded"}
    family.check_config(config, {k: tuple(v.shape) for k, v in state.items()}, str(folder / "config.json"))
    wanted, prefix = _target(family, config, num_labels)
    if num_labels is None:
        state = {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state.items()
                 if family.unit(k).kind != "head"}
    else:
        state = {k if k.startswith(prefix) or family.unit(k).kind == "head" else prefix + k: v
                 for k, v in state.items()}
    files = weight_files(folder)
    where = files[0] if len(files) == 1 else folder / SHARD_INDEX
    out = {}
    for key, ref in wanted.items():
        if family.unit(key).kind == "excluded":
            continue
        if key not in state:
            raise MergeflowError(f"{where}: {key} is missing")
        if tuple(state[key].shape) != tuple(ref.shape):
            head = f" ({num_labels} outputs)" if family.unit(key).kind == "head" else ""
            raise MergeflowError(f"{where}: {key} has shape {tuple(state[key].shape)}, the model {tuple(ref.shape)}"
                                 + head)
        out[key] = state[key].to(ref.dtype).contiguous()
    return config, out


def load(folder: str | Path, num_labels: int | None = None):
    """The model saved in ``folder`` (``config.json`` and ``model.safetensors``, its shards, or
    ``pytorch_model.bin``; no network): the family's ``build(config, num_labels)`` with the folder's weights.

    Index buffers a checkpoint may hold are dropped (the model makes its own). A body's weights (keys without
    the task model's prefix) fill the body of a sequence classifier, whose head is newly initialised, or of a
    language model (a tied output projection is the body's token table). Safetensors weights are copied into the
    built model one tensor at a time, read without a memory map: the peak is the model and its largest tensor,
    not the model twice.
    """
    from mergeflow.io import read_json
    from mergeflow.models.community import _hf_state
    from mergeflow.safetensors_file import open_weights

    folder = Path(folder)
    config = read_json(folder / "config.json")
    family = family_of(config, str(folder / "config.json"))
    files = weight_files(folder)
    if files[0].suffix == ".safetensors":
        reader = open_weights(folder, str(folder))
        get, sizes = reader.get, {k: tuple(v[1]) for k, v in reader.info.items()}
    else:  # a pickled checkpoint is read whole
        state = _hf_state(folder)
        reader, get, sizes = None, state.__getitem__, {k: tuple(v.shape) for k, v in state.items()}
    try:
        keys = [k for k in sizes if family.unit(k).kind != "excluded"]
        family.check_config(config, {k: sizes[k] for k in keys}, str(folder / "config.json"))
        model = family.build(config, num_labels)
        own = model.state_dict()
        prefix = f"{model.base_model_prefix}."
        add = any(k.startswith(prefix) for k in own) and not any(k.startswith(prefix) for k in keys)
        unexpected = [k for k in keys if (prefix + k if add else k) not in own]
        loaded = set()
        with torch.no_grad():
            for key in keys:
                name = prefix + key if add else key
                if name not in own:
                    continue
                if tuple(own[name].shape) != sizes[key]:
                    raise MergeflowError(f"{folder}: {key} has shape {sizes[key]}, the model {tuple(own[name].shape)}")
                own[name].copy_(get(key))
                loaded.add(own[name].data_ptr())
    finally:
        if reader is not None:
            reader.close()
    # a tied output projection (saved once, as the token table) is missing from the file, not from the model
    missing = [k for k in own if own[k].data_ptr() not in loaded and family.unit(k).kind != "excluded"
               and (family.unit(k).kind != "head" or num_labels is None)]
    if missing or unexpected:
        key = (missing or unexpected)[0]
        raise MergeflowError(f"{folder}: {key} is {'missing' if missing else 'unexpected'}")
    return model.eval()
