"""Masks, label maps and differences against hand-computed expectations."""

from __future__ import annotations

import pytest
import torch
from attention_focus.nodes.segmentation import (difference, label_map, otsu_thresholds, render_differences,
                                                render_labels, threshold_masks)


def test_fixed_threshold_is_value_at_least_t():
    m = torch.tensor([[[0.0, 0.49], [0.5, 1.0]]])
    assert threshold_masks(m, "threshold", 0.5).tolist() == [[[0.0, 0.0], [1.0, 1.0]]]
    assert threshold_masks(m, "soft", 0.5) is m
    with pytest.raises(ValueError, match="mask mode"):
        threshold_masks(m, "median")


def test_otsu_splits_two_clusters_between_them():
    # 6 pixels at 0.1, 4 at 0.9: every split between the clusters has the same between-class variance;
    # the first one (just above bin ⌊0.1·256⌋ = 25) is taken: t = 26/256
    m = torch.tensor([0.1] * 6 + [0.9] * 4).reshape(1, 2, 5)
    t = otsu_thresholds(m)
    assert float(t) == pytest.approx(26 / 256)
    assert threshold_masks(m, "otsu").reshape(-1).tolist() == [0.0] * 6 + [1.0] * 4
    # three levels 0, 0.5, 1 (bins 0, 128, 255) with weights 1/2, 1/4, 1/4: by hand, the split after bin 0 has
    # σ_b² = ¼·191.5² ≈ 9168 > the split after bin 128's 3/16·212.3² ≈ 8453, so t is just above bin 0
    m3 = torch.tensor([0.0, 0.0, 0.5, 1.0]).reshape(1, 2, 2)
    w0, mu0, mu1 = 0.5, 0.0, (128 + 255) / 2
    best = w0 * (1 - w0) * (mu1 - mu0) ** 2
    w0b, mu0b, mu1b = 0.75, 128 / 3, 255.0
    assert best > w0b * (1 - w0b) * (mu1b - mu0b) ** 2
    assert float(otsu_thresholds(m3)) == pytest.approx(1 / 256)
    # a batch of maps: one threshold each
    assert otsu_thresholds(torch.stack([m[0], m[0] * 0.5])).shape == (2,)


def test_label_map_argmax_with_background():
    a = torch.tensor([[0.0, 1.0, 0.2], [0.0, 0.0, 0.1]])
    b = torch.tensor([[1.0, 0.0, 0.1], [0.0, 0.5, 0.0]])
    maps = torch.stack([a, b])[None]  # (1, 2, 2, 3)
    # per word: a is already 0..1; b too. pixel (0,2): a 0.2 vs b 0.1 → a, but 0.2 < 0.3 → background
    lab = label_map(maps, 0.3, "per word")
    assert lab.tolist() == [[[2, 1, 0], [0, 2, 0]]]
    # shared scale: same here (both maxima are 1); background 0 keeps every pixel, ties go to the first word
    assert label_map(maps, 0.0, "shared").tolist() == [[[2, 1, 1], [1, 2, 1]]]
    # per word vs shared differ when one word is weaker everywhere
    weak = torch.stack([a, b * 0.1])[None]
    assert label_map(weak, 0.3, "per word")[0, 1, 1] == 2
    assert label_map(weak, 0.3, "shared")[0, 1, 1] == 0


def test_label_picture_colours_regions_and_adds_a_legend():
    lab = torch.tensor([[[0, 1], [2, 0]]])
    img = torch.full((1, 4, 4, 3), 0.5)
    pic = render_labels(lab, img, ["cat", "hat"], opacity=1.0)
    assert pic.shape[0] == 1 and pic.shape[1] > 4 and pic.shape[2] == 4
    assert torch.equal(pic[0, 0, 0], img[0, 0, 0])  # background untouched
    assert not torch.equal(pic[0, 0, 3], pic[0, 3, 0])  # two labels, two colours


def test_difference_on_one_shared_scale():
    a = torch.zeros(1, 2, 2, 2)
    b = torch.zeros(1, 2, 2, 2)
    a[0, 0, 0, 0] = 0.3
    b[0, 1, 1, 1] = 0.6
    d, s = difference(a, b)
    assert s == pytest.approx(0.6)
    assert d[0, 0, 0, 0] == pytest.approx(0.3) and d[0, 1, 1, 1] == pytest.approx(-0.6)
    # B on another grid is resized to A's
    d2, _ = difference(torch.zeros(1, 1, 4, 4), torch.ones(1, 1, 2, 2))
    assert d2.shape == (1, 1, 4, 4) and torch.allclose(d2, -torch.ones_like(d2))
    tiles, grid = render_differences(d, s, torch.zeros(1, 64, 64, 3), torch.ones(1, 64, 64, 3), ["cat", "hat"], 1.0)
    assert tiles.shape == (2, 64, 64, 3) and grid.shape[0] == 1
    # red where A > B (word 0, top-left quarter, below the caption band), blue where B > A (word 1, bottom-right),
    # white where they are equal
    assert tiles[0, 24, 4, 0] > tiles[0, 24, 4, 2]
    assert tiles[1, 60, 60, 2] > tiles[1, 60, 60, 0]
    assert torch.allclose(tiles[0, 60, 60], torch.tensor([0.97, 0.97, 0.97]), atol=0.02)
