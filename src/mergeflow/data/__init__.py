"""Tasks: the registry (name → class names, templates, loader), the offline suite and the real datasets.

``TASKS[name]`` is a :class:`TaskSpec`; :func:`load_split` returns a ``torch.utils.data.Dataset`` of
``(PIL.Image, int)`` for a task's train/val/test split read from its raw folder; :mod:`.prepared` holds
the decoded, resized tensors that every later stage reads.
"""

from mergeflow.data import offline, real  # noqa: F401  (registers the tasks)
from mergeflow.data.registry import SPLITS, TASKS, TaskSpec, get_task, load_split

__all__ = ["SPLITS", "TASKS", "TaskSpec", "get_task", "load_split"]
