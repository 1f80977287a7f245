"""The picture pipeline on plain tensors: colormaps, normalisation, captions, grids, the whole heat-map render."""

from __future__ import annotations

import pytest
import torch
from attention_focus.nodes import render
from PIL import ImageFont


def test_colormap_ends_and_clamping():
    for name, lut in render.COLORMAPS.items():
        got = render.apply_colormap(torch.tensor([[0.0, 1.0, -3.0, 7.0, float("nan")]]), name)
        torch.testing.assert_close(got[0, 0], lut[0])
        torch.testing.assert_close(got[0, 1], lut[-1])
        torch.testing.assert_close(got[0, 2], lut[0])  # below 0 → the first colour
        torch.testing.assert_close(got[0, 3], lut[-1])
        torch.testing.assert_close(got[0, 4], lut[0])  # NaN → 0, never NaN out
    assert render.apply_colormap(torch.rand(2, 3, 4), "gray").shape == (2, 3, 4, 3)
    with pytest.raises(ValueError, match="unknown colormap 'rainbow'; choose one of"):
        render.apply_colormap(torch.zeros(1, 1), "rainbow")


def test_normalisation_modes_and_constant_maps():
    m = torch.stack([torch.full((2, 2), 3.0), torch.tensor([[0.0, 1.0], [2.0, 4.0]])])
    per = render.normalize_maps(m, "per word")
    assert torch.all(per[0] == 0)  # constant → zeros, never NaN
    torch.testing.assert_close(per[1], torch.tensor([[0.0, 0.25], [0.5, 1.0]]))
    shared = render.normalize_maps(m, "shared")
    torch.testing.assert_close(shared[0], torch.full((2, 2), 0.75))
    torch.testing.assert_close(render.normalize_maps(m, "none")[1], m[1] / 4)
    with pytest.raises(ValueError, match="unknown normalization"):
        render.normalize_maps(m, "log")


def test_grid_layout_and_padding():
    tiles = torch.rand(5, 4, 6, 3)
    grid = render.make_grid(tiles, pad=2)
    assert grid.shape == (2 * 4 + 3 * 2, 3 * 6 + 4 * 2, 3)  # 3 columns, 2 rows
    torch.testing.assert_close(grid[2:6, 2:8], tiles[0])
    torch.testing.assert_close(grid[8:12, 10:16], tiles[4])
    assert torch.all(grid[0] == 0.15)


@pytest.mark.parametrize("font", ["default", "bitmap"])
@pytest.mark.parametrize("text", ["cat", "猫 🐱", "café", "Ωμέγα ½"])
def test_caption_keeps_every_pixel_outside_its_band_and_never_fails(font, text):
    img = torch.rand(64, 96, 3)
    f = None
    if font == "bitmap":  # Pillow without FreeType, or < 10.1: Latin-1 only
        f = ImageFont.load_default_imagefont() if hasattr(ImageFont, "load_default_imagefont") else \
            ImageFont.load_default()
    out = render.draw_caption(img, text, font=f)
    assert out.shape == img.shape
    changed = (out != img).any(-1)
    rows, cols = torch.nonzero(changed, as_tuple=True)
    assert rows.max() < 20 and cols.max() < 96  # only the band at the top-left
    torch.testing.assert_close(out[20:], img[20:])


def test_drawable_simplifies_what_the_bitmap_font_cannot_draw():
    bitmap = ImageFont.load_default_imagefont() if hasattr(ImageFont, "load_default_imagefont") else None
    if bitmap is None:
        pytest.skip("this Pillow has no separate bitmap default font")
    assert render._drawable("café", bitmap) == "café"  # Latin-1
    assert render._drawable("Ωmega ñ 猫", bitmap) == "?mega ñ ?"


def test_render_heatmaps_matches_the_maths():
    g = torch.Generator().manual_seed(0)
    wm = torch.rand(2, 3, 4, 6, generator=g)
    image = torch.rand(2, 16, 24, 3, generator=g)
    overlays, grids, masks = render.render_heatmaps(wm, image, ["a", "b", "c"], "gray", 0.5, "per word")
    assert overlays.shape == (6, 16, 24, 3) and masks.shape == (6, 16, 24) and grids.shape[0] == 2
    expect = render.normalize_maps(render.resize_maps(wm.reshape(6, 4, 6), (16, 24)), "per word")
    torch.testing.assert_close(masks, expect)
    blend = 0.5 * image[1] + 0.5 * render.apply_colormap(expect[4], "gray")
    torch.testing.assert_close(overlays[4, 12:], blend[12:].clamp(0, 1))  # below the caption
    _, _, shared = render.render_heatmaps(wm, image, ["a", "b", "c"], "gray", 0.5, "shared")
    assert torch.isclose(shared[:3].max(), torch.tensor(1.0)) and torch.isclose(shared[3:].min(), torch.tensor(0.0))


def test_long_captions_wrap_instead_of_being_cut():
    """A caption wider than its tile wraps onto more lines (at most three), so the end of the text is drawn."""
    font = ImageFont.load_default()
    widths = []
    lines = render._wrap("reweighted: red wizard hat:2.0, cat:0.5", lambda t: 6 * len(t), 120)
    assert lines == ["reweighted: red", "wizard hat:2.0,", "cat:0.5"] and all(6 * len(x) <= 120 for x in lines)
    assert render._wrap("a b c d e f", lambda t: 6 * len(t), 6, max_lines=2) == ["a", "b c d e f"]
    img = torch.zeros(128, 128, 3)
    for text in ("short", "reweighted: red wizard hat:2.0, cat:0.5"):
        out = render.draw_caption(img, text, font=font)
        rows = (out != img).any(-1).any(-1).nonzero().flatten()
        widths.append(int(rows.max()) + 1)  # height of the caption band
    assert widths[1] >= 2 * widths[0] - 4  # two or more lines for the long one
