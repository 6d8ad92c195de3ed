"""Wall time of a whole `dvc repro`, stage by stage: the README's pipeline figures.

Runs ``dvc repro`` (extra arguments are passed on) in the current directory, stamps every stage start
and prints each stage's wall time (until the next stage starts, so DVC's own bookkeeping is included)
and the total. Run it in a fresh clone with the package installed:

    python benchmarks/pipeline_time.py            # the whole default pipeline
    python benchmarks/pipeline_time.py --json out.json
    python benchmarks/pipeline_time.py --markdown section.md   # the docs/benchmarks.md entry, as written
    python benchmarks/pipeline_time.py --startup               # each stage module's import time, no dvc run
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

STAGE = re.compile(r"Running stage '([^']+)'")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default=None, help="also write the stage times to this JSON file")
    parser.add_argument("--markdown", default=None, help="also write a docs/benchmarks.md section to this file")
    parser.add_argument("--startup", action="store_true",
                        help="only time each stage's start-up: a fresh interpreter importing the module it runs")
    parser.add_argument("--repeats", type=int, default=3, help="--startup: best of this many runs")
    args, extra = parser.parse_known_args()
    if args.startup:
        startup(args.repeats)
        return
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "HF_HUB_OFFLINE": "1"}
    dvc = Path(sys.executable).with_name("dvc")
    start = time.perf_counter()
    starts: list[tuple[str, float]] = []
    proc = subprocess.Popen([str(dvc if dvc.exists() else "dvc"), "repro", *extra], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)
    for line in proc.stdout:
        match = STAGE.search(line)
        if match:
            starts.append((match.group(1), time.perf_counter() - start))
            print(f"{starts[-1][1]:7.1f} s  {match.group(1)}", flush=True)
    code = proc.wait()
    total = time.perf_counter() - start
    ends = [t for _, t in starts[1:]] + [total] if starts else []  # nothing ran: everything up to date
    stages = {name: round(end - t, 1) for (name, t), end in zip(starts, ends, strict=True)}
    print("\nstage wall times (s):")
    for name, wall in stages.items():
        print(f"  {wall:7.1f}  {name}")
    print(f"total {total:.1f} s ({int(total // 60)} min {total % 60:.0f} s), dvc exit status {code}")
    if args.json:
        from mergeflow.io import write_json

        write_json(args.json, {"total_s": round(total, 1), "exit_status": code, "stages": stages})
    if args.markdown:
        Path(args.markdown).write_text(markdown(stages, total, code))
    sys.exit(code)


def startup(repeats: int) -> None:
    """Wall time of a fresh interpreter that imports what a stage's process imports before its work: the
    stage module of every entry of ``mergeflow.cli``'s stage tables, beside an empty interpreter and one that
    imports torch alone (the floor of every stage that touches a tensor). Best of ``repeats``."""
    from mergeflow import cli

    modules: dict[str, list[str]] = {}
    for prefix, table in (("", cli.HANDLERS), ("text/lm ", cli.TEXT_HANDLERS), ("suites ", cli.SUITES_HANDLERS)):
        for stage, (module, _) in table.items():
            modules.setdefault(module, []).append(prefix + stage)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}

    def best(code: str) -> float:
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], check=True, env=env)
            times.append(time.perf_counter() - start)
        return min(times)

    rows = [("(empty interpreter)", "pass", ""), ("(torch alone)", "import torch", "")]
    rows += [(m, f"import {m}", ", ".join(stages)) for m, stages in modules.items()]
    print(f"start-up, best of {repeats} (s):")
    for name, code, stages in rows:
        print(f"  {best(code):6.2f}  {name}" + (f"  ({stages})" if stages else ""), flush=True)


def markdown(stages: dict[str, float], total: float, code: int) -> str:
    """A benchmarks entry: the command, the commit, the machine, the total and the time per stage group."""
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    groups: dict[str, list[float]] = {}
    for name, wall in stages.items():
        groups.setdefault(re.split(r"[@_-]", name)[0] if not name.startswith("sweep") else "sweeps", []).append(wall)
    parts = ", ".join(f"{g} {sum(w):.1f} s" + (f" ({len(w)} stages)" if len(w) > 1 else "") for g, w in groups.items())
    return (f"`python benchmarks/pipeline_time.py` (= `dvc repro`) at `{commit or 'unknown'}`, "
            f"{time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPU cores: **{total:.1f} s "
            f"({int(total // 60)} min {total % 60:.0f} s)**, dvc exit status {code}. {parts}.\n")


if __name__ == "__main__":
    main()
