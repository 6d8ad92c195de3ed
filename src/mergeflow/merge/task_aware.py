"""Merge results that need the task at inference: a shared part plus a small per-task part.

Two shapes cover the task-aware methods of ``docs/algorithms.md`` (section 6):

* :class:`MaskedTaskModels` (TALL masks, EMR-Merging): ``θ_t = θ_pre + scale_t · (mask_t ⊙ vector)``
  with one shared task vector, a boolean mask per task and tensor, and a scalar per task;
* :class:`AdaptedModel` (Representation Surgery): one shared merged encoder and, per task, an adapter
  ``z' = z − relu(z W_downᵀ) W_upᵀ`` on its output.

Both are stored as one safetensors file (masks bit-packed, 8 entries a byte) and report the bytes they
need beyond one model (the base for masked models, the shared merged encoder for adapted ones), which the
report shows beside their accuracy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from mergeflow.errors import MergeflowError

_BITS = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8)


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """A boolean tensor as uint8 bytes, 8 entries a byte, first entry in the high bit (numpy's packbits)."""
    flat = mask.flatten().to(torch.uint8)
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    return (flat.view(-1, 8) * _BITS.to(flat.device)).sum(1, dtype=torch.uint8)


def unpack_bits(packed: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Inverse of :func:`pack_bits`."""
    n = math.prod(shape)
    bits = (packed.view(-1, 1) & _BITS.to(packed.device)) != 0
    return bits.flatten()[:n].view(shape)


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


@dataclass
class MaskedTaskModels:
    """``θ_t = θ_pre + scales[t] · (masks[t] ⊙ vector)``; keys of ``vector`` are the merged tensors."""

    vector: dict[str, torch.Tensor]
    masks: dict[str, dict[str, torch.Tensor]]
    scales: dict[str, float]

    kind = "masked"

    @property
    def tasks(self) -> list[str]:
        return list(self.masks)

    def state(self, pretrained: dict[str, torch.Tensor], task: str) -> dict[str, torch.Tensor]:
        """Task ``task``'s encoder weights; tensors without a vector entry stay ``θ_pre``'s."""
        if task not in self.masks:
            raise MergeflowError(f"no per-task part for task {task!r}; this result has {', '.join(self.masks)}")
        out = {}
        for key, pre in pretrained.items():
            if key in self.vector:
                delta = self.vector[key].float() * self.masks[task][key] * float(self.scales[task])
                out[key] = (pre.float() + delta.to(pre.device)).to(pre.dtype)
            else:
                out[key] = pre
        return out

    def to_tensors(self) -> tuple[dict[str, torch.Tensor], dict]:
        tensors = {f"vector.{k}": v.contiguous() for k, v in self.vector.items()}
        for task, masks in self.masks.items():
            tensors.update({f"mask.{task}.{k}": pack_bits(m) for k, m in masks.items()})
        meta = {"kind": self.kind, "tasks": self.tasks, "scales": {t: float(s) for t, s in self.scales.items()}}
        return tensors, meta

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], meta: dict) -> MaskedTaskModels:
        vector = {k[len("vector."):]: v for k, v in tensors.items() if k.startswith("vector.")}
        masks = {t: {k: unpack_bits(tensors[f"mask.{t}.{k}"], tuple(v.shape)) for k, v in vector.items()}
                 for t in meta["tasks"]}
        return cls(vector, masks, {t: float(s) for t, s in meta["scales"].items()})

    def extra_bytes(self) -> int:
        """The shared vector, every packed mask and one float32 scale per task."""
        tensors, _ = self.to_tensors()
        return sum(_nbytes(t) for t in tensors.values()) + 4 * len(self.scales)


class OutputAdapter(nn.Module):
    """Representation Surgery's adapter: ``z' = z − relu(z W_downᵀ) W_upᵀ``."""

    def __init__(self, dim: int, rank: int):
        super().__init__()
        self.down = nn.Parameter(torch.empty(rank, dim))
        self.up = nn.Parameter(torch.zeros(dim, rank))
        nn.init.kaiming_uniform_(self.down, a=math.sqrt(5))  # nn.Linear's default initialisation

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z - torch.relu(z @ self.down.t()) @ self.up.t()


class AdaptedEncoder(nn.Module):
    """An image encoder followed by an output adapter (what Surgery evaluates for one task)."""

    def __init__(self, visual: nn.Module, adapter: OutputAdapter):
        super().__init__()
        self.visual, self.adapter = visual, adapter

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.adapter(self.visual(images))


@dataclass
class AdaptedModel:
    """A shared merged encoder (``shared``) and one output adapter per task (``adapters[t] = (down, up)``)."""

    shared: dict[str, torch.Tensor]
    adapters: dict[str, tuple[torch.Tensor, torch.Tensor]]

    kind = "adapted"

    @property
    def tasks(self) -> list[str]:
        return list(self.adapters)

    def state(self, pretrained: dict[str, torch.Tensor], task: str) -> dict[str, torch.Tensor]:
        return {k: self.shared[k] for k in pretrained}

    def adapter(self, task: str) -> OutputAdapter:
        if task not in self.adapters:
            raise MergeflowError(f"no adapter for task {task!r}; this result has {', '.join(self.adapters)}")
        down, up = self.adapters[task]
        module = OutputAdapter(down.shape[1], down.shape[0])
        with torch.no_grad():
            module.down.copy_(down)
            module.up.copy_(up)
        return module

    def to_tensors(self) -> tuple[dict[str, torch.Tensor], dict]:
        tensors = {f"shared.{k}": v.contiguous() for k, v in self.shared.items()}
        for task, (down, up) in self.adapters.items():
            tensors[f"adapter.{task}.down"], tensors[f"adapter.{task}.up"] = down.contiguous(), up.contiguous()
        return tensors, {"kind": self.kind, "tasks": self.tasks}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], meta: dict) -> AdaptedModel:
        shared = {k[len("shared."):]: v for k, v in tensors.items() if k.startswith("shared.")}
        adapters = {t: (tensors[f"adapter.{t}.down"], tensors[f"adapter.{t}.up"]) for t in meta["tasks"]}
        return cls(shared, adapters)

    def extra_bytes(self) -> int:
        return sum(_nbytes(d) + _nbytes(u) for d, u in self.adapters.values())


KINDS = {cls.kind: cls for cls in (MaskedTaskModels, AdaptedModel)}


def from_tensors(tensors: dict[str, torch.Tensor], meta: dict) -> MaskedTaskModels | AdaptedModel:
    """Rebuild a stored task-aware result from its tensors and metadata."""
    try:
        return KINDS[meta["kind"]].from_tensors(tensors, meta)
    except KeyError:
        raise MergeflowError(f"not a task-aware merge result (kind {meta.get('kind')!r})") from None
