"""Masks, label maps and comparisons from per-word maps (pure tensor code + Pillow for the legend).

- ``threshold_masks``: binary masks from [0, 1] maps, at a fixed threshold (value ≥ t) or at each map's Otsu
  threshold (256 bins over [0, 1]; the split that maximises the between-class variance, first one on ties).
- ``label_map``: per pixel the word with the largest map, 0 (background) where that largest value is below the
  background threshold — DAAM's and ConceptAttention's segmentation by arg-max over words. With ``per word``
  normalisation each map is stretched to [0, 1] first (DAAM-style), with ``shared`` one scale is kept for all
  words, so the arg-max is that of the raw attention (ConceptAttention-style).
- ``difference``: two sets of word maps on one shared, symmetric scale ±s, s = the largest |A − B| over all words
  and images.
"""

from __future__ import annotations

import torch

from .render import _font, draw_caption, make_grid, normalize_maps, resize_maps

# label colours (background first): Tableau 10, then more
PALETTE = torch.tensor([
    (0.0, 0.0, 0.0), (0.122, 0.467, 0.706), (1.0, 0.498, 0.055), (0.173, 0.627, 0.173), (0.839, 0.153, 0.157),
    (0.580, 0.404, 0.741), (0.549, 0.337, 0.294), (0.890, 0.467, 0.761), (0.498, 0.498, 0.498),
    (0.737, 0.741, 0.133), (0.090, 0.745, 0.812), (0.682, 0.780, 0.910), (1.0, 0.733, 0.471),
    (0.596, 0.875, 0.541), (1.0, 0.596, 0.588), (0.773, 0.690, 0.835),
])
MASK_MODES = ("soft", "threshold", "otsu")


def otsu_thresholds(maps: torch.Tensor, bins: int = 256) -> torch.Tensor:
    """Otsu's threshold of each (…, H, W) map with values in [0, 1]: a pixel is foreground when value ≥ t."""
    flat = maps.reshape(-1, maps.shape[-2] * maps.shape[-1]).float().clamp(0, 1)
    idx = (flat * bins).long().clamp(max=bins - 1)
    hist = torch.zeros(flat.shape[0], bins, dtype=torch.float64, device=flat.device)
    hist.scatter_add_(1, idx, torch.ones_like(flat, dtype=torch.float64))
    p = hist / hist.sum(1, keepdim=True)
    levels = torch.arange(bins, dtype=torch.float64, device=flat.device)
    w0 = p.cumsum(1)
    mu = (p * levels).cumsum(1)
    mu_t = mu[:, -1:]
    denom = w0 * (1 - w0)
    between = torch.where(denom > 1e-12, (mu_t * w0 - mu) ** 2 / denom.clamp(min=1e-12), torch.zeros_like(denom))
    k = between.argmax(1)
    return ((k + 1).float() / bins).reshape(maps.shape[:-2])


def threshold_masks(maps: torch.Tensor, mode: str, threshold: float = 0.5) -> torch.Tensor:
    """(…, H, W) maps in [0, 1] → masks: ``soft`` unchanged, ``threshold`` (value ≥ t), ``otsu`` (per map)."""
    if mode == "soft":
        return maps
    if mode == "threshold":
        return (maps >= threshold).to(maps.dtype)
    if mode == "otsu":
        t = otsu_thresholds(maps).to(maps.device)
        return (maps >= t[..., None, None]).to(maps.dtype)
    raise ValueError(f"mask mode must be one of {', '.join(MASK_MODES)}, not {mode!r}")


def label_map(maps: torch.Tensor, background: float, normalization: str = "per word") -> torch.Tensor:
    """(B, W, H, W') word maps → (B, H, W') labels: 1 + the arg-max word, 0 where its value < ``background``.

    The maps are first normalised to [0, 1]: ``per word`` (each its own min–max) or ``shared`` (one scale per image).
    """
    b, n, h, w = maps.shape
    if normalization == "per word":
        norm = normalize_maps(maps.reshape(b * n, h, w), "per word").reshape(b, n, h, w)
    else:
        norm = torch.stack([normalize_maps(maps[i], "shared") for i in range(b)])
    best, arg = norm.max(1)
    return torch.where(best >= background, arg + 1, torch.zeros_like(arg))


def colour(i: int) -> torch.Tensor:
    if i < len(PALETTE):
        return PALETTE[i]
    g = torch.Generator().manual_seed(i)
    return torch.rand(3, generator=g) * 0.8 + 0.2


def render_labels(labels: torch.Tensor, image: torch.Tensor, names: list[str], opacity: float) -> torch.Tensor:
    """The image with each label's colour blended in (background left as is) and a legend band below:
    (B, H + legend, W, 3)."""
    b, ih, iw = image.shape[0], image.shape[1], image.shape[2]
    big = torch.nn.functional.interpolate(labels[:, None].float(), size=(ih, iw), mode="nearest")[:, 0].long()
    lut = torch.stack([colour(i) for i in range(len(names) + 1)])
    col = lut[big.cpu()]
    img = image.float().cpu()
    fg = (big.cpu() > 0)[..., None]
    out = torch.where(fg, (1 - opacity) * img + opacity * col, img)
    legend = _legend(names, iw)
    return torch.cat([out, legend[None].expand(b, -1, -1, -1)], 1).clamp(0, 1)


def _legend(names: list[str], width: int) -> torch.Tensor:
    """A dark band with one colour swatch and name per label (wrapping to more rows when needed)."""
    import numpy as np
    from PIL import Image, ImageDraw

    size = max(10, min(20, width // 24))
    font = _font(size)
    pad, sw = max(2, size // 3), size
    entries = [("background", 0)] + [(n, i + 1) for i, n in enumerate(names)]
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    rows, x, row = [[]], pad, 0
    for text, i in entries:
        tw = probe.textbbox((0, 0), text, font=font)[2] + sw + 3 * pad
        if x + tw > width and rows[row]:
            rows.append([])
            row, x = row + 1, pad
        rows[row].append((text, i, x))
        x += tw
    line = size + 2 * pad
    pil = Image.new("RGB", (width, line * len(rows)), (24, 24, 24))
    draw = ImageDraw.Draw(pil)
    for r, items in enumerate(rows):
        for text, i, x0 in items:
            c = tuple(int(v * 255) for v in colour(i))
            y0 = r * line + pad
            draw.rectangle([x0, y0, x0 + sw, y0 + sw], fill=c, outline=(200, 200, 200))
            draw.text((x0 + sw + pad, y0), text, font=font, fill=(255, 255, 255))
    return torch.from_numpy(np.asarray(pil).astype(np.float32) / 255.0)


def diverging(values: torch.Tensor) -> torch.Tensor:
    """Values in [-1, 1] → RGB (…, 3): blue (−1), white (0), red (+1)."""
    v = values.float().clamp(-1, 1)[..., None]
    blue, white, red = (torch.tensor(c) for c in ((0.23, 0.30, 0.75), (0.97, 0.97, 0.97), (0.71, 0.02, 0.15)))
    return torch.where(v < 0, white + (blue - white) * (-v), white + (red - white) * v)


def difference(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, float]:
    """(B, W, h, w) maps A and B (B resized to A's grid if needed) → (A − B, shared scale s = max |A − B|)."""
    if b.shape[-2:] != a.shape[-2:]:
        n = b.shape[0] * b.shape[1]
        b = resize_maps(b.reshape(n, *b.shape[-2:]), tuple(a.shape[-2:])).reshape(*b.shape[:2], *a.shape[-2:])
    d = a.float() - b.float().to(a.device)
    return d, float(d.abs().max()) if d.numel() else 0.0


def render_differences(d: torch.Tensor, scale: float, image_a: torch.Tensor, image_b: torch.Tensor,
                       names: list[str], opacity: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Difference tiles (B·W, H, W, 3) on image A captioned '<word>: A − B (±s)', and per image a grid
    [A | B | each word's difference]."""
    bsz, n = d.shape[:2]
    ih, iw = image_a.shape[1], image_a.shape[2]
    big = torch.nn.functional.interpolate(d.reshape(bsz * n, 1, *d.shape[-2:]).float().cpu(), size=(ih, iw),
                                          mode="bicubic", align_corners=False)[:, 0]
    val = big / (scale if scale > 0 else 1.0)
    a, b = image_a.float().cpu(), image_b.float().cpu()
    if b.shape[1:3] != a.shape[1:3]:
        b = torch.nn.functional.interpolate(b.permute(0, 3, 1, 2), size=(ih, iw), mode="bilinear",
                                            align_corners=False).permute(0, 2, 3, 1)
    tiles, grids = [], []
    for i in range(bsz):
        row = [draw_caption(a[i], "A"), draw_caption(b[min(i, b.shape[0] - 1)], "B")]
        for j in range(n):
            t = ((1 - opacity) * a[i] + opacity * diverging(val[i * n + j])).clamp(0, 1)
            t = draw_caption(t, f"{names[j]}: A - B (±{scale:.3g})")
            tiles.append(t)
            row.append(t)
        grids.append(make_grid(torch.stack(row)))
    return torch.stack(tiles), torch.stack(grids)
