"""Turning per-word heat maps into pictures: colormaps, overlays, captions, grids, normalisation.

Colormaps are built from a handful of anchor colours interpolated linearly (no matplotlib).
Images are float tensors (H, W, 3) in [0, 1], as ComfyUI's IMAGE.
"""

from __future__ import annotations

import math
import unicodedata

import torch
import torch.nn.functional as F

# anchor colours (evenly spaced from 0 to 1) of each colormap
_ANCHORS: dict[str, list[tuple[float, float, float]]] = {
    "turbo": [(0.19, 0.07, 0.23), (0.27, 0.46, 0.93), (0.10, 0.81, 0.86), (0.40, 0.99, 0.40),
              (0.88, 0.87, 0.22), (0.98, 0.50, 0.13), (0.80, 0.16, 0.03), (0.48, 0.02, 0.01)],
    "jet": [(0.0, 0.0, 0.5), (0.0, 0.0, 1.0), (0.0, 0.5, 1.0), (0.0, 1.0, 1.0), (0.5, 1.0, 0.5),
            (1.0, 1.0, 0.0), (1.0, 0.5, 0.0), (1.0, 0.0, 0.0), (0.5, 0.0, 0.0)],
    "viridis": [(0.267, 0.005, 0.329), (0.283, 0.141, 0.458), (0.254, 0.265, 0.530), (0.207, 0.372, 0.553),
                (0.164, 0.471, 0.558), (0.128, 0.567, 0.551), (0.135, 0.659, 0.518), (0.267, 0.749, 0.441),
                (0.478, 0.821, 0.318), (0.741, 0.873, 0.150), (0.993, 0.906, 0.144)],
    "inferno": [(0.001, 0.000, 0.014), (0.159, 0.044, 0.329), (0.416, 0.090, 0.433), (0.645, 0.198, 0.363),
                (0.865, 0.317, 0.226), (0.982, 0.557, 0.035), (0.988, 0.998, 0.645)],
    "magma": [(0.001, 0.000, 0.014), (0.176, 0.067, 0.373), (0.445, 0.122, 0.506), (0.716, 0.215, 0.475),
              (0.945, 0.376, 0.365), (0.994, 0.624, 0.427), (0.987, 0.991, 0.750)],
    "gray": [(0.0, 0.0, 0.0), (1.0, 1.0, 1.0)],
}


def _table(anchors: list[tuple[float, float, float]], n: int = 256) -> torch.Tensor:
    a = torch.tensor(anchors, dtype=torch.float32)  # (k, 3)
    x = torch.linspace(0, len(anchors) - 1, n)
    lo = x.floor().long().clamp(max=len(anchors) - 2)
    t = (x - lo.float())[:, None]
    return a[lo] * (1 - t) + a[lo + 1] * t


COLORMAPS: dict[str, torch.Tensor] = {name: _table(a) for name, a in _ANCHORS.items()}


def apply_colormap(values: torch.Tensor, name: str) -> torch.Tensor:
    """Map values in [0, 1] of shape (..., H, W) to RGB (..., H, W, 3) with a named colormap."""
    if name not in COLORMAPS:
        raise ValueError(f"unknown colormap {name!r}; choose one of {', '.join(sorted(COLORMAPS))}")
    lut = COLORMAPS[name].to(values.device)
    x = values.float().clamp(0, 1).nan_to_num(0.0) * (lut.shape[0] - 1)
    lo = x.floor().long().clamp(max=lut.shape[0] - 2)
    t = (x - lo.float())[..., None]
    return lut[lo] * (1 - t) + lut[lo + 1] * t


def overlay(image: torch.Tensor, heat: torch.Tensor, cmap: str, opacity: float) -> torch.Tensor:
    """Alpha-blend a coloured heat map over an image: (1 − opacity)·image + opacity·colormap(heat)."""
    return ((1 - opacity) * image.float() + opacity * apply_colormap(heat, cmap)).clamp(0, 1)


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one fixed-size default font
        return ImageFont.load_default()


def _drawable(text: str, font) -> str:
    """``text`` as the font can draw it: the bitmap default font (Pillow < 10.1, or Pillow without FreeType)
    knows Latin-1 only, so other characters are simplified (é → e) or shown as '?'."""
    from PIL import Image, ImageDraw

    try:
        ImageDraw.Draw(Image.new("RGB", (1, 1))).textbbox((0, 0), text, font=font)
        return text
    except (UnicodeError, ValueError, OSError):
        out = []
        for ch in text:
            if ord(ch) > 255:  # outside Latin-1: its base letter if it has one (ő → o), else '?'
                base = "".join(c for c in unicodedata.normalize("NFKD", ch) if not unicodedata.combining(c))
                ch = base if base and all(ord(c) < 256 for c in base) else "?"
            out.append(ch)
        return "".join(out)


def _wrap(text: str, width_of, width: float, max_lines: int = 3) -> list[str]:
    """Greedy word wrap of ``text`` into lines at most ``width`` wide (``width_of`` measures a line); at most
    ``max_lines`` lines, the last one holding the rest (cut by the image's edge)."""
    lines: list[str] = []
    for word in text.split(" "):
        if lines and width_of(f"{lines[-1]} {word}") <= width:
            lines[-1] = f"{lines[-1]} {word}"
        elif len(lines) < max_lines:
            lines.append(word)
        else:
            lines[-1] = f"{lines[-1]} {word}"
    return lines or [text]


def draw_caption(image: torch.Tensor, text: str, font=None) -> torch.Tensor:
    """Write ``text`` on a dark band at the top-left of an (H, W, 3) image; same size returned.

    Never fails on the text: characters the font cannot draw are replaced (see ``_drawable``).
    ``font``: a PIL font to use instead of the default one (tests use the bitmap font).
    """
    if not text:
        return image
    import numpy as np
    from PIL import Image, ImageDraw

    h, w = image.shape[0], image.shape[1]
    size = max(10, min(32, h // 16))
    font = font if font is not None else _font(size)
    text = _drawable(text, font)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    pad = max(2, size // 4)
    text = "\n".join(_wrap(text, lambda t: probe.textlength(t, font=font), w - 2 * pad))
    left, top, right, bottom = probe.multiline_textbbox((0, 0), text, font=font, spacing=2)
    bw, bh = min(w, right - left + 2 * pad), min(h, bottom - top + 2 * pad)
    # only the band is re-drawn (through 8-bit PIL); every other pixel keeps its exact value
    band = image[:bh, :bw].detach().float().clamp(0, 1).cpu()
    pil = Image.fromarray((band.numpy() * 255).round().astype(np.uint8)).convert("RGBA")
    shade = Image.new("RGBA", pil.size, (0, 0, 0, 160))
    draw = ImageDraw.Draw(shade)
    draw.multiline_text((pad - left, pad - top), text, font=font, fill=(255, 255, 255, 255), spacing=2)
    pil = Image.alpha_composite(pil, shade).convert("RGB")
    out = image.detach().float().clone()
    out[:bh, :bw] = torch.from_numpy(np.asarray(pil).astype(np.float32) / 255.0).to(out.device)
    return out


def make_grid(tiles: torch.Tensor, columns: int | None = None, pad: int = 2) -> torch.Tensor:
    """Lay out (N, H, W, 3) tiles in a near-square grid with dark-grey padding → (H2, W2, 3)."""
    n, h, w, c = tiles.shape
    cols = columns or max(1, math.ceil(math.sqrt(n)))
    cols = min(cols, n)
    rows = -(-n // cols)
    out = torch.full((rows * h + (rows + 1) * pad, cols * w + (cols + 1) * pad, c), 0.15, dtype=tiles.dtype)
    for i in range(n):
        r, k = divmod(i, cols)
        y, x = pad + r * (h + pad), pad + k * (w + pad)
        out[y:y + h, x:x + w] = tiles[i]
    return out


def normalize_maps(maps: torch.Tensor, mode: str) -> torch.Tensor:
    """Scale (N, H, W) maps to [0, 1].

    ``per word``: each map min–max over its own pixels; ``shared``: one min–max over all maps (so words
    compare); ``none``: divide by the global maximum. Constant maps give zeros, never NaN.
    """
    m = maps.float()
    if mode == "per word":
        lo = m.amin(dim=(-2, -1), keepdim=True)
        hi = m.amax(dim=(-2, -1), keepdim=True)
    elif mode == "shared":
        lo, hi = m.min(), m.max()
    elif mode == "none":
        lo, hi = torch.zeros(()), m.max().clamp(min=0)
    else:
        raise ValueError(f"unknown normalization {mode!r}; use 'per word', 'shared' or 'none'")
    span = hi - lo
    out = torch.where(span > 0, (m - lo) / torch.where(span > 0, span, torch.ones_like(span)), torch.zeros_like(m))
    return out.clamp(0, 1)


def resize_maps(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bicubic-resize (N, h, w) maps to (N, H, W), clamped ≥ 0."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps.float().clamp(min=0)
    up = F.interpolate(maps.float()[:, None], size=size, mode="bicubic", align_corners=False)[:, 0]
    return up.clamp(min=0)


def render_heatmaps(word_maps: torch.Tensor, image: torch.Tensor, names: list[str], colormap: str, opacity: float,
                    normalization: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The heat-map node's pictures from per-word maps.

    ``word_maps``: (B, W, h, w) latent-grid maps of W words; ``image``: (B, H, W', 3) in [0, 1] with H/h =
    W'/w. Returns (overlays (B·W, H, W', 3) captioned with the word, grids (B, …) of the image and its
    overlays, masks (B·W, H, W') in [0, 1]). ``normalization``: ``per word`` or ``shared`` (one scale per
    image for all its words).
    """
    b, n, lh, lw = word_maps.shape
    ih, iw = image.shape[1], image.shape[2]
    big = resize_maps(word_maps.reshape(b * n, lh, lw), (ih, iw))
    if normalization == "shared":
        norm = torch.cat([normalize_maps(big[i * n:(i + 1) * n], "shared") for i in range(b)])
    else:
        norm = normalize_maps(big, normalization)
    img = image.float().cpu()
    overlays, grids = [], []
    for i in range(b):
        tiles = [draw_caption(img[i], "image")]
        for j in range(n):
            o = draw_caption(overlay(img[i], norm[i * n + j], colormap, opacity), names[j])
            overlays.append(o)
            tiles.append(o)
        grids.append(make_grid(torch.stack(tiles)))
    return torch.stack(overlays), torch.stack(grids), norm.clamp(0, 1)


def decoded_to_latent_frames(decoded: int, latent: int) -> list[int]:
    """The latent frame of each decoded video frame: 1:1 when the counts agree; with a causal video VAE that
    decodes the first latent frame to one frame and each other to r frames (Wan: r = 4, decoded = 1 + 4·(latent −
    1)), frame i comes from latent ⌈i / r⌉; otherwise the nearest in time."""
    if decoded == latent or latent <= 1:
        return [min(i, latent - 1) for i in range(decoded)]
    if (decoded - 1) % (latent - 1) == 0:
        r = (decoded - 1) // (latent - 1)
        return [-(-i // r) for i in range(decoded)]
    return [round(i * (latent - 1) / max(1, decoded - 1)) for i in range(decoded)]


def video_word_maps(mean: torch.Tensor, frames: torch.Tensor, groups: list[tuple[int, ...]], n_images: int,
                    each_frame: bool) -> torch.Tensor:
    """Word maps for the decoded frames of B videos: (n_images, W, h, w), video-major.

    ``mean``: (B, W, H, W') the mean over frames; ``frames``: (B, F, T, h, w) per-frame token maps on the patch
    grid, upsampled to the latent grid as the mean was (bicubic by the patch size, cropped, clamped ≥ 0);
    ``n_images``: decoded frames of all videos (a multiple of B). ``each_frame`` False: the mean on every frame.
    """
    b = mean.shape[0]
    if n_images % b:
        raise ValueError(f"the IMAGE batch has {n_images} frames, not a multiple of the {b} captured video(s): connect "
                         "the frames decoded from the same sampler")
    per = n_images // b
    if not each_frame:
        return mean.repeat_interleave(per, 0)
    f, t = frames.shape[1], frames.shape[2]
    idx = torch.tensor(decoded_to_latent_frames(per, f), dtype=torch.long, device=frames.device)
    out = []
    for g in groups:
        pos = torch.tensor([p for p in g if p < t], dtype=torch.long, device=frames.device)
        out.append(frames.index_select(2, pos).mean(2))  # (B, F, h, w)
    words = torch.stack(out, 2).index_select(1, idx)  # (B, per, W, h, w)
    from .capture_store import upsample_to_latent
    from .layer_spec import level_of

    H, W = mean.shape[-2:]
    h = frames.shape[-2]
    grid = words.reshape(b * per, len(groups), h, frames.shape[-1])
    return upsample_to_latent(grid, level_of(h, H), (H, W))  # the patch grid placed on the latent grid, as the mean
