"""The random-weight fixtures load and run through ComfyUI's own loaders, nodes, executor and sampler."""

from __future__ import annotations

import math
import time

import pytest
import torch


@pytest.fixture(scope="module")
def fx(comfy):
    from harness import fixtures

    return fixtures


@pytest.fixture(scope="module")
def ckpt(comfy, fx):
    t = time.perf_counter()
    name = fx.install_checkpoint(comfy)
    size = fx.sd15_checkpoint().stat().st_size / 2**20
    print(f"\nsd15 checkpoint {name}: {size:.0f} MiB, ready in {time.perf_counter() - t:.2f}s")
    return name


@pytest.fixture(scope="module")
def loaded(comfy, ckpt):
    t = time.perf_counter()
    with torch.inference_mode():
        out = comfy.nodes.CheckpointLoaderSimple().load_checkpoint(ckpt)
    print(f"\nCheckpointLoaderSimple: {time.perf_counter() - t:.2f}s")
    return out


class _CrossAttnProbe:
    """An optimized_attention_override that keeps the softmax of a few cross-attention calls."""

    def __init__(self, limit=8):
        self.probs, self.limit = [], limit

    def __call__(self, func, *args, **kwargs):
        q, k, heads = args[0], args[1], args[3] if len(args) > 3 else kwargs["heads"]
        if k.shape[1] % 77 == 0 and k.shape[1] != q.shape[1] and len(self.probs) < self.limit:
            b, d = q.shape[0], q.shape[-1] // heads
            qh = q.float().view(b, -1, heads, d).transpose(1, 2)
            kh = k.float().view(b, -1, heads, d).transpose(1, 2)
            self.probs.append(torch.softmax(qh @ kh.transpose(-1, -2) / math.sqrt(d), -1))
        return func(*args, **kwargs)


def _assert_peaked(probe):
    assert probe.probs, "no cross-attention call was seen"
    for p in probe.probs:
        n = p.shape[-1]
        entropy = -(p * p.clamp_min(1e-12).log()).sum(-1).mean()
        assert entropy < 0.9 * math.log(n), f"attention is nearly uniform (entropy {entropy:.2f})"
        assert p.amax(-1).mean() > 3.0 / n


def test_checkpoint_loads_as_sd15(comfy, fx, loaded):
    import comfy.model_base

    model, clip, vae = loaded
    assert isinstance(model.model, comfy.model_base.BaseModel)
    assert type(model.model) is comfy.model_base.BaseModel
    assert model.model.model_config.__class__.__name__ == "SD15"
    cfg = model.model.model_config.unet_config
    assert (cfg["model_channels"], cfg["context_dim"], cfg["channel_mult"]) == (320, 768, [1, 2])
    assert cfg["transformer_depth"] == [1, 1] and cfg["transformer_depth_middle"] == 1
    assert model.model.model_type == comfy.model_base.ModelType.EPS
    with torch.inference_mode():
        conds = []
        for text in ("a photo of a cat", "a red wizard hat"):
            cond, pooled = clip.encode_from_tokens(clip.tokenize(text), return_pooled=True)
            assert cond.shape == (1, 77, 768) and pooled.shape == (1, 768)
            assert torch.isfinite(cond).all()
            conds.append(cond)
        assert not torch.allclose(conds[0], conds[1])
        img = vae.decode(torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0)))
    assert img.shape == (1, 64, 64, 3)
    assert torch.isfinite(img).all() and img.std() > 0.01


def test_checkpoint_unet_attention_is_not_uniform(comfy, fx, loaded):
    model, clip, _ = loaded
    with torch.inference_mode():
        pos = comfy.nodes.CLIPTextEncode().encode(clip, "a photo of a cat")[0]
        neg = comfy.nodes.CLIPTextEncode().encode(clip, "blurry")[0]
    m = model.clone()
    probe = _CrossAttnProbe()
    m.model_options.setdefault("transformer_options", {})["optimized_attention_override"] = probe
    out = fx.sample(m, pos, neg, torch.zeros(1, 4, 8, 8), seed=0, steps=1, cfg=5.0)
    assert torch.isfinite(out).all()
    _assert_peaked(probe)


def test_checkpoint_whole_graph_saves_png(comfy, ckpt):
    out_dir = comfy.base / "output"
    before = set(out_dir.rglob("*.png"))
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "a photo of a cat"}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "blurry"}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "5": {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0],
            "seed": 1, "steps": 4, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal",
            "denoise": 1.0}},
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": "fixtures/sd15"}},
    }
    t = time.perf_counter()
    res = comfy.run(prompt)
    print(f"\nwhole SD1.5 graph (load + 4 steps at 64x64 + decode + save): {time.perf_counter() - t:.2f}s")
    images = res["outputs"]["7"]["images"]
    assert len(images) == 1
    new = set(out_dir.rglob("*.png")) - before
    assert len(new) == 1
    from PIL import Image

    with Image.open(new.pop()) as im:
        assert im.size == (64, 64)


@pytest.mark.parametrize("family", ["sd15", "sd2v", "sdxl"])
def test_tiny_unet_samples(comfy, fx, family):
    import comfy.model_base as mb

    t = time.perf_counter()
    mp = fx.tiny_unet_patcher(family)
    t_build = time.perf_counter() - t
    expected = {"sd15": ("SD15", mb.BaseModel, mb.ModelType.EPS),
                "sd2v": ("SD20", mb.BaseModel, mb.ModelType.V_PREDICTION),
                "sdxl": ("SDXL", mb.SDXL, mb.ModelType.EPS)}[family]
    assert mp.model.model_config.__class__.__name__ == expected[0]
    assert type(mp.model) is expected[1] and mp.model.model_type == expected[2]
    assert mp.load_device == mp.offload_device == torch.device("cpu")
    if family == "sd2v":
        assert mp.model.model_config.unet_config["attn_precision"] == torch.float32
    pos = fx.random_conditioning(family, seed=1)
    neg = fx.random_conditioning(family, seed=2)
    assert pos[0][0].shape[-1] == fx.CONTEXT_DIM[family]
    timings = []
    for shape in [(1, 4, 8, 8), (1, 4, 13, 9)]:
        m = mp.clone()
        probe = _CrossAttnProbe()
        m.model_options.setdefault("transformer_options", {})["optimized_attention_override"] = probe
        t = time.perf_counter()
        out = fx.sample(m, pos, neg, torch.zeros(shape), seed=3, steps=2, cfg=5.0)
        timings.append(f"{shape[-2]}x{shape[-1]} {time.perf_counter() - t:.2f}s")
        assert out.shape == shape
        assert torch.isfinite(out).all() and out.std() > 0
        _assert_peaked(probe)
    params = sum(p.numel() for p in mp.model.diffusion_model.parameters()) / 1e6
    print(f"\n{family}: {params:.1f} M params, build {t_build:.2f}s, 2 steps: {', '.join(timings)}")


def test_tiny_unet_sdxl_has_deep_blocks_and_is_deterministic(comfy, fx):
    mp = fx.tiny_unet_patcher("sdxl")
    keys = mp.model.diffusion_model.state_dict().keys()
    assert any(".transformer_blocks.1." in k for k in keys), "block_index > 0 must occur"
    assert not any(k.startswith("input_blocks.1.1.") for k in keys), "level 0 has no attention (as SDXL)"
    a = fx.tiny_unet_patcher("sd15").model.diffusion_model.state_dict()
    b = fx.tiny_unet_patcher("sd15").model.diffusion_model.state_dict()
    c = fx.tiny_unet_patcher("sd15", seed=1).model.diffusion_model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    bigger = fx.tiny_unet_patcher("sd15", model_channels=96, depth=[2, 1, 0])
    assert bigger.model.diffusion_model.model_channels == 96
    cond = fx.random_conditioning("sdxl", n_chunks=2, seed=5, batch=2)
    assert cond[0][0].shape == (2, 154, 2048) and cond[0][1]["pooled_output"].shape == (2, 1280)
