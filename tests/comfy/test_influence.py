"""Per-word influence on real ComfyUI models: the map equals an explicit second evaluation done here (the
positive prompt with the word's value rows zeroed by this test's own override), the generated latent and the
attention maps are bit-identical with influence on, and the extra calls are not counted as evaluations."""

from __future__ import annotations

import types

import pytest
import torch

PROMPT = "a photorealistic cat wearing a hat and a red hat"


class Evaluations:
    """PREDICT_NOISE wrapper that keeps (x, timestep, the guider's positive conds, the model) of every evaluation."""

    def __init__(self):
        self.seen = []

    def __deepcopy__(self, memo):
        return self

    def __call__(self, executor, *args, **kwargs):
        g = executor.class_obj
        self.seen.append((args[0].clone(), args[1].clone(), g.conds["positive"], g.inner_model))
        return executor(*args, **kwargs)


class ZeroValues:
    """An attention override zeroing value rows ``cols`` of the calls ``which(q, k)`` picks (BLC or BHLD)."""

    def __init__(self, cols, which):
        self.cols, self.which = list(cols), which

    def __call__(self, func, *args, **kwargs):
        q, k, v = args[:3]
        if self.cols and self.which(q, k, kwargs.get("skip_reshape", False)):
            v = v.clone()
            if kwargs.get("skip_reshape", False):
                v[:, :, self.cols] = 0
            else:
                v[:, self.cols] = 0
            args = (q, k, v, *args[3:])
        return func(*args, **kwargs)


def _explicit(seen, sigmas, cols, which, patcher):
    """This test's influence: Σ over the chosen steps of ‖D(word zeroed) − D‖₂ over channels, positive prompt only
    (evaluated after sampling, on the unpatched model)."""
    import comfy.samplers

    total = None
    for sigma in sigmas:
        x, t, conds, model = next(s for s in seen if abs(float(s[1].reshape(-1)[0]) - sigma) < 1e-6)
        model.current_patcher = patcher  # ComfyUI sets it for a sampling run only
        with torch.inference_mode():
            base = comfy.samplers.calc_cond_batch(model, [conds], x, t, {"transformer_options": {}})[0]
            to = {"transformer_options": {"optimized_attention_override": ZeroValues(cols, which)}}
            pred = comfy.samplers.calc_cond_batch(model, [conds], x, t, to)[0]
        d = ((pred.float() - base.float()) ** 2).sum(1).sqrt()
        total = d if total is None else total + d
    return total


@pytest.fixture(scope="module")
def labelled(comfy):
    from comfy.sd1_clip import SD1Tokenizer

    from attention_focus.nodes.cond_tokens import register
    from attention_focus.nodes.hook_state import TOKENS_KEY
    from attention_focus.nodes.text_layout import context_tokens
    from harness import fixtures

    tok = SD1Tokenizer()
    clip = types.SimpleNamespace(tokenizer=tok, tokenize=lambda t, return_word_ids=False, **k:
                                 tok.tokenize_with_weights(t, return_word_ids))
    pos = fixtures.random_conditioning("sd15", seed=1)
    table = context_tokens(clip, PROMPT, context_length=77)[0]
    pos[0][1][TOKENS_KEY] = register(pos[0][0], table)
    return pos, table


def test_unet_influence_equals_an_explicit_second_evaluation(comfy, labelled):
    from harness import fixtures
    from harness import pack as cp

    pos, table = labelled
    neg = fixtures.random_conditioning("sd15", seed=2)
    mp = fixtures.tiny_unet_patcher("sd15")
    lat = torch.zeros(1, 4, 16, 16)
    base = fixtures.sample(mp, pos, neg, lat, seed=4, steps=5, cfg=5.0)
    m0, plain_maps = cp.add_capture(mp, "all", "positive", 0.0, 1.0, "mean")
    fixtures.sample(m0, pos, neg, lat, seed=4, steps=5, cfg=5.0)

    m, maps = cp.add_capture(mp, "all", "positive", 0.0, 1.0, "mean", influence_words="photorealistic, hat",
                             influence_steps=3)
    rec = Evaluations()
    m = m.clone()
    m.add_wrapper_with_key("predict_noise", "test_evaluations", rec)
    out = fixtures.sample(m, pos, neg, lat, seed=4, steps=5, cfg=5.0)
    assert torch.equal(out, base), "influence changed the generated latent"
    res = maps.result()
    assert torch.equal(res.maps, plain_maps.result().maps), "influence passes leaked into the attention maps"
    assert res.meta["evaluations"] == 5
    meta = res.meta["influence"]
    assert meta["steps"] == [1, 3, 5] and meta["extra_model_calls"] == 3 * (1 + 2)
    inf = res.extra["influence"]
    assert inf.shape == (1, 2, 16, 16)

    def cross(q, k, bhld):
        return k.shape[1] == 77 and q.shape[1] != 77
    for j, word in enumerate(("photorealistic", "hat")):
        cols = [p for w in table.merged_words() if w.text == word for p in w.positions]
        exp = _explicit(rec.seen, meta["sigmas"], cols, cross, mp)
        torch.testing.assert_close(inf[:, j], exp, rtol=1e-5, atol=1e-6)
        assert float(exp.max()) > 0


def test_flux_influence_neutralises_the_joint_attention(comfy):
    from harness import dit_fixtures as dfx
    from harness import fixtures
    from harness import pack as cp

    mp = dfx.tiny_dit_patcher("flux")
    pos, neg = dfx.dit_conditioning("flux", mp, seed=1), dfx.dit_conditioning("flux", mp, seed=2)
    lat = dfx.dit_latent("flux", 8, 8)
    n_text, n_img = pos[0][0].shape[1], 16
    base = fixtures.sample(mp, pos, neg, lat, seed=1, steps=3, cfg=2.0)
    m, maps = cp.add_capture(mp, "all", "positive", 0.0, 1.0, "mean", influence_words="#3, #5-6",
                             influence_steps=2)
    rec = Evaluations()
    m = m.clone()
    m.add_wrapper_with_key("predict_noise", "test_evaluations", rec)
    assert torch.equal(fixtures.sample(m, pos, neg, lat, seed=1, steps=3, cfg=2.0), base)
    res = maps.result()
    meta, inf = res.meta["influence"], res.extra["influence"]
    assert meta["steps"] == [1, 3] and inf.shape == (1, 2, 8, 8)

    def joint(q, k, bhld):  # every Flux attention call: [text, image] for all queries
        return (k.shape[2] if bhld else k.shape[1]) == n_text + n_img
    for j, cols in enumerate(([3], [5, 6])):
        exp = _explicit(rec.seen, meta["sigmas"], cols, joint, mp)
        torch.testing.assert_close(inf[:, j], exp, rtol=1e-5, atol=1e-6)


def test_influence_words_must_be_in_the_prompt(comfy, labelled):
    from harness import fixtures
    from harness import pack as cp

    pos, _ = labelled
    m, maps = cp.add_capture(fixtures.tiny_unet_patcher("sd15"), "all", "positive", 0.0, 1.0, "mean",
                             influence_words="dog", influence_steps=2)
    with pytest.raises(ValueError, match="influence_words: 'dog' is not in the positive prompt"):
        fixtures.sample(m, pos, fixtures.random_conditioning("sd15", seed=2), torch.zeros(1, 4, 8, 8), seed=1,
                        steps=2, cfg=5.0)
