import pytest
import torch

from mergeflow.data import TASKS, get_task, load_split
from mergeflow.data.prepared import load_prepared, prepare_task
from mergeflow.errors import MergeflowError


def test_offline_suite_has_eight_tasks_of_5_to_30_classes():
    offline = [t for t in TASKS.values() if t.kind == "offline"]
    assert len(offline) >= 8
    for spec in offline:
        assert 5 <= len(spec.classnames) <= 30 and all("{}" in t for t in spec.templates)


@pytest.mark.parametrize("task", ["shapes", "textures", "scenes", "signs", "letters", "clutter_digits"])
def test_generated_task_is_deterministic_and_split(tmp_path, task):
    spec = get_task(task)
    spec.fetch(tmp_path / "a" / task, {"train": 40, "test": 20, "seed": 0})
    spec.fetch(tmp_path / "b" / task, {"train": 40, "test": 20, "seed": 0})
    train = load_split(task, "train", tmp_path / "a")
    val = load_split(task, "val", tmp_path / "a")
    test = load_split(task, "test", tmp_path / "a")
    assert (len(train), len(val), len(test)) == (36, 4, 20)
    img, label = train[0]
    assert img.size == (32, 32) and img.mode == "RGB" and 0 <= label < len(spec.classnames)
    first, second = (tmp_path / run / task / "train.safetensors" for run in ("a", "b"))
    assert first.read_bytes() == second.read_bytes()


def test_prepare_writes_tensors_and_manifest(tmp_path):
    get_task("shapes").fetch(tmp_path / "raw" / "shapes", {"train": 30, "test": 10, "seed": 1})
    manifest = prepare_task("shapes", tmp_path / "raw", 16, tmp_path / "prep" / "shapes")
    images, labels = load_prepared("shapes", "test", tmp_path / "prep")
    assert images.shape == (10, 3, 16, 16) and images.dtype == torch.uint8 and labels.shape == (10,)
    assert manifest["splits"]["train"]["count"] == 27 and len(manifest["splits"]["val"]["index_hash"]) == 64


def test_bad_inputs(tmp_path):
    with pytest.raises(MergeflowError, match="unknown task 'nope'"):
        get_task("nope")
    with pytest.raises(MergeflowError, match="raw data of task 'shapes' not found"):
        load_split("shapes", "train", tmp_path)
    (tmp_path / "shapes").mkdir()
    with pytest.raises(MergeflowError, match="no train.safetensors"):
        load_split("shapes", "train", tmp_path)
    (tmp_path / "prep" / "shapes").mkdir(parents=True)
    (tmp_path / "prep" / "shapes" / "test.safetensors").write_bytes(b"\x08\x00garbage")
    with pytest.raises(MergeflowError, match="unreadable or truncated"):
        load_prepared("shapes", "test", tmp_path / "prep")


def _fake_imagefolder(root, classes, n=3):
    from PIL import Image

    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (40, 30), (i * 40, 10, 200)).save(root / c / f"{i}.jpg")


def test_real_resisc45_and_eurosat_from_fake_folders(tmp_path):
    _fake_imagefolder(tmp_path / "RESISC45" / "train", ["airport", "sea_ice"], 10)
    _fake_imagefolder(tmp_path / "RESISC45" / "test", ["airport", "sea_ice"], 2)
    ds = load_split("RESISC45", "test", tmp_path)
    assert len(ds) == 4 and ds.classnames == ["airport", "sea ice"]
    assert len(load_split("RESISC45", "val", tmp_path)) == 2
    classes = ["AnnualCrop", "Forest", "HerbaceousVegetation", "Highway", "Industrial", "Pasture", "PermanentCrop",
               "Residential", "River", "SeaLake"]
    _fake_imagefolder(tmp_path / "EuroSAT" / "eurosat" / "2750", classes, 2)
    assert len(load_split("EuroSAT", "test", tmp_path)) == 2
    assert load_split("EuroSAT", "train", tmp_path).classnames[0] == "annual crop land"


def test_real_dataset_missing_names_folder_and_layout(tmp_path):
    (tmp_path / "MNIST").mkdir()
    with pytest.raises(MergeflowError, match=r"MNIST.*MNIST/raw"):
        load_split("MNIST", "test", tmp_path)
    with pytest.raises(MergeflowError, match="cannot be downloaded automatically"):
        get_task("Cars").fetch(tmp_path / "Cars", {})


def test_validation_split_is_the_task_vectors_random_split():
    from torch.utils.data import random_split

    from mergeflow.data.registry import split_indices

    n, n_val = 1234, 123
    train, val = random_split(range(n), [n - n_val, n_val], generator=torch.Generator().manual_seed(0))
    assert split_indices(n, "val", 0.1, 5000, 0).tolist() == sorted(val.indices)
    assert split_indices(n, "train", 0.1, 5000, 0).tolist() == sorted(train.indices)
    assert len(split_indices(100_000, "val", 0.1, 5000, 0)) == 5000


def test_the_tall_benchmarks_extra_tasks_are_registered():
    from mergeflow.data import get_task
    from mergeflow.data.real import MORE_TASKS

    assert len(MORE_TASKS) == 12
    for name in MORE_TASKS:
        spec = get_task(name)
        assert spec.kind == "real" and spec.templates and all("{}" in t for t in spec.templates)
    assert len(get_task("FER2013").classnames) == 7 and len(get_task("PCAM").classnames) == 2
