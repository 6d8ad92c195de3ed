"""What each pipeline rule asks a cluster scheduler for, scaled by the size of the configuration's model.

Snakemake's rules read these as ``resources:`` (``mem_mb``, ``runtime`` in minutes, ``gpu``) and
``threads``; a local run ignores memory and run time, and the SLURM profile
(``workflow/profiles/slurm``) turns them into ``sbatch`` options. The figures are ceilings with room to
spare, not measurements of each rule: the offline and tiny models fit any node; ViT-B/32 and ViT-L/14
follow the papers' 8-task benchmark (experts of 350 MB and 1.2 GB, 224 px splits read in chunks). Override
one with ``snakemake --set-resources merge:mem_mb=...``.
"""

from __future__ import annotations

from typing import Any

# rule -> (mem_mb, runtime_min, gpu, cpus) per size class; gpu 0 = a CPU job
_TABLE: dict[str, dict[str, tuple[int, int, int, int]]] = {
    "small": {  # mf-vit-tiny/-small on 32 px tasks: CPU jobs of minutes
        "fetch": (4000, 30, 0, 2), "prepare": (4000, 30, 0, 2), "import_models": (4000, 30, 0, 2),
        "base": (4000, 60, 0, 2), "heads": (4000, 30, 0, 2), "finetune": (6000, 60, 0, 2),
        "exemplars": (2000, 15, 0, 1), "features": (4000, 30, 0, 2), "reference": (4000, 30, 0, 2),
        "merge": (6000, 60, 0, 2), "report": (4000, 30, 0, 1),
    },
    "base": {  # ViT-B/16, ViT-B/32 at 224 px
        "fetch": (8000, 240, 0, 4), "prepare": (16000, 240, 0, 8), "import_models": (16000, 60, 0, 4),
        "base": (16000, 60, 1, 8), "heads": (16000, 60, 1, 8), "finetune": (48000, 720, 1, 8),
        "exemplars": (4000, 15, 0, 1), "features": (32000, 120, 1, 8), "reference": (32000, 120, 1, 8),
        "merge": (64000, 180, 1, 8), "report": (8000, 30, 0, 1),
    },
    "large": {  # ViT-L/14 at 224 px
        "fetch": (8000, 240, 0, 4), "prepare": (16000, 240, 0, 8), "import_models": (48000, 120, 0, 4),
        "base": (32000, 120, 1, 8), "heads": (32000, 120, 1, 8), "finetune": (96000, 2880, 1, 8),
        "exemplars": (4000, 15, 0, 1), "features": (64000, 360, 1, 8), "reference": (64000, 360, 1, 8),
        "merge": (160000, 480, 1, 8), "report": (8000, 30, 0, 1),
    },
}
RULES = tuple(_TABLE["small"])


def size_class(arch: str) -> str:
    """``small`` for our models, ``large`` for ViT-L/H/g/bigG, ``base`` for ViT-B and other open_clip models."""
    if arch.startswith("mf-"):
        return "small"
    family, _, rest = arch.partition("-")
    return "large" if family == "ViT" and rest[:1] in ("L", "H", "g", "b") else "base"


def resources(arch: str, device: str = "auto") -> dict[str, dict[str, Any]]:
    """Per rule: ``mem_mb``, ``runtime`` (minutes), ``gpu`` and ``cpus`` for a model ``arch``.

    ``device: cpu`` asks for no GPU anywhere (a CPU-only cluster).
    """
    table = _TABLE[size_class(arch)]
    return {rule: {"mem_mb": mem, "runtime": runtime, "gpu": 0 if device == "cpu" else gpu, "cpus": cpus}
            for rule, (mem, runtime, gpu, cpus) in table.items()}
