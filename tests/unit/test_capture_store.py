"""The capture store's running sums, upsampling to the latent grid and the ATTENTION_MAPS handle."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from attention_focus.nodes.capture_store import (
    AttentionMaps,
    CaptureStore,
    MapSet,
    PromptInfo,
    aggregate_layers,
    upsample_to_latent,
    word_maps,
)
from attention_focus.nodes.layer_spec import LayerKey
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
    st.add("u", L0, p1, (4, 3), call_id=0)
    st.add("u", L0, p2, (4, 3), call_id=1)
    s = st.sums[("u", L0)]
    assert s.shape == (2, 5, 4, 3)
    # token t at row y, column x is query y*w + x
    expected = (p1 + p2).transpose(1, 2).reshape(2, 5, 4, 3)
    torch.testing.assert_close(s, expected)
    assert s[1, 3, 2, 1] == pytest.approx(float(p1[1, 2 * 3 + 1, 3] + p2[1, 2 * 3 + 1, 3]), abs=1e-6)
    # the store owns its sum: changing the caller's tensor later does not change it
    p1.zero_()
    torch.testing.assert_close(st.sums[("u", L0)], expected)


def test_memory_does_not_grow_with_steps():
    st = CaptureStore()
    st.add("u", L0, _probs(1, 8, 8, 77), (8, 8), call_id=0)
    st.add("u", L1, _probs(1, 4, 4, 77), (4, 4), call_id=0)
    one = st.nbytes()
    assert one == 4 * 77 * (8 * 8 + 4 * 4)  # fp32 · tokens · Σ h·w
    for step in range(1, 10):
        st.add("u", L0, _probs(1, 8, 8, 77, step), (8, 8), call_id=step)
        st.add("u", L1, _probs(1, 4, 4, 77, step), (4, 4), call_id=step)
    assert st.nbytes() == one and st.peak_bytes == one
    assert len(st.sums) == 2
    assert st.steps("u") == 10
    assert st.layers("u") == sorted([L0, L1])


def test_add_rejects_a_wrong_grid():
    st = CaptureStore()
    with pytest.raises(ValueError, match=r"12 image tokens do not form the 4x4 grid of layer input\.1\.0"):
        st.add("u", L0, _probs(1, 4, 3, 5), (4, 4), call_id=0)
    assert st.sums == {} and st.steps("u") == 0


def test_steps_count_distinct_calls_per_prompt():
    st = CaptureStore()
    for call in (0, 0, 1, 1, 2):  # several layers per call (same call id) count once
        st.add("a", L0, _probs(1, 2, 2, 3), (2, 2), call_id=call)
    st.add("b", L0, _probs(1, 2, 2, 3), (2, 2), call_id=7)
    assert st.steps("a") == 3 and st.steps("b") == 1 and st.steps("missing") == 0
    assert st.layers("missing") == []
    st.clear()
    assert st.sums == {} and st.steps("a") == 0 and st.nbytes() == 0 and st.peak_bytes == 0


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


def test_result_before_any_run():
    am = AttentionMaps({"family": "sd15"})
    with pytest.raises(ValueError, match="no generation has run with this capture yet"):
        am.result()


def test_result_for_a_branch_with_nothing_captured():
    am = AttentionMaps()
    am.start_run({"u1": PromptInfo("positive", 0, 4, None), "u2": PromptInfo("negative", 0, 4, None)},
                 (2, 2), 1)
    with pytest.raises(ValueError, match=r"no attention was captured for the negative prompt \(captured: "
                                         r"nothing\)"):
        am.result("negative")
    am.store.add("u1", L0, _probs(1, 2, 2, 4), (2, 2), 0)
    with pytest.raises(ValueError, match=r"negative prompt \(captured: positive\)\. Check the capture node"):
        am.result("negative")
    assert am.result("positive").maps.shape == (1, 4, 2, 2)


def test_result_happy_path():
    settings = {"family": "sd15", "head_reduction": "max"}
    am = AttentionMaps(settings)
    tokens = positional_table(6)
    prompts = {"neg": PromptInfo("negative", 0, 6, None),
               "pos1": PromptInfo("positive", 1, 6, None),
               "pos0": PromptInfo("positive", 0, 6, tokens)}
    latent = (13, 9)
    am.start_run(prompts, latent, 1)
    sums = {L0: 0, L1: 0}
    for step in range(3):
        for layer, hw in ((L0, (13, 9)), (L1, (7, 5))):
            p = _probs(1, *hw, 6, seed=10 * step + layer.level)
            sums[layer] = sums[layer] + p
            am.store.add("pos0", layer, p, hw, call_id=step)
        am.store.add("pos1", L0, _probs(1, 13, 9, 6, 99), (13, 9), call_id=step)
        am.store.add("neg", L0, _probs(1, 13, 9, 6, 98), (13, 9), call_id=step)
    res = am.result()
    assert isinstance(res, MapSet)
    assert res.tokens is tokens  # the lowest slot of the branch
    ref = (sums[L0].transpose(1, 2).reshape(1, 6, 13, 9).clamp(min=0)
           + upsample_to_latent(sums[L1].transpose(1, 2).reshape(1, 6, 7, 5), 1, latent)) / 2
    torch.testing.assert_close(res.maps, ref)
    assert res.maps.shape == (1, 6, 13, 9) and res.maps.min() >= 0
    assert res.meta == {
        "model_family": "sd15",
        "latent_size": [13, 9],
        "steps": 3,
        "layers": ["input.1.0", "output.6.0"],
        "levels": [0, 1],
        "branch": "positive",
        "head_reduction": "max",
        "softmax": "cross",  # UNet cross-attention (DiT captures say "all" or "text")
        "store_bytes": 4 * 6 * (13 * 9 + 7 * 5) + 2 * 4 * 6 * 13 * 9,
    }
    assert am.result("negative").meta["branch"] == "negative"
    assert am.result("negative").meta["head_reduction"] == "max"
    assert am.uid_for("positive") == "pos0" and am.uid_for("other") is None
    assert am.runs == 1 and am.batch == 1 and am.latent_hw == latent
    # a new run starts from an empty store
    am.start_run(prompts, latent, 2)
    assert am.runs == 2 and am.store.sums == {}
    with pytest.raises(ValueError, match="no attention was captured for the positive prompt"):
        am.result()


def test_default_head_reduction_and_shared_on_deepcopy():
    am = AttentionMaps()
    am.start_run({"u": PromptInfo("positive", 0, 3, None)}, (2, 2), 1)
    am.store.add("u", L0, _probs(1, 2, 2, 3), (2, 2), 0)
    assert am.result().meta["head_reduction"] == "mean" and am.result().meta["model_family"] == ""
    assert copy.deepcopy({"x": am})["x"] is am


def test_loaded_handle_returns_its_mapset():
    ms = MapSet(torch.zeros(1, 3, 4, 4), positional_table(3), {"branch": "positive"})
    am = AttentionMaps(mapset=ms)
    assert am.result() is ms and am.result("negative") is ms


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
    total = sum(separate.sums[("u", k)] for k in probs)
    expected = F.interpolate(total, size=(10, 8), mode="bicubic", align_corners=False)[..., :9, :7].clamp(min=0) / 3
    torch.testing.assert_close(merged.aggregate("u", (9, 7)), expected, atol=1e-6, rtol=1e-5)
