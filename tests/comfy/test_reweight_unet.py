"""Reweighting on real ComfyUI UNets: guarantees pinned against the real sampler and real layers."""

from __future__ import annotations

import math

import pytest
import torch


@pytest.fixture(scope="module")
def env(comfy):
    from harness import fixtures

    from harness import pack as cp

    return fixtures, cp


def _run(fixtures, m, pos, neg, lat, steps=3, cfg=5.0):
    with torch.inference_mode():
        return fixtures.sample(m, pos, neg, lat, seed=7, steps=steps, cfg=cfg)


@pytest.mark.parametrize("family", ["sd15", "sd2v", "sdxl"])
def test_unit_weights_are_bit_identical_and_weights_change_the_image(env, family):
    fixtures, cp = env
    mp = fixtures.tiny_unet_patcher(family)
    pos = fixtures.random_conditioning(family, seed=1, batch=1)
    neg = fixtures.random_conditioning(family, seed=2)
    lat = torch.zeros(2, 4, 9, 13)  # batch 2, odd non-square
    base = _run(fixtures, mp, pos, neg, lat)
    same = cp.add_reweight(mp, [("#3", 1.0), ("#4-6", 1.0)], "scale", "all", "both", 0.0, 1.0)
    assert torch.equal(_run(fixtures, same, pos, neg, lat), base)
    for mode in ("scale", "renormalize"):
        changed = cp.add_reweight(mp, [("#3", 2.5)], mode, "all", "positive", 0.0, 1.0)
        out = _run(fixtures, changed, pos, neg, lat)
        assert not torch.equal(out, base) and torch.isfinite(out).all()


def test_weight_outside_the_window_changes_nothing(env):
    fixtures, cp = env
    mp = fixtures.tiny_unet_patcher("sd15")
    pos, neg = fixtures.random_conditioning("sd15", seed=1), fixtures.random_conditioning("sd15", seed=2)
    lat = torch.zeros(1, 4, 8, 8)
    base = _run(fixtures, mp, pos, neg, lat, steps=4)
    # the last sigma of the schedule (0) is never evaluated by euler: a window at 100 % is empty
    m = cp.add_reweight(mp, [("#2", 5.0)], "scale", "all", "positive", 1.0, 1.0)
    assert torch.equal(_run(fixtures, m, pos, neg, lat, steps=4), base)
    # only the second half of the steps: differs from both the plain and the always-on run
    half = _run(fixtures, cp.add_reweight(mp, [("#2", 5.0)], "scale", "all", "positive", 0.5, 1.0),
                pos, neg, lat, steps=4)
    full = _run(fixtures, cp.add_reweight(mp, [("#2", 5.0)], "scale", "all", "positive", 0.0, 1.0),
                pos, neg, lat, steps=4)
    assert not torch.equal(half, base) and not torch.equal(half, full)


def test_raising_a_weight_raises_its_share_in_captured_maps(env):
    fixtures, cp = env
    mp = fixtures.tiny_unet_patcher("sd15")
    pos, neg = fixtures.random_conditioning("sd15", seed=1), fixtures.random_conditioning("sd15", seed=2)
    lat = torch.zeros(1, 4, 8, 8)

    def share(model_with_capture_first: bool, weight: float, mode: str) -> float:
        if model_with_capture_first:
            m, maps = cp.add_capture(mp, "all", "positive", 0, 1, "mean")
            m = cp.add_reweight(m, [("#5", weight)], mode, "all", "positive", 0, 1)
        else:
            m = cp.add_reweight(mp, [("#5", weight)], mode, "all", "positive", 0, 1)
            m, maps = cp.add_capture(m, "all", "positive", 0, 1, "mean")
        _run(fixtures, m, pos, neg, lat)
        r = maps.result().maps[0]
        return float(r[5].sum() / r[1:].sum())

    for mode in ("scale", "renormalize"):
        base = share(True, 1.0, mode)
        for order in (True, False):
            assert share(order, 3.0, mode) > 1.5 * base, (mode, order)
            assert share(order, 0.3, mode) < base, (mode, order)


def test_reweight_does_not_leak_into_the_model_it_was_cloned_from(env):
    fixtures, cp = env
    mp = fixtures.tiny_unet_patcher("sd15")
    pos, neg = fixtures.random_conditioning("sd15", seed=1), fixtures.random_conditioning("sd15", seed=2)
    lat = torch.zeros(1, 4, 8, 8)
    cap, maps = cp.add_capture(mp, "all", "positive", 0, 1, "mean")
    _run(fixtures, cap, pos, neg, lat)
    before = maps.result().maps.clone()
    cp.add_reweight(cap, [("#5", 4.0)], "scale", "all", "positive", 0, 1)  # a branch of the graph
    _run(fixtures, cap, pos, neg, lat)
    assert torch.equal(maps.result().maps, before)


def _layer_call(cp, m, layer_name: str, weights: dict[int, float], mode: str):
    """Call one real CrossAttention module through the patched model's transformer_options."""
    from attention_focus.nodes.capture_store import PromptInfo
    from attention_focus.nodes.reweight import RunWeights

    dm = m.model.diffusion_model
    block = dm.input_blocks[1]
    st_mod = next(x for x in block if type(x).__name__ == "SpatialTransformer")
    attn2 = st_mod.transformer_blocks[0].attn2
    to = dict(m.model_options["transformer_options"])
    state = to[cp.STATE_KEY]
    uid = "u-positive"
    state.run.prompts = {uid: PromptInfo("positive", 0, 77, None)}
    rw = state.reweighters()[-1]
    state.run.data[id(rw)] = RunWeights({uid: weights}, 1e9, 0.0)
    h, w = 5, 7
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, h * w, attn2.to_q.in_features, generator=g)
    ctx = torch.randn(2, 77, attn2.to_k.in_features, generator=g)
    to.update({"block": ("input", 1), "block_index": 0, "activations_shape": [2, 32, h, w],
               "uuids": [uid], "cond_or_uncond": [0], "sigmas": torch.tensor([1.0, 1.0])})
    state.cross_pending = True
    with torch.no_grad():
        out = attn2(x, context=ctx, transformer_options=to)
        # independent reference: explicit probabilities, columns reweighted, applied to V
        q, k, v = attn2.to_q(x), attn2.to_k(ctx), attn2.to_v(ctx)
        heads = attn2.heads
        d = q.shape[-1] // heads
        qh, kh, vh = (t.view(2, -1, heads, d).transpose(1, 2).double() for t in (q, k, v))
        logits = qh @ kh.transpose(-1, -2) / math.sqrt(d)
        wv = torch.ones(77, dtype=torch.float64)
        for p, val in weights.items():
            wv[p] = val
        if mode == "scale":
            p = torch.softmax(logits, -1) * wv
        else:
            p = torch.softmax(logits + torch.log(wv), -1)
        ref = (p @ vh).transpose(1, 2).reshape(2, -1, heads * d)
        ref = attn2.to_out(ref.float())
    return out, ref


@pytest.mark.parametrize("mode", ["scale", "renormalize"])
def test_modes_match_explicit_references_on_a_real_layer(env, mode):
    fixtures, cp = env
    mp = fixtures.tiny_unet_patcher("sd15")
    m = cp.add_reweight(mp, [("#1", 2.0)], mode, "all", "positive", 0, 1)
    out, ref = _layer_call(cp, m, "input.1.0", {3: 2.5, 10: 0.25, 40: 1.7}, mode)
    assert torch.allclose(out, ref, rtol=1e-4, atol=1e-5), (out - ref).abs().max()


def test_bad_specs_are_refused(env):
    fixtures, cp = env
    from attention_focus.nodes.word_syntax import parse_weights

    for bad in ["red:abc", ":2", "red", '"red:2']:
        with pytest.raises(ValueError):
            parse_weights(bad)
    with pytest.raises(ValueError, match="renormalize"):
        parse_weights("red:0", "renormalize")
    mp = fixtures.tiny_unet_patcher("sd15")
    with pytest.raises(ValueError, match="start_percent"):
        cp.add_reweight(mp, [("#1", 2.0)], "scale", "all", "positive", 0.7, 0.2)
