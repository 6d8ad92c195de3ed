"""The text suite's data and training (mergeflow.text): generated tasks, tokenizer, GLUE readers, prepared
token splits, and one tiny run from pre-training to merged and scored models."""

import csv

import numpy as np
import pytest
import torch

from mergeflow.errors import MergeflowError
from mergeflow.families import get_family
from mergeflow.text import glue, language, offline
from mergeflow.text.prepared import load_text_split, prepare_text_task
from mergeflow.text.tasks import TEXT_TASKS, get_text_task
from mergeflow.text.tokenize import check_matches, encode, train_word_tokenizer

HF = get_family("hf-encoder")


@pytest.fixture(scope="module")
def tokenizer():
    return train_word_tokenizer(offline.corpus(3000), language.vocabulary())


# --- generated tasks ---------------------------------------------------------------------------------------
def test_offline_tasks_have_glue_shapes_and_metrics():
    metrics = {name: TEXT_TASKS[name].metric for name in offline.TASKS}
    assert sorted(metrics.values()) == sorted(["matthews", "accuracy", "f1_accuracy", "pearson_spearman",
                                               "f1_accuracy", "accuracy", "accuracy", "accuracy"])
    vocabulary = set(language.vocabulary())
    for name, (_, _, labels) in offline.TASKS.items():
        examples = offline.generate(name, "train", 400, seed=0)
        assert examples == offline.generate(name, "train", 400, seed=0)  # deterministic
        assert examples != offline.generate(name, "test", 400, seed=0)
        values = np.array([e[2] for e in examples])
        if labels is None:
            assert values.min() == 0 and values.max() == 5 and len(np.unique(values)) == 6
        else:
            counts = np.bincount(values.astype(int), minlength=len(labels))
            assert len(counts) == len(labels) and counts.min() >= 0.15 * len(examples), (name, counts)
        words = {w for a, b, _ in examples for text in (a, b) if text for w in text.split()}
        assert words <= vocabulary, (name, words - vocabulary)
        pair = examples[0][1] is not None
        assert all((e[1] is not None) == pair for e in examples)


def test_the_corpus_uses_the_lexicon_without_labels():
    corpus = offline.corpus(2000, seed=0)
    assert corpus == offline.corpus(2000, seed=0) and len(set(corpus)) > 1000
    assert {w for s in corpus for w in s.split()} <= set(language.vocabulary())


# --- tokenizer -----------------------------------------------------------------------------------------------
def test_word_tokenizer_has_roberta_specials_and_pair_template(tokenizer):
    assert [tokenizer.token_to_id(s) for s in ("<s>", "<pad>", "</s>", "<unk>", "<mask>")] == [0, 1, 2, 3, 4]
    out = encode(tokenizer, ["the dog sleeps ."], ["the cat runs ."], 16)
    ids = out["input_ids"][0].tolist()
    assert ids[0] == 0 and ids[5:7] == [2, 2] and ids[11] == 2 and ids[12:] == [1] * 4
    assert out["attention_mask"][0].tolist() == [1] * 12 + [0] * 4 and out["input_ids"].dtype == np.int32
    assert 3 not in ids  # every word known
    with pytest.raises(MergeflowError, match=r"base: the tokenizer has \d+ tokens but the model's vocabulary has 10"):
        check_matches(tokenizer, 10, "base")


# --- GLUE readers --------------------------------------------------------------------------------------------
def _tsv(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        csv.writer(handle, delimiter="\t", quoting=csv.QUOTE_NONE, quotechar=None).writerows(rows)


def test_glue_tsv_files_are_read_with_huggingface_label_ids(tmp_path):
    _tsv(tmp_path / "cola" / "train.tsv", [["gj04", "1", "", "The dog barked ."], ["gj04", "0", "*", "Dog the ."]])
    split = glue.read_glue(tmp_path / "cola", "cola", "train")
    assert split.texts_a == ["The dog barked .", "Dog the ."] and split.texts_b is None
    assert split.labels.tolist() == [1, 0]
    _tsv(tmp_path / "mnli" / "dev_matched.tsv", [["index", "sentence1", "sentence2", "gold_label"],
                                                  ["0", "A man sleeps .", "A person sleeps .", "entailment"],
                                                  ["1", "A man sleeps .", "A man runs .", "contradiction"]])
    split = glue.read_glue(tmp_path / "mnli", "mnli", "test")
    assert split.texts_b == ["A person sleeps .", "A man runs ."] and split.labels.tolist() == [0, 2]
    _tsv(tmp_path / "stsb" / "train.tsv", [["sentence1", "sentence2", "score"], ["a", "b", "3.8"]])
    assert glue.read_glue(tmp_path / "stsb", "stsb", "train").labels.dtype == np.float32


def test_glue_folder_errors_are_one_line_naming_the_file(tmp_path):
    _tsv(tmp_path / "sst2" / "train.tsv", [["sentence", "label"], ["fine", "1"]])
    with pytest.raises(MergeflowError, match=r"sst2/dev.tsv: GLUE sst2 split 'test' not found"):
        glue.read_glue(tmp_path / "sst2", "sst2", "test")
    _tsv(tmp_path / "rte" / "train.tsv", [["index", "sentence1", "label"], ["0", "x", "entailment"]])
    with pytest.raises(MergeflowError, match=r"rte/train.tsv: no column 'sentence2' \(columns: index, sentence1, "):
        glue.read_glue(tmp_path / "rte", "rte", "train")
    _tsv(tmp_path / "qnli" / "train.tsv", [["index", "question", "sentence", "label"], ["0", "q", "s", "maybe"]])
    with pytest.raises(MergeflowError, match=r"qnli/train.tsv: label 'maybe' is not one of entailment"):
        glue.read_glue(tmp_path / "qnli", "qnli", "train")
    with pytest.raises(MergeflowError, match="GLUE cola folder not found"):
        glue.read_glue(tmp_path / "nowhere", "cola", "train")


def test_glue_save_to_disk_layout(tmp_path):
    datasets = pytest.importorskip("datasets")
    data = datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"sentence1": ["a b", "c d"], "sentence2": ["a", "e"], "label": [0, 1],
                                             "idx": [0, 1]}),
        "validation": datasets.Dataset.from_dict({"sentence1": ["x"], "sentence2": ["y"], "label": [1], "idx": [0]}),
    })
    data.save_to_disk(str(tmp_path / "rte"))
    split = glue.read_glue(tmp_path / "rte", "rte", "train")
    assert split.texts_a == ["a b", "c d"] and split.texts_b == ["a", "e"] and split.labels.tolist() == [0, 1]
    assert glue.read_glue(tmp_path / "rte", "rte", "test").labels.tolist() == [1]
    (tmp_path / "mrpc").mkdir()
    with pytest.raises(MergeflowError, match=r"mrpc/train: GLUE mrpc split 'train' not found"):
        glue.read_glue(tmp_path / "mrpc", "mrpc", "train")


# --- prepared splits -----------------------------------------------------------------------------------------
def test_prepared_text_splits_roundtrip_and_name_their_tokenizer(tmp_path, tokenizer):
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    sizes = prepare_text_task("similarity", tmp_path, tmp_path / "prepared", tmp_path / "tokenizer.json",
                              max_length=48, options={"train": 300, "test": 50})
    assert sizes == {"train": 270, "val": 30, "test": 50}
    from mergeflow.io import hash_file

    split = load_text_split(tmp_path / "prepared", "val", hash_file(tmp_path / "tokenizer.json"))
    assert split["input_ids"].shape == (30, 48) and split["labels"].dtype == np.float32
    with pytest.raises(MergeflowError, match="another tokenizer; rerun `mergeflow prepare --task similarity`"):
        load_text_split(tmp_path / "prepared", "val", "0" * 64)
    assert get_text_task("similarity").num_outputs == 1 and get_text_task("inference").num_outputs == 3


# --- one tiny run: pre-train, fine-tune, statistics, merge, score -----------------------------------------------
def test_tiny_text_run_from_pretraining_to_merged_scores(tokenizer):
    from mergeflow.features.tokens import collect_token_stats
    from mergeflow.merge import merge
    from mergeflow.text.train import finetune, predict, pretrain_mlm

    cfg = {"model_type": "roberta", "vocab_size": tokenizer.get_vocab_size(), "hidden_size": 32,
           "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64, "max_position_embeddings": 52,
           "pad_token_id": 1, "type_vocab_size": 1}
    from mergeflow.families.hf_encoder import _transformers

    tf = _transformers()
    torch.manual_seed(0)
    mlm = tf.AutoModelForMaskedLM.from_config(tf.AutoConfig.for_model(
        **{k: v for k, v in cfg.items() if k != "model_type"}, model_type="roberta"))
    corpus = encode(tokenizer, offline.corpus(1000, seed=1), None, 48)
    log = pretrain_mlm(mlm, corpus, steps=30, batch_size=32, lr=2e-3, weight_decay=0.0, warmup_steps=5, seed=0,
                       special_ids=[0, 1, 2, 3, 4], mask_token=4, log_every=10)
    assert len(log) == 3 and log[-1]["loss"] < log[0]["loss"]
    body = {f"roberta.{k[len('roberta.'):]}": v for k, v in mlm.state_dict().items() if k.startswith("roberta.")}
    experts, stats, tests = {}, {}, {}
    for name in ("sentiment", "similarity"):
        task = get_text_task(name)
        train = task.read(None, "train", {"train": 400})
        test = task.read(None, "test", {"test": 100})
        arrays = encode(tokenizer, train.texts_a, train.texts_b, 48)
        model = HF.build(cfg, num_labels=task.num_outputs)
        model.load_state_dict(body, strict=False)
        finetune(model, arrays, train.labels, steps=40, batch_size=32, lr=1e-3, weight_decay=0.0, warmup_steps=5,
                 seed=0)
        experts[name] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        stats[name] = collect_token_stats(model, {k: torch.from_numpy(v[:16].astype(np.int64))
                                                  for k, v in arrays.items()}, HF)
        tests[name] = (encode(tokenizer, test.texts_a, test.texts_b, 48), test.labels)
    assert set(stats["sentiment"].counts) == {"roberta.embeddings.word_embeddings.weight",
                                              "roberta.embeddings.position_embeddings.weight",
                                              "roberta.embeddings.token_type_embeddings.weight"}
    for method, hp in (("task_arithmetic", {"alpha": 0.5}), ("cat", {"alpha": 0.5}), ("lot", {"lambda": 1.0})):
        merged = merge(method, body, experts, stats=stats, family="hf-encoder", **hp)
        assert set(merged) == set(body)
        for name, (arrays, labels) in tests.items():
            model = HF.build(cfg, num_labels=get_text_task(name).num_outputs)
            model.load_state_dict({**merged, **HF.heads(experts[name])})  # the merged body, the task's own head
            score = get_text_task(name).score(predict(model, arrays), labels)["score"]
            assert np.isfinite(score), (method, name)


def test_glue_download_writes_the_layout_the_reader_reads(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    asked = []

    def fake_load_dataset(path, name):  # the hub, offline: what load_dataset returns for GLUE's sst2
        asked.append((path, name))
        return datasets.DatasetDict({
            split: datasets.Dataset.from_dict({"sentence": ["good", "bad"], "label": [1, 0], "idx": [0, 1]})
            for split in ("train", "validation", "test")})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    folder = glue.download_glue("sst2", tmp_path / "raw" / "sst2")
    assert asked == [("nyu-mll/glue", "sst2")]
    assert glue.read_glue(folder, "sst2", "test").labels.tolist() == [1, 0]  # GLUE's validation split

    def offline(path, name):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(MergeflowError, match=r"GLUE cola: cannot download nyu-mll/glue here \(ConnectionError\)"):
        glue.download_glue("cola", tmp_path / "raw" / "cola")
