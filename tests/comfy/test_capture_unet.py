"""Capture on real ComfyUI UNets (tiny random weights), sampled by ComfyUI's own sampler."""

from __future__ import annotations

import pytest
import torch


from harness.reference import UnetRecorder, naive_unet_maps


@pytest.fixture(scope="module")
def env(comfy):
    from harness import fixtures

    from harness import pack as cp

    return comfy, fixtures, cp


def _sample(fixtures, m, pos, neg, lat, steps=3, cfg=5.0, seed=1):
    with torch.inference_mode():
        return fixtures.sample(m, pos, neg, lat, seed=seed, steps=steps, cfg=cfg)


@pytest.mark.parametrize("family", ["sd15", "sd2v", "sdxl"])
def test_maps_match_independent_softmax_and_output_unchanged(env, family):
    comfy, fixtures, cp = env
    mp = fixtures.tiny_unet_patcher(family)
    pos = fixtures.random_conditioning(family, seed=1)
    neg = fixtures.random_conditioning(family, seed=2)
    lat = torch.zeros(2, 4, 13, 9)  # odd, non-square, batch 2

    rec = UnetRecorder()
    plain = mp.clone()
    plain.model_options.setdefault("transformer_options", {})["optimized_attention_override"] = rec
    base = _sample(fixtures, plain, pos, neg, lat)

    m, maps = cp.add_capture(mp, "all", "positive", 0.0, 1.0, "mean")
    out = _sample(fixtures, m, pos, neg, lat)
    assert torch.equal(out, base), "capture changed the generated latent"

    res = maps.result("positive")
    assert res.maps.shape == (2, 77, 13, 9)
    assert res.meta["steps"] == 3
    ref = naive_unet_maps(rec.calls, (13, 9), 2)
    assert torch.allclose(res.maps.double(), ref, rtol=1e-4, atol=1e-5), \
        (res.maps.double() - ref).abs().max()
    # the two images of the batch got their own maps
    assert not torch.allclose(res.maps[0], res.maps[1])
    layers = cp.unet_layers(mp)
    assert res.meta["layers"] == [k.name() for k in layers]
    if family == "sdxl":
        assert any(k.depth > 0 for k in layers), "SDXL-shaped model must have depth > 1 blocks"


def test_layer_and_window_selection(env):
    comfy, fixtures, cp = env
    mp = fixtures.tiny_unet_patcher("sd15")
    pos = fixtures.random_conditioning("sd15", seed=1)
    neg = fixtures.random_conditioning("sd15", seed=2)
    lat = torch.zeros(1, 4, 16, 16)
    m, maps = cp.add_capture(mp, "output, !L0", "both", 0.5, 1.0, "max")
    _sample(fixtures, m, pos, neg, lat, steps=4)
    res = maps.result("positive")
    assert all(name.startswith("output") for name in res.meta["layers"])
    assert 0 not in res.meta["levels"]
    assert res.meta["steps"] == 2  # the second half of a 4-step euler schedule
    assert maps.result("negative").maps.shape == res.maps.shape
    with pytest.raises(ValueError, match="selects no cross-attention layer"):
        cp.add_capture(mp, "input.99", "positive", 0, 1, "mean")
    with pytest.raises(ValueError, match="unknown layer item"):
        cp.add_capture(mp, "foo", "positive", 0, 1, "mean")
    with pytest.raises(ValueError, match="start_percent"):
        cp.add_capture(mp, "all", "positive", 0.8, 0.2, "mean")


def test_cfg1_and_repeated_context_folding(env):
    comfy, fixtures, cp = env
    mp = fixtures.tiny_unet_patcher("sd15")
    pos = fixtures.random_conditioning("sd15", n_chunks=2, seed=3)  # 154 tokens
    neg = fixtures.random_conditioning("sd15", seed=4)  # 77 tokens: batched by repetition to 154
    lat = torch.zeros(1, 4, 8, 8)
    m, maps = cp.add_capture(mp, "all", "both", 0.0, 1.0, "mean")
    _sample(fixtures, m, pos, neg, lat, steps=2)
    p, n = maps.result("positive"), maps.result("negative")
    assert p.maps.shape[1] == 154 and n.maps.shape[1] == 77
    # probabilities over the true tokens sum to 1 per pixel, per layer and step (before upsampling)
    for grid in maps.last_run.store.sums.values():
        assert torch.allclose(grid.sum(1), torch.full_like(grid.sum(1), 2.0), atol=1e-4)
    # cfg 1: the negative is never evaluated, the positive still is
    m1, maps1 = cp.add_capture(mp, "all", "both", 0.0, 1.0, "mean")
    _sample(fixtures, m1, pos, neg, lat, steps=2, cfg=1.0)
    assert maps1.result("positive").meta["steps"] == 2
    with pytest.raises(ValueError, match="no attention was captured for the negative"):
        maps1.result("negative")


def test_unsupported_family_is_named(env):
    comfy, fixtures, cp = env
    mp = fixtures.tiny_unet_patcher("sd15").clone()

    class Fake(torch.nn.Module):
        pass

    class Holder:
        diffusion_model = Fake()
        model_config = None

    mp.model = Holder()
    with pytest.raises(ValueError, match=r"does not support the Holder model family \(Fake\).*Supported: SD1.x"):
        cp.add_capture(mp, "all", "positive", 0, 1, "mean")


def test_foreign_override_and_attn2_replacement_are_reported(env, caplog):
    comfy, fixtures, cp = env
    mp = fixtures.tiny_unet_patcher("sd15")
    pos, neg = fixtures.random_conditioning("sd15", seed=1), fixtures.random_conditioning("sd15", seed=2)
    lat = torch.zeros(1, 4, 8, 8)
    m, maps = cp.add_capture(mp, "all", "positive", 0.0, 1.0, "mean")
    # another pack that overwrites the override slot instead of chaining
    m2 = m.clone()
    m2.model_options["transformer_options"]["optimized_attention_override"] = lambda func, *a, **k: func(*a, **k)
    with caplog.at_level("WARNING", logger="attention_focus"):
        _sample(fixtures, m2, pos, neg, lat, steps=1)
    assert "replaced the attention override" in caplog.text
    with pytest.raises(ValueError, match="no attention was captured"):
        maps.result()
    # an attn2 replacement hides its layer; the others are still captured
    caplog.clear()
    m3 = m.clone()
    m3.set_model_attn2_replace(lambda q, k, v, extra: v.mean(1, keepdim=True).expand_as(q).contiguous(),
                               "middle", 0, 0)
    with caplog.at_level("WARNING", logger="attention_focus"):
        _sample(fixtures, m3, pos, neg, lat, steps=1)
    assert "('middle', 0, 0)" in caplog.text
    assert "middle.0.0" not in maps.result().meta["layers"]
    assert "input.1.0" in maps.result().meta["layers"]


@pytest.mark.parametrize("node", ["TorchCompileModel", "ContextWindowsManual"])
def test_set_ups_the_hooks_cannot_follow_are_refused_before_sampling(env, node):
    """Torch Compile Model would trace the hooks once; context windows split one evaluation into several model
    calls over parts of the latent. Both refused by name before the first step, with the fix."""
    comfy, fixtures, cp = env
    mp = fixtures.tiny_unet_patcher("sd15")
    pos, neg = fixtures.random_conditioning("sd15", seed=1), fixtures.random_conditioning("sd15", seed=2)
    m, maps = cp.add_capture(mp, "all", "positive", 0.0, 1.0, "mean")
    if node == "TorchCompileModel":
        from comfy_extras.nodes_torch_compile import TorchCompileModel

        m = TorchCompileModel.execute(m, "inductor").args[0]
        match = "Torch Compile Model"
    else:
        from comfy_extras.nodes_context_windows import ContextWindowsManualNode

        import inspect

        extra = {"freenoise": False} if "freenoise" in inspect.signature(ContextWindowsManualNode.execute).parameters \
            else {}  # newer ComfyUI (0.33) added a required freenoise input
        m = ContextWindowsManualNode.execute(m, 4, 1, "standard_static", 1, False, "pyramid", 0, **extra).args[0]
        match = "context windows"
    with pytest.raises(ValueError, match=f"cannot capture or reweight with {match}"):
        _sample(fixtures, m, pos, neg, torch.zeros(1, 4, 8, 8))
    assert maps.latest is None
