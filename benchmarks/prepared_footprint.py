"""Memory, disk and time of a prepared split at the real benchmark's size: SVHN's 73 257 training images.

Prepares a synthetic split of that many 32×32 images (SVHN's own size) resized to 224 px through the same
code as ``mergeflow prepare`` (:func:`mergeflow.data.prepared.write_split`), then fine-tunes a small 224 px
ViT on it through the same loop as ``mergeflow finetune`` and scores it on every image as ``evaluate``
does, each in a fresh process, and prints each phase's peak resident memory, the file's size and the time
per image:

    python benchmarks/prepared_footprint.py --out /tmp/footprint          # SVHN's count
    python benchmarks/prepared_footprint.py --out /tmp/fp --images 5000   # a quick look
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

SVHN_TRAIN = 73_257


class SyntheticDigits:
    """``n`` seeded 32×32 RGB images with 10 labels, made on demand (a dataset, not an array)."""

    def __init__(self, n: int, seed: int = 0):
        self.n, self.seed = n, seed

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        import numpy as np
        from PIL import Image

        rng = np.random.default_rng((self.seed, i))
        return Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), mode="RGB"), int(i % 10)


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def phase_prepare(out: Path, n: int) -> dict:
    from mergeflow.data.prepared import write_split

    start = time.perf_counter()
    write_split(SyntheticDigits(n), out / "train.safetensors", 224, "prepare synthetic")
    wall = time.perf_counter() - start
    return {"wall_s": round(wall, 1), "ms_per_image": round(1000 * wall / n, 3),
            "file_gb": round((out / "train.safetensors").stat().st_size / 1e9, 2)}


def _classifier():
    import open_clip
    import torch

    from mergeflow.models.classifier import ImageClassifier

    visual = open_clip.model._build_vision_tower(64, open_clip.model.CLIPVisionCfg(
        layers=2, width=128, head_width=32, patch_size=32, image_size=224))
    return ImageClassifier(visual, torch.nn.functional.normalize(torch.randn(10, 64), dim=-1))


def phase_finetune(out: Path, steps: int) -> dict:
    import torch

    from mergeflow.data.split_file import open_split
    from mergeflow.train.finetune import finetune

    images, labels = open_split(out / "train.safetensors")
    start = time.perf_counter()
    finetune(_classifier(), images, labels, steps=steps, batch_size=128, lr=1e-5, weight_decay=0.1, warmup_steps=2,
             grad_clip=1.0, seed=0, device=torch.device("cpu"), task="synthetic")
    wall = time.perf_counter() - start
    return {"steps": steps, "batch_size": 128, "wall_s": round(wall, 1),
            "ms_per_image": round(1000 * wall / (steps * 128), 3)}


def phase_evaluate(out: Path) -> dict:
    import torch

    from mergeflow.data.split_file import open_split
    from mergeflow.evaluate import accuracy

    images, labels = open_split(out / "train.safetensors")
    start = time.perf_counter()
    accuracy(_classifier(), images, labels, batch_size=128, device=torch.device("cpu"))
    wall = time.perf_counter() - start
    return {"images": len(labels), "wall_s": round(wall, 1), "ms_per_image": round(1000 * wall / len(labels), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="a folder with room for the split (11 GB)")
    parser.add_argument("--images", type=int, default=SVHN_TRAIN)
    parser.add_argument("--steps", type=int, default=50, help="fine-tuning steps of batch 128")
    parser.add_argument("--phase", choices=["prepare", "finetune", "evaluate"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:  # one phase in this process: its peak memory is its own
        args.out.mkdir(parents=True, exist_ok=True)
        result = {"prepare": lambda: phase_prepare(args.out, args.images),
                  "finetune": lambda: phase_finetune(args.out, args.steps),
                  "evaluate": lambda: phase_evaluate(args.out)}[args.phase]()
        print(json.dumps({**result, "peak_rss_mb": round(_peak_mb())}))
        return
    report = {"images": args.images, "image_size": 224}
    for phase in ("prepare", "finetune", "evaluate"):
        out = subprocess.run([sys.executable, __file__, "--out", str(args.out), "--images", str(args.images),
                              "--steps", str(args.steps), "--phase", phase], capture_output=True, text=True)
        if out.returncode != 0:
            sys.exit(f"{phase} failed:\n{out.stderr[-3000:]}")
        report[phase] = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{phase}: {report[phase]}", flush=True)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
