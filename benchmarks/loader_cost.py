"""What the hardened checkpoint loader costs on honest files: ViT-B/32-sized state dicts in torch's zip and
legacy formats, loaded by ``mergeflow.models.safe_pickle.load_object`` and by ``torch.load(weights_only=True)``,
each in a fresh process (wall time of the load; how far the load raises the process's peak resident memory),
best of ``--runs``:

    python benchmarks/loader_cost.py [--runs 3] [--arch ViT-B-32]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import importlib.util, sys, time
import torch


def high_water():  # this process's peak resident set in KiB (VmHWM; ru_maxrss would include the parent's)
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))


# the loader's module alone (the mergeflow.models package would import open_clip, whose import peak hides
# the load's): the process's high-water mark then rises with the load only
spec = importlib.util.spec_from_file_location("safe_pickle", sys.argv[3])
safe_pickle = importlib.util.module_from_spec(spec)
spec.loader.exec_module(safe_pickle)
path, how = sys.argv[1], sys.argv[2]
base = high_water()
start = time.perf_counter()
obj = safe_pickle.load_object(path) if how == "mergeflow" else torch.load(path, weights_only=True)
elapsed = time.perf_counter() - start
print(elapsed, high_water() - base, len(obj))
"""

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--arch", default="ViT-B-32")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from mergeflow.models import create_model, safe_pickle

    state = create_model(args.arch, None, seed=0).visual.state_dict()
    size = sum(v.numel() * v.element_size() for v in state.values())
    print(f"{args.arch} image encoder: {len(state)} tensors, {size / 2 ** 20:.0f} MiB")
    with tempfile.TemporaryDirectory() as tmp:
        files = {"zip": Path(tmp) / "zip.pt", "legacy": Path(tmp) / "legacy.pt"}
        torch.save(state, files["zip"])
        torch.save(state, files["legacy"], _use_new_zipfile_serialization=False)
        print(f"{'format':8s} {'loader':10s} {'time (s)':>9s} {'peak rise (MiB)':>16s}")
        results = {}
        for fmt, path in files.items():
            for how in ("torch", "mergeflow"):
                best = None
                for _ in range(args.runs):
                    out = subprocess.run([sys.executable, "-c", CHILD, str(path), how, safe_pickle.__file__],
                                         capture_output=True, text=True, check=True).stdout.split()
                    run = (float(out[0]), int(out[1]) / 1024)
                    best = run if best is None else (min(best[0], run[0]), min(best[1], run[1]))
                results[fmt, how] = best
                print(f"{fmt:8s} {how:10s} {best[0]:9.2f} {best[1]:16.0f}")
        for fmt in files:
            t, m = results[fmt, "mergeflow"], results[fmt, "torch"]
            print(f"{fmt}: mergeflow / torch = {t[0] / m[0]:.2f}x time, {t[1] / m[1]:.2f}x peak memory")


if __name__ == "__main__":
    main()
