"""Calibration tasks (issue 30, item 5): published causal-LM experts merged from their texts' statistics, scored
outside mergeflow — `configs/qwen3-0.6b.yaml` run on tiny Qwen3-shaped fakes saved with ``save_pretrained``."""

from __future__ import annotations

import csv
import html
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import yaml

from dag_tools import BIN, dvc_stages, engine_env, snakemake_jobs
from mergeflow import config
from mergeflow.errors import MergeflowError
from mergeflow.io import load_tensors
from mergeflow.text import language
from mergeflow.text.tokenize import train_word_tokenizer

ROOT = Path(__file__).resolve().parents[1]
QWEN3 = ROOT / "configs" / "qwen3-0.6b.yaml"
TEXTS = {"embedding": "Instruct: find the passage Query: the dog sees the cat .",
         "reranking": "Judge whether the document answers the query . <Query>: the cat <Document>: the dog ."}


def _qwen3(vocab: int, headless: bool = False):
    import transformers as tf

    cfg = tf.Qwen3Config(vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=8, max_position_embeddings=64,
                         tie_word_embeddings=True, bos_token_id=0, eos_token_id=2, pad_token_id=1)
    return (tf.Qwen3Model(cfg) if headless else tf.Qwen3ForCausalLM(cfg)).eval()


def _fakes(root: Path) -> None:
    """A base folder with its tokenizer, the Embedding expert as a headless ``Qwen3Model`` (its keys carry no
    ``model.`` prefix, as the published one's), the Reranker as a causal LM, and each task's texts."""
    words = sorted({w for t in TEXTS.values() for w in t.split()} | set(language.vocabulary()))
    tok = train_word_tokenizer([" ".join(words)], words)
    torch.manual_seed(0)
    base = _qwen3(tok.get_vocab_size())
    base.save_pretrained(root / "models/hf/Qwen3-0.6B-Base")
    tok.save(str(root / "models/hf/Qwen3-0.6B-Base/tokenizer.json"))
    state = base.state_dict()
    for i, (task, folder) in enumerate((("embedding", "Qwen3-Embedding-0.6B"), ("reranking", "Qwen3-Reranker-0.6B"))):
        generator = torch.Generator().manual_seed(i + 1)
        moved = {k: v + 0.02 * torch.randn(v.shape, generator=generator) for k, v in state.items()}
        headless = task == "embedding"
        expert = _qwen3(tok.get_vocab_size(), headless=headless)
        expert.load_state_dict({k.removeprefix("model."): v for k, v in moved.items() if k != "lm_head.weight"}
                               if headless else moved)
        expert.save_pretrained(root / "models/community/qwen3" / folder)
        texts = root / "calibration" / task / "texts.txt"
        texts.parent.mkdir(parents=True)
        texts.write_text("\n".join(f"{TEXTS[task]} {w}" for w in words[:24]) + "\n")


def _raw(edit=None) -> dict:
    raw = yaml.safe_load(QWEN3.read_text())
    raw["data"]["max_length"] = 32
    raw["exemplars"]["pool"] = 16
    raw["features"]["batch_size"] = 4
    raw["merge"]["regmean"]["exemplars"] = 8
    raw["merge"]["lot"]["exemplars"] = 8
    raw["merge"]["cat"].update({"c": 1, "c_ln": 1, "c_shift": 1})
    if edit is not None:
        edit(raw)
    return raw


def _load(ws: Path, edit=None):
    (ws / "params.yaml").write_text(yaml.safe_dump(_raw(edit), sort_keys=False))
    return config.load(ws / "params.yaml")


def test_the_qwen3_configuration_merges_published_experts_from_their_texts(tmp_path, monkeypatch):
    from mergeflow.stages import text

    _fakes(tmp_path)
    monkeypatch.chdir(tmp_path)
    cfg = _load(tmp_path)
    text.base(cfg)
    for task in cfg.tasks:
        text.prepare(cfg, task)
        text.exemplars(cfg, task)
        text.finetune(cfg, task)
    train = load_tensors(tmp_path / "data/lm/prepared/embedding/train.safetensors")
    assert set(train) == {"input_ids", "attention_mask"} and len(train["input_ids"]) == 24  # no target, no split
    assert sorted(p.name for p in (tmp_path / "data/lm/prepared/embedding").iterdir()) == ["manifest.json",
                                                                                           "train.safetensors"]
    # the headless Embedding expert is read into the base's causal LM: its keys as the base's, the table once
    embedding = load_tensors(tmp_path / "models/lm/experts/embedding.safetensors")
    published = load_tensors(tmp_path / "models/community/qwen3/Qwen3-Embedding-0.6B/model.safetensors")
    assert set(embedding) == {f"model.{k}" for k in published}
    assert all(torch.equal(embedding[f"model.{k}"], v) for k, v in published.items())
    for variant in cfg.variants():
        for task in cfg.tasks:
            text.features(cfg, task, variant.name)
    for run in cfg.merge_runs():
        text.merge(cfg, run.name)
        merged = load_tensors(tmp_path / f"models/lm/merged/{run.name}.safetensors")
        assert set(merged) == set(embedding)
    with pytest.raises(MergeflowError, match=re.escape("evaluate: this run's tasks (embedding, reranking) are "
                                                       "calibration tasks, scored outside mergeflow")):
        text.evaluate(cfg, "lot")
    from mergeflow.text.report import build_text_report

    page = html.unescape(build_text_report(cfg).read_text())
    assert "These tasks are scored outside mergeflow" in page and "LOT Merging's Table 16" in page
    assert "cp -r models/lm/base merged-task_arithmetic" in page and "lot: both roles" in page
    rows = list(csv.DictReader((tmp_path / "reports/lm/results.csv").open()))
    assert [r["run"] for r in rows] == [r.name for r in cfg.merge_runs()]
    assert rows[0]["scale"] == "0.5" and all(len(r["model_sha256"]) == 64 for r in rows)


def test_both_engines_declare_the_same_qwen3_dag_without_evaluation(tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir()
    for name in ("Snakefile", "workflow", "src"):
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, ws / name)
    _fakes(ws)
    (ws / "params.yaml").write_text(yaml.safe_dump(_raw(), sort_keys=False))
    out = subprocess.run([str(BIN / "mergeflow"), "dag"], cwd=ws, env=engine_env(ws),
                                       capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    subprocess.run([str(BIN / "dvc"), "init", "--no-scm", "-q"], cwd=ws, check=True)
    dvc = dvc_stages(ws)
    smk = snakemake_jobs(ws, "--forceall")
    assert set(dvc) == set(smk), (sorted(set(dvc) - set(smk)), sorted(set(smk) - set(dvc)))
    assert "mergeflow merge --method lot" in dvc and not any("evaluate" in cmd for cmd in dvc)
    for cmd in dvc:
        assert dvc[cmd][1] == smk[cmd][1], cmd
    assert "calibration" in dvc["mergeflow prepare"][0]  # the texts are an input of prepare


@pytest.mark.parametrize("edit,words", [
    (lambda r: r["merge"]["task_arithmetic"].__setitem__("alpha", "auto"),
     "merge.task_arithmetic.alpha = 'auto': calibration tasks are scored outside mergeflow, so there is no "
     "validation split to choose it on; set a number"),
    (lambda r: r["model"]["import"]["tasks"].pop("reranking"),
     "model.import.tasks: no expert for 'reranking'; a calibration task's expert is a published model"),
    (lambda r: r["data"]["tasks"].append("sorting"),
     "data.tasks: 'sorting' is scored by mergeflow and 'embedding' is a calibration task, scored outside: a run "
     "holds one kind or the other"),
    (lambda r: r.__setitem__("suite", "text"),
     "data.tasks: 'embedding' is a calibration task (a causal LM's texts): set suite: lm"),
    (lambda r: r["data"].__setitem__("local_dir", None),
     "data.local_dir must name the folder of the calibration texts (<local_dir>/<task>/texts.txt)"),
])
def test_a_bad_calibration_configuration_is_one_line_naming_it(tmp_path, edit, words):
    with pytest.raises(MergeflowError, match=re.escape(words)):
        _load(tmp_path, edit)


def test_missing_calibration_texts_are_one_line_naming_the_file(tmp_path, monkeypatch):
    from mergeflow.stages import text

    _fakes(tmp_path)
    (tmp_path / "calibration/reranking/texts.txt").unlink()
    monkeypatch.chdir(tmp_path)
    cfg = _load(tmp_path)
    text.base(cfg)
    with pytest.raises(MergeflowError, match=re.escape("calibration/reranking/texts.txt: not found; a calibration "
                                                       "task reads its texts there, one example a line")):
        text.prepare(cfg, "reranking")
    assert not (tmp_path / "data/lm/prepared/reranking").exists()
