"""TSV-Merge: task singular vectors, decorrelated by orthogonalising the concatenated bases."""

from __future__ import annotations

import torch

from mergeflow.merge.common import add_scaled, task_vectors
from mergeflow.merge.registry import alpha, register


def polar(m: torch.Tensor) -> torch.Tensor:
    """The orthogonal polar factor ``U Vᵀ`` of ``m``."""
    u, _, vh = torch.linalg.svd(m, full_matrices=False)
    return u @ vh


def tsv_matrix(deltas: list[torch.Tensor]) -> torch.Tensor:
    """Keep each task's top ⌊r/K⌋ singular triplets (at least 1), orthogonalise, rebuild."""
    k = len(deltas)
    r = max(1, min(deltas[0].shape) // k)
    us, ss, vs = [], [], []
    for d in deltas:
        u, s, vh = torch.linalg.svd(d, full_matrices=False)
        us.append(u[:, :r])
        ss.append(s[:r])
        vs.append(vh[:r].t())
    u, s, v = torch.cat(us, 1), torch.cat(ss), torch.cat(vs, 1)
    return polar(u) @ torch.diag(s) @ polar(v).t()


@register("tsv", "TSV-Merge", "Gargiulo et al., Task singular vectors, CVPR 2025", {"alpha": alpha(1.0)}, scale="alpha")
def tsv(pretrained, experts, stats=None, diagnostics=None, *, alpha):
    """2-D weights: orthogonalised task singular vectors; other parameters: the mean task vector."""
    vectors = task_vectors(pretrained, experts)
    tasks = list(vectors)
    delta = {}
    for k in vectors[tasks[0]]:
        items = [vectors[t][k] for t in tasks]
        delta[k] = tsv_matrix(items) if items[0].ndim == 2 else torch.stack(items).mean(0)
    return add_scaled(pretrained, delta, alpha)
