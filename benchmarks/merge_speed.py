"""Wall time and peak memory of every merge method on ViT-B/32-shaped experts (no download, synthetic data).

The pre-trained state is open_clip's ``ViT-B-32`` image encoder at random init; each of the K experts is
``θ_pre`` plus a structured low-rank perturbation plus noise on every weight; statistics have the real
shapes (Grams from ``exemplars × 50`` token rows per task: 2 for CAT, 64 for LOT and RegMean; Fisher and
gradients per parameter). Each method runs in its own process so that peak memory is its own.

    python benchmarks/merge_speed.py                 # every method, CPU (and CUDA when present)
    python benchmarks/merge_speed.py --methods cat lot --device cpu --experts 8
    python benchmarks/merge_speed.py --methods cat --device cpu --profile 15   # where the time goes
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TOKENS = 50  # a ViT-B/32 image at 224 px: 49 patches + the class token
EXEMPLARS = {"cat": 2, "lot": 64, "regmean": 64}
LINEAR = ("attn.in_proj_weight", "attn.out_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def build(n_experts: int, seed: int = 0):
    """``θ_pre`` (ViT-B-32 image encoder, random init) and ``n_experts`` synthetic experts."""
    import torch

    from mergeflow.models import create_model

    pre = {k: v.detach().clone() for k, v in create_model("ViT-B-32", None, seed=seed).visual.state_dict().items()}
    g = torch.Generator().manual_seed(seed)
    experts = {}
    for k in range(n_experts):
        state = {}
        for name, w in pre.items():
            if w.ndim == 2 and min(w.shape) > 8:
                rank = 8
                delta = torch.randn(w.shape[0], rank, generator=g) @ torch.randn(rank, w.shape[1], generator=g)
                delta = delta * (0.02 * w.std() / (delta.std() + 1e-12))
            else:
                delta = torch.zeros_like(w)
            state[name] = w + delta + 0.002 * w.std() * torch.randn(w.shape, generator=g)
        experts[f"task{k}"] = state
    return pre, experts


def statistics(pre, tasks, kinds: set[str], exemplars: int, seed: int = 0):
    """Synthetic :class:`TaskStats` of the real shapes for the statistics kinds a method needs."""
    import torch

    from mergeflow.features import TaskStats

    g = torch.Generator().manual_seed(seed + 1)
    rows = exemplars * TOKENS
    out = {}
    for task in tasks:
        st = TaskStats()
        for name, w in pre.items():
            if "gram" in kinds and name.endswith(LINEAR):
                x = torch.randn(rows, w.shape[1], generator=g)
                st.gram[name], st.rows[name] = x.t() @ x, rows
            if "gram" in kinds and w.ndim == 1 and ("ln_" in name) and name.endswith(".weight"):
                st.sqnorm[name], st.rows[name] = torch.rand(w.shape, generator=g) * rows, rows
            if "fisher" in kinds:
                st.fisher[name] = torch.rand(w.shape, generator=g)
            if "grad" in kinds:
                st.grad[name] = torch.rand(w.shape, generator=g)
        out[task] = st
    return out


def _profiled(call, device, top: int):
    """Run ``call()`` under cProfile (CPU: LAPACK and BLAS calls show up by name) or torch's profiler
    (CUDA: kernel time per operator) and print the ``top`` entries; the wall time then includes the
    profiler's overhead. cProfile sees one thread only, so on CPU the call runs with one torch and one BLAS
    thread: methods that spread units over threads (CAT) then run them one after another, and the profile
    is the work the threads share out."""
    import torch

    if device.type == "cuda":
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            call()
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=top))
        return
    import cProfile
    import pstats

    from threadpoolctl import threadpool_limits

    threads = torch.get_num_threads()
    profiler = cProfile.Profile()
    try:
        torch.set_num_threads(1)
        with threadpool_limits(1, user_api="blas"):
            profiler.runcall(call)
    finally:
        torch.set_num_threads(threads)
    pstats.Stats(profiler).sort_stats("tottime").print_stats(top)


def run_one(method: str, n_experts: int, device: str, profile: int = 0) -> dict:
    import torch

    from mergeflow.merge import METHODS, merge

    spec = METHODS[method]
    hp = spec.resolve({spec.scale: 0.3} if spec.scale else {})
    pre, experts = build(n_experts)
    kinds = spec.stat_kinds(hp)
    stats = statistics(pre, experts, kinds, EXEMPLARS.get(method, 64)) if kinds else None
    fn_hp = {k: v for k, v in hp.items() if not spec.hparams[k].pipeline}
    dev = torch.device(device)
    pre = {k: v.to(dev) for k, v in pre.items()}
    experts = {t: {k: v.to(dev) for k, v in s.items()} for t, s in experts.items()}
    if stats:
        stats = {t: s.to(dev) for t, s in stats.items()}
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    if profile:
        _profiled(lambda: merge(method, pre, experts, stats=stats, **fn_hp), dev, profile)
    else:
        merge(method, pre, experts, stats=stats, **fn_hp)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    wall = time.perf_counter() - start
    peak = (torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return {"method": method, "device": device, "experts": n_experts, "wall_s": round(wall, 2),
            "peak_mib": round(peak), "inputs_mib": round(rss_before), "threads": torch.get_num_threads()}


def main() -> None:
    from mergeflow.merge import METHODS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--experts", type=int, default=8)
    parser.add_argument("--device", nargs="+", default=None, help="cpu and/or cuda (default: cpu, and cuda if present)")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # child process: one method
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="print the N most expensive calls of each method (cProfile on CPU, torch on CUDA)")
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.methods[0], args.experts, args.device[0], args.profile)))
        return
    import torch

    devices = args.device or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    rows = []
    print(f"{'method':18s} {'device':6s} {'wall s':>8s} {'peak MiB':>9s}  (ViT-B-32, {args.experts} experts)")
    for device in devices:
        for method in args.methods:
            out = subprocess.run([sys.executable, __file__, "--one", "--methods", method, "--experts",
                                  str(args.experts), "--device", device, "--profile", str(args.profile)],
                                 capture_output=True, text=True)
            if out.returncode != 0:
                print(f"{method:18s} {device:6s} failed: {out.stderr.strip().splitlines()[-1:]}")
                continue
            *profile_lines, last = out.stdout.strip().splitlines()
            if args.profile:
                print("\n".join(profile_lines))
            row = json.loads(last)
            rows.append(row)
            note = "GPU peak allocated" if device == "cuda" else "process max RSS"
            print(f"{method:18s} {device:6s} {row['wall_s']:8.2f} {row['peak_mib']:9d}  ({note})", flush=True)
    if args.json:
        from mergeflow.io import write_json

        write_json(args.json, {"rows": rows})


if __name__ == "__main__":
    main()
