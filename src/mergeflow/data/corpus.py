"""The offline pre-training corpus: procedurally generated image–caption pairs that are not the tasks.

CLIP's zero-shot accuracy comes from transfer: it never saw the benchmark's training images, only web
pairs that mention the same concepts. The offline base is built the same way. Its corpus covers the
concepts the eight offline tasks draw on — digits, letters, shapes, colours, textures, aerial land
cover, traffic-sign symbols, layouts — with renderings, backgrounds and wordings of its own, and with
compositional captions ("a small red triangle on a striped background"). No task image and no task
generator (:mod:`mergeflow.data.offline`'s ``draw_*`` functions) is used: patterns are drawn with lines
and dots instead of thresholded waves, shapes may be outlined, off-centre and small, digits are also
"handwritten" (strokes through a distorted font), terrain is painted from primitives, and each scene
mixes an object with a background. Generation is deterministic in (seed, index), so any slice of the
corpus can be built in any worker process and the bytes do not depend on the split.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from mergeflow.data.offline import _font, _fonts, _polygon

SIZE = 32
_SS = 2  # drawn at 2× and downsampled: cheap anti-aliasing
_BIG = SIZE * _SS

COLOURS = {
    "red": (210, 30, 35), "orange": (240, 130, 20), "yellow": (240, 220, 40), "green": (40, 160, 60),
    "blue": (35, 75, 210), "purple": (130, 50, 170), "pink": (240, 140, 190), "brown": (120, 75, 35),
    "black": (20, 20, 20), "white": (240, 240, 240), "grey": (128, 128, 128), "cyan": (40, 200, 210),
}
PATTERNS = ["striped", "banded", "lined", "checkered", "dotted", "grid", "zigzagged", "wavy", "crosshatched",
            "blotchy", "spotted", "plaid"]
SHAPES = ["circle", "square", "triangle", "diamond", "pentagon", "hexagon", "star", "cross", "ring", "crescent",
          "heart", "arrow", "oval", "rectangle"]
TERRAIN = ["forest", "river", "lake or sea", "highway or road", "residential buildings or homes or apartments",
           "industrial buildings or commercial buildings", "pasture land", "annual crop land",
           "permanent crop land", "brushland or shrubland", "beach", "desert"]
SIGNS = ["stop", "no entry", "yield", "general caution", "turn left ahead", "turn right ahead", "ahead only",
         "keep right", "keep left", "priority road", "speed limit", "no parking", "roundabout"]
LETTERS = [chr(c) for c in range(ord("A"), ord("Z") + 1)]
SIZES = ("small", "large")
KINDS = ("digit", "handwritten", "letter", "shape", "sign", "pattern", "terrain", "number")
KIND_WEIGHTS = (0.18, 0.2, 0.13, 0.13, 0.11, 0.09, 0.1, 0.06)  # digits weigh most: three of the tasks are digits


def _rgb(rng: np.random.Generator, name: str, jitter: float = 18.0) -> tuple[int, int, int]:
    base = np.array(COLOURS[name], np.float64) + rng.normal(0, jitter, 3)
    return tuple(int(v) for v in np.clip(base, 0, 255))


def _lum(c) -> float:
    return 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]


def _two_colours(rng: np.random.Generator, gap: float = 80.0) -> tuple[str, str]:
    names = list(COLOURS)
    while True:
        a, b = rng.choice(names, 2, replace=False)
        if abs(_lum(COLOURS[a]) - _lum(COLOURS[b])) > gap:
            return str(a), str(b)


def _a(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _pick(rng: np.random.Generator, items):
    return items[int(rng.integers(len(items)))]


# --- backgrounds ------------------------------------------------------------------------------------------


def _pattern(rng: np.random.Generator, name: str, fg, bg) -> Image.Image:
    """A two-colour pattern drawn with primitives (lines, dots, cells) at a random period and angle."""
    big = _BIG * 2  # drawn larger, rotated, then cropped so that lines reach the corners
    img = Image.new("RGB", (big, big), bg)
    d = ImageDraw.Draw(img)
    p = int(rng.integers(7, 14))  # period in drawing pixels
    w = max(2, int(p * rng.uniform(0.3, 0.5)))
    if name in ("striped", "banded", "lined"):
        for x in range(0, big, p):
            d.line([(x, 0), (x, big)], fill=fg, width=w)
        if name == "banded":
            img = img.rotate(90)
    elif name == "checkered":
        for i, y in enumerate(range(0, big, p)):
            for j, x in enumerate(range(0, big, p)):
                if (i + j) % 2 == 0:
                    d.rectangle([x, y, x + p - 1, y + p - 1], fill=fg)
    elif name in ("dotted", "spotted"):
        r = p * (0.22 if name == "dotted" else 0.4)
        for y in range(0, big, p):
            for x in range(0, big, p):
                jx, jy = (rng.uniform(-p / 3, p / 3, 2) if name == "spotted" else (0.0, 0.0))
                d.ellipse([x + jx - r, y + jy - r, x + jx + r, y + jy + r], fill=fg)
    elif name in ("grid", "crosshatched", "plaid"):
        lw = max(1, w // 2) if name != "plaid" else w
        for x in range(0, big, p):
            d.line([(x, 0), (x, big)], fill=fg, width=lw)
            d.line([(0, x), (big, x)], fill=fg, width=lw)
        if name == "crosshatched":
            img = img.rotate(45)
    elif name == "zigzagged":
        for y in range(0, big, p):
            pts = [(x, y + (p / 2 if (x // p) % 2 else 0)) for x in range(0, big + p, p)]
            d.line(pts, fill=fg, width=w)
    elif name == "wavy":
        xs = np.arange(0, big + 2, 2)
        for y in range(0, big, p):
            ys = y + p * 0.45 * np.sin(xs / big * 2 * math.pi * rng.uniform(2, 4))
            d.line(list(zip(xs.tolist(), ys.tolist(), strict=True)), fill=fg, width=w)
    elif name == "blotchy":
        for _ in range(int(rng.integers(8, 16))):
            x, y = rng.uniform(0, big, 2)
            r = rng.uniform(6, 16)
            d.ellipse([x - r, y - r * rng.uniform(0.6, 1.4), x + r, y + r], fill=fg)
    if name != "banded" and name not in ("checkered", "blotchy"):
        angle = {"lined": 45.0, "crosshatched": 0.0}.get(name, 0.0) + rng.uniform(-12, 12)
        img = img.rotate(angle, resample=Image.Resampling.BILINEAR, fillcolor=bg)
    off = (big - _BIG) // 2
    return img.crop((off, off, off + _BIG, off + _BIG))


def _terrain(rng: np.random.Generator, name: str) -> Image.Image:
    """An aerial view painted from primitives: patches, canopies, roads, roofs, water."""
    g = lambda c, j=14: tuple(int(v) for v in np.clip(np.array(c) + rng.normal(0, j, 3), 0, 255))  # noqa: E731
    img = Image.new("RGB", (_BIG, _BIG), g((95, 130, 60)))
    d = ImageDraw.Draw(img)
    if name == "forest":
        img.paste(g((30, 75, 35)), (0, 0, _BIG, _BIG))
        for _ in range(60):
            x, y = rng.uniform(0, _BIG, 2)
            r = rng.uniform(3, 7)
            d.ellipse([x - r, y - r, x + r, y + r], fill=g((20, 60, 25) if rng.random() < 0.5 else (45, 95, 40), 8))
    elif name == "river":
        pts, x = [], rng.uniform(15, 50)
        for y in range(-8, _BIG + 9, 8):
            x += rng.uniform(-6, 6)
            pts.append((x, y))
        d.line(pts, fill=g((45, 80, 130)), width=int(rng.integers(7, 14)))
        if rng.random() < 0.5:
            img = img.transpose(Image.Transpose.ROTATE_90)
    elif name == "lake or sea":
        img.paste(g((30, 65, 120)), (0, 0, _BIG, _BIG))
        if rng.random() < 0.6:
            edge = rng.uniform(0, 20)
            d.polygon([(0, 0), (edge + rng.uniform(0, 20), 0), (edge, _BIG), (0, _BIG)], fill=g((170, 160, 120)))
    elif name == "highway or road":
        a, b = rng.uniform(0, _BIG, 2)
        d.line([(a, 0), (b, _BIG)] if rng.random() < 0.5 else [(0, a), (_BIG, b)], fill=g((110, 110, 115), 6),
               width=int(rng.integers(5, 9)))
    elif name.startswith("residential"):
        img.paste(g((110, 125, 95)), (0, 0, _BIG, _BIG))
        step = int(rng.integers(10, 15))
        for y in range(2, _BIG, step):
            for x in range(2, _BIG, step):
                d.rectangle([x, y, x + step * 0.55, y + step * 0.55], fill=g((180, 85, 70), 25))
    elif name.startswith("industrial"):
        img.paste(g((140, 140, 140)), (0, 0, _BIG, _BIG))
        for _ in range(int(rng.integers(2, 4))):
            x, y = rng.uniform(0, 40, 2)
            d.rectangle([x, y, x + rng.uniform(14, 30), y + rng.uniform(14, 30)], fill=g((215, 215, 220), 10))
    elif name == "pasture land":
        img.paste(g((135, 180, 85)), (0, 0, _BIG, _BIG))
        for _ in range(6):
            x, y = rng.uniform(0, _BIG, 2)
            d.ellipse([x - 10, y - 8, x + 10, y + 8], fill=g((125, 170, 80), 6))
    elif name in ("annual crop land", "permanent crop land"):
        a, b = g((185, 165, 85)), g((105, 145, 60))
        if name == "annual crop land":
            img = _pattern(rng, "striped", a, b)
        else:
            img = _pattern(rng, "dotted", g((55, 110, 45)), g((150, 120, 80)))
    elif name == "brushland or shrubland":
        img.paste(g((150, 140, 100)), (0, 0, _BIG, _BIG))
        for _ in range(25):
            x, y = rng.uniform(0, _BIG, 2)
            r = rng.uniform(2, 5)
            d.ellipse([x - r, y - r, x + r, y + r], fill=g((105, 110, 60), 10))
    elif name == "beach":
        img.paste(g((215, 200, 150)), (0, 0, _BIG, _BIG))
        d.rectangle([0, 0, _BIG, rng.uniform(15, 35)], fill=g((40, 90, 150)))
    elif name == "desert":
        img.paste(g((220, 185, 120)), (0, 0, _BIG, _BIG))
        for y in range(0, _BIG, 9):
            d.arc([rng.uniform(-20, 20), y, _BIG + 20, y + 12], 180, 360, fill=g((190, 150, 95)), width=2)
    return img


def _background(rng: np.random.Generator, avoid: str | None):
    """(image, phrase) for a plain colour, a pattern or clutter behind an object."""
    r = rng.random()
    if r < 0.45:
        name = _pick(rng, [c for c in COLOURS if c != avoid])
        return Image.new("RGB", (_BIG, _BIG), _rgb(rng, name)), f"{_a(name)} {name} background", name
    if r < 0.8:
        pat = _pick(rng, PATTERNS)
        a, b = _two_colours(rng, 50)
        if avoid in (a, b):
            a, b = _two_colours(rng, 50)
        img = _pattern(rng, pat, _rgb(rng, a), _rgb(rng, b))
        return img.filter(ImageFilter.GaussianBlur(1.5)), f"a {pat} background", b
    img = Image.new("RGB", (_BIG, _BIG), _rgb(rng, _pick(rng, list(COLOURS))))
    d = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(3, 7))):
        x, y = rng.uniform(-10, _BIG, 2)
        w, h = rng.uniform(6, 30, 2)
        draw = d.rectangle if rng.random() < 0.5 else d.ellipse
        draw([x, y, x + w, y + h], fill=_rgb(rng, _pick(rng, list(COLOURS))))
    return img.filter(ImageFilter.GaussianBlur(1.0)), "a cluttered background", None


# --- objects -------------------------------------------------------------------------------------------


def _place(rng: np.random.Generator, size: str) -> tuple[float, float, float, str]:
    """Centre, radius and a position word: large objects near the middle, small ones anywhere."""
    if size == "large":
        r = rng.uniform(20, 27)
        cx, cy = _BIG / 2 + rng.uniform(-4, 4, 2)
        return cx, cy, r, "in the middle"
    r = rng.uniform(12, 16)
    col, row = int(rng.integers(3)), int(rng.integers(3))
    cx = [r + 2, _BIG / 2, _BIG - r - 2][col] + rng.uniform(-2, 2)
    cy = [r + 2, _BIG / 2, _BIG - r - 2][row] + rng.uniform(-2, 2)
    where = {(0, 0): "at the top left", (2, 0): "at the top right", (0, 2): "at the bottom left",
             (2, 2): "at the bottom right", (1, 0): "at the top", (1, 2): "at the bottom", (0, 1): "on the left",
             (2, 1): "on the right", (1, 1): "in the middle"}[(col, row)]
    return cx, cy, r, where


def _draw_shape(d: ImageDraw.ImageDraw, name: str, cx, cy, r, fill, outline: bool, bg) -> None:
    kw = {"outline": fill, "width": max(2, int(r / 5))} if outline else {"fill": fill}
    rot = 0.0
    if name == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], **kw)
    elif name == "oval":
        d.ellipse([cx - r, cy - r * 0.6, cx + r, cy + r * 0.6], **kw)
    elif name == "square":
        d.rectangle([cx - r * 0.8, cy - r * 0.8, cx + r * 0.8, cy + r * 0.8], **kw)
    elif name == "rectangle":
        d.rectangle([cx - r, cy - r * 0.5, cx + r, cy + r * 0.5], **kw)
    elif name in ("triangle", "pentagon", "hexagon"):
        n = {"triangle": 3, "pentagon": 5, "hexagon": 6}[name]
        d.polygon(_polygon(cx, cy, r, n, -math.pi / 2 + rot), **kw)
    elif name == "diamond":
        d.polygon([(cx, cy - r), (cx + r * 0.65, cy), (cx, cy + r), (cx - r * 0.65, cy)], **kw)
    elif name == "star":
        pts = [(cx + (r if i % 2 == 0 else r * 0.42) * math.cos(-math.pi / 2 + math.pi * i / 5),
                cy + (r if i % 2 == 0 else r * 0.42) * math.sin(-math.pi / 2 + math.pi * i / 5)) for i in range(10)]
        d.polygon(pts, **kw)
    elif name == "cross":
        t = r * 0.3
        d.polygon([(cx - t, cy - r), (cx + t, cy - r), (cx + t, cy - t), (cx + r, cy - t), (cx + r, cy + t),
                   (cx + t, cy + t), (cx + t, cy + r), (cx - t, cy + r), (cx - t, cy + t), (cx - r, cy + t),
                   (cx - r, cy - t), (cx - t, cy - t)], **kw)
    elif name == "ring":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], outline=fill, width=max(3, int(r * 0.4)))
    elif name == "crescent":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        d.ellipse([cx - r * 0.45, cy - r * 1.05, cx + r * 1.4, cy + r * 0.85], fill=bg)
    elif name == "heart":
        d.ellipse([cx - r, cy - r * 0.7, cx, cy + r * 0.2], fill=fill)
        d.ellipse([cx, cy - r * 0.7, cx + r, cy + r * 0.2], fill=fill)
        d.polygon([(cx - r * 0.95, cy - r * 0.1), (cx + r * 0.95, cy - r * 0.1), (cx, cy + r)], fill=fill)
    elif name == "arrow":
        d.line([(cx - r, cy), (cx + r * 0.2, cy)], fill=fill, width=max(3, int(r * 0.35)))
        d.polygon([(cx + r, cy), (cx + r * 0.1, cy - r * 0.6), (cx + r * 0.1, cy + r * 0.6)], fill=fill)


def _draw_glyph(img: Image.Image, rng: np.random.Generator, text: str, cx, cy, r, fill, handwritten: bool):
    """A character in a font, or 'handwritten': a thin font stroke thickened, sheared, rotated and blurred."""
    layer = Image.new("L", (_BIG, _BIG), 0)
    d = ImageDraw.Draw(layer)
    fonts = _fonts()
    font = _font(_pick(rng, fonts), max(8, int(r * 1.8)))
    if handwritten:
        d.text((cx, cy), text, font=font, fill=255, anchor="mm", stroke_width=int(rng.integers(1, 4)), stroke_fill=255)
        shear = rng.uniform(-0.35, 0.35)
        layer = layer.transform(layer.size, Image.Transform.AFFINE,
                                (1, shear, -shear * cy, 0, 1 + rng.uniform(-0.15, 0.15), 0),
                                resample=Image.Resampling.BILINEAR)
        layer = layer.rotate(rng.uniform(-20, 20), resample=Image.Resampling.BILINEAR, center=(cx, cy))
        layer = layer.filter(ImageFilter.GaussianBlur(rng.uniform(0.8, 1.8)))
        layer = layer.point(lambda v: 255 if v > 90 else v * 2)
    else:
        d.text((cx, cy), text, font=font, fill=255, anchor="mm")
        layer = layer.rotate(rng.uniform(-10, 10), resample=Image.Resampling.BILINEAR, center=(cx, cy))
    img.paste(Image.new("RGB", img.size, fill), (0, 0), layer)


def _draw_sign(d: ImageDraw.ImageDraw, rng: np.random.Generator, name: str, cx, cy, r) -> str:
    red, blue, white, black, yellow = (205, 25, 35), (25, 70, 180), (240, 240, 240), (15, 15, 15), (245, 205, 30)
    font = _font(_fonts()[0], max(8, int(r * 0.8)))
    label = name
    if name == "stop":
        d.polygon(_polygon(cx, cy, r, 8, math.pi / 8), fill=red, outline=white, width=2)
        d.text((cx, cy), "STOP", font=_font(_fonts()[0], max(6, int(r * 0.5))), fill=white, anchor="mm")
    elif name == "no entry":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=red)
        d.rectangle([cx - r * 0.65, cy - r * 0.15, cx + r * 0.65, cy + r * 0.15], fill=white)
    elif name in ("yield", "general caution"):
        up = name == "general caution"
        ang = -math.pi / 2 if up else math.pi / 2
        d.polygon(_polygon(cx, cy, r, 3, ang), fill=red)
        d.polygon(_polygon(cx, cy, r * 0.6, 3, ang), fill=white)
        if up:
            d.text((cx, cy + r * 0.1), "!", font=font, fill=black, anchor="mm")
    elif name in ("turn left ahead", "turn right ahead", "ahead only", "keep right", "keep left", "roundabout"):
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=blue)
        if name == "roundabout":
            d.arc([cx - r * 0.55, cy - r * 0.55, cx + r * 0.55, cy + r * 0.55], 0, 300, fill=white, width=3)
        else:
            vec = {"turn left ahead": (-1, 0), "turn right ahead": (1, 0), "ahead only": (0, -1),
                   "keep right": (0.7, 0.7), "keep left": (-0.7, 0.7)}[name]
            tail = (cx - vec[0] * r * 0.55, cy - vec[1] * r * 0.55)
            tip = (cx + vec[0] * r * 0.65, cy + vec[1] * r * 0.65)
            d.line([tail, tip], fill=white, width=max(2, int(r * 0.22)))
            px, py = -vec[1], vec[0]
            back = (tip[0] - vec[0] * r * 0.35, tip[1] - vec[1] * r * 0.35)
            d.polygon([tip, (back[0] + px * r * 0.3, back[1] + py * r * 0.3),
                       (back[0] - px * r * 0.3, back[1] - py * r * 0.3)], fill=white)
    elif name == "priority road":
        d.polygon(_polygon(cx, cy, r, 4, 0), fill=white)
        d.polygon(_polygon(cx, cy, r * 0.65, 4, 0), fill=yellow)
    elif name == "speed limit":
        n = int(_pick(rng, [20, 30, 40, 50, 60, 70, 80, 90, 100, 120]))
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=red)
        d.ellipse([cx - r * 0.72, cy - r * 0.72, cx + r * 0.72, cy + r * 0.72], fill=white)
        d.text((cx, cy), str(n), font=_font(_fonts()[0], max(6, int(r * (0.8 if n < 100 else 0.6)))), fill=black,
               anchor="mm")
        label = f"speed limit {n}"
    elif name == "no parking":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=red)
        d.ellipse([cx - r * 0.7, cy - r * 0.7, cx + r * 0.7, cy + r * 0.7], fill=blue)
        d.line([(cx - r * 0.5, cy - r * 0.5), (cx + r * 0.5, cy + r * 0.5)], fill=red, width=max(2, int(r * 0.2)))
    return label


# --- captions --------------------------------------------------------------------------------------------


def _caption(rng: np.random.Generator, thing: str, colour: str | None, size: str, where: str, bg: str | None) -> str:
    """A caption that names the object and some of its attributes, in one of several wordings."""
    words = []
    if size and rng.random() < 0.5:
        words.append(size)
    if colour and rng.random() < 0.6:
        words.append(colour)
    core = " ".join([*words, thing])
    parts = [f"{_a(core)} {core}"]
    if where and rng.random() < 0.3:
        parts.append(where)
    if bg and rng.random() < 0.5:
        parts.append(f"on {bg}")
    text = " ".join(parts)
    return _pick(rng, ["{}", "a photo of {}", "an image of {}", "{}.", "a picture showing {}"]).format(text)


# --- one sample --------------------------------------------------------------------------------------------


def draw_sample(rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """One (32×32×3 uint8 image, caption) pair."""
    kind = KINDS[int(rng.choice(len(KINDS), p=np.array(KIND_WEIGHTS) / sum(KIND_WEIGHTS)))]
    if kind == "terrain":
        name = _pick(rng, TERRAIN)
        img = _terrain(rng, name)
        text = _pick(rng, ["an aerial view of {}", "a satellite photo of {}", "{} seen from above",
                           "a satellite image of {}"]).format(name)
        return _finish(img, rng), text
    if kind == "pattern":
        name = _pick(rng, PATTERNS)
        a, b = _two_colours(rng, 50)
        img = _pattern(rng, name, _rgb(rng, a), _rgb(rng, b))
        colours = f"{a} and {b} " if rng.random() < 0.4 else ""
        text = _pick(rng, ["a {}{} pattern", "a {}{} texture", "a {}{} surface", "a close up of a {}{} fabric"])
        return _finish(img, rng), text.format(colours, name)
    # half the handwriting is ink on a plain dark or light ground, large and central, as scanned digits are
    plain = kind == "handwritten" and rng.random() < 0.5
    size = "large" if kind == "number" or plain else _pick(rng, SIZES)
    colour = None
    if plain:
        bg_colour = "black" if rng.random() < 0.7 else "white"
        bg_img, bg_text = Image.new("RGB", (_BIG, _BIG), _rgb(rng, bg_colour, 8.0)), f"a {bg_colour} background"
    else:
        bg_img, bg_text, bg_colour = _background(rng, None)
    cx, cy, r, where = _place(rng, size)
    d = ImageDraw.Draw(bg_img)
    if kind == "sign":
        name = _pick(rng, SIGNS)
        label = _draw_sign(d, rng, name, cx, cy, r)
        thing = _pick(rng, ["{} sign", "{} traffic sign", "{} road sign"]).format(label)
    else:
        colour = _pick(rng, [c for c in COLOURS if c != bg_colour and abs(_lum(COLOURS[c]) - _lum(bg_img.getpixel(
            (int(cx), int(cy))))) > 60] or ["black", "white"])
        if plain and rng.random() < 0.6:
            colour = "white" if bg_colour == "black" else "black"
        fill = _rgb(rng, colour)
        if kind == "shape":
            name = _pick(rng, SHAPES)
            outline = name not in ("ring", "crescent", "heart", "arrow") and rng.random() < 0.3
            _draw_shape(d, name, cx, cy, r, fill, outline, bg_img.getpixel((int(cx), int(cy))))
            thing = f"{name} outline" if outline else name
        elif kind == "letter":
            letter = _pick(rng, LETTERS)
            _draw_glyph(bg_img, rng, letter, cx, cy, r, fill, handwritten=rng.random() < 0.25)
            thing = _pick(rng, ['letter "{}"', "letter {}", "capital {}"]).format(letter)
        elif kind == "number":
            n = int(rng.integers(10, 1000))
            _draw_glyph(bg_img, rng, str(n), cx, cy, r * 0.6, fill, handwritten=False)
            thing = _pick(rng, ["number {}", "house number {}", 'sign reading "{}"']).format(n)
        else:
            digit = int(rng.integers(10))
            _draw_glyph(bg_img, rng, str(digit), cx, cy, r, fill, handwritten=kind == "handwritten")
            style = "handwritten " if kind == "handwritten" else ""
            thing = _pick(rng, ["{}digit {}", "{}number {}", '{}"{}"']).format(style, digit)
    return _finish(bg_img, rng), _caption(rng, thing, colour, size, where, bg_text)


def _finish(img: Image.Image, rng: np.random.Generator) -> np.ndarray:
    small = img.resize((SIZE, SIZE), Image.Resampling.BILINEAR, reducing_gap=None)
    arr = np.asarray(small, dtype=np.float32) * rng.uniform(0.85, 1.15) + rng.normal(0.0, 5.0, (SIZE, SIZE, 3))
    return np.clip(arr, 0, 255).astype(np.uint8)


def generate(start: int, stop: int, seed: int) -> tuple[np.ndarray, list[str]]:
    """Samples ``start`` … ``stop - 1`` of the corpus of ``seed``: (N, 32, 32, 3) uint8 and N captions."""
    images, captions = np.empty((stop - start, SIZE, SIZE, 3), np.uint8), []
    for i in range(start, stop):
        img, text = draw_sample(np.random.default_rng([seed, i]))
        images[i - start] = img
        captions.append(text)
    return images, captions


def build(size: int, seed: int, workers: int = 1,
          run: Callable | None = None) -> tuple[np.ndarray, list[str]]:
    """The whole corpus of ``size`` pairs, generated in ``workers`` processes (same bytes for any count)."""
    from mergeflow.workers import run_jobs

    chunks = max(1, workers) * 4
    bounds = [size * i // chunks for i in range(chunks + 1)]
    jobs = [(bounds[i], bounds[i + 1], seed) for i in range(chunks) if bounds[i + 1] > bounds[i]]
    parts = (run or run_jobs)(generate, jobs, workers)
    return np.concatenate([p[0] for p in parts]), [c for p in parts for c in p[1]]
