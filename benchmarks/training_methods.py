"""Wall time of the training-based merges (AdaMerging and its variants, Representation Surgery).

Runs ``mergeflow merge --method <run>`` for every configured run of a method that trains (the registry's
``training`` flag) in the current workspace, which must hold a finished pipeline (base, heads, experts,
prepared splits, and Surgery's base run), and prints each run's merge time (the method itself, as the
report shows it) and the whole command's (with Python's start-up and the loading of the inputs):

    python benchmarks/training_methods.py              # every training-based run of params.yaml
    python benchmarks/training_methods.py --runs adamerging surgery
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--runs", nargs="*", default=None, help="run names (default: every training-based run)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from mergeflow import config, paths
    from mergeflow.io import read_json
    from mergeflow.merge import METHODS

    cfg = config.load(args.params)
    runs = args.runs or [r.name for r in cfg.merge_runs() if METHODS[r.method].training]
    cli = Path(sys.executable).with_name("mergeflow")
    print(f"{'run':36s} {'merge (s)':>10s} {'command (s)':>12s}")
    for run in runs:
        start = time.perf_counter()
        subprocess.run([str(cli), "--params", args.params, "merge", "--method", run], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        total = time.perf_counter() - start
        print(f"{run:36s} {read_json(paths.merge_report(run))['wall_s']:10.1f} {total:12.1f}", flush=True)


if __name__ == "__main__":
    main()
