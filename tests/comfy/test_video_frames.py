"""Per-frame maps of a video model (tiny real Wan, 3 latent frames): each frame's maps against a float64
reference from recorded q/k, the mean over frames unchanged, one overlay per decoded frame, and the maps file."""

from __future__ import annotations

import math

import pytest
import torch

LATENT = (9, 7)
FRAMES = 3


class CrossRecorder:
    """Records q/k (float64, BHLD) of every attention call and the chunks' cond_or_uncond."""

    def __init__(self):
        self.calls = []

    def __deepcopy__(self, memo):
        return self

    def __call__(self, func, *args, **kwargs):
        q, k = args[0], args[1]
        heads = args[3] if len(args) > 3 else kwargs["heads"]
        if not kwargs.get("skip_reshape", False):
            b = q.shape[0]
            q = q.view(b, q.shape[1], heads, -1).transpose(1, 2)
            k = k.view(b, k.shape[1], heads, -1).transpose(1, 2)
        to = kwargs.get("transformer_options") or {}
        self.calls.append({"q": q.detach().double().clone(), "k": k.detach().double().clone(),
                           "cou": list(to.get("cond_or_uncond", []))})
        return func(*args, **kwargs)


@pytest.fixture(scope="module")
def wan(comfy):
    from harness import dit_fixtures as dfx
    from harness import fixtures
    from harness import pack as cp

    mp = dfx.tiny_dit_patcher("wan21")
    pos, neg = dfx.dit_conditioning("wan21", mp, seed=1), dfx.dit_conditioning("wan21", mp, seed=2)
    lat = dfx.dit_latent("wan21", *LATENT).repeat(1, 1, FRAMES, 1, 1)
    base = fixtures.sample(mp, pos, neg, lat, seed=1, steps=2, cfg=2.0)
    rec = CrossRecorder()
    inner = mp.clone()
    inner.model_options["transformer_options"]["optimized_attention_override"] = rec
    m, maps = cp.add_capture(inner, "all", "positive", 0.0, 1.0, "mean")
    out = fixtures.sample(m, pos, neg, lat, seed=1, steps=2, cfg=2.0)
    return comfy, maps, rec, pos, base, out


def test_per_frame_maps_match_an_independent_softmax(wan):
    comfy, maps, rec, pos, base, out = wan
    assert torch.equal(out, base), "the per-frame capture changed the generated latent"
    ms = maps.result()
    frames = ms.extra["frames"]
    n_text = pos[0][0].shape[1]
    h, w = math.ceil(LATENT[0] / 2), math.ceil(LATENT[1] / 2)
    assert frames.shape == (1, FRAMES, n_text, h, w) and ms.meta["frames"]["count"] == FRAMES
    exp = torch.zeros(FRAMES, h * w, n_text, dtype=torch.float64)
    n_layers = len(ms.meta["layers"])
    for c in rec.calls:
        if c["k"].shape[2] != n_text or c["q"].shape[2] != FRAMES * h * w or 0 not in c["cou"]:
            continue  # not the positive prompt's cross-attention
        i = c["cou"].index(0) * (c["q"].shape[0] // len(c["cou"]))
        p = torch.softmax(c["q"][i] @ c["k"][i].transpose(-1, -2) / math.sqrt(c["q"].shape[-1]), -1).mean(0)
        exp += p.reshape(FRAMES, h * w, n_text)
    exp = (exp / n_layers).transpose(1, 2).reshape(FRAMES, n_text, h, w)
    torch.testing.assert_close(frames[0].double(), exp, rtol=1e-4, atol=1e-6)
    # the mean over frames is still the running sum the maps are made of (that test_dit checks independently)
    (acc,) = maps.last_run.store.sums.values()
    torch.testing.assert_close(frames.mean(1), acc / n_layers, rtol=1e-5, atol=1e-6)


def test_heatmap_gives_one_overlay_per_decoded_frame(wan):
    comfy, maps, *_ = wan
    node = comfy.nodes.NODE_CLASS_MAPPINGS["AttentionFocusHeatmap"]()
    decoded = 1 + 4 * (FRAMES - 1)  # Wan's VAE: the first latent frame → 1 frame, each other → 4
    video = torch.rand(decoded, LATENT[0] * 8, LATENT[1] * 8, 3, generator=torch.Generator().manual_seed(0))
    overlays, grid, masks = node.render(maps, video, "#3, #5", "turbo", 0.6, "per word", "positive")["result"]
    assert overlays.shape[0] == decoded * 2 and grid.shape[0] == decoded and masks.shape[0] == decoded * 2
    m = masks.reshape(decoded, 2, *masks.shape[-2:])
    assert all(torch.equal(m[1], m[i]) for i in (2, 3, 4)) and all(torch.equal(m[5], m[i]) for i in (6, 7, 8))
    assert not torch.equal(m[0], m[1]) and not torch.equal(m[4], m[5])
    mean = node.render(maps, video, "#3, #5", "turbo", 0.6, "per word", "positive",
                       video_frames="mean")["result"][2].reshape(decoded, 2, *masks.shape[-2:])
    assert all(torch.equal(mean[0], mean[i]) for i in range(decoded))
    with pytest.raises(ValueError, match="not a multiple|maps hold"):
        node.render(maps, video[:0], "#3", "turbo", 0.6, "per word", "positive")


def test_maps_file_keeps_the_frames(wan):
    comfy, maps, *_ = wan
    video = torch.zeros(9, LATENT[0] * 8, LATENT[1] * 8, 3)
    saved = comfy.nodes.NODE_CLASS_MAPPINGS["AttentionFocusSaveMaps"]().save(maps, video, "t/video", "positive")
    f = saved["ui"]["attention_maps"][0]
    (loaded,) = comfy.nodes.NODE_CLASS_MAPPINGS["AttentionFocusLoadMaps"]().load(f"{f['subfolder']}/{f['filename']}")
    assert torch.equal(loaded.loaded.extra["frames"], maps.result().extra["frames"].cpu())
    assert loaded.loaded.meta["frames"]["count"] == FRAMES
