"""The capture's history (maps per step and per layer group) on real ComfyUI models: its sum over frames equals
the running-sum maps, its memory stays within the budget at 1 and at many steps (and when a sampler makes more
evaluations than planned), frames carry their sigmas, and the generated latent is unchanged."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F


@pytest.fixture(scope="module")
def env(comfy):
    from harness import fixtures
    from harness import pack as cp

    return fixtures, cp


def _pool(grid, size):
    """A layer grid on the history grid: area mean when shrinking, bilinear when growing (both linear)."""
    if tuple(grid.shape[-2:]) == tuple(size):
        return grid
    if size[0] <= grid.shape[-2]:
        return F.adaptive_avg_pool2d(grid, size)
    return F.interpolate(grid, size=size, mode="bilinear", align_corners=False)


def _check_sum(maps, branch="positive"):
    """Σ over frames of each group = Σ over its layers of the running sums, pooled to the history grid."""
    run = maps.last_run
    ms = maps.result(branch)
    hist, meta = ms.extra["history"], ms.meta["history"]
    (uid,) = [u for u, p in run.prompts.items() if p.branch == branch]
    total = hist.sum(0)  # (G, B, K, rh, rw)
    names = {k.name(): k for k in run.store.layers(uid)}
    for g, members in enumerate(meta["group_layers"]):
        exp = sum(_pool(run.store.sums[(uid, None, names[n])], meta["grid"]) for n in members if n in names)
        torch.testing.assert_close(total[g], exp[:, meta["tokens"]], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("groups", ["layer", "block", "level"])
def test_history_sums_to_the_running_maps_and_frames_are_steps(env, groups):
    fixtures, cp = env
    mp = fixtures.tiny_unet_patcher("sdxl")  # depth-2 blocks: names like "input 5.1"
    pos, neg = fixtures.random_conditioning("sdxl", seed=1), fixtures.random_conditioning("sdxl", seed=2)
    lat = torch.zeros(2, 4, 16, 12)
    base = fixtures.sample(mp, pos, neg, lat, seed=1, steps=3, cfg=5.0)
    m, maps = cp.add_capture(mp, "all", "both", 0.0, 1.0, "mean", history_mb=64, history_groups=groups)
    out = fixtures.sample(m, pos, neg, lat, seed=1, steps=3, cfg=5.0)
    assert torch.equal(out, base), "the history changed the generated latent"
    for branch in ("positive", "negative"):
        _check_sum(maps, branch)
    meta = maps.result().meta["history"]
    hist = maps.result().extra["history"]
    layers = maps.result().meta["layers"]
    assert hist.shape == (3, len(meta["groups"]), 2, 77, 8, 6)  # finest SDXL attention level: latent / 2
    assert meta["stride"] == 1 and [f[:2] for f in meta["frames"]] == [[0, 0], [1, 1], [2, 2]]
    assert [f[2] for f in meta["frames"]] == pytest.approx(meta["schedule"][:3])
    if groups == "layer":
        assert len(meta["groups"]) == len(layers) and "input 5.1" in meta["groups"] and "middle 0.1" in meta["groups"]
    elif groups == "block":
        assert "input 5" in meta["groups"] and "input 5.1" not in meta["groups"]
    else:
        assert meta["groups"] == ["L1", "L2"]


@pytest.mark.parametrize("steps,sampler", [(1, "euler"), (12, "euler"), (6, "heun")])
def test_history_memory_stays_within_the_budget(env, steps, sampler):
    fixtures, cp = env
    mp = fixtures.tiny_unet_patcher("sd15")
    pos, neg = fixtures.random_conditioning("sd15", seed=1), fixtures.random_conditioning("sd15", seed=2)
    lat = torch.zeros(1, 4, 32, 32)
    budget_mb = 1.0
    m, maps = cp.add_capture(mp, "all", "positive", 0.0, 1.0, "mean", history_mb=budget_mb)
    fixtures.sample(m, pos, neg, lat, seed=1, steps=steps, cfg=5.0, sampler_name=sampler)
    meta = maps.result().meta["history"]
    assert maps.last_run.history.peak_bytes <= budget_mb * 2**20
    assert meta["bytes"] <= budget_mb * 2**20 and meta["peak_bytes"] <= budget_mb * 2**20
    evals = 2 * steps - 1 if sampler == "heun" else steps  # heun: 2 evaluations per step but the last
    assert meta["evaluations"] == maps.result().meta["evaluations"] == evals
    assert sum(f[1] - f[0] + 1 for f in meta["frames"]) == evals
    # 7 layers × 77 tokens × 4 bytes per cell: a 32×32 frame is 2.1 MiB (too big), a 16×16 one 0.53 MiB (1 fits),
    # an 8×8 one 0.13 MiB (7 fit: 12 steps need stride 2)
    if steps == 1:
        assert meta["grid"] == [16, 16] and meta["stride"] == 1
    elif steps == 12:
        assert meta["grid"] == [8, 8] and meta["stride"] == 2 and len(meta["frames"]) == 6
    else:  # planned 6 frames at 8×8; heun's 11 evaluations merged them in place: stride 2
        assert meta["grid"] == [8, 8] and meta["stride"] == 2 and "stride raised" in meta["summary"]
    _check_sum(maps)


def test_history_budget_too_small_leaves_a_reason(env, caplog):
    fixtures, cp = env
    mp = fixtures.tiny_unet_patcher("sd15")
    pos, neg = fixtures.random_conditioning("sd15", seed=1), fixtures.random_conditioning("sd15", seed=2)
    m, maps = cp.add_capture(mp, "all", "positive", 0.0, 1.0, "mean", history_mb=0.001)
    with caplog.at_level("WARNING", logger="attention_focus"):
        fixtures.sample(m, pos, neg, torch.zeros(1, 4, 32, 32), seed=1, steps=2, cfg=5.0)
    assert "below one frame" in caplog.text
    assert "history" not in maps.result().extra and "below one frame" in maps.result().meta["history"]["error"]


DIT_HISTORY = [("flux", 1), ("wan21", 3), ("sd3", 1), ("chroma", 1), ("auraflow", 1), ("qwen_image", 1),
               ("lumina2", 1), ("hidream", 1), ("hunyuan_dit", 1), ("flux2", 1), ("pixart", 1), ("hunyuan_video", 2),
               ("mochi", 2), ("omnigen2", 1)]


@pytest.mark.parametrize("family,frames", DIT_HISTORY)
def test_dit_history_is_keyed_by_block(comfy, family, frames):
    """Every kind of DiT layout (joint text-first / image-first, registers, padded captions, cross-attention,
    the HunyuanDiT and PixArt routes, video): the history's groups are the model's blocks and its sum over frames
    and groups is the running maps."""
    from harness import dit_fixtures as dfx
    from harness import fixtures
    from harness import pack as cp

    mp = dfx.tiny_dit_patcher(family)
    pos, neg = dfx.dit_conditioning(family, mp, seed=1), dfx.dit_conditioning(family, mp, seed=2)
    hw = dfx.DIT_INFO[family].get("latent_hw", (9, 7))  # the sizes each tiny model accepts
    lat = dfx.dit_latent(family, *hw, frames=frames) if frames > 1 else dfx.dit_latent(family, *hw)
    base = fixtures.sample(mp, pos, neg, lat, seed=1, steps=2, cfg=2.0)
    m, maps = cp.add_capture(mp, "all", "positive", 0.0, 1.0, "mean", history_mb=16)
    assert torch.equal(fixtures.sample(m, pos, neg, lat, seed=1, steps=2, cfg=2.0), base)
    ms = maps.result()
    meta, hist = ms.meta["history"], ms.extra["history"]
    assert meta["groups"] == [k.name().rsplit(".", 1)[0].replace(".", " ") for k in cp.model_layers(mp)]
    (acc,) = maps.last_run.store.sums.values()  # a DiT's layers share one accumulator
    assert hist.shape[:2] == (2, len(meta["groups"])) and meta["grid"] == list(acc.shape[-2:])
    if family in ("flux", "wan21", "sd3"):
        assert meta["grid"] == [5, 4]  # 9×7 latent, patch 2
    torch.testing.assert_close(hist.sum((0, 1)), acc[:, meta["tokens"]], rtol=1e-5, atol=1e-5)
