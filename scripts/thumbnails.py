"""Template thumbnails: a drawing of an example workflow's graph (nodes, links, titles) as a small JPEG.

ComfyUI's template browser shows ``example_workflows/<name>.jpg`` as the picture of ``<name>.json``.
Used by make_example_workflows.py; needs Pillow (and torch, for the pack's own colour map).
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

REPO = Path(__file__).resolve().parents[1]
SIZE = (512, 384)
PACK = ("#2a3b4d", "#1f2c3a")
STOCK = ("#353535", "#2a2a2a")
LINK = {"MODEL": "#b39ddb", "CLIP": "#ffd166", "VAE": "#ff6e6e", "CONDITIONING": "#ffa931", "LATENT": "#ff9cf9",
        "IMAGE": "#64b5f6", "MASK": "#81c784", "ATTENTION_MAPS": "#e8a33d"}


def _turbo():
    """The pack's turbo colour map (nodes/render.py), 256 RGB rows."""
    spec = importlib.util.spec_from_file_location("af_render", REPO / "nodes" / "render.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return (mod.COLORMAPS["turbo"] * 255).round().int().tolist()


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:
        return ImageFont.load_default()


def _heat(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], lut) -> None:
    """An illustrative heat map (two soft blobs) filling ``box``."""
    x0, y0, x1, y1 = box
    w, h = max(1, x1 - x0), max(1, y1 - y0)
    for y in range(h):
        for x in range(w):
            u, v = x / w, y / h
            val = 0.9 * math.exp(-((u - 0.38) ** 2 + (v - 0.42) ** 2) / 0.03) + 0.55 * math.exp(
                -((u - 0.72) ** 2 + (v - 0.7) ** 2) / 0.02)
            draw.point((x0 + x, y0 + y), fill=tuple(lut[min(255, int(val * 255))]))


def draw_thumbnail(nodes: list[dict], links: list[list], title: str, path: Path) -> int:
    """Draw the graph scaled into SIZE with ``title`` on top; returns the file size in bytes."""
    img = Image.new("RGB", SIZE, "#1b1b1b")
    d = ImageDraw.Draw(img)
    for gx in range(0, SIZE[0], 16):
        for gy in range(0, SIZE[1], 16):
            d.point((gx, gy), fill="#262626")
    x0 = min(n["pos"][0] for n in nodes)
    y0 = min(n["pos"][1] for n in nodes) - 30
    x1 = max(n["pos"][0] + n["size"][0] for n in nodes)
    y1 = max(n["pos"][1] + n["size"][1] for n in nodes)
    top = 44
    s = min((SIZE[0] - 16) / (x1 - x0), (SIZE[1] - top - 8) / (y1 - y0))
    ox = (SIZE[0] - (x1 - x0) * s) / 2
    oy = top + (SIZE[1] - top - (y1 - y0) * s) / 2

    def at(x: float, y: float) -> tuple[float, float]:
        return ox + (x - x0) * s, oy + (y - y0) * s

    by_id = {n["id"]: n for n in nodes}
    for _, src, slot, dst, dslot, kind in links:
        a, b = by_id[src], by_id[dst]
        p0 = at(a["pos"][0] + a["size"][0], a["pos"][1] + 14 + 22 * slot)
        p3 = at(b["pos"][0], b["pos"][1] + 14 + 22 * dslot)
        c = max(20.0, abs(p3[0] - p0[0]) / 2)
        pts = []
        for k in range(21):
            t = k / 20
            x = (1 - t) ** 3 * p0[0] + 3 * (1 - t) ** 2 * t * (p0[0] + c) + 3 * (1 - t) * t * t * (p3[0] - c) \
                + t ** 3 * p3[0]
            y = (1 - t) ** 3 * p0[1] + 3 * (1 - t) ** 2 * t * p0[1] + 3 * (1 - t) * t * t * p3[1] + t ** 3 * p3[1]
            pts.append((x, y))
        d.line(pts, fill=LINK.get(kind, "#999"), width=2)
    font = _font(max(9, int(11 * min(1.0, s * 2.2))))
    lut = _turbo()
    for n in nodes:
        bx, by = at(*n["pos"])
        ex, ey = at(n["pos"][0] + n["size"][0], n["pos"][1] + n["size"][1])
        tb = at(n["pos"][0], n["pos"][1] - 30)[1]
        head, body = PACK if n["type"].startswith("AttentionFocus") else STOCK
        if n["type"] == "MarkdownNote":
            head, body = "#4a4a2a", "#3a3a22"
        d.rounded_rectangle((bx, tb, ex, ey), radius=4, fill=body, outline="#111")
        d.rounded_rectangle((bx, tb, ex, by), radius=4, fill=head)
        label = n.get("title") or n["type"].replace("AttentionFocus", "AF ")
        while len(label) > 3 and d.textlength(label, font=font) > ex - bx - 8:
            label = label[:-2] + "…" if not label.endswith("…") else label[:-2] + "…"
        d.text((bx + 4, tb + 1), label, fill="#eee", font=font)
        if n["type"] in ("AttentionFocusHeatmap", "AttentionFocusCompare"):
            _heat(d, (int(bx + 6), int(by + (ey - by) * 0.35), int(ex - 6), int(ey - 6)), lut)
    d.rectangle((0, 0, SIZE[0], top - 8), fill="#101820")
    d.text((10, 8), f"Attention Focus · {title}", fill="#e8a33d", font=_font(20))
    img.save(path, quality=85, optimize=True)
    return path.stat().st_size
