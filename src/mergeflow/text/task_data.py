"""What AdaMerging, TALL masks and Consensus read on the text suite: token batches and each task's classifier.

The image suite's :class:`~mergeflow.merge.context.TaskData` scores an encoder's output against zero-shot
text heads; a GLUE-style expert instead keeps its own classification head on top of the shared body. Here
each task has a classifier module holding the pre-trained body and that task's expert head, and a merged
body is run through it functionally, so gradients reach the body's weights (AdaMerging's coefficients)
while the heads stay frozen.

Prediction entropy, AdaMerging's objective, is undefined for a regression output (a score has no
distribution over classes): such tasks are sampled but give no logits, so their coefficients learn only
through the other tasks' entropy. :attr:`TokenTaskData.not_applicable` says which tasks and why; the merge
stage records it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.func import functional_call

from mergeflow.merge.context import TaskData
from mergeflow.text.train import token_batch

NO_ENTROPY = ("prediction entropy is undefined for a regression output; its coefficients learn only through the "
              "other tasks' entropy")


@dataclass
class TokenTaskData(TaskData):
    """:class:`TaskData` over token sequences.

    Attributes:
        models: task → sequence classifier holding the pre-trained body and the task's expert head (frozen,
            in eval mode: no dropout in a merge's objective).
        regression: tasks whose head outputs one score rather than class logits.
        device: where batches and models live.
        uses: what the method reads (its spec's ``uses``): entropy matters only when it reads unlabeled data.
    """

    models: dict[str, torch.nn.Module] = field(default_factory=dict)
    regression: frozenset[str] = frozenset()
    device: torch.device | str = "cpu"
    uses: tuple[str, ...] = ()

    @property
    def not_applicable(self) -> dict[str, str]:
        """Task → why the method's objective leaves it out (empty when nothing is left out)."""
        return {t: NO_ENTROPY for t in sorted(self.regression)} if "unlabeled" in self.uses else {}

    def sample(self, task: str, count: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """``count`` sequences of ``task``'s unlabeled split drawn uniformly, as a padded batch."""
        arrays = self.unlabeled[task]
        n = len(arrays["input_ids"])
        index = torch.randperm(n, generator=generator)[:count].sort().values.numpy()
        return token_batch(arrays, index, self.device)

    def logits(self, weights: dict[str, torch.Tensor], task: str, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Task ``task``'s head on the body ``weights`` (functional: gradients flow into ``weights``)."""
        return functional_call(self.models[task], weights, args=(), kwargs=dict(batch)).logits

    def logits_of_tasks(self, weights: dict[str, torch.Tensor],
                        batches: dict[str, Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """:meth:`logits` of every classification task in ``batches`` (regression tasks give none: see the
        module's docstring)."""
        return {t: self.logits(weights, t, b) for t, b in batches.items() if t not in self.regression}


def token_task_data(models: dict[str, torch.nn.Module], regression: set[str], uses: tuple[str, ...],
                    unlabeled: dict[str, dict[str, np.ndarray]], unlabeled_split: str,
                    val_accuracy: Callable[[dict[str, torch.Tensor], str], float] | None,
                    device: torch.device | str = "cpu") -> TokenTaskData:
    """A :class:`TokenTaskData` with its classifiers frozen on ``device``."""
    frozen = {t: m.to(device).eval().requires_grad_(False) for t, m in models.items()}
    return TokenTaskData(unlabeled=unlabeled, unlabeled_split=unlabeled_split, val_accuracy=val_accuracy,
                         models=frozen, regression=frozenset(regression), device=device, uses=tuple(uses))
