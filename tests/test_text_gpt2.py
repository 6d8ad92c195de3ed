"""GPT-2 in the text suite (issue 30, item 5): a GPT-2 base and published GPT-2 sequence classifiers as experts,
as ``configs/glue-gpt2.yaml`` runs FusionBench's, on tiny models written by ``save_pretrained`` (no network)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import perturbed
from mergeflow import config
from mergeflow.errors import MergeflowError
from mergeflow.io import load_metadata, load_tensors, read_json

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "e2e" / "text-tiny.yaml"
TASKS = {"sentiment": 2, "paraphrase": 2}
EOS = "<|endoftext|>"


def _gpt2(vocab: int, eos: int, num_labels: int | None = None, seed: int = 0, pad: bool = False):
    import transformers as tf

    cfg = tf.GPT2Config(vocab_size=vocab, n_embd=16, n_layer=2, n_head=2, n_positions=64, bos_token_id=eos,
                        eos_token_id=eos, pad_token_id=eos if pad else None)
    torch.manual_seed(seed)
    if num_labels is None:
        return tf.GPT2LMHeadModel(cfg)
    cfg.num_labels = num_labels
    return tf.GPT2ForSequenceClassification(cfg)


def _byte_level_tokenizer():
    """GPT-2's kind of tokenizer: byte-level BPE, one special token (end of text), no padding token and no pair
    template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from mergeflow.text import offline

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(offline.corpus(300), trainer)
    return tok


@pytest.fixture
def hub(tmp_path):
    """``hub/gpt2`` (a causal LM without a padding id and its tokenizer, as the Hub's gpt2 holds them) and
    ``hub/experts/gpt2_<task>``: GPT-2 classifiers on the base, padding with end-of-text (FusionBench's)."""
    tokenizer = _byte_level_tokenizer()
    vocab, eos = tokenizer.get_vocab_size(), tokenizer.token_to_id(EOS)
    base = _gpt2(vocab, eos)
    base.save_pretrained(tmp_path / "hub" / "gpt2")
    tokenizer.save(str(tmp_path / "hub" / "gpt2" / "tokenizer.json"))
    body = {f"transformer.{k}": v for k, v in base.transformer.state_dict().items()}
    for i, (task, labels) in enumerate(TASKS.items()):
        model = _gpt2(vocab, eos, labels, seed=10 + i, pad=True)
        model.load_state_dict({**model.state_dict(), **perturbed(body, i, scale=0.02)})
        model.save_pretrained(tmp_path / "hub" / "experts" / f"gpt2_{task}")
    return tmp_path


def _cfg(ws: Path, methods=("task_arithmetic", "ties", "lot", "cat", "regmean"), **data):
    raw = yaml.safe_load(TINY.read_text())
    raw["data"].update({"tasks": list(TASKS), "metrics": {"paraphrase": "accuracy"}, **data})
    raw["model"] = {"arch": "openai-community/gpt2", "pretrained": "hub/gpt2",
                    "import": {"format": "hf", "root": "hub/experts",
                               "tasks": {t: f"gpt2_{t}" for t in TASKS}}}
    raw["merge"] = {"methods": list(methods), **{m: raw["merge"][m] for m in methods}}
    raw["sweeps"] = {}
    (ws / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return config.load(ws / "params.yaml")


def test_a_gpt2_folder_reads_as_its_body_and_a_classifier_folder_as_its_weights(hub):
    from mergeflow.families.hf_folder import read_folder

    config_, body = read_folder(hub / "hub/gpt2")
    lm = load_tensors(hub / "hub/gpt2/model.safetensors")
    assert config_["model_type"] == "gpt2" and "transformer.h.0.attn.c_attn.bias" in lm
    assert set(body) == {k[len("transformer."):] for k in lm if k.startswith("transformer.")}  # no lm_head: tied
    _, state = read_folder(hub / "hub/experts/gpt2_paraphrase", 2)
    published = load_tensors(hub / "hub/experts/gpt2_paraphrase/model.safetensors")
    assert set(state) == set(published) and all(torch.equal(state[k], published[k]) for k in state)
    with pytest.raises(MergeflowError, match=r"score.weight has shape \(2, 16\), the model \(3, 16\) \(3 outputs\)"):
        read_folder(hub / "hub/experts/gpt2_paraphrase", 3)


def test_a_config_whose_sizes_differ_from_the_weights_is_one_line(hub):
    from mergeflow.families.hf_folder import read_folder

    file = hub / "hub/gpt2/config.json"
    values = read_json(file)
    file.write_text(json.dumps({**values, "n_layer": 3}))
    with pytest.raises(MergeflowError, match=r"config.json: n_layer is 3 but the weights have 2 layers"):
        read_folder(hub / "hub/gpt2")
    file.write_text(json.dumps({**values, "model_type": "t5"}))
    with pytest.raises(MergeflowError, match=r"config.json: model_type 't5' is not one mergeflow has an adapter for"):
        read_folder(hub / "hub/gpt2")


def test_gpt2_experts_run_the_text_stages_with_end_of_text_padding_and_the_chosen_metric(hub, monkeypatch):
    from mergeflow.families.hf_folder import read_folder
    from mergeflow.stages import text

    monkeypatch.chdir(hub)
    cfg = _cfg(hub)
    text.base(cfg)
    eos = read_json(hub / "hub/gpt2/config.json")["eos_token_id"]
    assert read_json(hub / "models/text/base/config.json")["pad_token_id"] == eos  # the Hub's gpt2 has none
    for task in cfg.tasks:
        text.prepare(cfg, task)
        text.exemplars(cfg, task)
        text.finetune(cfg, task)
        expert = load_tensors(hub / "models/text/experts" / f"{task}.safetensors")
        _, published = read_folder(hub / "hub/experts" / f"gpt2_{task}", TASKS[task])
        assert set(expert) == set(published) and all(torch.equal(expert[k], published[k]) for k in expert)
    train = load_tensors(hub / "data/text/prepared/paraphrase/train.safetensors")
    ids, mask = train["input_ids"].numpy(), train["attention_mask"].numpy().astype(bool)
    assert np.all(ids[~mask] == eos) and mask[:, 0].all() and not np.all(mask)  # right-padded with end of text
    assert load_metadata(hub / "data/text/prepared/paraphrase/train.safetensors")["metric"] == "accuracy"
    for variant in cfg.variants():
        for task in cfg.tasks:
            text.features(cfg, task, variant.name)
    stats = [load_tensors(f) for f in (hub / "data/text/features").glob("*/paraphrase.safetensors")]
    grams = [g for g in stats if any(k.startswith("gram/") for k in g)]
    assert grams and all(  # the Conv1D inputs and GPT-2's layer norms were recorded, by the hooks of its family
        {"gram/transformer.h.1.attn.c_attn.weight", "gram/transformer.h.1.mlp.c_proj.weight",
         "sqnorm/transformer.ln_f.weight", "counts/transformer.wte.weight"} <= set(g) for g in grams)
    text.evaluate(cfg, "individual")
    text.evaluate(cfg, "zeroshot")
    pre = load_tensors(hub / "models/text/base/model.safetensors")
    for run in cfg.merge_runs():
        text.merge(cfg, run.name)
        metrics = read_json(text.evaluate(cfg, run.name))
        assert metrics["metric"] == {"sentiment": "accuracy", "paraphrase": "accuracy"}
        assert set(metrics["score"]) == set(TASKS) and 0.0 <= metrics["average"] <= 100.0
        merged = load_tensors(hub / "models/text/merged" / f"{run.name}.safetensors")
        assert not any(k.startswith("score.") for k in merged)  # each task keeps its own head
        key = "transformer.h.0.attn.c_attn.bias"  # q/k/v's biases are merged, not kept from the base
        assert not torch.equal(merged[key], pre[key.removeprefix("transformer.")]), run.name


def test_a_metric_that_does_not_fit_the_task_is_one_line(hub):
    with pytest.raises(MergeflowError, match=r"data.metrics.paraphrase = 'pearson_spearman': paraphrase is a "
                                             r"classification task, scored by accuracy or f1_accuracy or matthews"):
        _cfg(hub, metrics={"paraphrase": "pearson_spearman"})
    with pytest.raises(MergeflowError, match=r"data.metrics: 'cola' is not in data.tasks"):
        _cfg(hub, metrics={"cola": "accuracy"})
    vision = yaml.safe_load((ROOT / "tests" / "e2e" / "tiny.yaml").read_text())
    vision["data"]["metrics"] = {vision["data"]["tasks"][0]: "accuracy"}
    (hub / "vision.yaml").write_text(yaml.safe_dump(vision))
    with pytest.raises(MergeflowError, match=r"data.metrics is for the text suite; every image task is scored by "
                                             r"accuracy"):
        config.load(hub / "vision.yaml")


def test_the_glue_gpt2_configuration_is_fusionbenchs_setting_and_its_report_shows_their_table():
    from mergeflow.text.report import paper_rows
    from mergeflow.text.tasks import task_metric

    cfg = config.load(ROOT / "configs" / "glue-gpt2.yaml")
    assert cfg.tasks == ["cola", "mnli", "mrpc", "qnli", "qqp", "rte", "sst2"]
    assert cfg.raw["model"]["import"]["tasks"]["cola"] == "gpt2_cola"
    assert {task_metric(cfg.raw, t) for t in cfg.tasks} == {"accuracy"}
    table = [{"model": m, **dict.fromkeys(cfg.tasks, 50.0)} for m in ("task_arithmetic", "lot", "individual")]
    rows = {r["model"]: r for r in paper_rows(cfg, table)}
    assert set(rows) == {"task_arithmetic", "individual"}  # FusionBench has no LOT row
    assert rows["task_arithmetic"]["paper_mean"] == pytest.approx(70.0, abs=0.05)
    assert rows["individual"]["paper_mean"] == pytest.approx(82.0, abs=0.05)


def test_an_expert_of_another_family_is_one_line_naming_both(hub, monkeypatch):
    """A RoBERTa classifier offered as an expert of the GPT-2 base: refused before any weight is compared."""
    import transformers as tf

    from mergeflow.stages import text

    monkeypatch.chdir(hub)
    cfg = _cfg(hub)
    text.base(cfg)
    text.prepare(cfg, "sentiment")
    folder = hub / "hub/experts/gpt2_sentiment"
    for file in folder.iterdir():
        file.unlink()
    vocab = read_json(hub / "hub/gpt2/config.json")["vocab_size"]
    tf.RobertaForSequenceClassification(tf.RobertaConfig(
        vocab_size=vocab, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=66, num_labels=2)).save_pretrained(folder)
    with pytest.raises(MergeflowError) as err:
        text.finetune(cfg, "sentiment")
    assert str(err.value) == ("expert 'sentiment' (hub/experts/gpt2_sentiment): a roberta model (hf-encoder), the "
                              "base a gpt2 model (hf-decoder); experts are fine-tuned from the base")
    assert not (hub / "models/text/experts/sentiment.safetensors").exists()


def test_every_method_of_the_glue_gpt2_configuration_runs_on_gpt2_experts(hub, monkeypatch):
    """configs/glue-gpt2.yaml's method list, each at its configured options (the optimisation-based ones at 5 steps,
    AdaMerging at the tiny configuration's), merges and scores the tiny GPT-2 experts."""
    from mergeflow.stages import text

    monkeypatch.chdir(hub)
    real = yaml.safe_load((ROOT / "configs" / "glue-gpt2.yaml").read_text())["merge"]
    tiny = yaml.safe_load(TINY.read_text())["merge"]
    blocks = {m: tiny.get(m, real[m]) for m in real["methods"]}
    blocks.update({m: {**real[m], "steps": 5} for m in ("wudi", "doge_ta", "awd")})
    _cfg(hub, methods=("task_arithmetic",))
    raw = yaml.safe_load((hub / "params.yaml").read_text())
    raw["merge"] = {"methods": real["methods"], **blocks}
    (hub / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    cfg = config.load(hub / "params.yaml")
    text.base(cfg)
    for task in cfg.tasks:
        text.prepare(cfg, task)
        text.exemplars(cfg, task)
        text.finetune(cfg, task)
    for variant in cfg.variants():
        for task in cfg.tasks:
            text.features(cfg, task, variant.name)
    text.evaluate(cfg, "individual")
    text.evaluate(cfg, "zeroshot")
    ran = set()
    for run in cfg.merge_runs():
        text.merge(cfg, run.name)
        metrics = read_json(text.evaluate(cfg, run.name))
        assert set(metrics["score"]) == set(TASKS), run.name
        ran.add(run.method)
    assert ran == set(real["methods"]) and len(ran) == 21
