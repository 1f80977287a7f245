"""Pictures of a capture's history (history.py): a per-word timelapse over the steps and a per-layer-group grid.

Values shown are mean probabilities per layer and evaluation: a frame of the timelapse is the sum of its layer
groups divided by (layers · evaluations in the frame) — or, ``cumulative``, of every frame so far —; a layer
group's tile is its sum over frames divided by (its layers · all evaluations). Word maps are the mean of their
tokens, as everywhere else. Nothing here imports ComfyUI; ``progress(n)`` is called once per picture made.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .errors import AttentionFocusError
from .render import draw_caption, make_grid, normalize_maps, overlay, resize_maps


def history_word_maps(hist: torch.Tensor, kept: list[int], groups: list[tuple[int, ...]]) -> torch.Tensor:
    """(T, G, B, K, h, w) history → (T, G, B, W, h, w): each word the mean of its tokens' columns."""
    col = {p: i for i, p in enumerate(kept)}
    out = []
    for g in groups:
        missing = [p for p in g if p not in col]
        if missing:
            raise AttentionFocusError(
                f"words: token position(s) {', '.join(f'#{p}' for p in missing)} are not in the history (it keeps "
                "the prompt's word tokens only, not padding, start/end or template tokens)")
        idx = torch.tensor([col[p] for p in g], dtype=torch.long, device=hist.device)
        out.append(hist.index_select(3, idx).mean(3))
    return torch.stack(out, 3)


def step_caption(label: list, schedule: list[float]) -> str:
    """'step 3/20, sigma 4.21' (or 'steps 3-4/20, sigma 4.21-3.1') for a frame (first, last, σ first, σ last); ASCII,
    so every font draws it."""
    first, last, s0, s1 = int(label[0]), int(label[1]), float(label[2]), float(label[3])
    n = max(1, len(schedule) - 1)

    def step_of(sig: float, fallback: int) -> int:
        for i, x in enumerate(schedule[:-1]):
            if abs(x - sig) <= 1e-5 * max(1.0, abs(sig)):
                return i + 1
        return fallback + 1

    a, b = step_of(s0, first), step_of(s1, last)
    if first == last or a == b:
        steps = f"step {a}/{n}"
    else:
        steps = f"steps {a}-{b}/{n}"
    sig = f"sigma {s0:.3g}" if first == last else f"sigma {s0:.3g}-{s1:.3g}"
    return f"{steps}, {sig}"


def group_members(history_meta: dict, captured_layers) -> list[int]:
    """How many of the captured layers each history layer group sums (the divisor of its mean per layer)."""
    layers = set(captured_layers)
    return [sum(1 for n in group if n in layers) for group in history_meta["group_layers"]]


def frame_values(word_hist: torch.Tensor, labels: list, layers: int, cumulative: bool) -> torch.Tensor:
    """(T, G, B, W, h, w) → (T, B, W, h, w) mean probability per layer and evaluation in each frame."""
    per_frame = word_hist.sum(1)
    evals = torch.tensor([int(e) - int(s) + 1 for s, e, *_ in labels], dtype=per_frame.dtype,
                         device=per_frame.device)[:per_frame.shape[0]]
    if cumulative:
        per_frame, evals = per_frame.cumsum(0), evals.cumsum(0)
    return per_frame / (evals.reshape(-1, 1, 1, 1, 1) * max(1, layers))


def render_timelapse(values: torch.Tensor, image: torch.Tensor, names: list[str], captions: list[str],
                     colormap: str, opacity: float, normalization: str,
                     progress: Callable[[int], None] | None = None) -> torch.Tensor:
    """Frames (B·T, H', W', 3), image-major: per frame a row [image captioned with the step | one captioned
    overlay per word]. ``values``: (T, B, W, h, w); ``normalization``: ``shared`` (one scale per word over all
    frames: when the word takes its place shows) or ``per frame``."""
    t, b, n, h, w = values.shape
    ih, iw = image.shape[1], image.shape[2]
    img = image.float().cpu()
    out = []
    for i in range(b):
        big = resize_maps(values[:, i].reshape(t * n, h, w).float().cpu(), (ih, iw)).reshape(t, n, ih, iw)
        if normalization == "shared":
            lo = big.amin(dim=(0, 2, 3), keepdim=True)
            span = big.amax(dim=(0, 2, 3), keepdim=True) - lo
            norm = torch.where(span > 0, (big - lo) / torch.where(span > 0, span, torch.ones_like(span)),
                               torch.zeros_like(big))
        else:
            norm = normalize_maps(big.reshape(t * n, ih, iw), "per word").reshape(t, n, ih, iw)
        for f in range(t):
            tiles = [draw_caption(img[i], captions[f])]
            tiles += [draw_caption(overlay(img[i], norm[f, j], colormap, opacity), names[j]) for j in range(n)]
            out.append(make_grid(torch.stack(tiles), columns=len(tiles)))
            if progress is not None:
                progress(1)
    return torch.stack(out)


def layer_values(word_hist: torch.Tensor, members: list[int], evaluations: int) -> torch.Tensor:
    """(T, G, B, W, h, w) → (G, B, W, h, w): each group's mean probability per layer and evaluation."""
    n = torch.tensor([max(1, m) for m in members], dtype=word_hist.dtype, device=word_hist.device)
    return word_hist.sum(0) / (n.reshape(-1, 1, 1, 1, 1) * max(1, evaluations))


def render_layer_grid(values: torch.Tensor, image: torch.Tensor, names: list[str], groups: list[str], colormap: str,
                      opacity: float, progress: Callable[[int], None] | None = None) -> torch.Tensor:
    """One grid per image and word (B·W, …): a tile per layer group captioned '<word>: <group>', on one scale
    per word (so the groups compare)."""
    g, b, n, h, w = values.shape
    ih, iw = image.shape[1], image.shape[2]
    img = image.float().cpu()
    out = []
    for i in range(b):
        for j in range(n):
            big = resize_maps(values[:, i, j].float().cpu(), (ih, iw))
            norm = normalize_maps(big, "shared")
            tiles = [draw_caption(overlay(img[i], norm[k], colormap, opacity), f"{names[j]}: {groups[k]}")
                     for k in range(g)]
            out.append(make_grid(torch.stack(tiles)))
            if progress is not None:
                progress(1)
    return torch.stack(out)


def write_webp(frames: torch.Tensor, path, fps: float) -> None:
    """Write (N, H, W, 3) frames in [0, 1] as an animated, looping WebP."""
    import numpy as np
    from PIL import Image

    pics = [Image.fromarray((f.clamp(0, 1).numpy() * 255).round().astype(np.uint8)) for f in frames.cpu()]
    pics[0].save(str(path), save_all=True, append_images=pics[1:], duration=max(1, int(round(1000 / fps))), loop=0,
                 lossless=False, quality=85, method=4)
