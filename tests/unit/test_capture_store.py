"""The capture store's running sums, regions, upsampling to the latent grid, a run's record and the handle."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from attention_focus.nodes.capture import CaptureRun, finalize
from attention_focus.nodes.capture_store import (
    AttentionMaps,
    CaptureSettings,
    CaptureStore,
    MapSet,
    PromptInfo,
    Region,
    aggregate_layers,
    merge_prompts,
    place_region,
    select_words,
    upsample_to_latent,
    word_maps,
)
from attention_focus.nodes.errors import AttentionFocusError
from attention_focus.nodes.layer_spec import LayerKey
from attention_focus.nodes.token_pieces import build_table
from attention_focus.nodes.token_table import positional_table

L0 = LayerKey("input", 1, 0, 0)
L1 = LayerKey("output", 6, 0, 1)
L2 = LayerKey("middle", 0, 0, 2)


def _probs(b, h, w, t, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(b, h * w, t, generator=g), -1)


def test_add_accumulates_sums_on_the_grid():
    st = CaptureStore()
    p1, p2 = _probs(2, 4, 3, 5, 1), _probs(2, 4, 3, 5, 2)
    st.add("u", L0, p1, (4, 3), evaluation=0)
    st.add("u", L0, p2, (4, 3), evaluation=1)
    s = st.sums[("u", None, L0)]
    assert s.shape == (2, 5, 4, 3)
    # token t at row y, column x is query y*w + x
    expected = (p1 + p2).transpose(1, 2).reshape(2, 5, 4, 3)
    torch.testing.assert_close(s, expected)
    assert s[1, 3, 2, 1] == pytest.approx(float(p1[1, 2 * 3 + 1, 3] + p2[1, 2 * 3 + 1, 3]), abs=1e-6)
    # the store owns its sum: changing the caller's tensor later does not change it
    p1.zero_()
    torch.testing.assert_close(st.sums[("u", None, L0)], expected)


def test_memory_does_not_grow_with_steps():
    st = CaptureStore()
    st.add("u", L0, _probs(1, 8, 8, 77), (8, 8), evaluation=0)
    st.add("u", L1, _probs(1, 4, 4, 77), (4, 4), evaluation=0)
    one = st.nbytes()
    assert one == 4 * 77 * (8 * 8 + 4 * 4)  # fp32 · tokens · Σ h·w
    for step in range(1, 10):
        st.add("u", L0, _probs(1, 8, 8, 77, step), (8, 8), evaluation=step)
        st.add("u", L1, _probs(1, 4, 4, 77, step), (4, 4), evaluation=step)
    assert st.nbytes() == one and st.peak_bytes == one
    assert len(st.sums) == 2
    assert st.steps("u") == 10
    assert st.layers("u") == sorted([L0, L1])


def test_add_rejects_a_wrong_grid():
    st = CaptureStore()
    with pytest.raises(ValueError, match=r"12 image tokens do not form the 4x4 grid of layer input\.1\.0"):
        st.add("u", L0, _probs(1, 4, 3, 5), (4, 4), evaluation=0)
    assert st.sums == {} and st.steps("u") == 0


def test_steps_count_distinct_evaluations_per_prompt():
    st = CaptureStore()
    for call in (0, 0, 1, 1, 2):  # several layers per evaluation count once
        st.add("a", L0, _probs(1, 2, 2, 3), (2, 2), evaluation=call)
    st.add("b", L0, _probs(1, 2, 2, 3), (2, 2), evaluation=7)
    assert st.steps("a") == 3 and st.steps("b") == 1 and st.steps("missing") == 0
    assert st.layers("missing") == []


def test_store_keeps_prompts_apart():
    st = CaptureStore()
    pa, pb = _probs(1, 2, 2, 3, 1), _probs(1, 2, 2, 3, 2)
    st.add("a", L0, pa, (2, 2), 0)
    st.add("b", L0, pb, (2, 2), 0)
    torch.testing.assert_close(st.aggregate("a", (2, 2)), pa.transpose(1, 2).reshape(1, 3, 2, 2))
    torch.testing.assert_close(st.aggregate("b", (2, 2)), pb.transpose(1, 2).reshape(1, 3, 2, 2))
    with pytest.raises(ValueError, match="nothing was captured"):
        st.aggregate("c", (2, 2))


def test_upsample_odd_latent_matches_interpolate_and_crop():
    g = torch.Generator().manual_seed(3)
    grid = torch.randn(2, 4, 7, 5, generator=g)  # level 1 of a 13x9 latent (13 → 7, 9 → 5)
    up = upsample_to_latent(grid, 1, (13, 9))
    ref = F.interpolate(grid, size=(14, 10), mode="bicubic", align_corners=False)[..., :13, :9].clamp(min=0)
    assert up.shape == (2, 4, 13, 9)
    torch.testing.assert_close(up, ref)
    # level 2 of 13x9: 4x3 → ×4 = 16x12 → crop
    grid2 = torch.rand(1, 3, 4, 3, generator=g)
    ref2 = F.interpolate(grid2, size=(16, 12), mode="bicubic", align_corners=False)[..., :13, :9].clamp(min=0)
    torch.testing.assert_close(upsample_to_latent(grid2, 2, (13, 9)), ref2)


def test_upsample_clamps_and_passes_the_latent_grid_through():
    g = torch.Generator().manual_seed(4)
    grid = torch.randn(1, 2, 13, 9, generator=g)
    out = upsample_to_latent(grid, 0, (13, 9))
    torch.testing.assert_close(out, grid.clamp(min=0))
    assert out.min() >= 0
    # bicubic overshoots around a spike; the result is still ≥ 0
    spike = torch.zeros(1, 1, 4, 4)
    spike[0, 0, 1, 1] = 1.0
    assert F.interpolate(spike, size=(16, 16), mode="bicubic", align_corners=False).min() < 0
    assert upsample_to_latent(spike, 2, (16, 16)).min() >= 0


def test_upsample_unknown_geometry_stretches():
    grid = torch.rand(1, 2, 5, 5)
    out = upsample_to_latent(grid, 1, (16, 16))  # 5·2 < 16: stretched to the latent instead
    ref = F.interpolate(grid, size=(16, 16), mode="bicubic", align_corners=False).clamp(min=0)
    torch.testing.assert_close(out, ref)


def test_aggregate_layers_is_the_mean_over_layers():
    g = torch.Generator().manual_seed(5)
    latent = (13, 9)
    parts = {L0: torch.rand(1, 3, 13, 9, generator=g), L1: torch.rand(1, 3, 7, 5, generator=g),
             L2: torch.rand(1, 3, 4, 3, generator=g)}
    out = aggregate_layers(parts, latent)
    ref = sum(upsample_to_latent(v, k.level, latent) for k, v in parts.items()) / 3
    torch.testing.assert_close(out, ref)
    assert out.shape == (1, 3, 13, 9)
    torch.testing.assert_close(aggregate_layers({L0: parts[L0]}, latent), parts[L0])


def test_word_maps_mean_of_token_maps():
    g = torch.Generator().manual_seed(6)
    maps = torch.rand(2, 10, 4, 3, generator=g)
    out = word_maps(maps, [(1,), (2, 3, 4), (9, 12)])  # positions past the captured tokens are ignored
    assert out.shape == (2, 3, 4, 3)
    torch.testing.assert_close(out[:, 0], maps[:, 1])
    torch.testing.assert_close(out[:, 1], (maps[:, 2] + maps[:, 3] + maps[:, 4]) / 3)
    torch.testing.assert_close(out[:, 2], maps[:, 9])
    with pytest.raises(ValueError, match=r"positions \(10, 11\) are outside the 10 captured tokens"):
        word_maps(maps, [(1,), (10, 11)])


def test_handle_before_any_run():
    am = AttentionMaps(CaptureSettings(), family="sd15")
    with pytest.raises(AttentionFocusError, match="no generation has run with this capture yet"):
        am.result()
    assert copy.deepcopy({"x": am})["x"] is am  # model clones share the handle


def test_settings_are_validated_once():
    with pytest.raises(AttentionFocusError, match="head_reduction must be mean or max"):
        CaptureSettings(head_reduction="median")
    with pytest.raises(AttentionFocusError, match="dit_softmax must be"):
        CaptureSettings(softmax="keys")
    with pytest.raises(AttentionFocusError, match="branch must be positive, negative or both"):
        CaptureSettings(branch="neutral")
    with pytest.raises(ValueError, match="start_percent"):
        CaptureSettings(start=0.8, end=0.2)
    assert CaptureSettings(branch="both").branches == {"positive", "negative"}
    assert CaptureSettings(softmax="text").meta("unet")["softmax"] == "cross"
    assert CaptureSettings(softmax="text").meta("dit")["softmax"] == "text"


def _run(prompts, latent, batch=1):
    return CaptureRun(prompts, latent, batch, sigma_hi=1e9, sigma_lo=0.0)


def test_finalize_happy_path():
    settings = CaptureSettings(head_reduction="max")
    am = AttentionMaps(settings, family="sd15")
    tokens = positional_table(6)
    prompts = {"neg": PromptInfo("negative", 0, 6, None),
               "pos0": PromptInfo("positive", 0, 6, tokens)}
    latent = (13, 9)
    cap = _run(prompts, latent)
    sums = {L0: 0, L1: 0}
    for step in range(3):
        for layer, hw in ((L0, (13, 9)), (L1, (7, 5))):
            p = _probs(1, *hw, 6, seed=10 * step + layer.level)
            sums[layer] = sums[layer] + p
            cap.store.add("pos0", layer, p, hw, evaluation=step + 1)
        cap.store.add("neg", L0, _probs(1, 13, 9, 6, 98), (13, 9), evaluation=step + 1)
    rec = finalize(cap, am, None)
    res = rec.result("positive")
    assert isinstance(res, MapSet) and res.tokens is tokens
    ref = (sums[L0].transpose(1, 2).reshape(1, 6, 13, 9).clamp(min=0)
           + upsample_to_latent(sums[L1].transpose(1, 2).reshape(1, 6, 7, 5), 1, latent)) / 2
    torch.testing.assert_close(res.maps, ref)
    assert res.maps.shape == (1, 6, 13, 9) and res.maps.min() >= 0
    meta = dict(res.meta)
    assert meta.pop("prompts") == [{"slot": 0, "positions": [0, 6], "areas": [], "masked": False, "token_note": ""}]
    assert meta == {
        "model_family": "sd15",
        "latent_size": [13, 9],
        "steps": 3,
        "evaluations": 3,
        "layers": ["input.1.0", "output.6.0"],
        "levels": [0, 1],
        "branch": "positive",
        "head_reduction": "max",
        "softmax": "cross",  # UNet cross-attention (DiT captures say "all" or "text")
        "capture_layers": "all",
        "window": [0.0, 1.0],
        "store_bytes": 4 * 6 * (13 * 9 + 7 * 5) + 4 * 6 * 13 * 9,
    }
    assert rec.result("negative").meta["branch"] == "negative"
    assert rec.batch == 1 and rec.latent_hw == latent and rec.content
    with pytest.raises(AttentionFocusError, match=r"no attention was captured for the other prompt \(captured: "
                                                  r"negative, positive\)"):
        rec.result("other")


def test_prompts_of_a_branch_are_laid_end_to_end():
    """ConditioningCombine gives a branch several prompts: their maps follow each other along the tokens,
    with one table (positional rows for a prompt without one)."""
    a = build_table([[(1, 1.0, 0), (10, 1.0, 1), (11, 1.0, 2), (2, 1.0, 0)]], {1: "<s>", 2: "</s>", 10: "a</w>",
                                                                                11: "cat</w>"}, special_ids=(1, 2))
    prompts = {"x": PromptInfo("positive", 0, 4, a), "y": PromptInfo("positive", 1, 3, None)}
    cap = _run(prompts, (2, 2))
    pa, pb = _probs(1, 2, 2, 4, 1), _probs(1, 2, 2, 3, 2)
    cap.store.add("x", L0, pa, (2, 2), 1)
    cap.store.add("y", L0, pb, (2, 2), 1)
    res = finalize(cap, AttentionMaps(), None).result("positive")
    assert res.maps.shape == (1, 7, 2, 2)
    torch.testing.assert_close(res.maps[:, :4], pa.transpose(1, 2).reshape(1, 4, 2, 2))
    torch.testing.assert_close(res.maps[:, 4:], pb.transpose(1, 2).reshape(1, 3, 2, 2))
    assert [r.piece for r in res.tokens.rows][4:] == ["#4", "#5", "#6"]
    assert [p["positions"] for p in res.meta["prompts"]] == [[0, 4], [4, 7]]
    names, wm = select_words(res, res.tokens, "cat, #5")
    assert names == ["cat", "#5"]
    torch.testing.assert_close(wm[:, 0], res.maps[:, 2])
    torch.testing.assert_close(wm[:, 1], res.maps[:, 5])
    table, meta = merge_prompts([PromptInfo("positive", 0, 2, None), PromptInfo("positive", 1, 2, None)])
    assert table is None and len(meta) == 2


def test_region_maps_are_placed_in_their_area_and_zero_elsewhere():
    """ConditioningSetArea: the prompt is evaluated on a crop; its maps land there, never stretched."""
    latent = (6, 8)
    right = Region(6, 4, 0, 4)
    st = CaptureStore()
    p = _probs(1, 6, 4, 3, 1)
    st.add("u", L0, p, (6, 4), 1, region=right)
    st.add("u", L1, _probs(1, 3, 2, 3, 2), (3, 2), 1, region=right)
    out = st.aggregate("u", latent)
    local = aggregate_layers({L0: st.sums[("u", right, L0)], L1: st.sums[("u", right, L1)]}, (6, 4))
    assert out.shape == (1, 3, 6, 8)
    assert torch.all(out[..., :4] == 0)
    torch.testing.assert_close(out[..., 4:], local)
    # a mask multiplies the placed maps
    mask = torch.linspace(0, 1, 48).reshape(1, 6, 8)
    masked = st.aggregate("u", latent, {right: mask})
    torch.testing.assert_close(masked, out * mask[:, None])


def test_a_prompt_on_several_regions_gets_the_mean_where_they_overlap():
    latent = (4, 4)
    full, left = None, Region(4, 2, 0, 0)
    st = CaptureStore()
    st.add("u", L0, _probs(1, 4, 4, 2, 1), (4, 4), 1, region=full)
    st.add("u", L0, _probs(1, 4, 2, 2, 2), (4, 2), 1, region=left)
    a = st.sums[("u", None, L0)]
    b = st.sums[("u", left, L0)]
    out = st.aggregate("u", latent)
    torch.testing.assert_close(out[..., 2:], a[..., 2:])
    torch.testing.assert_close(out[..., :2], (a[..., :2] + b) / 2)
    placed, cover = place_region(b, left, latent)
    assert cover.sum() == 8 and torch.all(placed[..., 2:] == 0)


def test_loaded_handle_returns_its_mapset():
    ms = MapSet(torch.zeros(1, 3, 4, 4), positional_table(3), {"branch": "positive"})
    am = AttentionMaps(mapset=ms)
    assert am.result() is ms and am.result("negative") is ms and am.loaded is ms


def test_merged_layers_share_one_accumulator_and_aggregate_as_their_mean():
    """DiT blocks share one patch grid: one running sum for all of them, aggregate = mean over layers."""
    d0, d1, s0 = (LayerKey("double", 0, 0, 1), LayerKey("double", 1, 0, 1), LayerKey("single", 0, 0, 1))
    merged, separate = CaptureStore(), CaptureStore()
    probs = {k: _probs(1, 5, 4, 6, seed=i) for i, k in enumerate((d0, d1, s0))}
    for step in range(3):
        for k, p in probs.items():
            merged.add("u", k, p, (5, 4), step, merge_as=LayerKey("dit", 0, 0, 1))
            separate.add("u", k, p, (5, 4), step)
    assert len(merged.sums) == 1 and merged.nbytes() == 4 * 6 * 5 * 4
    assert merged.layers("u") == sorted([d0, d1, s0]) and merged.steps("u") == 3
    total = sum(separate.sums[("u", None, k)] for k in probs)
    expected = F.interpolate(total, size=(10, 8), mode="bicubic", align_corners=False)[..., :9, :7].clamp(min=0) / 3
    torch.testing.assert_close(merged.aggregate("u", (9, 7)), expected, atol=1e-6, rtol=1e-5)
