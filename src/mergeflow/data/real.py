"""The papers' 8-task benchmark through torchvision's dataset classes.

Each task reads ``data/raw/<task>/`` (the ``root`` torchvision is given). ``fetch`` downloads where the
dataset class can; where it cannot (Stanford Cars, RESISC45, SUN397's partitions) or when the network is
unreachable, it stops with a message naming the folder and the layout it expects. Class names and
templates are CLIP's (as used by the task_vectors code); where the dataset itself defines 200-400 names
(Cars, SUN397, DTD, RESISC45) they are read from it.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import torch
from torch.utils.data import Dataset, Subset

from mergeflow.data.registry import TaskSpec, register
from mergeflow.errors import MergeflowError

_ANY_ERROR = (RuntimeError, OSError, FileNotFoundError, ValueError, KeyError, IndexError)


def _tv():
    from mergeflow import _torchvision_compat  # noqa: F401  (must precede the torchvision import)

    # import_module, not an import statement: an import sorter would move that above the line before
    return importlib.import_module("torchvision.datasets")


def _open(task: str, raw_dir: Path, layout: str, build):
    try:
        return build()
    except _ANY_ERROR as exc:
        raise MergeflowError(f"{raw_dir}: dataset {task!r} not found or not laid out as expected ({layout}): "
                             f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None


def _download(task: str, raw_dir: Path, layout: str, build) -> None:
    raw_dir.mkdir(parents=True, exist_ok=True)
    try:
        build()
    except _ANY_ERROR as exc:
        raise MergeflowError(
            f"{raw_dir}: could not download {task!r} ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); "
            "put your own copy in <data.local_dir>/<task>/ with data.download: false (read in place), laid out as: "
            f"{layout}") from None


def _manual(task: str, layout: str, check):
    def fetch(raw_dir: Path, options: dict) -> None:
        if not check(raw_dir):
            raise MergeflowError(f"{raw_dir}: {task!r} cannot be downloaded automatically; put your own copy in "
                                 "<data.local_dir>/<task>/ with data.download: false (read in place), laid out "
                                 f"as: {layout}")
    return fetch


def _fixed_split(n: int, split: str, test_fraction: float, seed: int = 0) -> list[int]:
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_test = int(round(n * test_fraction))
    part = perm[:n_test] if split == "test" else perm[n_test:]
    return part.sort().values.tolist()


# MNIST -----------------------------------------------------------------------------------------------
MNIST_LAYOUT = "MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte (torchvision.datasets.MNIST)"


def _mnist_load(raw_dir: Path, split: str) -> tuple[Dataset, list[str]]:
    ds = _open("mnist", raw_dir, MNIST_LAYOUT, lambda: _tv().MNIST(str(raw_dir), train=split == "train"))
    return _Rgb(ds), []


# SVHN ------------------------------------------------------------------------------------------------
SVHN_LAYOUT = "train_32x32.mat and test_32x32.mat (torchvision.datasets.SVHN)"


def _svhn_load(raw_dir: Path, split: str) -> tuple[Dataset, list[str]]:
    return _open("svhn", raw_dir, SVHN_LAYOUT, lambda: _tv().SVHN(str(raw_dir), split=split)), []


# GTSRB -----------------------------------------------------------------------------------------------
GTSRB_LAYOUT = ("gtsrb/GTSRB/Training/<class 00000..00042>/*.ppm and gtsrb/GTSRB/Final_Test/Images/*.ppm + "
                "gtsrb/GT-final_test.csv (torchvision.datasets.GTSRB)")
GTSRB_CLASSES = [f"red and white circle {v} kph speed limit" for v in (20, 30, 50, 60, 70, 80)] + [
    "end / de-restriction of 80 kph speed limit"] + [
    f"red and white circle {v} kph speed limit" for v in (100, 120)] + [
    "red and white circle red car and black car no passing",
    "red and white circle red truck and black car no passing",
    "red and white triangle road intersection warning", "white and yellow diamond priority road",
    "red and white upside down triangle yield right-of-way", "stop", "empty red and white circle",
    "red and white circle no truck entry", "red circle with white horizonal stripe no entry",
    "red and white triangle with exclamation mark warning",
    "red and white triangle with black left curve approaching warning",
    "red and white triangle with black right curve approaching warning",
    "red and white triangle with black double curve approaching warning",
    "red and white triangle rough / bumpy road warning", "red and white triangle car skidding / slipping warning",
    "red and white triangle with merging / narrow lanes warning",
    "red and white triangle with person digging / construction / road work warning",
    "red and white triangle with traffic light approaching warning",
    "red and white triangle with person walking warning",
    "red and white triangle with child and person walking warning", "red and white triangle with bicyle warning",
    "red and white triangle with snowflake / ice warning", "red and white triangle with deer warning",
    "white circle with gray strike bar no speed limit", "blue circle with white right turn arrow mandatory",
    "blue circle with white left turn arrow mandatory", "blue circle with white forward arrow mandatory",
    "blue circle with white forward or right turn arrow mandatory",
    "blue circle with white forward or left turn arrow mandatory",
    "blue circle with white keep right arrow mandatory", "blue circle with white keep left arrow mandatory",
    "blue circle with white arrows indicating a traffic circle",
    "white circle with gray strike bar indicating no passing for cars has ended",
    "white circle with gray strike bar indicating no passing for trucks has ended"]


def _gtsrb_load(raw_dir: Path, split: str) -> tuple[Dataset, list[str]]:
    return _open("gtsrb", raw_dir, GTSRB_LAYOUT, lambda: _tv().GTSRB(str(raw_dir), split=split)), []


# DTD -------------------------------------------------------------------------------------------------
DTD_LAYOUT = "dtd/dtd/images/<class>/*.jpg and dtd/dtd/labels/{train,val,test}1.txt (torchvision.datasets.DTD)"


def _dtd_load(raw_dir: Path, split: str) -> tuple[Dataset, list[str]]:
    def build():
        tvd = _tv()
        if split == "train":  # task_vectors trains DTD on train + val of partition 1
            parts = [tvd.DTD(str(raw_dir), split=s) for s in ("train", "val")]
            return _Concat(parts), parts[0].classes
        ds = tvd.DTD(str(raw_dir), split="test")
        return ds, ds.classes

    ds, classes = _open("dtd", raw_dir, DTD_LAYOUT, build)
    return ds, [c.replace("_", " ") for c in classes]


# EuroSAT ---------------------------------------------------------------------------------------------
EUROSAT_LAYOUT = "eurosat/2750/<class>/*.jpg (torchvision.datasets.EuroSAT)"
EUROSAT_CLASSES = ["annual crop land", "forest", "brushland or shrubland", "highway or road",
                   "industrial buildings or commercial buildings", "pasture land", "permanent crop land",
                   "residential buildings or homes or apartments", "river", "lake or sea"]


def _eurosat_load(raw_dir: Path, split: str) -> tuple[Dataset, list[str]]:
    """The full set with a fixed seeded split: test = 10 %, seed 0 (validation is then 10 % of the rest)."""
    ds = _open("eurosat", raw_dir, EUROSAT_LAYOUT, lambda: _tv().EuroSAT(str(raw_dir)))
    return Subset(ds, _fixed_split(len(ds), split, 0.1)), []


# RESISC45 --------------------------------------------------------------------------------------------
RESISC45_LAYOUT = "train/<class>/*.jpg and test/<class>/*.jpg (the standard NWPU-RESISC45 split, ImageFolder)"


def _resisc45_load(raw_dir: Path, split: str) -> tuple[Dataset, list[str]]:
    ds = _open("resisc45", raw_dir, RESISC45_LAYOUT, lambda: _tv().ImageFolder(str(raw_dir / split)))
    return ds, [c.replace("_", " ") for c in ds.classes]


# Stanford Cars ---------------------------------------------------------------------------------------
CARS_LAYOUT = ("stanford_cars/devkit/{cars_meta,cars_train_annos}.mat, stanford_cars/cars_test_annos_withlabels.mat, "
               "stanford_cars/cars_{train,test}/*.jpg (torchvision.datasets.StanfordCars)")


def _cars_load(raw_dir: Path, split: str) -> tuple[Dataset, list[str]]:
    ds = _open("cars", raw_dir, CARS_LAYOUT, lambda: _tv().StanfordCars(str(raw_dir), split=split))
    return ds, list(ds.classes)


# SUN397 ----------------------------------------------------------------------------------------------
SUN397_LAYOUT = "SUN397/ClassName.txt and SUN397/<letter>/<class>/*.jpg (torchvision.datasets.SUN397)"


def _sun397_load(raw_dir: Path, split: str) -> tuple[Dataset, list[str]]:
    """SUN397 has no official single split in torchvision: a fixed seeded half/half split, seed 0."""
    ds = _open("sun397", raw_dir, SUN397_LAYOUT, lambda: _tv().SUN397(str(raw_dir)))
    names = [c.replace("_", " ").replace("/", " ").strip() for c in ds.classes]
    return Subset(ds, _fixed_split(len(ds), split, 0.5)), names


# helpers ---------------------------------------------------------------------------------------------
class _Rgb(Dataset):
    """Convert grey PIL images (MNIST) to RGB."""

    def __init__(self, ds):
        self.ds = ds

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        img, label = self.ds[i]
        return img.convert("RGB"), int(label)


class _Concat(Dataset):
    def __init__(self, parts):
        self.parts = parts
        self.offsets = torch.tensor([0] + [len(p) for p in parts]).cumsum(0)

    def __len__(self):
        return int(self.offsets[-1])

    def __getitem__(self, i):
        k = int(torch.searchsorted(self.offsets, i, right=True)) - 1
        return self.parts[k][i - int(self.offsets[k])]


def _tv_fetch(task: str, layout: str, build):
    def fetch(raw_dir: Path, options: dict) -> None:
        _download(task, raw_dir, layout, lambda: build(_tv(), str(raw_dir)))
    return fetch


def _real(name, templates, fetch, load, layout, classnames=()) -> None:
    register(TaskSpec(name=name, classnames=tuple(classnames), templates=tuple(templates), fetch=fetch, load=load,
                      layout=layout, kind="real"))


_real("MNIST", ('a photo of the number: "{}".',),
      _tv_fetch("MNIST", MNIST_LAYOUT, lambda tvd, r: [tvd.MNIST(r, train=t, download=True) for t in (True, False)]),
      _mnist_load, MNIST_LAYOUT, [str(i) for i in range(10)])
_real("SVHN", ('a photo of the number: "{}".',),
      _tv_fetch("SVHN", SVHN_LAYOUT, lambda tvd, r: [tvd.SVHN(r, split=s, download=True) for s in ("train", "test")]),
      _svhn_load, SVHN_LAYOUT, [str(i) for i in range(10)])
_real("GTSRB", ('a zoomed in photo of a "{}" traffic sign.', 'a centered photo of a "{}" traffic sign.',
                'a close up photo of a "{}" traffic sign.'),
      _tv_fetch("GTSRB", GTSRB_LAYOUT,
                lambda tvd, r: [tvd.GTSRB(r, split=s, download=True) for s in ("train", "test")]),
      _gtsrb_load, GTSRB_LAYOUT, GTSRB_CLASSES)
_real("DTD",
      tuple(f"a photo of {a} {{}} {b}." for a in ("a", "the") for b in ("texture", "pattern", "thing", "object")),
      _tv_fetch("DTD", DTD_LAYOUT,
                lambda tvd, r: [tvd.DTD(r, split=s, download=True) for s in ("train", "val", "test")]),
      _dtd_load, DTD_LAYOUT)
_real("EuroSAT", ("a centered satellite photo of {}.", "a centered satellite photo of a {}.",
                  "a centered satellite photo of the {}."),
      _tv_fetch("EuroSAT", EUROSAT_LAYOUT, lambda tvd, r: tvd.EuroSAT(r, download=True)),
      _eurosat_load, EUROSAT_LAYOUT, EUROSAT_CLASSES)
_real("RESISC45", tuple(f"{a} {b} of {c}{{}}." for c in ("", "a ", "the ") for a in ("satellite", "aerial")
                        for b in ("imagery", "photo", "view")),
      _manual("RESISC45", RESISC45_LAYOUT, lambda d: (d / "train").is_dir() and (d / "test").is_dir()),
      _resisc45_load, RESISC45_LAYOUT)
_real("Cars", ("a photo of a {}.", "a photo of the {}.", "a photo of my {}.", "i love my {}!",
               "a photo of my dirty {}.", "a photo of my clean {}.", "a photo of my new {}.", "a photo of my old {}."),
      _manual("Cars", CARS_LAYOUT, lambda d: (d / "stanford_cars" / "devkit").is_dir()),
      _cars_load, CARS_LAYOUT)
_real("SUN397", ("a photo of a {}.", "a photo of the {}."),
      _tv_fetch("SUN397", SUN397_LAYOUT, lambda tvd, r: tvd.SUN397(r, download=True)),
      _sun397_load, SUN397_LAYOUT)


# The six more tasks of TALL masks' 14-task benchmark and the six more of its 20-task one -------------------
# (Wang et al., 2024), all through torchvision and downloadable by it; grey images are made RGB.
# name: (torchvision class, {split: constructor kwargs}, class names or None for the dataset's own, templates)
_PHOTO = ("a photo of a {}.", "a blurry photo of a {}.", "a photo of the {}.", "a close-up photo of a {}.")
PCAM_CLASSES = ["lymph node", "lymph node containing metastatic tumor tissue"]
FER2013_CLASSES = ["angry", "disgusted", "fearful", "happy", "sad", "surprised", "neutral"]  # the label order
_TRAIN_TEST = {"train": {"train": True}, "test": {"train": False}}
_SPLITS = {"train": {"split": "train"}, "test": {"split": "test"}}
MORE_TASKS = {
    "CIFAR100": ("CIFAR100", _TRAIN_TEST, None, _PHOTO),
    "STL10": ("STL10", _SPLITS, None, _PHOTO),
    "Flowers102": ("Flowers102", _SPLITS, None, ("a photo of a {}, a type of flower.",)),
    "OxfordIIITPet": ("OxfordIIITPet", {"train": {"split": "trainval"}, "test": {"split": "test"}}, None,
                      ("a photo of a {}, a type of pet.",)),
    "PCAM": ("PCAM", _SPLITS, PCAM_CLASSES, ("this is a photo of {}.",)),
    "FER2013": ("FER2013", _SPLITS, FER2013_CLASSES, ("a photo of a {} looking face.", "a photo of a face showing the "
                                                      "emotion: {}.")),
    "CIFAR10": ("CIFAR10", _TRAIN_TEST, None, _PHOTO),
    "Food101": ("Food101", _SPLITS, None, ("a photo of {}, a type of food.",)),
    "FashionMNIST": ("FashionMNIST", _TRAIN_TEST, None, ("a photo of a {}.", "a photo of the {}.")),
    "RenderedSST2": ("RenderedSST2", _SPLITS, ["negative", "positive"], ("a {} review of a movie.",)),
    "EMNIST": ("EMNIST", {s: {**kw, "split": "digits"} for s, kw in _TRAIN_TEST.items()}, [str(i) for i in range(10)],
               ('a photo of the number: "{}".',)),
    "KMNIST": ("KMNIST", _TRAIN_TEST, None, ("a photo of the character {}.",)),
}


def _more_layout(cls: str) -> str:
    return f"the files torchvision.datasets.{cls} downloads into this folder"


def _more_load(cls: str, splits: dict, names):
    def load(raw_dir: Path, split: str) -> tuple[Dataset, list[str]]:
        def build():
            return getattr(_tv(), cls)(str(raw_dir), **splits[split])
        try:
            ds = _open(cls, raw_dir, _more_layout(cls), build)
        except ImportError as exc:  # PCAM reads HDF5 files through h5py
            raise MergeflowError(f"{cls} needs {exc.name}: pip install {exc.name}") from None
        own = [str(c).replace("_", " ") for c in getattr(ds, "classes", [])]
        return _Rgb(ds), list(names) if names is not None else own
    return load


for _name, (_cls, _kw, _names, _templates) in MORE_TASKS.items():
    _real(_name, _templates,
          _tv_fetch(_name, _more_layout(_cls),
                    lambda tvd, r, c=_cls, kw=_kw: [getattr(tvd, c)(r, download=True, **k) for k in kw.values()]),
          _more_load(_cls, _kw, _names), _more_layout(_cls), _names or ())
