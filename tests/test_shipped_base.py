"""The base the offline configuration loads is the one its recorded command makes, and params.yaml says how."""

from pathlib import Path

import pytest
import torch

from mergeflow import config
from mergeflow.errors import MergeflowError
from mergeflow.io import hash_file, load_tensors, read_json
from mergeflow.models.factory import create_model, shipped_checkpoint, shipped_tags

ROOT = Path(__file__).resolve().parents[1]
PARAMS = config.load(ROOT / "params.yaml")
ARCH, TAG = PARAMS.model.arch, PARAMS.model.pretrained
RECORD = shipped_checkpoint(ARCH, TAG).with_suffix(".json")


def test_the_default_loads_shipped_weights_recorded_with_the_params_that_made_them():
    assert TAG in shipped_tags(ARCH)
    record = read_json(RECORD)
    assert record["arch"] == ARCH and record["seed"] == PARAMS.seed
    assert record["pretrain_config"] == PARAMS.raw["pretrain"]  # params.yaml's pretrain block made these weights
    assert record["weights_sha256"] == hash_file(shipped_checkpoint(ARCH, TAG))
    assert record["pretrain"]["steps"] == PARAMS.pretrain.steps == len(record["pretrain"]["loss"])


def test_the_recorded_command_starts_as_the_shipped_run_did(tmp_path):
    from mergeflow.stages.models import pretrain

    cfg = config.Config({**PARAMS.raw, "device": "cpu"}, PARAMS.source)
    out = pretrain(cfg, "check", tmp_path, steps=3)
    log = read_json(out.with_suffix(".json"))
    recorded = read_json(RECORD)
    assert log["corpus"] == recorded["corpus"]  # the same generated pairs, byte for byte (their hash)
    assert log["pretrain"]["loss"] == pytest.approx(recorded["pretrain"]["loss"][:3], abs=2e-4)


def test_a_shipped_tag_loads_like_an_open_clip_tag():
    model = create_model(ARCH, TAG)
    state = load_tensors(shipped_checkpoint(ARCH, TAG))
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    with pytest.raises(MergeflowError, match=f"has no pre-trained tag 'nope'; tags: .*{TAG}"):
        create_model(ARCH, "nope")
