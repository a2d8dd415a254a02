"""Deterministic scenes and questions.

A scene is a 336 x 336 picture on a plain background with 2 to 4 coloured shapes (no two alike in both shape and
colour) and a white sign with a two-digit number. Every question needs a different part of the picture:

- exist:    "Is there a red circle in the image?"              yes / no (half the time a near miss: the shape in
                                                                 another colour, or the colour on another shape)
- color:    "What color is the square?"                        the colour of the only square
- shape:    "What shape is the blue object?"                   the shape of the only blue object
- position: "Which shape is further left, the circle or the triangle?"  /  "... higher up, ..."
- count:    "How many objects are there?" / "How many circles are there?"
- read:     "What number is written on the sign?"              the two digits

Questions carry LLaVA's short-answer suffix, so the files are LLaVA question files.
"""

from __future__ import annotations

import dataclasses
import functools
import random

import numpy as np
from PIL import Image, ImageDraw, ImageFont

SIZE = 336
SHAPES = ("circle", "square", "triangle")
COLORS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 200, 30),
    "purple": (140, 60, 180),
    "orange": (245, 130, 30),
}
PATCH = 14  # the tower's patch size: the sign lies on this grid
SHAPE_SIDES = (56, 84)  # pixels, min and max
FONT_SIZE = 40
BACKGROUNDS = ((245, 245, 240), (200, 200, 200), (120, 120, 120), (60, 60, 70), (225, 235, 245), (240, 225, 200))
SUFFIX = "\nAnswer the question using a single word or phrase."
QUESTION_TYPES = ("exist", "color", "shape", "position", "count", "read")


@dataclasses.dataclass(frozen=True)
class Shape:
    shape: str
    color: str
    box: tuple[int, int, int, int]  # x0, y0, x1, y1

    @property
    def center(self) -> tuple[float, float]:
        return (self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2


@dataclasses.dataclass(frozen=True)
class Scene:
    background: tuple[int, int, int]
    shapes: tuple[Shape, ...]
    number: str
    sign: tuple[int, int, int, int]


def _overlaps(a, b, margin=8) -> bool:
    return not (a[2] + margin <= b[0] or b[2] + margin <= a[0] or a[3] + margin <= b[1] or b[3] + margin <= a[1])


def make_scene(rng: random.Random, num_shapes: tuple[int, int] = (2, 4)) -> Scene:
    boxes = []
    sign_w, sign_h = 84, 56
    x, y = PATCH * rng.randint(0, (SIZE - sign_w) // PATCH), PATCH * rng.randint(0, (SIZE - sign_h) // PATCH)
    sign = (x, y, x + sign_w, y + sign_h)
    boxes.append(sign)
    combos = [(s, c) for s in SHAPES for c in COLORS]
    rng.shuffle(combos)
    shapes = []
    for shape, color in combos[: rng.randint(*num_shapes)]:
        for _ in range(200):
            side = rng.randint(*SHAPE_SIDES)
            x, y = rng.randint(4, SIZE - side - 4), rng.randint(4, SIZE - side - 4)
            box = (x, y, x + side, y + side)
            if not any(_overlaps(box, other) for other in boxes):
                boxes.append(box)
                shapes.append(Shape(shape, color, box))
                break
    number = f"{rng.randint(10, 99)}"
    return Scene(rng.choice(BACKGROUNDS), tuple(shapes), number, sign)


def _draw_shapes(pen: ImageDraw.ImageDraw, scene: Scene, fill_of) -> None:
    for s in scene.shapes:
        x0, y0, x1, y1 = s.box
        if s.shape == "circle":
            pen.ellipse(s.box, fill=fill_of(s))
        elif s.shape == "square":
            pen.rectangle(s.box, fill=fill_of(s))
        else:
            pen.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=fill_of(s))


def pattern_on(shape: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Where a shape of this kind shows its full colour (elsewhere a half tint towards white): squares are solid,
    circles striped, triangles checkered, with one stripe / check period per 14-px patch, laid on the patch grid.
    So every patch inside a shape shows the same picture for its kind, which a linear patch embedding tells apart
    at once (a from-scratch ViT did not learn to tell solid interiors apart by their outline within the training
    budget, and finer textures out of phase with the grid were slow to learn too)."""
    top, left = (y % PATCH) < PATCH // 2, (x % PATCH) < PATCH // 2
    if shape == "square":
        return np.ones_like(x, dtype=bool)
    if shape == "circle":
        return top
    return top != left


def _sign_cells(scene: Scene) -> list[tuple[tuple[float, float], str]]:
    """(centre, digit) of each digit: each in its own half of the sign, which lies on the 14-px patch grid, so a
    digit always covers the same patches the same way."""
    x0, y0, x1, y1 = scene.sign
    half = (x1 - x0) / 2
    return [((x0 + half * (i + 0.5), (y0 + y1) / 2), digit) for i, digit in enumerate(scene.number)]


@functools.cache
def _font() -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=FONT_SIZE)


def draw(scene: Scene) -> Image.Image:
    image = Image.new("RGB", (SIZE, SIZE), scene.background)
    pen = ImageDraw.Draw(image)
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    for s in scene.shapes:
        mask = Image.new("L", (SIZE, SIZE), 0)
        _draw_shapes(ImageDraw.Draw(mask), dataclasses.replace(scene, shapes=(s,)), lambda _: 255)
        full = np.array(COLORS[s.color], dtype=np.uint8)
        tint = ((full.astype(int) + 255) // 2).astype(np.uint8)
        texture = np.where(pattern_on(s.shape, x, y)[..., None], full, tint)
        image.paste(Image.fromarray(texture, "RGB"), (0, 0), mask)
    pen.rectangle(scene.sign, fill=(255, 255, 255), outline=(0, 0, 0), width=2)
    for centre, digit in _sign_cells(scene):
        pen.text(centre, digit, fill=(0, 0, 0), font=_font(), anchor="mm")
    return image


def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def _plural(shape: str) -> str:
    return shape + "s"


def questions_for(scene: Scene, rng: random.Random) -> list[tuple[str, str, str]]:
    """All the (type, question, answer) pairs one can ask about `scene` (one or two per type)."""
    out = []
    present = {(s.shape, s.color) for s in scene.shapes}
    # exist: one true, one near miss
    s = rng.choice(scene.shapes)
    out.append(("exist", f"Is there {_a(s.color)} {s.shape} in the image?", "yes"))
    misses = [
        (sh, c)
        for sh in SHAPES
        for c in COLORS
        if (sh, c) not in present and any(p[0] == sh or p[1] == c for p in present)
    ]
    sh, c = rng.choice(misses)
    out.append(("exist", f"Is there {_a(c)} {sh} in the image?", "no"))
    # attributes of objects named by the other attribute
    by_shape = {sh: [x for x in scene.shapes if x.shape == sh] for sh in SHAPES}
    by_color = {c: [x for x in scene.shapes if x.color == c] for c in COLORS}
    unique_shapes = [sh for sh, xs in by_shape.items() if len(xs) == 1]
    unique_colors = [c for c, xs in by_color.items() if len(xs) == 1]
    if unique_shapes:
        sh = rng.choice(unique_shapes)
        out.append(("color", f"What color is the {sh}?", by_shape[sh][0].color))
    if unique_colors:
        c = rng.choice(unique_colors)
        out.append(("shape", f"What shape is the {c} object?", by_color[c][0].shape))
    # position between two objects with unique shapes, told apart by a clear margin
    if len(unique_shapes) >= 2:
        a, b = rng.sample(unique_shapes, 2)
        sa, sb = by_shape[a][0], by_shape[b][0]
        (ax, ay), (bx, by) = sa.center, sb.center
        if abs(ax - bx) >= 30 and (abs(ax - bx) >= abs(ay - by) or abs(ay - by) < 30):
            out.append(("position", f"Which shape is further left, the {a} or the {b}?", a if ax < bx else b))
        elif abs(ay - by) >= 30:
            out.append(("position", f"Which shape is higher up, the {a} or the {b}?", a if ay < by else b))
    # counting
    if rng.random() < 0.5:
        out.append(("count", "How many objects are there?", str(len(scene.shapes))))
    else:
        sh = rng.choice(SHAPES)
        out.append(("count", f"How many {_plural(sh)} are there?", str(len(by_shape[sh]))))
    # reading
    out.append(("read", "What number is written on the sign?", scene.number))
    return out


# -- per-patch labels (an auxiliary training target) --------------------------------------------------------------
BACKGROUND, SIGN = 0, 1
NUM_PATCH_LABELS = 2 + len(SHAPES) * len(COLORS) + 20  # background, sign, each (shape, colour), left/right digit


def shape_label(shape: str, color: str) -> int:
    return 2 + SHAPES.index(shape) * len(COLORS) + list(COLORS).index(color)


def digit_label(position: int, digit: str) -> int:
    return 2 + len(SHAPES) * len(COLORS) + 10 * position + int(digit)


def patch_labels(scene: Scene, patch: int = PATCH) -> list[int]:
    """What the centre pixel of each patch (raster order) shows: background, sign, one (shape, colour), or the
    left / right digit of the number. Drawn with the same primitives as `draw`, so labels match the pixels."""
    label_map = Image.new("L", (SIZE, SIZE), BACKGROUND)
    pen = ImageDraw.Draw(label_map)
    _draw_shapes(pen, scene, lambda s: shape_label(s.shape, s.color))
    pen.rectangle(scene.sign, fill=SIGN)
    for position, (centre, digit) in enumerate(_sign_cells(scene)):
        box = pen.textbbox(centre, digit, font=_font(), anchor="mm")
        pen.rectangle(box, fill=digit_label(position, digit))
    side = SIZE // patch
    return [
        label_map.getpixel((patch * j + patch // 2, patch * i + patch // 2)) for i in range(side) for j in range(side)
    ]


def evidence_patches(scene: Scene, question: str, labels: list[int] | None = None) -> list[list[int]]:
    """The patches (raster indices) each answer token needs, in answer order: the two digits' patches for the
    number on the sign, else one entry: the patches of the objects the question names (both attributes when it
    names both, every object for "How many objects"), empty when it names none in the picture (a near miss)."""
    labels = patch_labels(scene) if labels is None else labels
    if "number" in question:
        return [[i for i, lab in enumerate(labels) if lab == digit_label(pos, d)] for pos, d in enumerate(scene.number)]
    colors = [c for c in COLORS if c in question]
    shapes = [s for s in SHAPES if s in question]
    named = {
        shape_label(s.shape, s.color)
        for s in scene.shapes
        if (not colors or s.color in colors) and (not shapes or s.shape in shapes)
    }
    return [[i for i, lab in enumerate(labels) if lab in named]]
