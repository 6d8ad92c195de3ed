"""Importing community checkpoints: every container and layout, the same features and logits as the source,
and files that would run code refused before anything runs."""

import copy
import io
import os
import pickle
import zipfile
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import community_fakes as fakes
from mergeflow import config, paths
from mergeflow.errors import MergeflowError
from mergeflow.io import load_tensors, read_json
from mergeflow.models import community, importer, safe_pickle
from mergeflow.models.factory import load_base

TINY = Path(__file__).parent / "e2e" / "tiny.yaml"
IMAGES = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
CLASSES = {"digits": 10, "shapes": 6}


def _cfg(tmp_path, **model_import):
    import yaml

    raw = yaml.safe_load(TINY.read_text())
    raw["model"]["import"] = model_import
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    return config.load(tmp_path / "params.yaml")


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _imported_visual(out: Path):
    model, _ = load_base(out / "base")
    return model


def _features(visual, images=IMAGES):
    with torch.no_grad():
        return visual(images)


@pytest.mark.parametrize("container", ["zip", "legacy", "raw"])
def test_task_vectors_import_gives_the_source_features_and_logits(workdir, container):
    base, experts, heads = fakes.task_vectors_folder(workdir / "tv", CLASSES, container)
    cfg = _cfg(workdir, format="task_vectors", root="tv")
    out = importer.import_checkpoints(cfg)
    model = _imported_visual(out)
    assert not model.has_text_tower
    assert (_features(model.visual) - _features(base)).abs().max() <= 1e-5
    scale = float(model.logit_scale.exp())
    for task, expert in experts.items():
        visual = copy.deepcopy(model.visual)
        visual.load_state_dict(load_tensors(out / "experts" / f"{task}.safetensors"))
        assert (_features(visual) - _features(expert)).abs().max() <= 1e-5
        ours = scale * F.normalize(_features(visual), dim=-1) @ load_tensors(out / "heads" / f"{task}.safetensors")[
            "weight"].t()
        with torch.no_grad():
            theirs = heads[task](_features(expert))
        assert (ours - theirs).abs().max() <= 1e-4
    manifest = read_json(out / "manifest.json")
    assert manifest["activation"] == "gelu" and manifest["heads"] == list(CLASSES)
    assert {"tv/zeroshot.pt", "tv/digits/finetuned.pt", "tv/head_shapes.pt"} <= set(manifest["files"])


def test_quick_gelu_is_read_from_the_pickled_modules_and_used(workdir):
    base, _, _ = fakes.task_vectors_folder(workdir / "tv", CLASSES, quick_gelu=True)
    out = importer.import_checkpoints(_cfg(workdir, format="task_vectors", root="tv"))
    model = _imported_visual(out)
    assert read_json(out / "base" / "config.json")["quick_gelu"] is True
    assert (_features(model.visual) - _features(base)).abs().max() <= 1e-5


def test_an_activation_that_contradicts_the_file_is_refused(workdir):
    fakes.task_vectors_folder(workdir / "tv", CLASSES, quick_gelu=True)
    cfg = _cfg(workdir, format="task_vectors", root="tv")
    cfg.raw["model"]["activation"] = "gelu"
    with pytest.raises(MergeflowError, match="model.activation is gelu but the checkpoint uses quick_gelu"):
        importer.import_checkpoints(cfg)


def test_tall_masks_state_dicts_import_as_quick_gelu(workdir):
    base, experts, heads = fakes.tall_masks_folder(workdir / "tall", CLASSES)
    out = importer.import_checkpoints(_cfg(workdir, format="tall_masks", root="tall"))
    model = _imported_visual(out)
    assert read_json(out / "manifest.json")["activation"] == "quick_gelu"
    assert (_features(model.visual) - _features(base)).abs().max() <= 1e-5
    visual = copy.deepcopy(model.visual)
    visual.load_state_dict(load_tensors(out / "experts" / "shapes.safetensors"))
    assert (_features(visual) - _features(experts["shapes"])).abs().max() <= 1e-5


def _hf_folders(root: Path, prefix: bool = True):
    """A CLIPModel base and CLIPVisionModel experts; experts' keys with the ``vision_model.`` prefix (as
    transformers 4 writes them, safetensors) or without (as transformers 5 does, here a pytorch_model.bin)."""
    transformers = pytest.importorskip("transformers")
    from safetensors.torch import save_file

    cfg = fakes.hf_config("quick_gelu")
    torch.manual_seed(0)
    base = transformers.CLIPModel(cfg).eval()
    base.save_pretrained(root / "base")
    experts = {}
    for i, task in enumerate(CLASSES):
        vis = transformers.CLIPVisionModel(cfg.vision_config).eval()
        getattr(vis, "vision_model", vis).load_state_dict(base.vision_model.state_dict())
        with torch.no_grad():
            for p in vis.parameters():
                p.add_(0.02 * torch.randn(p.shape, generator=torch.Generator().manual_seed(50 + i)))
        folder = root / f"clip_{task}"
        vis.save_pretrained(folder)
        for f in ("model.safetensors", "pytorch_model.bin"):
            (folder / f).unlink(missing_ok=True)
        state = {k.removeprefix("vision_model."): v.contiguous() for k, v in vis.state_dict().items()}
        if prefix:
            save_file({f"vision_model.{k}": v for k, v in state.items()}, str(folder / "model.safetensors"))
        else:
            torch.save(state, folder / "pytorch_model.bin")
        experts[task] = vis
    return base, experts


@pytest.mark.parametrize("prefix", [True, False])
def test_hf_import_maps_names_and_builds_heads_from_the_text_tower(workdir, prefix):
    base, experts = _hf_folders(workdir / "hf", prefix=prefix)
    cfg = _cfg(workdir, format="hf", root="hf", base="base", tasks={t: f"clip_{t}" for t in CLASSES})
    out = importer.import_checkpoints(cfg)
    model = _imported_visual(out)
    assert model.has_text_tower and read_json(out / "manifest.json")["heads"] == []
    with torch.no_grad():
        ref = base.get_image_features(pixel_values=IMAGES)
        ref = getattr(ref, "pooler_output", ref)
        assert (model.encode_image(IMAGES) - ref).abs().max() <= 1e-5
        tokens = torch.randint(1, 49000, (2, 16), generator=torch.Generator().manual_seed(1))
        tokens[:, -1] = 49407
        text = base.get_text_features(input_ids=tokens)
        assert (model.encode_text(tokens) - getattr(text, "pooler_output", text)).abs().max() <= 1e-5
    for task, vis in experts.items():
        visual = copy.deepcopy(model.visual)
        state = load_tensors(out / "experts" / f"{task}.safetensors")
        assert torch.equal(state["proj"], model.visual.proj.detach())  # no projection in a CLIPVisionModel
        visual.load_state_dict(state)
        with torch.no_grad():
            pooled = vis(pixel_values=IMAGES).pooler_output
        assert (_features(visual) - pooled @ model.visual.proj.detach()).abs().max() <= 1e-5


def test_checks_refuse_a_copy_of_the_base_nan_and_wrong_shapes(workdir):
    base, experts, heads = fakes.task_vectors_folder(workdir / "tv", CLASSES)
    cfg = _cfg(workdir, format="task_vectors", root="tv")
    fakes.save(base, workdir / "tv" / "digits" / "finetuned.pt")
    with pytest.raises(MergeflowError, match="identical to the base"):
        importer.import_checkpoints(cfg)
    bad = fakes.perturb(base, 3)
    with torch.no_grad():
        bad.model.visual.proj[0, 0] = float("nan")
    fakes.save(bad, workdir / "tv" / "digits" / "finetuned.pt")
    with pytest.raises(MergeflowError, match="expert 'digits': proj contains NaN or Inf"):
        importer.import_checkpoints(cfg)
    other = fakes.ImageEncoder(fakes.clip(1))
    other.model.visual.proj = torch.nn.Parameter(torch.zeros(32, 8))
    fakes.save(other, workdir / "tv" / "digits" / "finetuned.pt")
    with pytest.raises(MergeflowError, match="does not match the base"):
        importer.import_checkpoints(cfg)


def test_a_missing_root_and_a_head_with_bias_are_named(workdir):
    with pytest.raises(MergeflowError, match="model.import.root: nowhere is not a folder"):
        importer.import_checkpoints(_cfg(workdir, format="task_vectors", root="nowhere"))
    fakes.task_vectors_folder(workdir / "tv", CLASSES)
    h = fakes.head(10, 16, 0)
    with torch.no_grad():
        h.bias.fill_(0.5)
    fakes.save(h, workdir / "tv" / "head_digits.pt")
    with pytest.raises(MergeflowError, match="non-zero bias"):
        importer.import_checkpoints(_cfg(workdir, format="task_vectors", root="tv"))


def test_import_tasks_must_be_configured_tasks(tmp_path):
    with pytest.raises(MergeflowError, match="model.import.tasks: 'SVHN' is not in data.tasks"):
        _cfg(tmp_path, format="task_vectors", root="tv", tasks={"SVHN": "SVHN"})


def test_without_an_import_only_a_manifest_is_written(workdir):
    out = importer.import_checkpoints(_cfg(workdir, format=None))
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json"]
    assert out == paths.IMPORTED


# --- files that would run code ---------------------------------------------------------------------------
SENTINEL = "mergeflow-import-sentinel"


class _System:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return os.system, (f"touch {self.path}",)


class _Eval:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return eval, (f"open({str(self.path)!r}, 'w').close()",)


def _nested_blob(path: Path) -> bytes:
    """A raw pickle whose 'storage' is a blob that, if torch.load-ed, would run os.system."""
    inner = pickle.dumps(_System(path), protocol=2)

    class Storage:
        def __reduce__(self):
            return torch.storage._load_from_bytes, (inner,)

    return pickle.dumps({"visual.proj": Storage()}, protocol=2)


@pytest.mark.parametrize("kind", ["system", "eval", "nested", "zip"])
def test_malicious_files_are_refused_and_nothing_runs(tmp_path, kind):
    sentinel = tmp_path / SENTINEL
    if kind == "system":
        data, name = pickle.dumps(_System(sentinel), protocol=2), "posix.system"
    elif kind == "eval":
        data, name = pickle.dumps(_Eval(sentinel), protocol=2), "builtins.eval"
    elif kind == "nested":
        data, name = _nested_blob(sentinel), "posix.system"
    else:  # the payload inside a torch zip's data.pkl
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            z.writestr("archive/data.pkl", pickle.dumps(_System(sentinel), protocol=2))
        data, name = buf.getvalue(), "posix.system"
    path = tmp_path / "finetuned.pt"
    path.write_bytes(data)
    with pytest.raises(MergeflowError) as err:
        safe_pickle.load_object(path)
    message = str(err.value)
    assert f"refused to load global {name}" in message and "\n" not in message
    assert not sentinel.exists()


def test_other_globals_are_refused_by_name(tmp_path):
    path = tmp_path / "x.pt"
    path.write_bytes(pickle.dumps(Path("a"), protocol=2))
    with pytest.raises(MergeflowError, match=r"refused to load global pathlib\.\w*Path"):
        safe_pickle.load_object(path)


def test_a_record_stores_state_and_never_calls_the_class(tmp_path):
    path = fakes.save(fakes.head(3, 16, 0), tmp_path / "head.pt")
    obj = safe_pickle.load_object(path)
    assert isinstance(obj, safe_pickle.Record) and obj.qualname() == "src.modeling.ClassificationHead"
    assert community.read_head(path).normalize is True
