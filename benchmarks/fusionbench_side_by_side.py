"""mergeflow beside FusionBench on the merge methods both implement, on the same saved inputs (issue 33, item 1).

The inputs are :mod:`merge_speed`'s: a ViT-B/32 image encoder's shapes at random init and K experts around it,
saved once as safetensors. Every (library, method) pair runs in a process of its own — FusionBench in its own
virtual environment, because its dependencies (lightning, hydra, datasets, peft) would move ours — and the
libraries alternate within each round, so that a busy machine slows both alike. Each process reads the inputs,
times the merge call alone, records its peak RSS (``VmHWM``) and saves the merged weights; the driver prints per
method the best time of each library over the rounds, their ratio (ours / theirs), both peaks, and the largest
difference between the two merged models (``max |ours − theirs|`` over a tensor's largest ``|theirs|``).

    python3 -m venv fb-venv && fb-venv/bin/pip install fusion-bench==0.2.33 torch==2.13.0 torchvision==0.28.0
    python benchmarks/fusionbench_side_by_side.py --fusionbench-python fb-venv/bin/python
    python benchmarks/fusionbench_side_by_side.py --fusionbench-python fb-venv/bin/python --methods ties --rounds 4

The methods that need no data, and RegMean on saved random Grams (FusionBench's merge function, given the Grams
its class would compute from data loaders); EMR, which keeps a model per task, is compared on the first task's.
Fisher, AdaMerging and the other data-aware methods compute their statistics inside FusionBench from data
loaders these inputs do not have. Where the merged weights differ, a line under the table says why when the
reason is known (a documented decision of either library).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
THREADS = "2"
EXEMPLARS = 64  # RegMean's Grams: 64 images × 50 tokens of random inputs per task (merge_speed.statistics)
TOKENS = 50

# method → (our hyper-parameters, FusionBench's class in fusion_bench.method, its arguments)
METHODS = {
    "task_arithmetic": ({"alpha": 0.3}, "TaskArithmeticAlgorithm", {"scaling_factor": 0.3}),
    "ties": ({"alpha": 0.3, "density": 0.2, "merge_func": "sum"}, "TiesMergingAlgorithm",
             {"scaling_factor": 0.3, "threshold": 20, "remove_keys": [], "merge_func": "sum"}),
    "weight_averaging": ({}, "SimpleAverageAlgorithm", {}),
    "iso_c": ({"alpha": 1.0}, "IsotropicMergingInCommonSubspace", {"scaling_factor": 1.0}),
    "iso_cts": ({"alpha": 1.5, "common_fraction": 0.8}, "IsotropicMergingInCommonAndTaskSubspace",
                {"scaling_factor": 1.5, "common_space_fraction": 0.8}),
    "tsv": ({"alpha": 1.0}, "TaskSingularVectorMerging", {"alpha": 1.0}),
    "dare": ({"alpha": 0.3, "p": 0.9, "base": "task_arithmetic"}, "DareTaskArithmetic",
             {"scaling_factor": 0.3, "sparsity_ratio": 0.9, "only_on_linear_weights": False, "rescale": True}),
    "emr": ({}, "emr_merging.EMRMerging", {}),  # not exported by fusion_bench.method: module.class
    # FusionBench's RegMean class computes its Grams from data loaders; its merge function takes them given
    "regmean": ({"a": 0.95}, "merging_with_regmean_weights", {"reduce_non_diagonal_ratio": 0.95}),
}
GRAMS = ("regmean",)  # the methods that read the saved Grams
TASK_AWARE = ("emr",)  # compared on the first task's model
# known reasons two merged models differ beyond round-off
WHY = {
    "tsv": "FusionBench's float32 SVD (ours: the kept triplets from a float64 eigendecomposition)",
    "iso_c": "FusionBench's float32 SVD of the summed task vectors (ours: float64)",
    "iso_cts": "FusionBench's float32 SVDs (ours: float64)",
    "dare": "the random drop masks: each library draws its own (compare the times only)",
    "regmean": "FusionBench inverts the summed Grams in float32 (ours: a float64 Cholesky solve)",
}


def _peak_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _load(folder: Path, k: int):
    from safetensors.torch import load_file

    pre = load_file(str(folder / "pre.safetensors"))
    return pre, {f"task{i}": load_file(str(folder / f"task{i}.safetensors")) for i in range(k)}


def _grams(folder: Path, k: int) -> list[dict]:
    """Each task's saved Grams, keyed by the weight they serve."""
    from safetensors.torch import load_file

    return [load_file(str(folder / f"gram{i}.safetensors")) for i in range(k)]


def _linear_name(key: str) -> str:
    """FusionBench finds a linear layer's Gram by module name, ``<module>.weight`` minus ``.weight``;
    open_clip's attention keeps its fused q/k/v matrix as ``attn.in_proj_weight``."""
    return key[:-len("_weight")] + ".weight" if key.endswith("in_proj_weight") else key


def _module(state, trainable: bool = False):
    """An ``nn.Module`` whose state dict is ``state`` (submodules along the dotted names), what FusionBench's
    algorithms take; ``trainable``: parameters that require gradients (FusionBench's DARE merges only those,
    as a loaded model has them)."""
    import torch
    from torch import nn

    root = nn.Module()
    for name, value in state.items():
        *path, leaf = name.split(".")
        node = root
        for part in path:
            if not hasattr(node, part):
                node.add_module(part, nn.Module())
            node = getattr(node, part)
        node.register_parameter(leaf, nn.Parameter(value.clone(), requires_grad=trainable))
    return root.to(torch.float32)


def worker(library: str, method: str, folder: Path, k: int, out: Path) -> None:
    """One merge in this process: read the inputs, time the merge call, save the result, print the figures."""
    import torch
    from safetensors.torch import save_file

    torch.set_num_threads(int(THREADS))
    pre, experts = _load(folder, k)
    grams = _grams(folder, k) if method in GRAMS else None
    ours, cls, theirs = METHODS[method]
    if library == "mergeflow":
        from mergeflow.features import TaskStats
        from mergeflow.merge import merge

        stats = None
        if grams is not None:
            rows = TOKENS * EXEMPLARS
            stats = {t: TaskStats(gram=dict(g), rows=dict.fromkeys(g, rows))
                     for t, g in zip(experts, grams, strict=True)}
        start = time.perf_counter()
        merged = merge(method, pre, experts, stats=stats, **ours)
        wall = time.perf_counter() - start
        if method in TASK_AWARE:
            merged = merged.state(pre, "task0")
    else:
        # the CPU torch wheel with the CUDA torchvision wheel: FusionBench imports torchvision, so it needs the
        # operator schemas mergeflow defines for itself (src/mergeflow/_torchvision_compat.py, loaded by path)
        import importlib
        import importlib.util

        compat = HERE.parent / "src" / "mergeflow" / "_torchvision_compat.py"
        spec = importlib.util.spec_from_file_location("_torchvision_compat", compat)
        sys.modules[spec.name] = module = importlib.util.module_from_spec(spec)  # kept: it holds the schemas
        spec.loader.exec_module(module)
        import fusion_bench.method as fb
        from fusion_bench.modelpool import BaseModelPool

        if method == "regmean":
            from fusion_bench.method.regmean.regmean import merging_with_regmean_weights

            params = {_linear_name(key): [sd[key] for sd in experts.values()] for key in pre}
            weights = [{_linear_name(key)[:-len(".weight")]: g for key, g in gram.items()} for gram in grams]
            start = time.perf_counter()
            merged = merging_with_regmean_weights(params, weights, weight_transpose=True, **theirs)
            wall = time.perf_counter() - start
            merged = {key: merged[_linear_name(key)] for key in pre}
        else:
            trainable = method == "dare"
            pool = BaseModelPool({"_pretrained_": _module(pre, trainable),
                                  **{t: _module(s, trainable) for t, s in experts.items()}})
            owner = importlib.import_module(f"fusion_bench.method.{cls.rpartition('.')[0]}") if "." in cls else fb
            algorithm = getattr(owner, cls.rpartition(".")[2])(**theirs)
            start = time.perf_counter()
            model = algorithm.run(pool)
            wall = time.perf_counter() - start
            if method == "emr":  # the first task's model: θ_pre + λ_0 · m_0 ⊙ τ_uni, from the same election
                from fusion_bench.method.emr_merging.utils import emr_merge

                unified, masks, rescalers = emr_merge([{k_: s[k_] - pre[k_] for k_ in pre} for s in experts.values()])
                merged = {k_: pre[k_] + float(rescalers[0]) * masks[k_][0] * unified[k_] for k_ in pre}
            else:
                merged = {k_: v.detach() for k_, v in model.state_dict().items()}
    save_file({k_: v.contiguous() for k_, v in merged.items()}, str(out))
    print(json.dumps({"wall_s": wall, "peak_mib": _peak_mib()}))


def _inputs(folder: Path, k: int) -> None:
    names = ["pre.safetensors", *(f"{kind}{i}.safetensors" for kind in ("task", "gram") for i in range(k))]
    if all((folder / f).is_file() for f in names):
        return
    sys.path.insert(0, str(HERE))
    from merge_speed import build, statistics
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    pre, experts = build(k)
    save_file(pre, str(folder / "pre.safetensors"))
    for i, state in enumerate(experts.values()):
        save_file(state, str(folder / f"task{i}.safetensors"))
    for i, st in enumerate(statistics(pre, experts, {"gram"}, EXEMPLARS).values()):
        save_file({key: g.contiguous() for key, g in st.gram.items()}, str(folder / f"gram{i}.safetensors"))


def _difference(a: Path, b: Path) -> float:
    from safetensors.torch import load_file

    ours, theirs = load_file(str(a)), load_file(str(b))
    worst = 0.0
    for key, ref in theirs.items():
        if key not in ours:
            return float("inf")
        scale = float(ref.abs().max()) or 1.0
        worst = max(worst, float((ours[key].float() - ref.float()).abs().max()) / scale)
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fusionbench-python", default=None, help="the Python of a venv with fusion-bench")
    parser.add_argument("--methods", nargs="*", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--experts", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--inputs", default="/tmp/mergeflow-side-by-side", help="folder for the saved inputs")
    parser.add_argument("--worker", nargs=2, metavar=("LIBRARY", "METHOD"), help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    folder = Path(args.inputs)
    if args.worker:
        worker(args.worker[0], args.worker[1], folder, args.experts, Path(args.out))
        return
    if not args.fusionbench_python:
        parser.error("--fusionbench-python: the interpreter of a virtual environment with fusion-bench installed")
    _inputs(folder, args.experts)
    env = {**os.environ, "OMP_NUM_THREADS": THREADS, "MKL_NUM_THREADS": THREADS}
    python = {"mergeflow": sys.executable, "fusionbench": args.fusionbench_python}
    best: dict[tuple[str, str], dict] = {}
    failed: dict[tuple[str, str], str] = {}
    for r in range(args.rounds):
        for method in args.methods:
            order = ("mergeflow", "fusionbench") if (r + args.methods.index(method)) % 2 == 0 else \
                ("fusionbench", "mergeflow")
            for library in order:
                out = folder / f"{library}-{method}.safetensors"
                cmd = [python[library], str(Path(__file__).resolve()), "--worker", library, method,
                       "--inputs", str(folder), "--experts", str(args.experts), "--out", str(out)]
                run = subprocess.run(cmd, env=env, capture_output=True, text=True)
                if run.returncode != 0:
                    lines = [x.strip(" │") for x in run.stderr.strip().splitlines() if x.strip(" │")]
                    killed = f"killed by signal {-run.returncode} (out of memory?)" if run.returncode < 0 else ""
                    failed[(method, library)] = killed or " ".join(lines[-3:])[-300:]
                    print(f"round {r + 1} {method:<17} {library:<11} failed: {failed[(method, library)]}", flush=True)
                    continue
                figures = json.loads(run.stdout.strip().splitlines()[-1])
                print(f"round {r + 1} {method:<17} {library:<11} {figures['wall_s']:7.2f} s "
                      f"{figures['peak_mib']:7.0f} MiB", flush=True)
                kept = best.get((method, library))
                if kept is None or figures["wall_s"] < kept["wall_s"]:
                    best[(method, library)] = figures
    print(f"\n{args.experts} experts of ViT-B/32 shape, {THREADS} threads each, best of {args.rounds} rounds")
    print(f"{'method':<17} {'ours s':>8} {'theirs s':>8} {'ratio':>6} {'ours MiB':>9} {'theirs MiB':>10} "
          f"{'max rel diff':>12}")
    for method in args.methods:
        ours, theirs = best.get((method, "mergeflow")), best.get((method, "fusionbench"))
        if ours is None or theirs is None:
            who = [lib for lib, got in (("mergeflow", ours), ("fusionbench", theirs)) if got is None]
            print(f"{method:<17} {' and '.join(who)} failed: {failed.get((method, who[0]), '')}")
            continue
        diff = _difference(folder / f"mergeflow-{method}.safetensors", folder / f"fusionbench-{method}.safetensors")
        print(f"{method:<17} {ours['wall_s']:8.2f} {theirs['wall_s']:8.2f} {ours['wall_s'] / theirs['wall_s']:6.2f} "
              f"{ours['peak_mib']:9.0f} {theirs['peak_mib']:10.0f} {diff:12.2e}")
    for method in args.methods:
        if method in WHY:
            print(f"  {method}: {WHY[method]}")


if __name__ == "__main__":
    main()
