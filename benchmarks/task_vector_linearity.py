"""How each expert's score moves along its own task vector, and what one other expert's vector does to it.

Task arithmetic needs an expert's gain to survive a scale below 1 (its chosen α shrinks every vector) and the
addition of another vector. This measures both on the experts of a finished text or generation run (the
workspace's ``models/<suite>/experts``), outside the DAG:

    python benchmarks/task_vector_linearity.py                          # params.yaml's suite, 100 test examples
    python benchmarks/task_vector_linearity.py --alphas 0.3 0.5 0.7 1.0 --examples 200 --no-pairs

Prints, per task, its score (the task's metric, percent) at θ_pre + α τ_t for each α, then for every ordered
pair (t, s) the score of t at θ_pre + τ_t + τ_s (both at full scale). Scores use the first ``--examples``
prompts of each test split, as the stages score them (greedy exact match for a generation task).
"""

from __future__ import annotations

import argparse
import os
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml", help="a text or lm configuration whose experts exist")
    parser.add_argument("--alphas", nargs="*", type=float, default=[0.3, 0.5, 1.0])
    parser.add_argument("--examples", type=int, default=100, help="test examples scored per task")
    parser.add_argument("--no-pairs", action="store_true", help="skip the pairs of experts")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from mergeflow import config
    from mergeflow.io import load_tensors
    from mergeflow.stages import text

    cfg = config.load(args.params)
    text._enter(cfg)
    tasks = list(cfg.tasks)
    start = time.perf_counter()

    models = {t: text._task_model(t) for t in tasks}  # one per task: a classifier keeps its own head
    pre = {t: {k: v.clone() for k, v in m.state_dict().items()} for t, m in models.items()}
    vectors = {}
    for t in tasks:
        expert = load_tensors(text.L.expert(t))
        vectors[t] = {k: expert[k].float() - pre[t][k].float() for k in expert if k in pre[t]}
    splits = {t: {k: v[:args.examples] for k, v in text._split(t, "test").items()} for t in tasks}
    shared = set.intersection(*(set(v) for v in vectors.values()))

    def score(task: str, scales: dict[str, float]) -> float:
        """``task``'s test score at θ_pre + Σ scale_s τ_s on the shared weights; a classifier's head is its
        expert's (each task keeps its own head, as in the merges). Only the expert files' keys are set: a tied
        output projection (saved once, as the token table) follows the table."""
        state = {}
        for key, own in vectors[task].items():
            terms = [a * vectors[s][key] for s, a in scales.items()] if key in shared else [own]
            state[key] = pre[task][key] + sum(terms) if terms else pre[task][key]
        models[task].load_state_dict(state, strict=False)
        return text.score(models[task].eval(), task, splits[task], cfg.evaluate.batch_size, "cpu")

    print(f"{cfg.source}: {len(tasks)} experts, {args.examples} test examples each")
    header = " ".join(f"α {a:<5}" for a in args.alphas)
    print(f"\n{'task':<14} {'θ_pre':>6} {header}")
    for t in tasks:
        row = " ".join(f"{score(t, {t: a}):7.1f}" for a in args.alphas)
        print(f"{t:<14} {score(t, {}):6.1f} {row}", flush=True)
    if not args.no_pairs:
        print("\nscore of the row's task at θ_pre + τ_row + τ_column (its own expert alone: the α 1.0 column above)")
        print(f"{'':<14} " + " ".join(f"{s[:9]:>9}" for s in tasks))
        for t in tasks:
            cells = {s: score(t, {t: 1.0, s: 1.0}) for s in tasks if s != t}
            print(f"{t:<14} " + " ".join(f"{cells[s]:9.1f}" if s in cells else f"{'—':>9}" for s in tasks), flush=True)
    print(f"\n{time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
