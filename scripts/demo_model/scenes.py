"""Procedural scenes of the demo model: 1–3 coloured shapes on a plain or lightly textured background.

A scene is sampled from a caption *template* (how many objects, which position words or relation), so the
caption always describes the layout it was drawn from: "a small red circle on the left", "a blue square
above a yellow star", "a green ring on the left, a purple cross in the middle and an orange triangle on the
right". Every object of a scene has its own colour, so an object can be found again in a generated picture
by its colour (``segment``), and every caption word that refers to an object is annotated with it
(``Scene.words``): shape nouns, colour and size words name their object; a position phrase ("on the left")
locates its object; a relation ("above", "left of") relates two objects (its ground truth is their union).

Held-out split: a caption whose SHA-1 is 0 mod 10 is never used in training (``is_heldout``); the
benchmark and the demo draw their prompts from that tenth only. Layouts are random per seed, so a held-out
prompt is new both as a sentence and as a layout.

Pure numpy + Pillow; nothing here imports torch or ComfyUI.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

SIZE = 128  # rendered image side (px); the latent is SIZE/8, the MMDiT patch grid SIZE/16
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 40), "green": (40, 165, 70), "blue": (45, 85, 220), "yellow": (240, 205, 40),
    "purple": (145, 60, 195), "orange": (245, 135, 30),
}
SHAPES = ("circle", "square", "triangle", "star", "ring", "cross")
# radius (half extent, px) per size word; "" = medium, not named in the caption
SIZES: dict[str, tuple[int, int]] = {"small": (11, 14), "": (17, 20), "large": (24, 28)}
BACKGROUNDS = ((226, 226, 220), (205, 205, 200), (236, 228, 212), (212, 216, 224), (190, 192, 196), (232, 222, 226))
# centre regions (x0, x1, y0, y1), fractions of the side, of the absolute position phrases
POSITIONS: dict[str, tuple[float, float, float, float]] = {
    "on the left": (0.16, 0.34, 0.28, 0.72), "on the right": (0.66, 0.84, 0.28, 0.72),
    "at the top": (0.28, 0.72, 0.16, 0.34), "at the bottom": (0.28, 0.72, 0.66, 0.84),
    "in the middle": (0.42, 0.58, 0.42, 0.58),
}
RELATIONS = ("above", "below", "to the left of", "to the right of")
WORD_CLASSES = ("shape", "colour", "size", "relation")
HELDOUT_MOD = 10


@dataclass
class Obj:
    shape: str
    colour: str
    size: str  # "small" | "" | "large"
    radius: float
    cx: float  # centre, px
    cy: float

    @property
    def phrase(self) -> str:
        return " ".join(w for w in (self.size, self.colour, self.shape) if w)


@dataclass
class Word:
    """One caption word that refers to objects: its index among the caption's words and its class."""

    index: int
    text: str
    cls: str  # one of WORD_CLASSES
    objects: tuple[int, ...]


@dataclass
class Scene:
    objects: list[Obj]
    background: tuple[int, int, int]
    texture: str  # plain | gradient | noise | stripes
    kind: str = "abs"  # abs (position phrases) | rel (a relation) | free (no position)
    positions: list[str] = field(default_factory=list)  # the position phrases, or [relation]
    caption: str = ""
    words: list[Word] = field(default_factory=list)
    texture_seed: int = 0

    def word_spec(self, w: Word) -> str:
        """The pack's word syntax for caption word ``w``: the word, with ``[k]`` if it occurs more than once."""
        words = caption_words(self.caption)
        n = sum(1 for x in words if x == w.text)
        if n == 1:
            return w.text
        k = sum(1 for x in words[: w.index + 1] if x == w.text)
        return f"{w.text}[{k}]"


def caption_words(caption: str) -> list[str]:
    return caption.replace(",", " ").split()


def is_heldout(caption: str) -> bool:
    return int(hashlib.sha1(caption.encode()).hexdigest(), 16) % HELDOUT_MOD == 0


def _article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


# ---------------------------------------------------------------------------------------------------
# sampling


def _template(rng: np.random.Generator) -> tuple[int, str, list[str]]:
    """(objects, kind, position phrases or relation): the caption's structure."""
    u = rng.random()
    if u < 0.35:
        if rng.random() < 0.2:
            return 1, "free", [""]
        return 1, "abs", [list(POSITIONS)[rng.integers(len(POSITIONS))]]
    if u < 0.75:
        if rng.random() < 0.5:
            return 2, "rel", [RELATIONS[rng.integers(len(RELATIONS))]]
        pair = [("on the left", "on the right"), ("at the top", "at the bottom")][rng.integers(2)]
        return 2, "abs", list(pair if rng.random() < 0.5 else pair[::-1])
    row = ["on the left", "in the middle", "on the right"] if rng.random() < 0.5 else \
        ["at the top", "in the middle", "at the bottom"]
    return 3, "abs", [row[i] for i in rng.permutation(3)]


def _centre_in(rng, region, r) -> tuple[float, float]:
    x0, x1, y0, y1 = region
    lo, hi = r + 3, SIZE - r - 3
    cx = float(np.clip(rng.uniform(x0, x1) * SIZE, lo, hi))
    cy = float(np.clip(rng.uniform(y0, y1) * SIZE, lo, hi))
    return cx, cy


def _relation_regions(rel: str) -> tuple[tuple, tuple]:
    """Centre regions of (subject, object) for a relation; the exact test is ``_relation_holds``."""
    if rel == "above":
        return (0.25, 0.75, 0.14, 0.42), (0.25, 0.75, 0.58, 0.86)
    if rel == "below":
        return (0.25, 0.75, 0.58, 0.86), (0.25, 0.75, 0.14, 0.42)
    if rel == "to the left of":
        return (0.14, 0.42, 0.25, 0.75), (0.58, 0.86, 0.25, 0.75)
    return (0.58, 0.86, 0.25, 0.75), (0.14, 0.42, 0.25, 0.75)


def relation_holds(rel: str, a: tuple[float, float], b: tuple[float, float]) -> bool:
    """Does centre ``a`` stand in ``rel`` to centre ``b`` (clearly: the main axis dominates)?"""
    dx, dy = b[0] - a[0], b[1] - a[1]
    if rel in ("above", "below"):
        d = dy if rel == "above" else -dy
        return d > 0 and d > abs(dx)
    d = dx if rel == "to the left of" else -dx
    return d > 0 and d > abs(dy)


def position_holds(phrase: str, c: tuple[float, float]) -> bool:
    """Is centre ``c`` (px) in the half/centre the absolute position phrase names?"""
    x, y = c[0] / SIZE, c[1] / SIZE
    return {"on the left": x < 0.45, "on the right": x > 0.55, "at the top": y < 0.45, "at the bottom": y > 0.55,
            "in the middle": abs(x - 0.5) < 0.17 and abs(y - 0.5) < 0.17}[phrase]


def _apart(objs: list[Obj], gap: float = 5.0) -> bool:
    return all(np.hypot(a.cx - b.cx, a.cy - b.cy) >= a.radius + b.radius + gap
               for i, a in enumerate(objs) for b in objs[i + 1:])


def sample_scene(rng: np.random.Generator, split: str = "train") -> Scene:
    """A random scene whose caption belongs to ``split`` ("train": not held out, "heldout": held out, "any")."""
    for _ in range(1000):
        scene = _sample_once(rng)
        if scene is not None and (split == "any" or is_heldout(scene.caption) == (split == "heldout")):
            return scene
    raise RuntimeError("could not sample a scene")


def _sample_once(rng: np.random.Generator) -> Scene | None:
    n, kind, pos = _template(rng)
    colours = [list(COLOURS)[i] for i in rng.permutation(len(COLOURS))[:n]]
    shapes = [SHAPES[i] for i in rng.integers(len(SHAPES), size=n)]
    size_words = list(SIZES) if n < 3 else ["small", ""]
    sizes = [size_words[i] for i in rng.integers(len(size_words), size=n)]
    return _layout(rng, kind, pos, list(zip(shapes, colours, sizes, strict=True)))


def relayout(scene: Scene, rng: np.random.Generator) -> Scene | None:
    """Another drawing of ``scene``'s caption: new sizes within the size words, positions, background."""
    objs = [(o.shape, o.colour, o.size) for o in scene.objects]
    new = _layout(rng, scene.kind, scene.positions, objs)
    if new is not None and new.caption != scene.caption:
        raise AssertionError(f"relayout changed the caption: {scene.caption!r} -> {new.caption!r}")
    return new


def _layout(rng, kind: str, pos: list[str], specs: list[tuple[str, str, str]]) -> Scene | None:
    n = len(specs)
    shapes, colours, sizes = (list(x) for x in zip(*specs, strict=True))
    for _ in range(50):
        objs = []
        for i in range(n):
            r = float(rng.uniform(*SIZES[sizes[i]]))
            if kind == "free":
                region = (0.0, 1.0, 0.0, 1.0)
            elif kind == "rel":
                region = _relation_regions(pos[0])[i]
            else:
                region = POSITIONS[pos[i]]
            cx, cy = _centre_in(rng, region, r)
            objs.append(Obj(shapes[i], colours[i], sizes[i], r, cx, cy))
        ok = _apart(objs)
        if kind == "rel":
            ok = ok and relation_holds(pos[0], (objs[0].cx, objs[0].cy), (objs[1].cx, objs[1].cy))
        if kind == "abs":
            ok = ok and all(position_holds(p, (o.cx, o.cy)) for p, o in zip(pos, objs, strict=True))
        if ok:
            break
    else:
        return None
    bg = BACKGROUNDS[rng.integers(len(BACKGROUNDS))]
    texture = ("plain", "plain", "gradient", "noise", "stripes")[rng.integers(5)]
    scene = Scene(objs, bg, texture, kind, list(pos), texture_seed=int(rng.integers(2**31)))
    scene.caption, scene.words = describe(objs, kind, pos)
    return scene


def describe(objs: list[Obj], kind: str, pos: list[str]) -> tuple[str, list[Word]]:
    """The caption of a layout and its annotated words."""
    parts: list[tuple[str, tuple[int, ...] | None]] = []  # (text, objects it refers to)
    if kind == "rel":
        parts = [(_article(objs[0].phrase), (0,)), (pos[0], (0, 1)), (_article(objs[1].phrase), (1,))]
    else:
        for i, (o, p) in enumerate(zip(objs, pos, strict=True)):
            if i:
                parts.append(("and" if i == len(objs) - 1 else ",", None))
            parts.append((_article(o.phrase), (i,)))
            if p:
                parts.append((p, (i,)))
    text = " ".join(t for t, _ in parts).replace(" ,", ",")
    words: list[Word] = []
    idx = 0
    for t, refs in parts:
        for w in t.replace(",", " ").split():
            if refs is not None:
                cls = ("shape" if w in SHAPES else "colour" if w in COLOURS else "size" if w in SIZES
                       else "relation" if w in ("left", "right", "top", "bottom", "middle", "above", "below")
                       else None)
                if cls is not None:
                    words.append(Word(idx, w, cls, refs))
            idx += 1
    return text, words


# ---------------------------------------------------------------------------------------------------
# rendering

SUPER = 4  # supersampling factor of the shape masks (anti-aliased edges)


def _polygon(cx, cy, radius, n, inner=None, rot=-np.pi / 2):
    pts = []
    for i in range(n * (2 if inner else 1)):
        a = rot + i * np.pi / (n if inner else n / 2)
        r = radius * (inner if inner and i % 2 else 1.0)
        pts.append((cx + r * np.cos(a), cy + r * np.sin(a)))
    return pts


def shape_mask(o: Obj) -> np.ndarray:
    """Anti-aliased coverage (SIZE, SIZE) in [0, 1] of one object."""
    s = SUPER
    im = Image.new("L", (SIZE * s, SIZE * s), 0)
    d = ImageDraw.Draw(im)
    cx, cy, r = o.cx * s, o.cy * s, o.radius * s
    if o.shape == "circle":
        d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
    elif o.shape == "ring":
        d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
        ri = r * 0.55
        d.ellipse((cx - ri, cy - ri, cx + ri, cy + ri), fill=0)
    elif o.shape == "square":
        h = r * 0.85
        d.rectangle((cx - h, cy - h, cx + h, cy + h), fill=255)
    elif o.shape == "triangle":
        R = r * 1.15
        d.polygon(_polygon(cx, cy + R / 4, R, 3), fill=255)
    elif o.shape == "star":
        d.polygon(_polygon(cx, cy + r * 0.08, r * 1.1, 5, inner=0.45), fill=255)
    elif o.shape == "cross":
        t = r * 0.36
        d.rectangle((cx - r, cy - t, cx + r, cy + t), fill=255)
        d.rectangle((cx - t, cy - r, cx + t, cy + r), fill=255)
    else:
        raise ValueError(o.shape)
    return np.asarray(im.resize((SIZE, SIZE), Image.BOX), dtype=np.float32) / 255.0


def _background(scene: Scene) -> np.ndarray:
    rng = np.random.default_rng(scene.texture_seed)
    img = np.ones((SIZE, SIZE, 3), np.float32) * (np.array(scene.background, np.float32) / 255.0)
    y, x = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) / SIZE
    if scene.texture == "gradient":
        a = rng.uniform(0, 2 * np.pi)
        img += (0.05 * ((x - 0.5) * np.cos(a) + (y - 0.5) * np.sin(a)))[..., None]
    elif scene.texture == "noise":
        img += rng.normal(0, 0.02, (SIZE, SIZE, 1)).astype(np.float32)
    elif scene.texture == "stripes":
        a, f = rng.uniform(0, np.pi), rng.uniform(6, 14)
        img += (0.025 * np.sin(2 * np.pi * f * (x * np.cos(a) + y * np.sin(a))))[..., None]
    return img


def render(scene: Scene) -> tuple[np.ndarray, np.ndarray]:
    """(image (SIZE, SIZE, 3) float32 in [0, 1], coverage masks (objects, SIZE, SIZE) in [0, 1])."""
    img = _background(scene)
    masks = np.stack([shape_mask(o) for o in scene.objects]) if scene.objects else np.zeros((0, SIZE, SIZE))
    for o, m in zip(scene.objects, masks, strict=True):
        colour = np.array(COLOURS[o.colour], np.float32) / 255.0
        img = img * (1 - m[..., None]) + colour * m[..., None]
    return np.clip(img, 0, 1), masks.astype(np.float32)


# ---------------------------------------------------------------------------------------------------
# finding objects again in a generated picture


def segment(image: np.ndarray, max_dist: float = 0.30) -> np.ndarray:
    """Label each pixel of an (H, W, 3) [0, 1] image with the index (into COLOURS) of the nearest palette
    colour, or -1 where no palette colour is within ``max_dist`` (RGB, 0..1 scale): the background.

    The background colours are all neutral greys/beiges, far (> 0.6) from every object colour.
    """
    pal = np.array(list(COLOURS.values()), np.float32) / 255.0
    d = np.linalg.norm(image[:, :, None, :] - pal[None, None], axis=-1)
    lab = d.argmin(-1)
    lab[d.min(-1) > max_dist] = -1
    return lab


def colour_mask(image: np.ndarray, colour: str, max_dist: float = 0.30) -> np.ndarray:
    """Boolean mask of the pixels of ``colour`` (the object drawn in that colour)."""
    return segment(image, max_dist) == list(COLOURS).index(colour)
