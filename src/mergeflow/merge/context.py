"""What the training-based and validation-tuned methods read beyond the weights.

Most merge methods are pure functions of ``θ_pre``, the experts and precomputed statistics. AdaMerging,
Representation Surgery and the TALL/Consensus masks also run the encoder: on unlabeled images of each task,
or to score a candidate on a task's validation split. The merge stage supplies those as a
:class:`TaskData`; tests build one around a tiny encoder. The methods stay functions of their inputs.
A suite whose models read other inputs subclasses it (:class:`mergeflow.text.task_data.TokenTaskData`:
token batches, each task's own classification head) and overrides :meth:`TaskData.sample` and
:meth:`TaskData.logits_of_tasks`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F


@dataclass
class TaskData:
    """Encoder access and data for the methods that run the model.

    Attributes:
        encode: ``encode(weights, images) -> z``: the image encoder's output for uint8 images under
            ``weights`` (a state dict; functional, so gradients flow into the weights when they require them).
        heads: task → frozen zero-shot head (classes × embedding).
        logit_scale: CLIP's logit scale used with the heads.
        unlabeled: task → indexable uint8 images whose labels the methods never see.
        unlabeled_split: which split ``unlabeled`` comes from (``test`` as in the papers, or ``val``).
        val_accuracy: ``val_accuracy(weights, task) -> float`` on the task's validation split.
        merged: run name → the state dict of another run's merged model (Surgery's base).
    """

    encode: Callable[[dict[str, torch.Tensor], torch.Tensor], torch.Tensor] | None = None
    heads: dict[str, torch.Tensor] = field(default_factory=dict)
    logit_scale: float = 1.0
    unlabeled: dict[str, Any] = field(default_factory=dict)
    unlabeled_split: str = "test"
    val_accuracy: Callable[[dict[str, torch.Tensor], str], float] | None = None
    merged: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)

    def logits(self, weights: dict[str, torch.Tensor], task: str, images: torch.Tensor) -> torch.Tensor:
        """``scale · normalize(encode(x)) @ head_tᵀ``, the classifier of the task-arithmetic literature."""
        z = F.normalize(self.encode(weights, images), dim=-1)
        return self.logit_scale * z @ self.heads[task].to(z.device).t()

    def logits_of_tasks(self, weights: dict[str, torch.Tensor],
                        images: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """:meth:`logits` of several tasks' images in one pass of the encoder (a ViT treats images
        independently, so this equals one pass per task, at a fraction of the per-operation cost)."""
        tasks = list(images)
        z = F.normalize(self.encode(weights, torch.cat([images[t] for t in tasks])), dim=-1)
        out, start = {}, 0
        for t in tasks:
            part = z[start:start + len(images[t])]
            out[t] = self.logit_scale * part @ self.heads[t].to(z.device).t()
            start += len(images[t])
        return out

    def sample(self, task: str, count: int, generator: torch.Generator) -> torch.Tensor:
        """``count`` unlabeled images of ``task`` drawn uniformly (with replacement across calls)."""
        images = self.unlabeled[task]
        index = torch.randperm(len(images), generator=generator)[:count]
        return images[index.sort().values]
