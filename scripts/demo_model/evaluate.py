"""Localisation of the demo model's heat maps, measured: DAAM's COCO-Gen protocol in miniature.

For a held-out caption (``scenes.sample_scene(rng, "heldout")``), the demo model generates a picture through
ComfyUI's own loader, text encoder, sampler and VAE, with Attention Focus captures on the model (the pack's
public API: ``add_capture``; several captures stack on one model, so one generation gives the maps of every
capture setting). Each annotated caption word's map is thresholded and compared with its ground truth.

Ground truth: the object *as drawn in the generated picture*, found by its colour. Every object of a scene
has its own colour from a 6-colour palette on a neutral background, so the pixels nearest to that palette
colour (``scenes.colour_mask``) are that object: a mask of what the model actually drew, wherever it drew it.
(The layout the caption describes is only a region — "on the left" — so its objects' exact outlines are not
known before generation; comparing maps with the drawn object measures attribution, not the model's
obedience.) The model's obedience is reported separately: the share of objects drawn at all (found by
colour) and the share whose position agrees with the caption (``position_holds`` / ``relation_holds``).
An object not drawn is left out of the IoU, as DAAM's annotators only outlined objects present.

Word classes and their ground truth (DAAM: nouns and adjectives map to the object): shape nouns, colour and
size words → the object they belong to ("a *red* circle above a blue square": red → the circle); position
words ("on the *left*") → the object they place; relations ("*above*", "to the *left* of") → the union of
the two objects they relate.

Threshold: DAAM upsamples a map bicubically to the image, min–max normalises it and keeps pixels ≥ τ = 0.4
(castorini/daam ``expand_image``; the paper's τ); ``SWEEP`` also gives the best single τ per class.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import scenes as S

DAAM_TAU = 0.4
SWEEP = tuple(round(t, 2) for t in np.arange(0.05, 0.96, 0.05))
MIN_PIXELS = 60  # an object with fewer pixels of its colour counts as not drawn
STEPS, CFG, SAMPLER, SCHEDULER = 20, 4.0, "euler", "simple"


@dataclass(frozen=True)
class CaptureSetting:
    softmax: str = "all"  # all | text (the node's "all keys" | "text keys")
    head: str = "mean"
    layers: str = "all"
    window: tuple[float, float] = (0.0, 1.0)

    @property
    def name(self) -> str:
        win = "" if self.window == (0.0, 1.0) else f" · steps {self.window[0]:g}–{self.window[1]:g}"
        return f"{self.softmax} keys · {self.head} · {self.layers}{win}"


def capture_settings(depth: int) -> list[CaptureSetting]:
    """What the Capture node offers on this model: softmax × head reduction × (all layers or one block),
    and the default with the first / second half of the steps."""
    out = [CaptureSetting(s, h, layers) for s in ("all", "text") for h in ("mean", "max")
           for layers in ["all"] + [f"double.{i}" for i in range(depth)]]
    return out + [CaptureSetting(window=(0.0, 0.5)), CaptureSetting(window=(0.5, 1.0))]


@dataclass
class Demo:
    model: object  # ModelPatcher
    clip: object
    vae: object
    depth: int


def load_demo(model_file: Path | None = None) -> Demo:
    """The demo model through ComfyUI's CheckpointLoaderSimple code path (``load_checkpoint_guess_config``)."""
    from harness.comfy_boot import boot

    boot()
    import comfy.sd

    from . import model as M

    path = M.demo_checkpoint(model_file or M.MODEL_FILE)
    model, clip, vae = comfy.sd.load_checkpoint_guess_config(str(path), output_vae=True, output_clip=True)[:3]
    depth = len(model.model.diffusion_model.joint_blocks)
    return Demo(model, clip, vae, depth)


def encode(clip, text: str) -> list:
    """CONDITIONING with the token table, as Attention Focus Text Encode gives it."""
    from harness.comfy_boot import boot

    return boot().pack.NODE_CLASS_MAPPINGS["AttentionFocusTextEncode"]().encode(clip, text)[0]


def generate(demo: Demo, caption: str, seed: int, settings: list[CaptureSetting] = (),
             reweight: list[tuple[str, float]] | None = None, mode: str = "scale", size: int = S.SIZE,
             steps: int = STEPS, cfg: float = CFG):
    """(image (H, W, 3) float in [0, 1], {setting: MapSet}) of one generation with the given captures."""
    from harness import fixtures
    from harness import pack as cp

    m = demo.model
    if reweight:
        m = cp.add_reweight(m, list(reweight), mode, "all", "positive", 0.0, 1.0)
    handles = {}
    for st in settings:
        m, handles[st] = cp.add_capture(m, st.layers, "positive", st.window[0], st.window[1], st.head, st.softmax)
    pos, neg = encode(demo.clip, caption), encode(demo.clip, "")
    latent = torch.zeros(1, 16, size // 8, size // 8)
    samples = fixtures.sample(m, pos, neg, latent, seed, steps, cfg, SAMPLER, SCHEDULER)
    with torch.inference_mode():
        image = demo.vae.decode(samples)[0].float().clamp(0, 1).numpy()
    return image, {st: h.result("positive") for st, h in handles.items()}


def word_maps(ms, scene: S.Scene) -> dict[int, np.ndarray]:
    """Latent-grid map (H_lat, W_lat) of each annotated word of ``scene`` (keyed by word index)."""
    from attention_focus.nodes.capture_store import select_words

    specs = [scene.word_spec(w) for w in scene.words]
    _, wm = select_words(ms, ms.tokens, ", ".join(specs))
    return {w.index: wm[0, i].numpy() for i, w in enumerate(scene.words)}


def shifted_word_maps(ms, scene: S.Scene, shift: int) -> dict[int, np.ndarray]:
    """Each word's map read ``shift`` tokens off its own (a labelling bug, for negative controls)."""
    from attention_focus.nodes.token_table import resolve

    maps = ms.maps[0].float()
    out = {}
    for w in scene.words:
        pos = [p + shift for p in resolve(ms.tokens, scene.word_spec(w))]
        out[w.index] = maps[pos].mean(0).numpy()
    return out


def expand(m: np.ndarray, size: int) -> np.ndarray:
    """DAAM's expand_image: bicubic upsampling to the image, then min–max normalisation."""
    t = F.interpolate(torch.from_numpy(m)[None, None].float(), size=(size, size), mode="bicubic")[0, 0]
    return ((t - t.min()) / (t.max() - t.min() + 1e-8)).numpy()


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


@dataclass
class Found:
    """The objects of a scene as drawn: masks (by colour), presence and whether placed as described."""

    masks: list[np.ndarray]
    present: list[bool]
    placed: list[bool | None]  # None: the caption says nothing about its position


def find_objects(scene: S.Scene, image: np.ndarray) -> Found:
    masks = [S.colour_mask(image, o.colour) for o in scene.objects]
    present = [int(m.sum()) >= MIN_PIXELS for m in masks]
    cents = [tuple(np.argwhere(m).mean(0)[::-1]) if p else None for m, p in zip(masks, present, strict=True)]
    placed: list[bool | None] = [None] * len(masks)
    if scene.kind == "abs":
        for i, p in enumerate(scene.positions):
            placed[i] = cents[i] is not None and S.position_holds(p, cents[i])
    elif scene.kind == "rel":
        ok = cents[0] is not None and cents[1] is not None and S.relation_holds(scene.positions[0], cents[0],
                                                                              cents[1])
        placed[0] = placed[1] = ok
    return Found(masks, present, placed)


@dataclass
class Scores:
    """IoUs per (setting, word class, τ) over all cases, plus generation fidelity counts."""

    ious: dict = field(default_factory=dict)  # (setting name, class) -> list of (iou at each τ in SWEEP)
    objects: int = 0
    present: int = 0
    placed: int = 0
    placed_total: int = 0

    def add(self, scene: S.Scene, image: np.ndarray, maps: dict) -> Found:
        found = find_objects(scene, image)
        self.objects += len(scene.objects)
        self.present += sum(found.present)
        self.placed += sum(1 for p in found.placed if p)
        self.placed_total += sum(1 for p in found.placed if p is not None)
        for st, ms in maps.items():
            wmaps = word_maps(ms, scene)
            for w in scene.words:
                if not all(found.present[o] for o in w.objects):
                    continue
                gt = np.logical_or.reduce([found.masks[o] for o in w.objects])
                e = expand(wmaps[w.index], image.shape[0])
                self.ious.setdefault((st.name, w.cls), []).append([iou(e >= t, gt) for t in SWEEP])
        return found

    def miou(self, setting: str, cls: str, tau: float = DAAM_TAU) -> float:
        rows = self.ious.get((setting, cls), [])
        return float(np.mean([r[SWEEP.index(tau)] for r in rows])) if rows else float("nan")

    def best(self, setting: str, cls: str) -> tuple[float, float]:
        """(best τ, mIoU at it) for a class."""
        rows = np.array(self.ious.get((setting, cls), []))
        if not len(rows):
            return float("nan"), float("nan")
        means = rows.mean(0)
        return SWEEP[int(means.argmax())], float(means.max())

    def count(self, setting: str, cls: str) -> int:
        return len(self.ious.get((setting, cls), []))


def heldout_cases(n: int, seed: int = 1234) -> list[tuple[S.Scene, int]]:
    """``n`` held-out scenes (their captions never seen in training) and generation seeds."""
    rng = np.random.default_rng(seed)
    return [(S.sample_scene(rng, "heldout"), int(rng.integers(2**31))) for _ in range(n)]


# ---------------------------------------------------------------------------------------------------
# reweighting


def colour_effect(image: np.ndarray, mask: np.ndarray, colour: str) -> tuple[float, float]:
    """(share of ``mask``'s pixels classified as ``colour``, mean RGB distance to ``colour`` inside ``mask``)."""
    if not mask.any():
        return float("nan"), float("nan")
    share = float(S.colour_mask(image, colour)[mask].mean())
    target = np.array(S.COLOURS[colour], np.float32) / 255.0
    dist = float(np.linalg.norm(image[mask] - target, axis=-1).mean())
    return share, dist
