"""The offline text suite's regime, measured outside the DAG (issue 29, item 6): pre-train a RoBERTa-shaped
base by masked LM on the generated corpus, fine-tune one expert per generated GLUE-shaped task, record each
expert's token statistics, merge with several methods (each scale chosen on validation), score every task
with its own head, and print the table with wall times:

    python benchmarks/text_suite.py                        # width 128, 4 layers, 2000 pre-training steps
    python benchmarks/text_suite.py --pretrain-steps 200 --finetune-steps 60 --tasks sentiment similarity

Figures: each task's GLUE metric (percent), their mean, and the mean normalised score (merged / expert).
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

GRID = (0.1, 0.2, 0.3, 0.5, 0.7, 1.0, 1.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--corpus", type=int, default=60000)
    parser.add_argument("--pretrain-steps", type=int, default=2000)
    parser.add_argument("--finetune-steps", type=int, default=300)
    parser.add_argument("--lr", type=float, default=5e-5, help="fine-tuning learning rate")
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--test", type=int, default=500)
    parser.add_argument("--tasks", nargs="*", default=None)
    parser.add_argument("--methods", nargs="*", default=["task_arithmetic", "ties", "weight_averaging", "regmean",
                                                          "pcb", "cat", "lot"])
    parser.add_argument("--save", default=None, help="folder for the base's weights, tokenizer and log")
    parser.add_argument("--base", default=None, help="a folder --save wrote: its base instead of pre-training")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from mergeflow.families import get_family
    from mergeflow.families.hf_encoder import _transformers
    from mergeflow.features.tokens import collect_token_stats
    from mergeflow.merge import METHODS, merge
    from mergeflow.text import language, offline
    from mergeflow.text.glue import TextSplit
    from mergeflow.text.tasks import get_text_task
    from mergeflow.text.tokenize import encode, train_word_tokenizer
    from mergeflow.text.train import finetune, predict, pretrain_mlm

    hf, tf = get_family("hf-encoder"), _transformers()
    tasks = args.tasks or list(offline.TASKS)
    times = {}
    start = time.perf_counter()
    corpus = [] if args.base else offline.corpus(args.corpus, seed=0)
    tokenizer = None if args.base else train_word_tokenizer(corpus, language.vocabulary())
    cfg = None if args.base else {
        "model_type": "roberta", "vocab_size": tokenizer.get_vocab_size(), "hidden_size": args.width,
           "num_hidden_layers": args.layers, "num_attention_heads": max(2, args.width // 32),
           "intermediate_size": 4 * args.width, "max_position_embeddings": 52, "pad_token_id": 1,
           "bos_token_id": 0, "eos_token_id": 2, "type_vocab_size": 1}
    if args.base:
        from mergeflow.io import load_tensors, read_json
        from mergeflow.text.tokenize import load_tokenizer

        tokenizer = load_tokenizer(os.path.join(args.base, "tokenizer.json"))
        cfg = read_json(os.path.join(args.base, "log.json"))["config"]
        pre = {f"roberta.{k}": v for k, v in load_tensors(os.path.join(args.base, "model.safetensors")).items()}
    else:
        torch.manual_seed(0)
        mlm = tf.AutoModelForMaskedLM.from_config(tf.AutoConfig.for_model(
            **{k: v for k, v in cfg.items() if k != "model_type"}, model_type="roberta"))
        log = pretrain_mlm(mlm, encode(tokenizer, corpus, None, 48), steps=args.pretrain_steps, batch_size=128,
                           lr=1e-3, weight_decay=0.01, warmup_steps=min(200, args.pretrain_steps // 10), seed=0,
                           special_ids=[0, 1, 2, 3, 4], mask_token=4, log_every=max(1, args.pretrain_steps // 10))
        print("pre-training loss:", " ".join(f"{e['loss']:.2f}" for e in log), flush=True)
        pre = {k: v.detach().clone() for k, v in mlm.state_dict().items() if k.startswith("roberta.")}
        if args.save:
            from mergeflow.io import save_tensors, write_json

            save_tensors(os.path.join(args.save, "model.safetensors"), {k[8:]: v for k, v in pre.items()})
            tokenizer.save(os.path.join(args.save, "tokenizer.json"))
            write_json(os.path.join(args.save, "log.json"), {"config": cfg, "args": vars(args), "loss": log})
    times["pretrain"] = time.perf_counter() - start

    def arrays_of(split: TextSplit):
        return encode(tokenizer, split.texts_a, split.texts_b, 48)

    experts, data = {}, {}
    start = time.perf_counter()
    for name in tasks:
        task = get_text_task(name)
        train = task.read(None, "train", {"train": args.train})
        test = task.read(None, "test", {"test": args.test})
        n_val = len(train) // 10
        arrays = arrays_of(train)
        fit = {k: v[n_val:] for k, v in arrays.items()}
        val = ({k: v[:n_val] for k, v in arrays.items()}, train.labels[:n_val])
        model = hf.build(cfg, num_labels=task.num_outputs)
        model.load_state_dict(pre, strict=False)
        finetune(model, fit, train.labels[n_val:], steps=args.finetune_steps, batch_size=32, lr=args.lr,
                 weight_decay=0.0, warmup_steps=args.finetune_steps // 10, seed=0)
        experts[name] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        data[name] = {"val": val, "test": (arrays_of(test), test.labels), "fit": fit}
    times["finetune"] = time.perf_counter() - start

    def score(body, name, split="test"):
        model = hf.build(cfg, num_labels=get_text_task(name).num_outputs)
        model.load_state_dict({**body, **hf.heads(experts[name])})
        arrays, labels = data[name][split]
        return get_text_task(name).score(predict(model, arrays), labels)["score"]

    def stats_at(scale: float, count: int):
        out = {}
        for name in tasks:
            body = {k: pre[k] + scale * (experts[name][k] - pre[k]) for k in pre}
            model = hf.build(cfg, num_labels=get_text_task(name).num_outputs)
            model.load_state_dict({**body, **hf.heads(experts[name])})
            fit = data[name]["fit"]
            batch = {k: torch.from_numpy(v[:count].astype(np.int64)) for k, v in fit.items()}
            out[name] = collect_token_stats(model, batch, hf)
        return out

    rows = {"expert": {n: score(hf.merged_part(experts[n]), n) for n in tasks},
            "pre-trained body": {n: score(pre, n) for n in tasks}}
    for method in args.methods:
        start = time.perf_counter()
        spec = METHODS[method]
        hp = spec.resolve({})
        scales = GRID if spec.scale else (None,)
        best = None
        for scale in scales:
            chosen = {**({spec.scale: scale} if spec.scale else {})}
            needs = spec.variants({**hp, **chosen}, 0)
            stats = stats_at(float(needs[0].scale), needs[0].count) if needs else None
            kw = {k: v for k, v in {**hp, **chosen}.items() if not spec.hparams[k].pipeline and v != "auto"}
            merged = merge(method, pre, experts, stats=stats, family="hf-encoder", **kw)
            val = np.mean([score(merged, n, "val") for n in tasks])
            if best is None or val > best[0]:
                best = (val, scale, merged)
        rows[f"{method}" + (f" ({spec.scale}={best[1]})" if spec.scale else "")] = {n: score(best[2], n) for n in tasks}
        times[method] = time.perf_counter() - start
    norms = [float(sum((experts[n][k] - pre[k]).pow(2).sum() for k in pre) ** 0.5
                   / sum(v.pow(2).sum() for v in pre.values()) ** 0.5) for n in tasks]
    print(f"||T_k|| / ||theta_pre||: max {max(norms):.4f}")
    print(f"{'model':34s}" + "".join(f"{n[:10]:>11s}" for n in tasks) + f"{'mean':>8s}{'norm.':>8s}")
    for name, scores in rows.items():
        mean = np.mean(list(scores.values()))
        normalised = 100 * np.mean([scores[n] / rows["expert"][n] for n in tasks])
        print(f"{name:34s}" + "".join(f"{scores[n]:11.1f}" for n in tasks) + f"{mean:8.1f}{normalised:8.1f}")
    print("wall time (s): " + ", ".join(f"{k} {v:.0f}" for k, v in times.items()))


if __name__ == "__main__":
    main()
