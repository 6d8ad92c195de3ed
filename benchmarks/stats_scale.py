"""Peak memory of a decoder LM's statistics collected at once vs a few layers at a time (issue 30, item 4).

A Qwen3-0.6B-shaped causal LM (random init, float32; tied embeddings) is saved as a Hugging Face folder with a
word-level tokenizer, and ``mergeflow stats-files`` runs on a generated text file, each setting of
``--layers-per-pass`` in its own process; each prints its wall time and peak RSS (``VmHWM``). The statistics
of every site (the Grams of q/k/v, o, gate/up, down and the tied projection; the norms' energies; the token
counts) are ~1.7 GB in float32 at this shape, the model 3 GB (2.4 GB without its embedding table's copy).

    python benchmarks/stats_scale.py                       # --layers-per-pass 28 (all at once) and 4
    python benchmarks/stats_scale.py --layers 8 --per-pass 8 1 --examples 4 --max-length 64
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

QWEN3_06B = {"vocab_size": 151936, "hidden_size": 1024, "intermediate_size": 3072, "num_attention_heads": 16,
             "num_key_value_heads": 8, "head_dim": 128, "max_position_embeddings": 4096, "tie_word_embeddings": True,
             "eos_token_id": 1, "bos_token_id": 1}


def write_model(root: Path, layers: int) -> Path:
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    from mergeflow.families.hf_decoder import build

    folder = root / f"qwen3-0.6b-{layers}l"
    if (folder / "model.safetensors").is_file():
        return folder
    torch.manual_seed(0)
    build({"model_type": "qwen3", "num_hidden_layers": layers, **QWEN3_06B}).save_pretrained(folder)
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.train_from_iterator([" ".join(f"w{i}" for i in range(2000))],
                            trainers.WordLevelTrainer(special_tokens=["<unk>", "</s>"], show_progress=False))
    tok.save(str(folder / "tokenizer.json"))
    return folder


def peak_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_one(folder: Path, texts: Path, per_pass: int, examples: int, max_length: int) -> dict:
    from mergeflow.features.calibration import folder_statistics

    out = folder.parent / f"stats-{per_pass}.safetensors"
    start = time.perf_counter()
    folder_statistics(folder, texts, out, examples=examples, max_length=max_length, batch_size=examples,
                      layers_per_pass=per_pass)
    wall = time.perf_counter() - start
    size = out.stat().st_size
    out.unlink()
    return {"per_pass": per_pass, "wall_s": round(wall, 1), "peak_mib": round(peak_mib()),
            "stats_mib": round(size / 2**20)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=28)
    parser.add_argument("--per-pass", type=int, nargs="+", default=[28, 4])
    parser.add_argument("--examples", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--dir", default="/var/tmp/mergeflow-stats-scale")
    parser.add_argument("--one", nargs=2, metavar=("FOLDER", "PER_PASS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    texts = Path(args.dir) / "texts.txt"
    if args.one:
        row = run_one(Path(args.one[0]), texts, int(args.one[1]), args.examples, args.max_length)
        print(json.dumps(row))
        return
    Path(args.dir).mkdir(parents=True, exist_ok=True)
    folder = write_model(Path(args.dir), args.layers)
    texts.write_text("\n".join(" ".join(f"w{(i * 7 + j * 13) % 2000}" for j in range(args.max_length))
                               for i in range(args.examples)) + "\n")
    print(f"{'layers':>6s} {'per pass':>8s} {'wall s':>8s} {'peak MiB':>9s} {'stats MiB':>10s}")
    for per_pass in args.per_pass:
        out = subprocess.run([sys.executable, __file__, "--one", str(folder), str(per_pass), "--dir", args.dir,
                              "--examples", str(args.examples), "--max-length", str(args.max_length)],
                             capture_output=True, text=True)
        if out.returncode:
            print(f"{args.layers:6d} {per_pass:8d} failed: {out.stderr.strip().splitlines()[-1:]}")
            continue
        row = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{args.layers:6d} {per_pass:8d} {row['wall_s']:8.1f} {row['peak_mib']:9d} {row['stats_mib']:10d}",
              flush=True)


if __name__ == "__main__":
    main()
