"""The pre-training corpus: deterministic, independent of how it is split over workers, not the tasks."""

import numpy as np
import pytest
import torch

from mergeflow.data import corpus
from mergeflow.errors import MergeflowError


def _serial(fn, jobs, workers):
    return [fn(*args) for args in jobs]


def test_corpus_is_deterministic_and_independent_of_the_worker_count():
    a_img, a_cap = corpus.build(37, seed=3, workers=1, run=_serial)
    b_img, b_cap = corpus.build(37, seed=3, workers=3, run=_serial)  # 12 chunks instead of 4
    assert a_img.shape == (37, 32, 32, 3) and a_img.dtype == np.uint8
    assert np.array_equal(a_img, b_img) and a_cap == b_cap
    c_img, _ = corpus.build(37, seed=4, workers=1, run=_serial)
    assert not np.array_equal(a_img, c_img)


def test_captions_name_the_concepts_the_tasks_draw_on():
    _, captions = corpus.generate(0, 600, seed=0)
    text = " ".join(captions)
    for word in ("digit", "letter", "sign", "pattern", "aerial", "background", "handwritten"):
        assert word in text, word
    assert any(s in text for s in corpus.SHAPES) and any(c in text for c in corpus.COLOURS)
    assert len(set(captions)) > 300  # compositional: far more captions than concepts
    assert not any(" a a" in c or " a o" in c or " a e" in c for c in captions)  # "an orange", not "a orange"


def test_corpus_images_are_not_task_images(tmp_path):
    from mergeflow.data import get_task

    images, _ = corpus.generate(0, 200, seed=0)
    spec = get_task("shapes")
    spec.fetch(tmp_path / "shapes", {"train": 200, "test": 0, "seed": 0})
    from mergeflow.io import load_tensors

    task = load_tensors(tmp_path / "shapes" / "train.safetensors")["images"].numpy()
    flat_c = images.reshape(len(images), -1).astype(np.int16)
    flat_t = task.reshape(len(task), -1).astype(np.int16)
    nearest = min(int(np.abs(flat_c - t).mean(1).min()) for t in flat_t)
    assert nearest > 5  # mean absolute pixel difference of the closest pair


def test_pretraining_needs_one_caption_per_image():
    from mergeflow.models import create_model
    from mergeflow.train.pretrain import pretrain_clip

    model = create_model("mf-vit-micro", None, seed=0)
    images = torch.zeros(3, 3, 16, 16, dtype=torch.uint8)
    with pytest.raises(MergeflowError, match="pretrain: 3 images but 2 captions"):
        pretrain_clip(model, "mf-vit-micro", images, ["a", "b"], steps=1, batch_size=2, lr=1e-3, weight_decay=0.0,
                      warmup_steps=0, seed=0, device=torch.device("cpu"))


def test_pretraining_on_the_corpus_lowers_the_loss():
    from mergeflow.models import create_model
    from mergeflow.train.pretrain import pretrain_clip

    images, captions = corpus.generate(0, 64, seed=0)
    x = torch.nn.functional.interpolate(torch.from_numpy(images).permute(0, 3, 1, 2).float(), size=(16, 16),
                                        mode="bilinear", antialias=True).round().to(torch.uint8)
    model = create_model("mf-vit-micro", None, seed=0)
    log = pretrain_clip(model, "mf-vit-micro", x, captions, steps=30, batch_size=16, lr=3e-3, weight_decay=0.0,
                        warmup_steps=3, seed=0, device=torch.device("cpu"))
    assert np.mean(log["loss"][-5:]) < np.mean(log["loss"][:5]) - 0.2
