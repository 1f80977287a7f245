"""Capture and reweighting on every supported DiT family: real ComfyUI model classes (tiny, random
weights) wrapped in a ModelPatcher and sampled by ComfyUI's own sampler.

The reference maps are computed independently: a recording override (no Attention Focus code) keeps
q/k of every attention call; this file's own table of token layouts (text first or image first,
register tokens, reference-image tokens, padded captions, separate cross-attention) says which calls
are image→text and where the prompt's keys are; float64 softmax over all keys gives the expected sums.
"""

from __future__ import annotations

import math

import pytest
import torch

FAMILIES = ("sd3", "sd35", "flux", "flux_kontext", "chroma", "auraflow", "qwen_image", "lumina2", "wan21",
            "hidream", "hunyuan_dit")
LATENT = (9, 7)  # odd on purpose: circular padding to a 5×4 patch grid must be cropped away


@pytest.fixture(scope="module")
def env(comfy):
    from harness import dit_fixtures as dfx

    from harness import pack as cp

    return dfx, cp


def _setup(dfx, family):
    """The tiny model of ``family``, its positive and negative conditioning (seeds 1, 2) and latent."""
    mp = dfx.tiny_dit_patcher(family)
    pos, neg = dfx.dit_conditioning(family, mp, seed=1), dfx.dit_conditioning(family, mp, seed=2)
    return mp, pos, neg, dfx.dit_latent(family, *LATENT)


def _sample(dfx, m, pos, neg, lat, steps=2, cfg=2.0, seed=1):
    from harness import fixtures

    with torch.inference_mode():
        return fixtures.sample(m, pos, neg, lat, seed=seed, steps=steps, cfg=cfg)


class Recorder:
    """Records q/k (float64, BHLD) of every attention call it sees, with the chunk's branch."""

    def __init__(self):
        self.calls = []

    def __deepcopy__(self, memo):  # ModelPatcher.clone() deep-copies model_options: stay one recorder
        return self

    def __call__(self, func, *args, **kwargs):
        q, k = args[0], args[1]
        heads = args[3] if len(args) > 3 else kwargs["heads"]
        to = kwargs.get("transformer_options") or {}
        if kwargs.get("skip_reshape", False):
            qh, kh = q, k
        else:
            b, lq, c = q.shape
            qh = q.view(b, lq, heads, c // heads).transpose(1, 2)
            kh = k.view(b, k.shape[1], heads, c // heads).transpose(1, 2)
        mask = args[4] if len(args) > 4 else kwargs.get("mask")
        self.calls.append({"q": qh.detach().double().clone(), "k": kh.detach().double().clone(),
                           "cou": list(to.get("cond_or_uncond", [])), "sigma": float(to["sigmas"][0]),
                           "mask": None if mask is None else mask.detach().double().clone()})
        return func(*args, **kwargs)


def _layout(family, cond, mp, latent_hw, frames=1):
    """This test's own statement of each family's token layout: (order, n_text, n_img, n_extra, key map)."""
    n_img = frames * math.ceil(latent_hw[0] / 2) * math.ceil(latent_hw[1] / 2)
    ctx, extra = cond[0][0], cond[0][1]
    n_ctx = ctx.shape[1]
    dm = mp.model.diffusion_model
    if family == "auraflow":  # 8 learned registers before the prompt
        r = dm.register_tokens.shape[1]
        return "txt", r + n_ctx, n_img, 0, [(r + i, i) for i in range(n_ctx)]
    if family == "lumina2":  # caption padded to a multiple of pad_tokens_multiple, image padded likewise
        mult = dm.pad_tokens_multiple or 1
        n_text = -(-n_ctx // mult) * mult
        return "txt", n_text, n_img, (-n_img) % mult, [(i, i) for i in range(n_ctx)]
    if family == "flux_kontext":  # reference latents appended after the target image tokens
        n_ref = sum(math.ceil(r.shape[-2] / 2) * math.ceil(r.shape[-1] / 2) for r in extra["reference_latents"])
        return "txt", n_ctx, n_img, n_ref, [(i, i) for i in range(n_ctx)]
    if family == "hidream":  # [image, T5, last Llama layer, this block's Llama layer]: T5 + Llama tokens
        n_ll = extra["conditioning_llama3"].shape[2]
        keys = [(i, i) for i in range(n_ctx)] + [(n_ctx + j, n_ctx + j) for j in range(n_ll)]
        keys += [(n_ctx + n_ll + j, n_ctx + j) for j in range(n_ll)]  # this block's copy: same tokens
        return "img", n_ctx + 2 * n_ll, n_img, 0, keys
    if family == "hunyuan_dit":  # cross-attention to [BERT 77, mT5]
        n_t5 = extra["conditioning_mt5xl"].shape[1]
        return "cross", n_ctx + n_t5, n_img, 0, [(i, i) for i in range(n_ctx + n_t5)]
    if family == "wan21":
        return "cross", n_ctx, n_img, 0, [(i, i) for i in range(n_ctx)]
    return "txt", n_ctx, n_img, 0, [(i, i) for i in range(n_ctx)]


def _image_text(layout, lq: int, lk: int):
    """(image query rows, first text key) if a call with lq queries and lk keys is image→text, else None."""
    order, n_text, n_img, n_extra, _ = layout
    if order == "cross":
        return (slice(0, n_img), 0) if (lq, lk) == (n_img, n_text) else None
    if not lq == lk == n_text + n_img + n_extra:
        return None
    return (slice(n_text, n_text + n_img), 0) if order == "txt" else (slice(0, n_img), n_img)


def _expected_sum(rec, layout, prompt_len, normalize="all", frames=1):
    """Σ over image→text calls of the positive branch: (n_img, prompt_len) float64 mean-over-heads probs
    (for a video: per patch, the mean over frames)."""
    keymap, n_img = layout[4], layout[2]
    acc = torch.zeros(n_img, prompt_len, dtype=torch.float64)
    n = 0
    seen_sigmas = set()
    for c in rec.calls:
        if 0 not in c["cou"]:
            continue
        where = _image_text(layout, c["q"].shape[2], c["k"].shape[2])
        if where is None:
            continue
        rows, base = where
        chunk = c["q"].shape[0] // len(c["cou"])
        i = c["cou"].index(0) * chunk  # first image of the positive chunk
        q, k = c["q"][i], c["k"][i]
        logits = q[:, rows] @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        if c["mask"] is not None:  # Flux regional prompting: additive (B|1, [H,] Lq, Lk)
            m = c["mask"]
            m = m[min(i, m.shape[0] - 1)] if m.ndim >= 3 else m
            logits = logits + (m[..., rows, :] if m.ndim == 2 else m[:, rows])
        cols = torch.tensor([base + kk for kk, _ in keymap])
        if normalize == "all":
            p = torch.softmax(logits, -1)[..., cols]
        else:
            p = torch.softmax(logits[..., cols], -1)
        p = p.mean(0)
        for j, (_, pos) in enumerate(keymap):
            acc[:, pos] += p[:, j]
        n += 1
        seen_sigmas.add(c["sigma"])
    if frames > 1:
        acc = acc.reshape(frames, n_img // frames, prompt_len).mean(0)
    return acc, n, len(seen_sigmas)


VARIANTS = [(f, {}, 1) for f in FAMILIES] + [
    ("lumina2", {"pad_tokens_multiple": 32}, 1),  # Z-Image style: caption and image padded to 32
    ("wan21", {}, 3),  # a 3-frame video: maps are the mean over frames
]


@pytest.mark.parametrize("family,overrides,frames", VARIANTS,
                         ids=[f + ("-pad32" if o else "") + (f"-{t}frames" if t > 1 else "") for f, o, t in VARIANTS])
def test_capture_matches_an_independent_float64_softmax(env, family, overrides, frames):
    dfx, cp = env
    mp = dfx.tiny_dit_patcher(family, **overrides)
    pos = dfx.dit_conditioning(family, mp, seed=1)
    neg = dfx.dit_conditioning(family, mp, seed=2, length=None)
    lat = dfx.dit_latent(family, *LATENT)
    if frames > 1:
        lat = lat.repeat(1, 1, frames, 1, 1)
    base = _sample(dfx, mp, pos, neg, lat)

    rec = Recorder()
    inner = mp.clone()
    inner.model_options["transformer_options"]["optimized_attention_override"] = rec
    m, maps = cp.add_capture(inner, "all", "positive", 0.0, 1.0, "mean")
    out = _sample(dfx, m, pos, neg, lat)
    assert torch.equal(out, base), "capture changed the generated latent"

    layout = _layout(family, pos, mp, LATENT, frames)
    res = maps.result("positive")
    prompt_len = res.maps.shape[1]
    exp, n_calls, steps = _expected_sum(rec, layout, prompt_len, frames=frames)
    n_layers = len(res.meta["layers"])
    assert n_calls == n_layers * steps and steps == 2, (n_calls, n_layers, steps)
    assert n_layers == len(cp.model_layers(mp))
    assert res.maps.shape == (1, prompt_len, *LATENT)
    assert res.meta["model_family"] == cp.model_family(mp)

    (uid,) = {k[0] for k in maps.last_run.store.sums if maps.last_run.prompts[k[0]].branch == "positive"}
    (got,) = [v for k, v in maps.last_run.store.sums.items() if k[0] == uid]
    got = got[0].reshape(prompt_len, -1).T.double()  # (n_img, prompt_len)
    torch.testing.assert_close(got, exp, atol=2e-5, rtol=1e-4)
    if layout[0] != "cross":
        assert float(got.sum(1).max()) < n_calls  # joint: the image keys take part of every row
    assert torch.isfinite(res.maps).all() and float(res.maps.min()) >= 0


@pytest.mark.parametrize("family", ["flux", "sd3", "auraflow"])
def test_text_keys_softmax_option(env, family):
    dfx, cp = env
    mp, pos, neg, lat = _setup(dfx, family)
    rec = Recorder()
    inner = mp.clone()
    inner.model_options["transformer_options"]["optimized_attention_override"] = rec
    m, maps = cp.add_capture(inner, "all", "positive", 0.0, 1.0, "mean", "text")
    _sample(dfx, m, pos, neg, lat)
    res = maps.result("positive")
    prompt_len = res.maps.shape[1]
    exp, n_calls, _ = _expected_sum(rec, _layout(family, pos, mp, LATENT), prompt_len, normalize="text")
    (got,) = [v for k, v in maps.last_run.store.sums.items() if maps.last_run.prompts[k[0]].branch == "positive"]
    got = got[0].reshape(prompt_len, -1).T.double()
    torch.testing.assert_close(got, exp, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(got.sum(1), torch.full((got.shape[0],), float(n_calls), dtype=torch.float64))


def test_layer_selection_per_family(env):
    dfx, cp = env
    mp, pos, neg, lat = _setup(dfx, "flux")
    names = [k.name() for k in cp.model_layers(mp)]
    assert names[0] == "double.0.0" and any(n.startswith("single.") for n in names)
    m, maps = cp.add_capture(mp, "single, !single.0", "positive", 0.0, 1.0, "mean")
    _sample(dfx, m, pos, neg, lat)
    got = maps.result().meta["layers"]
    assert got and all(n.startswith("single.") for n in got) and "single.0.0" not in got
    with pytest.raises(ValueError, match="selects no cross-attention layer.*double.0.0"):
        cp.add_capture(mp, "input", "positive", 0.0, 1.0, "mean")
    wan = dfx.tiny_dit_patcher("wan21")
    assert {k.block for k in cp.model_layers(wan)} == {"block"}


class OldComfyCalls:
    """Mimics ComfyUI 0.3.64 inside the attention call: no block ids in transformer_options and, for
    Qwen-Image, flattened (B, L, H·D) tensors without skip_reshape. Chains to the override below it."""

    def __init__(self, inner):
        self.inner = inner

    def __deepcopy__(self, memo):
        return self

    def __call__(self, func, *args, **kwargs):
        to = dict(kwargs["transformer_options"])
        for key in ("block_type", "block_index", "total_blocks"):
            to.pop(key, None)
        kwargs = {**kwargs, "transformer_options": to}
        if kwargs.get("skip_reshape"):
            q, k, v = args[:3]
            heads = args[3] if len(args) > 3 else kwargs.get("heads")
            flat = [t.transpose(1, 2).reshape(t.shape[0], t.shape[2], -1) for t in (q, k, v)]
            kwargs = {kk: vv for kk, vv in kwargs.items() if kk != "skip_reshape"}
            args = (*flat, heads, *args[4:])
        return self.inner(func, *args, **kwargs)


@pytest.mark.parametrize("family", ["flux", "qwen_image"])
def test_old_call_conventions_give_the_same_maps(env, family):
    dfx, cp = env
    mp, pos, neg, lat = _setup(dfx, family)
    m, maps = cp.add_capture(mp, "all", "positive", 0.0, 1.0, "mean")
    _sample(dfx, m, pos, neg, lat)
    new = maps.result().maps.clone()
    old = m.clone()
    to = old.model_options["transformer_options"]
    to["optimized_attention_override"] = OldComfyCalls(to["optimized_attention_override"])
    _sample(dfx, old, pos, neg, lat)
    res = maps.result()
    assert res.meta["layers"] == [k.name() for k in cp.model_layers(mp)]
    torch.testing.assert_close(res.maps, new, atol=1e-5, rtol=1e-4)


# ---------------------------------------------------------------------------------------------------
# reweighting


class OutputRecorder:
    """Outermost override: records the arguments it is given and the output the chain returns."""

    def __init__(self, inner):
        self.inner = inner
        self.calls = []

    def __deepcopy__(self, memo):
        return self

    def __call__(self, func, *args, **kwargs):
        out = self.inner(func, *args, **kwargs)
        to = kwargs.get("transformer_options") or {}
        self.calls.append({"args": [a.detach().clone() if isinstance(a, torch.Tensor) else a for a in args],
                           "kwargs": {k: v for k, v in kwargs.items() if k != "transformer_options"},
                           "cou": list(to.get("cond_or_uncond", [])), "out": out.detach().clone()})
        return out


@pytest.mark.parametrize("family", FAMILIES)
def test_reweight_all_ones_is_bit_identical_and_a_weight_changes_the_image(env, family):
    dfx, cp = env
    mp, pos, neg, lat = _setup(dfx, family)
    base = _sample(dfx, mp, pos, neg, lat)
    ones = cp.add_reweight(mp, [("#2", 1.0), ("#3", 1.0)], "scale", "all", "positive", 0.0, 1.0)
    assert torch.equal(_sample(dfx, ones, pos, neg, lat), base)
    for mode in ("scale", "renormalize"):
        m = cp.add_reweight(mp, [("#2", 4.0)], mode, "all", "positive", 0.0, 1.0)
        out = _sample(dfx, m, pos, neg, lat)
        assert torch.isfinite(out).all()
        assert (out - base).abs().max() > 1e-4, mode


@pytest.mark.parametrize("family", ["flux", "sd3", "hidream", "wan21"])
def test_scale_matches_an_explicit_reference_on_a_real_joint_layer(env, family):
    """P2P semantics: image queries' post-softmax probability on the chosen prompt token × w, no
    renormalisation; text queries unchanged."""
    dfx, cp = env
    mp, pos, neg, lat = _setup(dfx, family)
    w = 3.0
    m = cp.add_reweight(mp, [("#2", w)], "scale", "all", "positive", 0.0, 1.0)
    to = m.model_options["transformer_options"]
    rec = OutputRecorder(to["optimized_attention_override"])
    to["optimized_attention_override"] = rec
    _sample(dfx, m, pos, neg, lat, steps=1)
    layout = _layout(family, pos, mp, LATENT)
    keymap = layout[4]
    checked = 0
    for c in rec.calls:
        q, k, v = c["args"][:3]
        heads = c["args"][3] if len(c["args"]) > 3 else c["kwargs"]["heads"]
        bhld = c["kwargs"].get("skip_reshape", False)
        if not bhld:
            b, _, cc = q.shape
            q, k, v = (t.view(b, t.shape[1], heads, cc // heads).transpose(1, 2) for t in (q, k, v))
        where = _image_text(layout, q.shape[2], k.shape[2])
        if where is None:
            continue
        rows, base = where
        q, k, v = q.double(), k.double(), v.double()
        p = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), -1)
        if 0 in c["cou"]:
            chunk = q.shape[0] // len(c["cou"])
            b0 = c["cou"].index(0) * chunk
            cols = torch.tensor([base + kk for kk, pp in keymap if pp == 2])
            sub = p[b0:b0 + chunk, :, rows]
            sub[..., cols] *= w
            p[b0:b0 + chunk, :, rows] = sub
        ref = p @ v  # B, H, Lq, D
        out = c["out"].double()
        if not c["kwargs"].get("skip_output_reshape", False):
            out = out.view(out.shape[0], out.shape[1], heads, -1).transpose(1, 2)
        torch.testing.assert_close(out, ref, atol=2e-4, rtol=1e-3)
        checked += 0 in c["cou"]
    assert checked == len(cp.model_layers(mp))


def test_renormalize_raises_the_share_of_the_weighted_token(env):
    dfx, cp = env
    mp, pos, neg, lat = _setup(dfx, "flux")
    shares = []
    for w in (1.0, 3.0):
        rw = cp.add_reweight(mp, [("#2", w)], "renormalize", "all", "positive", 0.0, 1.0)
        m, maps = cp.add_capture(rw, "all", "positive", 0.0, 1.0, "mean")
        _sample(dfx, m, pos, neg, lat, steps=1)
        shares.append(float(maps.result().maps[0, 2].mean()))
    assert shares[1] > shares[0] * 1.5


def test_unsupported_family_and_mismatched_conditioning(env, comfy):
    dfx, cp = env
    mp = dfx.tiny_dit_patcher("flux")
    m, maps = cp.add_capture(mp, "all", "positive", 0.0, 1.0, "mean")
    from harness import fixtures

    sd_cond = fixtures.random_conditioning("sd15", seed=3)  # 768-wide CLIP-L context, made for SD1.5
    ctx_dim = cp.expected_context_dim(mp.model.diffusion_model, cp.model_spec(mp))
    if sd_cond[0][0].shape[-1] == ctx_dim:
        pytest.skip("fixture context width equals CLIP-L's")
    sd_cond[0][1]["guidance"] = 3.5
    with pytest.raises(ValueError, match=r"has 768 features per token but this Flux model expects"):
        _sample(dfx, m, sd_cond, sd_cond, dfx.dit_latent("flux", *LATENT), steps=1)


def test_store_memory_is_one_grid_per_prompt_independent_of_steps_and_layers(env):
    dfx, cp = env
    mp, pos, neg, lat = _setup(dfx, "flux")
    sizes = []
    for steps in (1, 3):
        m, maps = cp.add_capture(mp, "all", "both", 0.0, 1.0, "mean")
        _sample(dfx, m, pos, neg, lat, steps=steps)
        sizes.append((maps.last_run.store.nbytes(), maps.last_run.store.peak_bytes))
        assert maps.result().meta["steps"] == steps
    n_tokens = pos[0][0].shape[1] + neg[0][0].shape[1]
    formula = 4 * 1 * n_tokens * 5 * 4  # fp32 · batch · tokens · patch grid, for both prompts
    assert sizes == [(formula, formula)] * 2
    assert len(cp.model_layers(mp)) > 1  # several layers, still one accumulator per prompt


def test_flux_regional_attention_mask_enters_the_softmax(env):
    """A regional-prompting mask (cond "attention_mask", additive over the joint sequence) reaches the
    attention as ``mask=``; the captured probabilities must include it (compared with the same
    independent softmax, mask added), and the output stays the model's own."""
    dfx, cp = env
    mp, pos, neg, lat = _setup(dfx, "flux")
    n_txt, grid = pos[0][0].shape[1], (5, 4)
    n = n_txt + grid[0] * grid[1]
    g = torch.Generator().manual_seed(7)
    mask = torch.zeros(1, n, n)
    mask[:, n_txt:, 2:12] = -4.0 * torch.rand(1, n - n_txt, 10, generator=g)  # image rows see words 2-11 less
    pos = [[pos[0][0], {**pos[0][1], "attention_mask": mask, "attention_mask_img_shape": grid}]]
    base = _sample(dfx, mp, pos, neg, lat)
    rec = Recorder()
    inner = mp.clone()
    inner.model_options["transformer_options"]["optimized_attention_override"] = rec
    m, maps = cp.add_capture(inner, "all", "positive", 0.0, 1.0, "mean")
    assert torch.equal(_sample(dfx, m, pos, neg, lat), base)
    assert any(c["mask"] is not None for c in rec.calls)
    res = maps.result()
    prompt_len = res.maps.shape[1]
    exp, n_calls, _ = _expected_sum(rec, _layout("flux", pos, mp, LATENT), prompt_len)
    (got,) = [v for k, v in maps.last_run.store.sums.items() if maps.last_run.prompts[k[0]].branch == "positive"]
    got = got[0].reshape(prompt_len, -1).T.double()
    torch.testing.assert_close(got, exp, atol=2e-5, rtol=1e-4)
    rec.calls = [{**c, "mask": None} for c in rec.calls]
    no_mask, _, _ = _expected_sum(rec, _layout("flux", pos, mp, LATENT), prompt_len)
    assert (no_mask[:, 2:12] - got[:, 2:12]).mean() > 0  # the mask lowered those words' share


def test_hidream_e1_editing_is_refused_by_name(env):
    """HiDream-E1 concatenates the edited image to the latent's width before patchify: the target's tokens
    are strided through rows the pack does not label. Refused before the first step, never mislabelled."""
    dfx, cp = env
    mp, pos, neg, lat = _setup(dfx, "hidream")
    e1 = [[pos[0][0], {**pos[0][1], "concat_latent_image": torch.zeros_like(lat)}]]
    m, maps = cp.add_capture(mp, "all", "positive", 0.0, 1.0, "mean")
    with pytest.raises(ValueError, match="does not support HiDream-E1 editing"):
        _sample(dfx, m, e1, neg, lat)
    assert maps.latest is None  # no record of a refused run


@pytest.mark.parametrize("family,extra,name", [
    ("lumina2", {"ref_latents": [torch.zeros(1, 16, 8, 8)]}, "Z-Image Omni"),
    ("lumina2", {"siglip_feats": [torch.zeros(1, 4, 4, 8)]}, "Z-Image Omni"),
    ("wan21", {"reference_latent": torch.zeros(1, 16, 8, 8)}, "reference latent"),
    ("wan21", {"time_dim_concat": torch.zeros(1, 16, 1, 8, 8)}, "Phantom"),
    ("qwen_image", {}, "Qwen-Image-Layered"),
])
def test_layout_changing_inputs_are_refused_by_name(env, family, extra, name):
    """Inputs that newer ComfyUI (or other loaders) pass to these models change where the target image sits;
    the geometry refuses them by name (checked on the real model's spec, inputs as the model receives them)."""
    from attention_focus.nodes.families import geometry, model_spec

    dfx, cp = env
    mp = dfx.tiny_dit_patcher(family)
    spec = model_spec(mp)
    x = torch.zeros(1, 16, 3, 8, 8) if family == "qwen_image" else torch.zeros(1, 16, 8, 8)
    with pytest.raises(ValueError, match=name):
        geometry(spec, x, torch.zeros(1, 12, 64), extra)
