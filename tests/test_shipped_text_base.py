"""The text bases configs/text-offline.yaml and configs/lm-offline.yaml load are the ones their recorded commands
make."""

from pathlib import Path

import pytest

from mergeflow import config
from mergeflow.io import hash_file, read_json
from mergeflow.text.models import shipped_files

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ["text-offline.yaml", "lm-offline.yaml"]


def _shipped(name: str):
    params = config.load(ROOT / "configs" / name)
    return params, shipped_files(params.raw["model"]["arch"], params.raw["model"]["pretrained"])


@pytest.mark.parametrize("name", CONFIGS)
def test_the_suite_loads_shipped_weights_recorded_with_the_params_that_made_them(name):
    params, files = _shipped(name)
    record = read_json(files["log"])
    assert record["arch"] == params.raw["model"]["arch"]
    assert record["pretrain"] == params.raw["pretrain"]  # the configuration's pretrain block made these weights
    assert record["max_length"] == params.raw["data"]["max_length"]
    assert record["weights_sha256"] == hash_file(files["weights"])
    assert record["tokenizer_sha256"] == hash_file(files["tokenizer"])
    assert len(record["loss"]) == params.raw["pretrain"]["steps"]
    assert record["loss"][-1] < 0.6 * record["loss"][0]  # it learned something


@pytest.mark.parametrize("name", CONFIGS)
def test_the_recorded_command_starts_as_the_shipped_run_did(tmp_path, name):
    from mergeflow.stages.text import pretrain

    params, files = _shipped(name)
    cfg = config.Config({**params.raw, "device": "cpu"}, params.source)
    out = pretrain(cfg, "check", tmp_path, steps=3)
    log = read_json(out.with_suffix(".json"))
    recorded = read_json(files["log"])
    assert log["corpus"] == recorded["corpus"]  # the same generated sentences (their hash)
    assert log["tokenizer_sha256"] == recorded["tokenizer_sha256"]  # the same vocabulary, the same ids
    assert log["loss"] == pytest.approx(recorded["loss"][:3], abs=2e-4)
