"""Capture and reweighting on the DiT families added after the first eleven — Flux.2 (dev, Klein), Chroma Radiance,
HunyuanVideo 1.0 / 1.5, HunyuanImage 2.1, Wan Camera / HuMo / Animate, PixArt α, Omnigen2, Cosmos Predict2,
LTX-Video, Mochi — on their real ComfyUI classes (tiny, random weights) sampled by ComfyUI's own sampler.

As in test_dit.py, the reference is independent: a recording override keeps q/k of every attention call, and
this file's own table of each family's token layout (``_layout``, written from ComfyUI's model code) says which
calls are image→text and where the prompt's keys are; a float64 softmax over all keys gives the expected sums.
"""

from __future__ import annotations

import math

import pytest
import torch
from test_dit import OutputRecorder, Recorder, _sample

FAMILIES = ("flux2", "flux2_klein", "chroma_radiance", "hunyuan_video", "hunyuan_video_i2v", "hunyuan_image21",
            "hunyuan_image21_refiner", "hunyuan_video15",
            "wan_camera", "wan_humo", "wan_animate", "pixart", "omnigen2", "cosmos_predict2", "ltxv", "mochi")
REFS = {"flux2": (4, 3), "wan_humo": (6, 4), "omnigen2": (6, 4)}  # reference latents given to these families


@pytest.fixture(scope="module")
def env(comfy):
    from harness import dit_fixtures as dfx

    from harness import pack as cp

    return dfx, cp


def _hw(dfx, family):
    return dfx.DIT_INFO[family].get("latent_hw", (9, 7))


def _setup(dfx, family, frames=1, refs=False):
    mp = dfx.tiny_dit_patcher(family)
    ref = REFS.get(family) if refs else None
    pos = dfx.dit_conditioning(family, mp, seed=1, refs=ref)
    neg = dfx.dit_conditioning(family, mp, seed=2, length=None if family != "flux2" else 24)
    return mp, pos, neg, dfx.dit_latent(family, *_hw(dfx, family), frames=frames)


def _layout(family, cond, hw, frames=1):
    """This test's own statement of each family's token layout: kind ("joint" | "cross"), the exact call length
    (joint: lq = lk; cross: lq, with lk = the text's count), the target rows, where the text span starts, and
    (key offset in the span, prompt position) pairs."""
    ctx, extra = cond[0][0], cond[0][1]
    n = ctx.shape[1]
    H, W = hw

    def grid(p):
        return frames * math.ceil(H / p) * math.ceil(W / p)

    same = [(j, j) for j in range(n)]
    if family in ("flux2", "flux2_klein"):  # [text left-padded to 512, image (patch 1), references]
        t = max(512, n)
        refs = sum(r.shape[-2] * r.shape[-1] for r in extra.get("reference_latents", []))
        g = grid(1)
        return dict(kind="joint", length=t + g + refs, rows=slice(t, t + g), base=0, keys=[(j, j) for j in range(t)])
    if family == "chroma_radiance":  # pixels, patch 16
        g = grid(16)
        return dict(kind="joint", length=n + g, rows=slice(n, n + g), base=0, keys=same)
    if family.startswith("hunyuan"):
        # ComfyUI <= 0.8: [image, text] (flipped double blocks, single blocks cat(img, txt)); 0.33: [text, image].
        # text: HunyuanVideo 1.0 the LLM; HunyuanImage 2.1 [LLM, ByT5]; HunyuanVideo 1.5 [SigLIP vision, ByT5, LLM]
        # (the vision tokens are no prompt positions). Patch 2 (1.0), else 1.
        g = grid(2 if family in ("hunyuan_video", "hunyuan_video_i2v") else 1)
        b = extra["conditioning_byt5small"].shape[1] if "conditioning_byt5small" in extra else 0
        v = extra["clip_vision_output"].last_hidden_state.shape[1] if "clip_vision_output" in extra else 0
        keys = same + [(n + j, n + j) for j in range(b)]
        if family == "hunyuan_video15":
            keys = [(v + b + j, j) for j in range(n)] + [(v + j, n + j) for j in range(b)]
        t = n + b + v
        if _hunyuan_flipped():
            return dict(kind="joint", length=g + t, rows=slice(0, g), base=g, keys=keys)
        return dict(kind="joint", length=g + t, rows=slice(t, t + g), base=0, keys=keys)
    if family in ("wan_camera", "wan_animate", "cosmos_predict2", "ltxv", "pixart"):
        return dict(kind="cross", length=grid(1 if family == "ltxv" else 2), rows=slice(0, grid(1 if family == "ltxv"
                    else 2)), base=0, keys=same, n_text=n)
    if family == "wan_humo":  # queries: the video's tokens, then the reference frame's
        g = grid(2)
        r = sum(math.ceil(x.shape[-2] / 2) * math.ceil(x.shape[-1] / 2) for x in extra.get("reference_latents", []))
        return dict(kind="cross", length=g + r, rows=slice(0, g), base=0, keys=same, n_text=n)
    if family == "omnigen2":  # [text, references, target]
        g = grid(2)
        r = sum(math.ceil(x.shape[-2] / 2) * math.ceil(x.shape[-1] / 2) for x in extra.get("reference_latents", []))
        return dict(kind="joint", length=n + r + g, rows=slice(n + r, n + r + g), base=0, keys=same)
    if family == "mochi":  # [video, the prompt's unmasked tokens]: the model crops the text to them
        g, k = grid(2), int(extra["attention_mask"].sum())
        return dict(kind="joint", length=g + k, rows=slice(0, g), base=g, keys=[(j, j) for j in range(k)])
    raise AssertionError(family)


def _hunyuan_flipped() -> bool:
    """Whether this ComfyUI's Flux double block still has HunyuanVideo's image-first branch (removed by 0.33.0)."""
    import inspect

    from comfy.ldm.flux.layers import DoubleStreamBlock

    return "flipped_img_txt" in inspect.signature(DoubleStreamBlock.__init__).parameters


def _is_image_text(layout, lq, lk):
    if layout["kind"] == "cross":
        return lq == layout["length"] and lk == layout["n_text"]
    return lq == lk == layout["length"]


def _expected_sum(rec, layout, prompt_len, frames=1):
    """Σ over the positive branch's image→text calls: (n_img, prompt_len) float64 mean-over-heads probabilities
    (video: per patch, the mean over frames)."""
    rows, keys = layout["rows"], layout["keys"]
    n_img = rows.stop - rows.start
    acc = torch.zeros(n_img, prompt_len, dtype=torch.float64)
    n, sigmas = 0, set()
    for c in rec.calls:
        if 0 not in c["cou"] or not _is_image_text(layout, c["q"].shape[2], c["k"].shape[2]):
            continue
        chunk = c["q"].shape[0] // len(c["cou"])
        i = c["cou"].index(0) * chunk
        q, k = c["q"][i], c["k"][i]
        if k.shape[0] != q.shape[0]:  # grouped-query attention: each key head serves several query heads
            k = k.repeat_interleave(q.shape[0] // k.shape[0], 0)
        logits = q[:, rows] @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        if c["mask"] is not None:
            m = c["mask"]
            m = m[min(i, m.shape[0] - 1)] if m.ndim >= 3 else m
            logits = logits + (m[..., rows, :] if m.shape[-2] == c["q"].shape[2] else m)
        cols = torch.tensor([layout["base"] + kk for kk, _ in keys])
        p = torch.softmax(logits, -1)[..., cols].mean(0)
        for j, (_, pos) in enumerate(keys):
            acc[:, pos] += p[:, j]
        n += 1
        sigmas.add(c["sigma"])
    if frames > 1:
        acc = acc.reshape(frames, n_img // frames, prompt_len).mean(0)
    return acc, n, len(sigmas)


def _stored(maps, prompt_len):
    """The run's accumulated positive-branch probabilities as (n_img, prompt_len) float64."""
    run = maps.last_run
    (got,) = [v for k, v in run.store.sums.items() if run.prompts[k[0]].branch == "positive"]
    return got[0].reshape(prompt_len, -1).T.double()


VARIANTS = [(f, 1, False) for f in FAMILIES] + [
    ("flux2", 1, True),  # reference image tokens after the target (Flux.2 edit / Klein edit)
    ("wan_humo", 1, True),  # HuMo's reference frame after the video
    ("omnigen2", 1, True),  # references before the target
    ("hunyuan_video", 3, False),  # video: three latent frames, mean over frames and each frame
    ("hunyuan_video15", 2, False), ("cosmos_predict2", 3, False), ("ltxv", 3, False), ("mochi", 2, False),
    ("wan_camera", 2, False),
]


@pytest.mark.parametrize("family,frames,refs", VARIANTS,
                         ids=[f + ("-refs" if r else "") + (f"-{t}frames" if t > 1 else "") for f, t, r in VARIANTS])
def test_capture_matches_an_independent_float64_softmax(env, family, frames, refs):
    dfx, cp = env
    mp, pos, neg, lat = _setup(dfx, family, frames, refs)
    base = _sample(dfx, mp, pos, neg, lat)

    rec = Recorder()
    inner = mp.clone()
    inner.model_options["transformer_options"]["optimized_attention_override"] = rec
    m, maps = cp.add_capture(inner, "all", "positive", 0.0, 1.0, "mean")
    assert torch.equal(_sample(dfx, m, pos, neg, lat), base), "capture changed the generated latent"

    hw = _hw(dfx, family)
    layout = _layout(family, pos, hw, frames)
    res = maps.result("positive")
    prompt_len = res.maps.shape[1]
    exp, n_calls, steps = _expected_sum(rec, layout, prompt_len, frames)
    n_layers = len(res.meta["layers"])
    assert n_calls == n_layers * steps and steps == 2, (n_calls, n_layers, steps)
    assert n_layers == len(cp.model_layers(mp))
    assert res.maps.shape == (1, prompt_len, *hw)
    assert res.meta["model_family"] == cp.model_family(mp)
    torch.testing.assert_close(_stored(maps, prompt_len), exp, atol=2e-5, rtol=1e-4)
    assert torch.isfinite(res.maps).all() and float(res.maps.min()) >= 0
    if frames > 1:  # video: each frame's maps kept too (per patch, mean over layers, summed over steps)
        per_patch, *_ = _expected_sum(rec, layout, prompt_len)
        exp_f = (per_patch / n_layers).reshape(frames, -1, prompt_len).transpose(1, 2)
        got_f = res.extra["frames"][0].double()
        assert got_f.shape[:2] == (frames, prompt_len) and res.meta["frames"]["count"] == frames
        torch.testing.assert_close(got_f.reshape(frames, prompt_len, -1), exp_f, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_reweight_all_ones_is_bit_identical_and_a_weight_changes_the_image(env, family):
    dfx, cp = env
    mp, pos, neg, lat = _setup(dfx, family)
    base = _sample(dfx, mp, pos, neg, lat)
    target = "#474" if family == "flux2" else "#2"  # Flux.2: the prompt's 3rd token after 472 padding positions
    ones = cp.add_reweight(mp, [(target, 1.0), ("#3", 1.0)], "scale", "all", "positive", 0.0, 1.0)
    assert torch.equal(_sample(dfx, ones, pos, neg, lat), base)
    for mode in ("scale", "renormalize"):
        m = cp.add_reweight(mp, [(target, 4.0)], mode, "all", "positive", 0.0, 1.0)
        out = _sample(dfx, m, pos, neg, lat)
        assert torch.isfinite(out).all()
        assert (out - base).abs().max() > 1e-4, mode


@pytest.mark.parametrize("family", ["flux2", "hunyuan_video15", "omnigen2", "mochi", "pixart", "wan_humo"])
def test_scale_matches_an_explicit_reference_on_a_real_layer(env, family):
    """P2P semantics on each layout kind: image queries' post-softmax probability on the chosen prompt token × w,
    no renormalisation; other queries (text, references) unchanged."""
    dfx, cp = env
    mp, pos, neg, lat = _setup(dfx, family, refs=family in REFS)
    w, token = 3.0, 490 if family == "flux2" else 2
    m = cp.add_reweight(mp, [(f"#{token}", w)], "scale", "all", "positive", 0.0, 1.0)
    to = m.model_options["transformer_options"]
    rec = OutputRecorder(to["optimized_attention_override"])
    to["optimized_attention_override"] = rec
    _sample(dfx, m, pos, neg, lat, steps=1)
    layout = _layout(family, pos, _hw(dfx, family))
    checked = 0
    for c in rec.calls:
        q, k, v = c["args"][:3]
        heads = c["args"][3] if len(c["args"]) > 3 else c["kwargs"]["heads"]
        if not c["kwargs"].get("skip_reshape", False):
            b, _, cc = q.shape
            q, k, v = (t.view(b, t.shape[1], heads, cc // heads).transpose(1, 2) for t in (q, k, v))
        if not _is_image_text(layout, q.shape[2], k.shape[2]):
            continue
        q, k, v = q.double(), k.double(), v.double()
        logits = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        mask = c["args"][4] if len(c["args"]) > 4 else c["kwargs"].get("mask")
        if mask is not None:
            logits = logits + mask.double()
        p = torch.softmax(logits, -1)
        if 0 in c["cou"]:
            chunk = q.shape[0] // len(c["cou"])
            b0 = c["cou"].index(0) * chunk
            cols = torch.tensor([layout["base"] + kk for kk, pp in layout["keys"] if pp == token])
            sub = p[b0:b0 + chunk, :, layout["rows"]]
            sub[..., cols] *= w
            p[b0:b0 + chunk, :, layout["rows"]] = sub
        ref = p @ v
        out = c["out"].double()
        if not c["kwargs"].get("skip_output_reshape", False):
            out = out.view(out.shape[0], out.shape[1], heads, -1).transpose(1, 2)
        torch.testing.assert_close(out, ref, atol=2e-4, rtol=1e-3)
        checked += 0 in c["cou"]
    assert checked == len(cp.model_layers(mp))


# what each family's layers are called (ComfyUI's block ids where the model sets them, else the call order)
LAYERS = {
    "flux2": ["double.0.0", "double.1.0", "single.0.0", "single.1.0"],
    "chroma_radiance": ["double.0.0", "double.1.0", "single.0.0", "single.1.0"],
    "hunyuan_video": ["double.0.0", "double.1.0", "single.0.0", "single.1.0"],
    "hunyuan_video_i2v": ["double.0.0", "double.1.0", "single.0.0", "single.1.0"],
    "hunyuan_image21_refiner": ["double.0.0", "double.1.0", "single.0.0", "single.1.0"],
    "hunyuan_image21": ["double.0.0", "double.1.0", "single.0.0", "single.1.0"],
    "hunyuan_video15": ["double.0.0", "double.1.0", "single.0.0", "single.1.0"],
    "wan_camera": ["block.0.0", "block.1.0"], "wan_humo": ["block.0.0", "block.1.0"],
    "wan_animate": ["block.0.0", "block.1.0"], "pixart": ["block.0.0", "block.1.0"],
    "omnigen2": ["single.0.0", "single.1.0"], "cosmos_predict2": ["block.0.0", "block.1.0"],
    "ltxv": ["block.0.0", "block.1.0"], "mochi": ["double.0.0", "double.1.0"],
}
NAMES = {"flux2": "Flux.2", "chroma_radiance": "Chroma Radiance", "hunyuan_video": "HunyuanVideo",
         "hunyuan_video_i2v": "HunyuanVideo", "hunyuan_image21_refiner": "HunyuanImage 2.1 refiner",
         "hunyuan_image21": "HunyuanImage 2.1", "hunyuan_video15": "HunyuanVideo 1.5", "wan_camera": "Wan Camera",
         "wan_humo": "Wan HuMo", "wan_animate": "Wan Animate", "pixart": "PixArt", "omnigen2": "Omnigen2",
         "cosmos_predict2": "Cosmos Predict2", "ltxv": "LTX-Video", "mochi": "Mochi"}


@pytest.mark.parametrize("family", list(LAYERS))
def test_family_names_and_layers(env, family):
    dfx, cp = env
    mp = dfx.tiny_dit_patcher(family)
    assert cp.model_family(mp) == NAMES[family]
    assert [k.name() for k in cp.model_layers(mp)] == LAYERS[family]
    m, maps = cp.add_capture(mp, LAYERS[family][-1], "positive", 0.0, 1.0, "mean")
    pos, neg, lat = dfx.dit_conditioning(family, mp, seed=1), dfx.dit_conditioning(family, mp, seed=2), \
        dfx.dit_latent(family, *_hw(dfx, family))
    _sample(dfx, m, pos, neg, lat, steps=1)
    assert maps.result().meta["layers"] == [LAYERS[family][-1]]


def test_flux2_labels_follow_the_left_padding(env):
    """Flux.2's model_base pads the prompt on the left to 512: the maps' table has the padding first (special, no
    word), a word's position is where the model saw it, and its map is that key's probability."""
    from attention_focus.nodes.hook_state import TOKENS_KEY
    from attention_focus.nodes.token_pieces import build_table
    from attention_focus.nodes.token_table import resolve

    dfx, cp = env
    mp, pos, neg, lat = _setup(dfx, "flux2")
    n = pos[0][0].shape[1]
    table = build_table([[(i, 1.0, 1) for i in range(n)]], {i: f"▁w{i}" for i in range(n)}, stream="mistral3_24b")
    pos = [[pos[0][0], {**pos[0][1], TOKENS_KEY: table}]]
    m, maps = cp.add_capture(mp, "all", "positive", 0.0, 1.0, "mean")
    _sample(dfx, m, pos, neg, lat)
    res = maps.result()
    got = res.tokens
    lead = 512 - n
    assert len(got) == res.maps.shape[1] == 512 and got.meta["lead_padding"] == lead
    assert all(r.special and r.word_index == -1 for r in got.rows[:lead])
    assert resolve(got, "w2") == (lead + 2,) and got.word_texts()[:2] == ["w0", "w1"]
    assert float(res.maps[0, lead + 2].mean()) > 0 and float(res.maps[0, :lead].abs().max()) >= 0
    rw = cp.add_reweight(mp, [("w2", 1.0)], "scale", "all", "positive", 0.0, 1.0)  # words resolve in the run
    _sample(dfx, rw, pos, neg, lat, steps=1)


@pytest.mark.parametrize("family,frames,grid", [("hunyuan_video", 3, (5, 4)), ("wan_humo", 4, (5, 4)),
                                                ("cosmos_predict2", 2, (5, 4)), ("ltxv", 3, (5, 4)),
                                                ("mochi", 2, (5, 4)), ("hunyuan_video15", 2, (10, 8))])
def test_video_geometry_exposes_frames_and_the_grid(env, family, frames, grid):
    """Per-frame maps need each call's frame count and per-frame patch grid: the target's rows are frame-major."""
    from attention_focus.nodes.families import geometry, model_spec

    dfx, cp = env
    mp = dfx.tiny_dit_patcher(family)
    h, w = grid[0] * (1 if family in ("ltxv", "hunyuan_video15") else 2), grid[1] * (
        1 if family in ("ltxv", "hunyuan_video15") else 2)
    x = dfx.dit_latent(family, h, w, frames=frames)
    cond = dfx.dit_conditioning(family, mp)
    extra = {}
    if family == "hunyuan_video15":
        extra = {"txt_byt5": cond[0][1]["conditioning_byt5small"],
                 "clip_fea": cond[0][1]["clip_vision_output"].last_hidden_state}
    if family == "mochi":
        extra = {"num_tokens": 20}
    g = geometry(model_spec(mp), x, cond[0][0], extra)
    assert (g.frames, g.grid, g.n_img) == (frames, grid, frames * grid[0] * grid[1])


def test_layout_changing_inputs_and_variants_are_refused_by_name(env):
    from attention_focus.nodes.families import geometry, model_spec

    dfx, cp = env
    for family, name in (("wan_vace", "Wan VACE"), ("wan_s2v", "Wan S2V")):
        with pytest.raises(ValueError, match=f"does not support {name}"):
            cp.model_spec(dfx.tiny_dit_patcher(family))
        assert cp.model_family(dfx.tiny_dit_patcher(family)) == name
    cam = model_spec(dfx.tiny_dit_patcher("wan_camera"))
    x = torch.zeros(1, 16, 1, 8, 8)
    with pytest.raises(ValueError, match="without CLIP vision features"):
        geometry(cam, x, torch.zeros(1, 512, 4096), {})
    ltx = model_spec(dfx.tiny_dit_patcher("ltxv"))
    with pytest.raises(ValueError, match="keyframe guides"):
        geometry(ltx, torch.zeros(1, 128, 2, 4, 4), torch.zeros(1, 8, 4096), {"keyframe_idxs": torch.zeros(1, 3, 4)})
    flux2 = model_spec(dfx.tiny_dit_patcher("flux2"))
    with pytest.raises(ValueError, match="USO style reference"):
        geometry(flux2, torch.zeros(1, 128, 4, 4), torch.zeros(1, 512, 256), {}, {"patches": {"post_input": [id]}})
    humo = model_spec(dfx.tiny_dit_patcher("wan_humo"))  # HuMo lays its reference frames out itself
    g = geometry(humo, torch.zeros(1, 16, 2, 8, 8), torch.zeros(1, 512, 4096),
                 {"reference_latent": torch.zeros(1, 16, 1, 8, 8)})
    assert (g.n_q, g.n_img) == (3 * 16, 2 * 16)


@pytest.mark.parametrize("name", ["Kandinsky5", "LTXAVModel", "MageFlowTransformer2DModel", "NextDiTPixelSpace",
                                  "QwenImage21Transformer2DModel", "SCAILWanModel", "WanAnimate2Model",
                                  "WanDancerModel", "CausalWanModel"])
def test_families_only_newer_comfyui_has_are_refused_by_name(env, name):
    """Classes the tested tree lacks are refused by class name (anywhere in the MRO) with the reason, before a
    structural match could take them for a family they only resemble."""
    from attention_focus.nodes.families import REFUSED_MODELS, family_spec, refusal

    dfx, cp = env
    base = type(dfx.tiny_dit_patcher("wan_camera").model.diffusion_model)
    fake = type(name, (base,), {})  # e.g. CausalWanModel: a WanModel subclass
    dm = object.__new__(fake)
    assert family_spec(dm) is None and refusal(dm) == REFUSED_MODELS[name]
    assert "not yet verified" in REFUSED_MODELS[name][1]


def test_longcat_image_is_refused_by_its_model_base_name(env):
    dfx, cp = env
    mp = dfx.tiny_dit_patcher("flux")
    mp.model.__class__ = type("LongCatImage", (type(mp.model),), {})
    with pytest.raises(ValueError, match="does not support LongCat-Image .*not yet verified"):
        cp.model_spec(mp)
