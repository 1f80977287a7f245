"""The training set of the demo model: captions, their renders, latents and attention targets.

``build_scenes``: ``n_captions`` distinct training captions (none held out), each drawn ``renders`` times
(the same caption, new sizes within its size words, positions within its position words, background).
``grounding_targets``: for each render, which caption tokens name which object, as coverage of the
MMDiT's patch grid — the targets of the optional attention-grounding loss (see train_dit).
"""

from __future__ import annotations

import numpy as np
import torch

from . import scenes as S

PATCH_PX = 16  # one MMDiT token = 2x2 latent cells = 16x16 pixels


def build_scenes(n_captions: int, renders: int, seed: int) -> tuple[list[str], list[list[S.Scene]]]:
    rng = np.random.default_rng(seed)
    captions: list[str] = []
    drawn: list[list[S.Scene]] = []
    seen: set[str] = set()
    while len(captions) < n_captions:
        sc = S.sample_scene(rng, "train")
        if sc.caption in seen:
            continue
        seen.add(sc.caption)
        group = [sc]
        while len(group) < renders:
            other = S.relayout(sc, rng)
            if other is not None:
                group.append(other)
        captions.append(sc.caption)
        drawn.append(group)
    return captions, drawn


def patch_coverage(masks: np.ndarray) -> np.ndarray:
    """(objects, SIZE, SIZE) coverage → (objects, SIZE/16, SIZE/16): the share of each token's pixels."""
    n, h, w = masks.shape
    g = masks.reshape(n, h // PATCH_PX, PATCH_PX, w // PATCH_PX, PATCH_PX).mean((2, 4))
    return g.astype(np.float32)


def grounding_targets(scene: S.Scene, masks: np.ndarray, positions: list[int], n_tokens: int = 77
                      ) -> tuple[np.ndarray, np.ndarray]:
    """(target (n_image_tokens, n_tokens) coverage, word class (n_tokens,) int8) for one render.

    An annotated word's token gets its class (index into scenes.WORD_CLASSES; -1 elsewhere) and, as target
    column, the patch coverage of the object(s) the word names.
    """
    cov = patch_coverage(masks).reshape(len(scene.objects), -1)
    target = np.zeros((cov.shape[1], n_tokens), np.float32)
    cls = np.full(n_tokens, -1, np.int8)
    for w in scene.words:
        t = positions[w.index]
        target[:, t] = cov[list(w.objects)].max(0)
        cls[t] = S.WORD_CLASSES.index(w.cls)
    return target, cls


def render_batch(scs: list[S.Scene]) -> tuple[torch.Tensor, list[np.ndarray]]:
    """Images (B, 3, SIZE, SIZE) in [0, 1] and each scene's coverage masks."""
    imgs, masks = [], []
    for sc in scs:
        im, m = S.render(sc)
        imgs.append(torch.from_numpy(im).permute(2, 0, 1))
        masks.append(m)
    return torch.stack(imgs), masks


def random_crops(rng: np.random.Generator, n: int, crop: int) -> torch.Tensor:
    """``n`` random ``crop``-px crops (aligned to the 8-px latent grid) of fresh training renders."""
    scs = [S.sample_scene(rng, "train") for _ in range(n)]
    imgs, _ = render_batch(scs)
    out = []
    for im in imgs:
        y, x = (int(v) * 8 for v in rng.integers(0, (S.SIZE - crop) // 8 + 1, size=2))
        out.append(im[:, y:y + crop, x:x + crop])
    return torch.stack(out)
