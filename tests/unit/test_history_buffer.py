"""The history's plan (grid and stride from the budget), its fixed buffer, in-place frame merging, and the
timelapse values and captions."""

from __future__ import annotations

import pytest
import torch
from attention_focus.nodes.history import History, group_layers, grids, plan_history
from attention_focus.nodes.layer_spec import LayerKey
from attention_focus.nodes.timelapse import frame_values, history_word_maps, layer_values, step_caption

L = [LayerKey("input", 1, 0, 0), LayerKey("input", 4, 0, 1), LayerKey("input", 4, 1, 1),
     LayerKey("middle", 0, 0, 2), LayerKey("output", 5, 0, 1), LayerKey("output", 5, 1, 1)]


def test_group_names_follow_comfyui_blocks():
    names, of = group_layers(L, "layer")
    assert names == ["input 1", "input 4.0", "input 4.1", "middle 0", "output 5.0", "output 5.1"]
    names, of = group_layers(L, "block")
    assert names == ["input 1", "input 4", "middle 0", "output 5"] and of[L[2]] == 1
    names, _ = group_layers(L, "level")
    assert names == ["L0", "L1", "L2"]
    dit = [LayerKey("double", 3, 0, 1), LayerKey("single", 12, 0, 1)]
    assert group_layers(dit, "layer")[0] == ["double 3", "single 12"]
    assert group_layers(dit, "level")[0] == ["all"]


def test_plan_takes_the_finest_grid_that_fits_then_a_stride():
    assert grids((64, 48)) == [(64, 48), (32, 24), (16, 12), (8, 6)]
    per_cell = 4 * 6 * 1 * 10  # 6 groups, batch 1, 10 tokens
    plan, _ = plan_history(per_cell * 64 * 48 * 20, 20, (64, 48), L, "layer", 1, {"positive": 10})
    assert plan.grid == (64, 48) and plan.frames == 20 and plan.stride == 1
    plan, _ = plan_history(per_cell * 64 * 48 * 20 - 1, 20, (64, 48), L, "layer", 1, {"positive": 10})
    assert plan.grid == (32, 24) and plan.frames == 20
    plan, _ = plan_history(per_cell * 8 * 6 * 7, 20, (64, 48), L, "layer", 1, {"positive": 10})
    assert plan.grid == (8, 6) and plan.stride == 3 and plan.frames == 7 and plan.nbytes() <= plan.budget
    plan, why = plan_history(per_cell * 8 * 6 - 1, 20, (64, 48), L, "layer", 1, {"positive": 10})
    assert plan is None and "below one frame" in why
    # a requested stride is kept
    plan, _ = plan_history(10**9, 20, (64, 48), L, "layer", 1, {"positive": 10}, stride=4)
    assert plan.stride == 4 and plan.frames == 5


def _history(frames: int, stride: int = 1) -> History:
    plan, _ = plan_history(10**9, frames * stride, (2, 2), L[:1], "layer", 1, {"positive": 3}, stride=stride)
    return History(plan, {"u": ("positive", 0, torch.tensor([0, 2, 4]))})


def test_buffer_is_fixed_and_merges_frames_in_place_keeping_sums():
    h = _history(4)
    total = torch.zeros(1, 3, 2, 2)
    for e in range(11):  # 11 evaluations into 4 frames: stride 1 → 2 → 4
        p = torch.rand(1, 4, 5)
        h.add("u", L[0], p, (2, 2), evaluation=100 + e, sigma=10.0 - e)
        total += p[:, :, [0, 2, 4]].transpose(1, 2).reshape(1, 3, 2, 2)
        assert h.nbytes() == 4 * 4 * 1 * 1 * 3 * 2 * 2
    assert h.stride == 4 and h.peak_bytes == h.nbytes()
    res = h.result("positive")
    assert res.shape == (3, 1, 1, 3, 2, 2)  # ⌈11/4⌉ frames used
    torch.testing.assert_close(res.sum((0, 1)), total)
    assert h.frame_labels() == [(0, 3, 10.0, 7.0), (4, 7, 6.0, 3.0), (8, 10, 2.0, 0.0)]
    # a second call of the same evaluation (another layer) goes to the same frame
    h.add("u", L[0], torch.ones(1, 4, 5), (2, 2), evaluation=110, sigma=0.0)
    assert len(h.sigmas) == 11


def test_timelapse_values_and_captions():
    hist = torch.ones(2, 3, 1, 4, 2, 2)  # 2 frames, 3 groups, 4 kept tokens
    hist[1] *= 3
    wm = history_word_maps(hist, [1, 2, 5, 6], [(2, 5), (6,)])
    assert wm.shape == (2, 3, 1, 2, 2, 2)
    labels = [[0, 0, 14.6, 14.6], [1, 2, 7.0, 3.2]]  # frame 2 holds two evaluations
    v = frame_values(wm, labels, layers=3, cumulative=False)
    assert v[0].unique().tolist() == [1.0] and v[1].unique().tolist() == [1.5]
    c = frame_values(wm, labels, layers=3, cumulative=True)
    assert c[1].unique().tolist() == [pytest.approx(4 / 3)]  # (3 + 9) / (3 layers · 3 evaluations)
    assert layer_values(wm, [1, 1, 1], 3).unique().tolist() == [pytest.approx(4 / 3)]
    with pytest.raises(ValueError, match="not in the history"):
        history_word_maps(hist, [1, 2, 5, 6], [(0,)])
    schedule = [14.6, 7.0, 3.2, 0.0]
    assert step_caption(labels[0], schedule) == "step 1/3, sigma 14.6"
    assert step_caption(labels[1], schedule) == "steps 2-3/3, sigma 7-3.2"
