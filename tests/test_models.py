"""Models: factory, classifier, zero-shot heads, fine-tuning, evaluation — on mf-vit-micro."""

import copy

import pytest
import torch
import torch.nn.functional as F

from mergeflow.errors import MergeflowError
from mergeflow.evaluate import accuracy, summarise
from mergeflow.models import ImageClassifier, create_model, load_base, save_base
from mergeflow.models.classifier import MEAN, STD, check_head, normalize_images
from mergeflow.models.factory import _open_clip
from mergeflow.models.heads import zeroshot_head
from mergeflow.train.finetune import finetune

ARCH = "mf-vit-micro"


@pytest.fixture(scope="module")
def micro():
    return create_model(ARCH, None, seed=0)


def _images(n, size=16, seed=0):
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_normalize_images_uses_clip_constants():
    x = torch.full((1, 3, 2, 2), 255, dtype=torch.uint8)
    out = normalize_images(x)
    for c in range(3):
        assert torch.allclose(out[0, c], torch.full((2, 2), (1.0 - MEAN[c]) / STD[c]))


def test_classifier_logits_match_hand_computation(micro):
    head = F.normalize(torch.randn(3, micro.visual.output_dim, generator=torch.Generator().manual_seed(1)), dim=-1)
    clf = ImageClassifier(copy.deepcopy(micro.visual), head, logit_scale=7.5).eval()
    x = normalize_images(_images(4))
    with torch.no_grad():
        feats = micro.visual(x)
        expected = 7.5 * (feats / feats.norm(dim=-1, keepdim=True)) @ head.t()
        assert torch.allclose(clf(x), expected, atol=1e-5)


def test_checkpoint_round_trip_through_factory(tmp_path, micro):
    from safetensors.torch import save_file

    ckpt = tmp_path / "random.safetensors"
    save_file({k: v.contiguous() for k, v in micro.state_dict().items()}, str(ckpt))
    loaded = create_model(ARCH, str(ckpt), seed=123)  # a different seed: the weights must come from the file
    for k, v in micro.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    pt = tmp_path / "random.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in micro.state_dict().items()}}, pt)
    assert torch.equal(create_model(ARCH, str(pt)).state_dict()["visual.proj"], micro.state_dict()["visual.proj"])


def test_base_folder_round_trip(tmp_path, micro):
    save_base(micro, ARCH, tmp_path / "base")
    model, arch = load_base(tmp_path / "base")
    assert arch == ARCH
    assert all(torch.equal(model.state_dict()[k], v) for k, v in micro.state_dict().items())


def test_checkpoint_with_wrong_keys_or_shapes_is_refused(tmp_path, micro):
    from safetensors.torch import save_file

    state = {k: v.contiguous() for k, v in micro.state_dict().items()}
    missing = dict(state)
    missing.pop("visual.proj")
    save_file(missing, str(tmp_path / "missing.safetensors"))
    with pytest.raises(MergeflowError, match="key visual.proj missing"):
        create_model(ARCH, str(tmp_path / "missing.safetensors"))
    wrong = dict(state, **{"visual.proj": torch.zeros(3, 3)})
    save_file(wrong, str(tmp_path / "wrong.safetensors"))
    with pytest.raises(MergeflowError, match=r"visual.proj has shape \(3, 3\)"):
        create_model(ARCH, str(tmp_path / "wrong.safetensors"))
    extra = dict(state, **{"visual.extra": torch.zeros(1)})
    save_file(extra, str(tmp_path / "extra.safetensors"))
    with pytest.raises(MergeflowError, match="unexpected key visual.extra"):
        create_model(ARCH, str(tmp_path / "extra.safetensors"))
    with pytest.raises(MergeflowError, match="checkpoint .* not found"):
        create_model(ARCH, str(tmp_path / "absent.safetensors"))


def test_pretrained_tag_fails_at_once_for_our_architectures():
    with pytest.raises(MergeflowError, match="has no pre-trained tag 'openai'.*checkpoint path"):
        create_model("mf-vit-tiny", "openai")


def test_unknown_architecture():
    with pytest.raises(MergeflowError, match="model.arch: unknown architecture 'vit-nope'"):
        create_model("vit-nope")


def test_heads_equal_direct_computation(micro):
    names, templates = ["cat", "dog"], ["a photo of a {}.", "a {} drawing."]
    head = zeroshot_head(micro, ARCH, names, templates)
    tok = _open_clip().get_tokenizer(ARCH)
    with torch.no_grad():
        rows = []
        for n in names:
            e = micro.encode_text(tok([t.format(n) for t in templates]))
            e = e / e.norm(dim=-1, keepdim=True)
            m = e.mean(0)
            rows.append(m / m.norm())
    assert torch.allclose(head, torch.stack(rows), atol=1e-6)
    assert torch.allclose(head.norm(dim=-1), torch.ones(2))


def test_head_with_wrong_class_count_is_refused():
    with pytest.raises(MergeflowError, match="head has 3 classes but the dataset has 5"):
        check_head(torch.zeros(3, 8), 5, "models/heads/x.safetensors")


def test_one_finetune_step_changes_only_the_image_encoder(micro):
    head = F.normalize(torch.randn(4, micro.visual.output_dim), dim=-1)
    clf = ImageClassifier(copy.deepcopy(micro.visual), head, 10.0)
    before = {k: v.clone() for k, v in clf.state_dict().items()}
    finetune(clf, _images(8), torch.arange(8) % 4, steps=1, batch_size=8, lr=1e-2, weight_decay=0.1,
             warmup_steps=0, grad_clip=1.0, seed=0, device=torch.device("cpu"))
    after = clf.state_dict()
    assert torch.equal(after["head"], before["head"])
    changed = [k for k in before if k.startswith("visual.") and not torch.equal(after[k], before[k])]
    assert "visual.proj" in changed and "visual.conv1.weight" in changed
    assert not any(p.requires_grad for p in clf.buffers())


def test_finetune_is_deterministic(micro):
    def run():
        clf = ImageClassifier(copy.deepcopy(micro.visual), F.normalize(torch.ones(4, micro.visual.output_dim), dim=-1))
        finetune(clf, _images(16), torch.arange(16) % 4, steps=3, batch_size=8, lr=1e-3, weight_decay=0.1,
                 warmup_steps=1, grad_clip=1.0, seed=3, device=torch.device("cpu"))
        return clf.visual.state_dict()

    a, b = run(), run()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_nan_loss_stops_finetuning(micro):
    visual = copy.deepcopy(micro.visual)
    with torch.no_grad():
        visual.proj.fill_(float("nan"))
    clf = ImageClassifier(visual, F.normalize(torch.ones(2, visual.output_dim), dim=-1))
    with pytest.raises(MergeflowError, match="loss became nan at step 0; lower finetune.lr"):
        finetune(clf, _images(4), torch.tensor([0, 1, 0, 1]), steps=2, batch_size=4, lr=1e-3, weight_decay=0.0,
                 warmup_steps=0, grad_clip=1.0, seed=0, device=torch.device("cpu"), task="t")


def test_accuracy_on_a_tiny_fake_split(micro):
    clf = ImageClassifier(copy.deepcopy(micro.visual), F.normalize(torch.randn(3, micro.visual.output_dim), dim=-1))
    images = _images(10, seed=5)
    with torch.no_grad():
        pred = clf(normalize_images(images)).argmax(-1)
    labels = pred.clone()
    labels[:3] = (labels[:3] + 1) % 3  # exactly 3 wrong
    assert accuracy(clf, images, labels, batch_size=4) == pytest.approx(0.7)


def test_summarise_normalised_accuracy_and_drop_std():
    out = summarise({"a": {"accuracy": 0.5}, "b": {"accuracy": 0.9}}, {"a": {"accuracy": 1.0}, "b": {"accuracy": 0.9}})
    assert out["average"] == pytest.approx(0.7)
    assert out["normalized"] == pytest.approx(0.75)
    assert out["drop_std"] == pytest.approx(0.25)
