"""The text base configs/text-offline.yaml loads is the one its recorded command makes."""

from pathlib import Path

import pytest

from mergeflow import config
from mergeflow.io import hash_file, read_json
from mergeflow.text.models import shipped_files

ROOT = Path(__file__).resolve().parents[1]
PARAMS = config.load(ROOT / "configs" / "text-offline.yaml")
FILES = shipped_files(PARAMS.raw["model"]["arch"], PARAMS.raw["model"]["pretrained"])


def test_the_text_suite_loads_shipped_weights_recorded_with_the_params_that_made_them():
    record = read_json(FILES["log"])
    assert record["arch"] == PARAMS.raw["model"]["arch"]
    assert record["pretrain"] == PARAMS.raw["pretrain"]  # the configuration's pretrain block made these weights
    assert record["max_length"] == PARAMS.raw["data"]["max_length"]
    assert record["weights_sha256"] == hash_file(FILES["weights"])
    assert record["tokenizer_sha256"] == hash_file(FILES["tokenizer"])
    assert len(record["loss"]) == PARAMS.raw["pretrain"]["steps"]
    assert record["loss"][-1] < 0.6 * record["loss"][0]  # it learned something


def test_the_recorded_command_starts_as_the_shipped_run_did(tmp_path):
    from mergeflow.stages.text import pretrain

    cfg = config.Config({**PARAMS.raw, "device": "cpu"}, PARAMS.source)
    out = pretrain(cfg, "check", tmp_path, steps=3)
    log = read_json(out.with_suffix(".json"))
    recorded = read_json(FILES["log"])
    assert log["corpus"] == recorded["corpus"]  # the same generated sentences (their hash)
    assert log["tokenizer_sha256"] == recorded["tokenizer_sha256"]  # the same vocabulary, the same ids
    assert log["loss"] == pytest.approx(recorded["loss"][:3], abs=2e-4)
