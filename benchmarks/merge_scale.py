"""Merging at LLM scale: wall time and peak RSS of streamed vs whole-model merges on Qwen3-0.6B shapes.

Random bf16 weights with Qwen3-0.6B's names and shapes (hidden 1024, 16 query and 8 key/value heads of 128,
MLP 3072, vocabulary 151,936 tied to the output) at a chosen depth, K experts (the base plus noise) and each
task's statistics (Grams of every input site, the token table's counts; CAT's from 2 exemplars × 128 tokens,
so of rank 256, as the pipeline records them) written as safetensors; each
(method, path) then runs in its own process and reports its wall time and peak RSS (``VmHWM``: the
inputs are read from disk, so the peak is the merge's own working set). Statistics are one file hard-linked
for every task: generating K different ones would only take longer, and each task's copy is still read.

    python benchmarks/merge_scale.py                                  # 4 and 28 layers, K = 2 and 8
    python benchmarks/merge_scale.py --layers 4 --experts 8 --methods task_arithmetic --whole
    python benchmarks/merge_scale.py --json scale.json --dir /var/tmp/mf-scale

The last lines extrapolate to an 8B model (LLaMA-3-8B shapes) with the formula printed beside them.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

HIDDEN, HEADS, KV, HEAD_DIM, MLP, VOCAB = 1024, 16, 8, 128, 3072, 151936
CAT_ROWS = 2 * 128  # token rows of CAT's statistics as the pipeline records them: 2 exemplars x 128 tokens


def layer_shapes(i: int) -> dict[str, tuple[int, ...]]:
    p = f"model.layers.{i}."
    return {p + "self_attn.q_proj.weight": (HEADS * HEAD_DIM, HIDDEN),
            p + "self_attn.k_proj.weight": (KV * HEAD_DIM, HIDDEN),
            p + "self_attn.v_proj.weight": (KV * HEAD_DIM, HIDDEN),
            p + "self_attn.o_proj.weight": (HIDDEN, HEADS * HEAD_DIM),
            p + "self_attn.q_norm.weight": (HEAD_DIM,), p + "self_attn.k_norm.weight": (HEAD_DIM,),
            p + "mlp.gate_proj.weight": (MLP, HIDDEN), p + "mlp.up_proj.weight": (MLP, HIDDEN),
            p + "mlp.down_proj.weight": (HIDDEN, MLP), p + "input_layernorm.weight": (HIDDEN,),
            p + "post_attention_layernorm.weight": (HIDDEN,)}


def shapes(layers: int) -> dict[str, tuple[int, ...]]:
    out = {"model.embed_tokens.weight": (VOCAB, HIDDEN), "model.norm.weight": (HIDDEN,)}
    for i in range(layers):
        out.update(layer_shapes(i))
    return out


def write_inputs(root: Path, layers: int, experts: int) -> dict:
    """Base, experts and statistics of ``layers`` layers under ``root`` (reused when already there)."""
    import torch

    from mergeflow.families import get_family
    from mergeflow.io import save_tensors

    root.mkdir(parents=True, exist_ok=True)
    paths = {"base": root / "base.safetensors",
             "experts": {f"t{k}": root / f"t{k}.safetensors" for k in range(experts)},
             "stats": {f"t{k}": root / f"t{k}.stats.safetensors" for k in range(experts)}}
    g = torch.Generator().manual_seed(0)
    base = None
    if not paths["base"].is_file():
        base = {k: (0.02 * torch.randn(s, generator=g)).to(torch.bfloat16) for k, s in shapes(layers).items()}
        save_tensors(paths["base"], base)
    for path in paths["experts"].values():
        if path.is_file():
            continue
        if base is None:
            from mergeflow.io import load_tensors
            base = load_tensors(paths["base"])
        save_tensors(path, {n: (v.float() + 0.002 * torch.randn(v.shape, generator=g)).to(torch.bfloat16)
                            for n, v in base.items()})
    shared = root / "stats.safetensors"
    if not shared.is_file():
        family = get_family("hf-decoder")
        tensors = {}
        for name, shape in shapes(layers).items():
            unit = family.unit(name)
            site = unit.site
            if unit.kind == "linear" and f"gram/{site}" not in tensors:
                d = shape[1]
                low = torch.randn(d, 64, generator=g)
                tensors[f"gram/{site}"] = low @ low.t() + 0.1 * torch.eye(d)
                tensors[f"rows/{site}"] = torch.tensor(8192)
            elif unit.kind == "scale":
                tensors[f"sqnorm/{site}"] = torch.rand(shape, generator=g) * 8192
                tensors[f"rows/{site}"] = torch.tensor(8192)
            elif unit.kind == "embedding":
                tensors[f"counts/{site}"] = torch.randint(0, 5, shape[:1], generator=g).double()
                tensors[f"rows/{site}"] = torch.tensor(8192)
        low = torch.randn(HIDDEN, 64, generator=g)  # the tied output projection's input
        tensors["gram/lm_head.weight"] = low @ low.t() + 0.1 * torch.eye(HIDDEN)
        tensors["rows/lm_head.weight"] = torch.tensor(8192)
        save_tensors(shared, tensors)
    for path in paths["stats"].values():
        if not path.exists():
            os.link(shared, path)
    # CAT's own statistics: 2 exemplars x 128 tokens per task, so every Gram has rank <= 256 (its factor is
    # d x 256, found by a pivoted Cholesky), as the pipeline records them for CAT
    cat_shared = root / "stats-cat.safetensors"
    if not cat_shared.is_file():
        family = get_family("hf-decoder")
        tensors = {}
        rows = CAT_ROWS
        for name, shape in shapes(layers).items():
            unit = family.unit(name)
            site = unit.site
            if unit.kind == "linear" and f"gram/{site}" not in tensors:
                x = torch.randn(rows, shape[1], generator=g)
                tensors[f"gram/{site}"], tensors[f"rows/{site}"] = x.t() @ x, torch.tensor(rows)
            elif unit.kind == "scale":
                tensors[f"sqnorm/{site}"] = torch.rand(shape, generator=g) * rows
                tensors[f"rows/{site}"] = torch.tensor(rows)
        save_tensors(cat_shared, tensors)
    for k in range(experts):
        path = root / f"t{k}.cat-stats.safetensors"
        if not path.exists():
            os.link(cat_shared, path)
    return paths


def _status_mib(field: str) -> float | None:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return None


def peak_rss_mib() -> float:
    """This process's peak resident set (``VmHWM``). Not ``ru_maxrss``: a child started by fork and exec
    inherits its parent's peak there, and the parent here has just written gigabytes of inputs."""
    peak = _status_mib("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_one(method: str, root: Path, experts: int, whole: bool, block_mib: float) -> dict:
    import torch

    from mergeflow.io import load_tensors, save_tensors
    from mergeflow.merge import METHODS, merge
    from mergeflow.merge.stream import merge_streamed

    baseline = _status_mib("VmRSS")  # the process after its imports, before any tensor: what 8B does not scale
    spec = METHODS[method]
    hp = {spec.scale: 0.3} if spec.scale else {}
    if method == "cat":
        hp["exemplars"] = 2
    tasks = [f"t{k}" for k in range(experts)]
    experts_paths = {t: root / f"{t}.safetensors" for t in tasks}
    suffix = "cat-stats" if method == "cat" else "stats"
    stats_paths = ({t: root / f"{t}.{suffix}.safetensors" for t in tasks} if spec.stat_kinds(spec.resolve(hp))
                   else None)
    out = root / f"merged-{method}-{experts}-{'whole' if whole else 'streamed'}.safetensors"
    start = time.perf_counter()
    if whole:
        from mergeflow.features.stats import TaskStats

        pre = load_tensors(root / "base.safetensors")
        models = {t: load_tensors(p) for t, p in experts_paths.items()}
        stats = ({t: TaskStats.from_tensors(load_tensors(p)) for t, p in stats_paths.items()} if stats_paths else None)
        merged = merge(method, pre, models, stats=stats, family="hf-decoder", **hp)
        save_tensors(out, merged)
    else:
        merge_streamed(method, root / "base.safetensors", experts_paths, out, stats=stats_paths, family="hf-decoder",
                       block_mib=block_mib, **hp)
    wall = time.perf_counter() - start
    out.unlink()
    return {"method": method, "experts": experts, "path": "whole" if whole else "streamed", "wall_s": round(wall, 1),
            "peak_mib": round(peak_rss_mib()), "baseline_mib": round(baseline) if baseline is not None else None,
            "threads": torch.get_num_threads()}


def extrapolate(rows: list[dict], layers: list[int]) -> None:
    """Streamed peak at 8B ≈ b + (peak − b) × (one 8B layer / one layer here), ``b`` the process after its
    imports (each run's ``VmRSS`` before it read any tensor): as if the whole working set above it were one
    group's, which overstates methods whose peak comes from a vocabulary row block; time at 8B ≈ time here ×
    (8.03 B / the parameters here)."""
    qwen_layer = sum(s[0] * (s[1] if len(s) == 2 else 1) for s in layer_shapes(0).values())
    llama_layer = 4096 * 4096 * 2 + 1024 * 4096 * 2 + 3 * 14336 * 4096
    ratio = llama_layer / qwen_layer
    print(f"\nextrapolation to an 8B model (LLaMA-3-8B: 32 layers of {llama_layer / 1e6:.0f} M parameters, "
          f"{ratio:.1f}x a Qwen3-0.6B layer):")
    print(f"  peak(8B) = b + (peak - b) x {ratio:.1f}, b = the run's VmRSS after its imports;  "
          "time(8B) = time(here) x 8.03e9 / parameters(here)")
    for row in rows:
        if row["path"] != "streamed":
            continue
        params = sum(s[0] * (s[1] if len(s) == 2 else 1) for s in shapes(row["layers"]).values())
        base = row["baseline_mib"] or 0.0
        peak = (base + (row["peak_mib"] - base) * ratio) / 1024
        minutes = row["wall_s"] * 8.03e9 / params / 60
        print(f"  {row['method']:16s} K={row['experts']} from {row['layers']} layers (b {base:.0f} MiB): "
              f"~{peak:5.1f} GiB peak, ~{minutes:6.1f} min on this CPU")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, nargs="+", default=[4, 28])
    parser.add_argument("--experts", type=int, nargs="+", default=[2, 8])
    parser.add_argument("--methods", nargs="+", default=["task_arithmetic", "ties", "lot", "cat"])
    parser.add_argument("--whole", action="store_true", help="also the whole-model path (at the smallest depth)")
    parser.add_argument("--block-mib", type=float, default=32.0)
    parser.add_argument("--dir", default="/var/tmp/mergeflow-scale")
    parser.add_argument("--json", default=None)
    parser.add_argument("--one", nargs=4, metavar=("METHOD", "ROOT", "K", "WHOLE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        method, root, k, whole = args.one
        print(json.dumps(run_one(method, Path(root), int(k), whole == "1", args.block_mib)))
        return
    rows = []
    print(f"{'layers':>6s} {'K':>2s} {'method':16s} {'path':9s} {'wall s':>8s} {'peak MiB':>9s}")
    for layers in args.layers:
        root = Path(args.dir) / f"qwen3-0.6b-{layers}l"
        write_inputs(root, layers, max(args.experts))
        for k in args.experts:
            for method in args.methods:
                for whole in ([False, True] if args.whole and layers == min(args.layers) else [False]):
                    out = subprocess.run([sys.executable, __file__, "--one", method, str(root), str(k),
                                          "1" if whole else "0", "--block-mib", str(args.block_mib)],
                                         capture_output=True, text=True)
                    if out.returncode:
                        print(f"{layers:6d} {k:2d} {method:16s} failed: {out.stderr.strip().splitlines()[-1:]}")
                        continue
                    row = {"layers": layers, **json.loads(out.stdout.strip().splitlines()[-1])}
                    rows.append(row)
                    print(f"{layers:6d} {k:2d} {method:16s} {row['path']:9s} {row['wall_s']:8.1f} {row['peak_mib']:9d}",
                          flush=True)
    extrapolate(rows, args.layers)
    if args.json:
        from mergeflow.io import write_json

        write_json(args.json, {"rows": rows})


if __name__ == "__main__":
    main()
