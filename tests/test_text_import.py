"""Real text models from Hugging Face folders (issue 29, item 8): a base such as roberta-base and published GLUE
classifiers as experts, on tiny models written by ``save_pretrained`` (no network here)."""

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from conftest import perturbed
from mergeflow import config
from mergeflow.errors import MergeflowError
from mergeflow.families.hf_encoder import _transformers
from mergeflow.families.hf_folder import read_folder
from mergeflow.io import load_tensors, read_json

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "e2e" / "text-tiny.yaml"
SHAPE = {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32,
         "max_position_embeddings": 66, "type_vocab_size": 1, "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2}


def _roberta(vocab: int, num_labels: int | None = None, seed: int = 0):
    tf = _transformers()
    cfg = tf.RobertaConfig(vocab_size=vocab, **SHAPE)
    torch.manual_seed(seed)
    if num_labels is None:
        return tf.RobertaForMaskedLM(cfg)
    cfg.num_labels = num_labels
    return tf.RobertaForSequenceClassification(cfg)


@pytest.fixture
def hub(tmp_path):
    """``hub/base`` (a masked LM and its tokenizer, as a Hub download holds them) and ``hub/experts/<task>``:
    sentiment (safetensors) and similarity (a pickled ``pytorch_model.bin``), both classifiers on the base."""
    from mergeflow.text import language, offline
    from mergeflow.text.tokenize import train_word_tokenizer

    tokenizer = train_word_tokenizer(offline.corpus(200), language.vocabulary())
    vocab = tokenizer.get_vocab_size()
    base = _roberta(vocab)
    (tmp_path / "hub" / "base").mkdir(parents=True)
    base.save_pretrained(tmp_path / "hub" / "base")
    tokenizer.save(str(tmp_path / "hub" / "base" / "tokenizer.json"))
    body = {k: v for k, v in base.state_dict().items() if k.startswith("roberta.")}
    for i, (task, labels) in enumerate((("sentiment", 2), ("similarity", 1))):
        model = _roberta(vocab, labels, seed=10 + i)
        model.load_state_dict({**model.state_dict(), **perturbed(body, i, scale=0.01)})
        folder = tmp_path / "hub" / "experts" / task
        if task == "similarity":
            folder.mkdir(parents=True)
            model.config.save_pretrained(folder)
            torch.save(model.state_dict(), folder / "pytorch_model.bin")
        else:
            model.save_pretrained(folder)
    return tmp_path


def _cfg(ws: Path, **model):
    raw = yaml.safe_load(TINY.read_text())
    raw["data"]["tasks"] = ["sentiment", "similarity"]
    raw["model"] = {"arch": "someone/tiny-roberta", "pretrained": "hub/base",
                    "import": {"format": "hf", "root": "hub/experts"}, **model}
    (ws / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return config.load(ws / "params.yaml")


# --- reading a folder --------------------------------------------------------------------------------------------
def test_a_masked_lm_folder_gives_its_body_and_a_classifier_folder_its_weights(hub):
    base = _roberta(60)
    base.save_pretrained(hub / "mlm")
    config_, body = read_folder(hub / "mlm")
    assert config_["model_type"] == "roberta"
    assert set(body) == {k[len("roberta."):] for k in base.state_dict() if k.startswith("roberta.")}
    assert all(torch.equal(body[k], base.state_dict()[f"roberta.{k}"]) for k in body)
    pickled = torch.load(hub / "hub/experts/similarity/pytorch_model.bin", weights_only=True)
    _, state = read_folder(hub / "hub/experts/similarity", 1)
    assert set(state) == set(pickled) and all(torch.equal(state[k], pickled[k]) for k in state)


def test_bad_folders_are_one_line_naming_the_tensor_or_file(hub):
    with pytest.raises(MergeflowError, match=r"classifier.out_proj.weight has shape \(2, 16\), the model \(3, 16\) "
                                             r"\(3 outputs\)"):
        read_folder(hub / "hub/experts/sentiment", 3)
    folder = hub / "cut"
    shutil.copytree(hub / "hub/experts/sentiment", folder)
    from safetensors.torch import load_file, save_file

    state = load_file(str(folder / "model.safetensors"))
    del state["roberta.encoder.layer.0.output.dense.bias"]
    save_file(state, str(folder / "model.safetensors"))
    missing = r"model.safetensors: roberta.encoder.layer.0.output.dense.bias is missing"
    with pytest.raises(MergeflowError, match=missing):
        read_folder(folder, 2)
    (folder / "config.json").write_text(" " * (1 << 20) + "{}")
    with pytest.raises(MergeflowError, match="not a model configuration"):
        read_folder(folder, 2)
    (folder / "config.json").unlink()
    with pytest.raises(MergeflowError, match="no config.json"):
        read_folder(folder, 2)


# --- the base and experts stages ---------------------------------------------------------------------------------
def test_a_hub_base_and_published_experts_run_the_text_stages(hub, monkeypatch):
    from mergeflow.stages import text

    monkeypatch.chdir(hub)
    cfg = _cfg(hub)
    text.base(cfg)
    base = load_tensors(hub / "models/text/base/model.safetensors")
    assert "embeddings.word_embeddings.weight" in base and not any(k.startswith("lm_head") for k in base)
    log = read_json(hub / "models/text/base/log.json")
    assert set(log["files"]) == {"config.json", "model.safetensors", "tokenizer.json"}
    for task in cfg.tasks:
        text.prepare(cfg, task)
        text.finetune(cfg, task)
        expert = load_tensors(hub / "models/text/experts" / f"{task}.safetensors")
        _, published = read_folder(hub / "hub/experts" / task, 2 if task == "sentiment" else 1)
        assert set(expert) == set(published) and all(torch.equal(expert[k], published[k]) for k in expert)
        record = read_json(hub / "models/text/experts" / f"{task}.log.json")
        assert record["imported"] == f"hub/experts/{task}" and "val_score" in record
    merged = text.merge(cfg, "task_arithmetic")
    assert merged.is_file()


def test_a_published_expert_of_another_width_is_one_line_and_nothing_is_written(hub, monkeypatch):
    from mergeflow.stages import text

    monkeypatch.chdir(hub)
    cfg = _cfg(hub)
    text.base(cfg)
    text.prepare(cfg, "sentiment")
    vocab = json.loads((hub / "hub/base/config.json").read_text())["vocab_size"]
    shutil.rmtree(hub / "hub/experts/sentiment")
    _roberta(vocab + 3, 2).save_pretrained(hub / "hub/experts/sentiment")
    with pytest.raises(MergeflowError) as err:
        text.finetune(cfg, "sentiment")
    assert str(err.value) == (f"expert 'sentiment' (hub/experts/sentiment): roberta.embeddings.word_embeddings.weight "
                              f"has shape ({vocab + 3}, 16), pretrained ({vocab}, 16)")
    assert not (hub / "models/text/experts/sentiment.safetensors").exists()


def test_a_missing_hub_folder_says_how_to_get_it_and_download_fetches_it(hub, monkeypatch):
    import huggingface_hub

    from mergeflow.stages import text

    monkeypatch.chdir(hub)
    cfg = _cfg(hub, pretrained="hub/absent")
    with pytest.raises(MergeflowError, match=r"hub/absent: not found \(model.pretrained\); download "
                                             r"someone/tiny-roberta there with `huggingface-cli download "
                                             r"someone/tiny-roberta config.json"):
        text.base(cfg)
    calls = []

    def fake_download(repo_id, local_dir, allow_patterns):  # the Hub, from the folder the fixture wrote
        calls.append((repo_id, allow_patterns))
        shutil.copytree(hub / "hub/base", local_dir)
        return local_dir

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    raw = yaml.safe_load((hub / "params.yaml").read_text())
    raw["data"]["download"] = True
    (hub / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    text.base(config.load(hub / "params.yaml"))
    assert calls == [("someone/tiny-roberta", ["config.json", "model.safetensors", "tokenizer.json"])]
    assert (hub / "models/text/base/model.safetensors").is_file()


# --- the recipe, the configuration ---------------------------------------------------------------------------------
def test_epochs_and_warmup_ratio_set_the_schedule():
    from mergeflow.stages.text import schedule_length

    recipe = {"epochs": 10, "steps": 1, "batch_size": 16, "warmup_ratio": 0.06, "warmup_steps": 0}
    assert schedule_length(recipe, 1000) == (625, 38)  # ceil(10 * 1000 / 16); round(0.06 * 625)
    assert schedule_length({**recipe, "epochs": None, "steps": 300, "warmup_ratio": None, "warmup_steps": 30},
                           1000) == (300, 30)


def test_the_glue_roberta_configuration_is_the_papers_recipe(tmp_path):
    cfg = config.load(ROOT / "configs" / "glue-roberta.yaml")
    assert cfg.tasks == ["cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte"]
    f = cfg.raw["finetune"]
    assert (f["epochs"], f["batch_size"], f["lr"], f["warmup_ratio"], f["weight_decay"]) == (10, 16, 1e-5, 0.06, 0.01)
    assert cfg.raw["data"]["max_length"] == 128 and cfg.raw["model"]["pretrained"] == "models/hf/roberta-base"
    vision = yaml.safe_load((ROOT / "params.yaml").read_text())
    vision["finetune"]["epochs"] = 3
    (tmp_path / "v.yaml").write_text(yaml.safe_dump(vision))
    with pytest.raises(MergeflowError, match="finetune.epochs is for the text suite"):
        config.load(tmp_path / "v.yaml")


def test_the_text_report_puts_lot_table_15_beside_ours_on_glue_tasks():
    from mergeflow.text.report import paper_rows

    cfg = config.load(ROOT / "configs" / "glue-roberta.yaml")
    table = [{"model": "lot", **dict.fromkeys(cfg.tasks, 50.0)}, {"model": "zeroshot", **dict.fromkeys(cfg.tasks, 1.0)}]
    (row,) = paper_rows(cfg, table)
    assert row["model"] == "lot" and row["paper_mean"] == pytest.approx(63.13, abs=0.01) and row["ours_mean"] == 50.0
    assert paper_rows(config.load(TINY), [{"model": "lot", "sentiment": 1.0}]) == []
