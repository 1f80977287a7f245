"""Method DAAM on real ComfyUI UNets, checked against an independent float64 re-implementation of DAAM 0.2.0's
aggregation (tests/harness/reference.py: its layer set, per-head sums, bicubic resize to the reference grid, clamp,
mean over (layer, head), and its token merge with the CLIP tokenizer) over q/k recorded from the real layers."""

from __future__ import annotations

import math
import types

import pytest
import torch

from harness.reference import UnetRecorder, daam_merge_indices, naive_daam_maps

PROMPT = "a photorealistic cat wearing a hat and a red hat"  # photorealistic = photo + realistic; hat twice
# SD1.5's topology (attention on 3 of 4 levels, middle block with attention), narrow
SD15_SHAPE = dict(channel_mult=[1, 2, 4, 4], depth=[1, 1, 1, 0], model_channels=32)


@pytest.fixture(scope="module")
def env(comfy):
    import comfy.sd1_clip

    from harness import fixtures
    from harness import pack as cp

    tok = comfy.sd1_clip.SD1Tokenizer()
    clip = types.SimpleNamespace(tokenizer=tok, tokenize=lambda text, return_word_ids=False, **kw:
                                 tok.tokenize_with_weights(text, return_word_ids))
    return fixtures, cp, clip


def _labelled(fixtures, clip, family, seed):
    from attention_focus.nodes.cond_tokens import register
    from attention_focus.nodes.hook_state import TOKENS_KEY
    from attention_focus.nodes.text_layout import context_tokens

    cond = fixtures.random_conditioning(family, seed=seed)
    table, note = context_tokens(clip, PROMPT, context_length=77)
    assert not note
    cond[0][1][TOKENS_KEY] = register(cond[0][0], table)
    return cond


CASES = [("sd15", SD15_SHAPE, 32, 5.0), ("sd15", SD15_SHAPE, 64, 5.0), ("sd15", SD15_SHAPE, 32, 1.0),
         ("sd2v", {}, 12, 5.0), ("sdxl", {}, 16, 5.0)]


@pytest.mark.parametrize("family,shape,side,cfg", CASES,
                         ids=[f"{f}-{s * 8}px-cfg{c:g}" for f, _, s, c in CASES])
def test_daam_method_equals_an_independent_daam(env, family, shape, side, cfg):
    fixtures, cp, clip = env
    from attention_focus.nodes.capture_store import select_words

    mp = fixtures.tiny_unet_patcher(family, **shape)
    pos, neg = _labelled(fixtures, clip, family, 1), fixtures.random_conditioning(family, seed=2)
    lat = torch.zeros(1, 4, side, side)
    rec = UnetRecorder()
    plain = mp.clone()
    plain.model_options.setdefault("transformer_options", {})["optimized_attention_override"] = rec
    base = fixtures.sample(plain, pos, neg, lat, seed=3, steps=2, cfg=cfg)

    m, maps = cp.add_capture(mp, "all", "positive", 0.0, 1.0, "mean", method="daam")
    out = fixtures.sample(m, pos, neg, lat, seed=3, steps=2, cfg=cfg)
    assert torch.equal(out, base), "the DAAM capture changed the generated latent"

    grid = 96 if family == "sd2v" else 64
    res = maps.result("positive")
    assert res.maps.shape == (1, 77, grid, grid) and res.meta["daam_grid"] == [grid, grid]
    ref = naive_daam_maps(rec.calls, grid)
    torch.testing.assert_close(res.maps.double(), ref, rtol=1e-4, atol=1e-6)

    # the layer set: down and up blocks only, factor-8 grids dropped
    kept = {"{}.{}.{}".format(*c["block"]) for c in rec.calls
            if c["block"][0] != "middle" and int(math.sqrt((grid * grid) // (c["hw"][0] * c["hw"][1]))) != 8}
    assert set(res.meta["layers"]) == kept
    assert not any(n.startswith("middle") for n in res.meta["layers"])
    if family == "sd15":  # 256 px drops the 8×8 level, 512 px keeps all three levels
        assert (2 in res.meta["levels"]) == (side == 64)

    # words: DAAM's merge (all tokens of all occurrences) with the CLIP tokenizer
    hf = clip.tokenizer.clip_l.tokenizer
    names, wm = select_words(res, res.tokens, "photorealistic, hat")
    assert names == ["photorealistic", "hat"]
    for j, word in enumerate(names):
        idx = daam_merge_indices(hf, PROMPT, word)
        assert len(idx) == 2
        torch.testing.assert_close(wm[0, j].double(), ref[0, idx].mean(0), rtol=1e-4, atol=1e-6)


def test_daam_method_refusals(env):
    fixtures, cp, clip = env
    mp = fixtures.tiny_unet_patcher("sd15")
    with pytest.raises(ValueError, match="input and output blocks only"):
        cp.add_capture(mp, "middle", "positive", 0.0, 1.0, "mean", method="daam")
    with pytest.raises(ValueError, match="head_reduction mean"):
        cp.add_capture(mp, "all", "positive", 0.0, 1.0, "max", method="daam")
    # an area prompt: DAAM has no placement rule for it
    import node_helpers

    pos = fixtures.random_conditioning("sd15", seed=1)
    pos = node_helpers.conditioning_set_values(pos, {"area": (4, 4, 0, 0), "strength": 1.0, "set_area_to_bounds":
                                                     False})
    m, maps = cp.add_capture(mp, "all", "positive", 0.0, 1.0, "mean", method="daam")
    with pytest.raises(ValueError, match="whole image"):
        fixtures.sample(m, pos, fixtures.random_conditioning("sd15", seed=2), torch.zeros(1, 4, 8, 8), seed=1,
                        steps=1, cfg=5.0)
