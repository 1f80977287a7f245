"""The tiny DiT fixtures run through ComfyUI's own sampler; the SD3 / Flux files load with the stock loaders."""

from __future__ import annotations

import math
import time

import pytest
import torch

from harness.dit_fixtures import DIT_FAMILIES

H, W = 9, 7  # odd latent: every family pads to the 2x2 patch grid (5 x 4 image tokens)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """This module runs torch single-threaded (restored afterwards): the tiny models' small ops gain nothing from
    a second thread, and when another process shares the 2 cores OpenMP stalls made 2 threads ~8x slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def dx(comfy):
    from harness import dit_fixtures

    return dit_fixtures


@pytest.fixture(scope="module")
def fx(comfy):
    from harness import fixtures

    return fixtures


class _AttnProbe:
    """An optimized_attention_override recording (query length, key length) and the normalised softmax
    entropy of every call (BLC or BHLD with skip_reshape; GQA keys repeated), and the keys [B, H, L, D] of
    the first call of each key length."""

    def __init__(self):
        self.calls: list[tuple[int, int, float]] = []
        self.first_keys: dict[int, torch.Tensor] = {}

    def __call__(self, func, *args, **kwargs):
        q, k = args[0], args[1]
        heads = args[3] if len(args) > 3 else kwargs["heads"]
        if kwargs.get("skip_reshape", False):
            qh, kh = q.float(), k.float()
        else:
            d = q.shape[-1] // heads
            qh = q.float().view(q.shape[0], -1, heads, d).transpose(1, 2)
            kh = k.float().view(k.shape[0], -1, heads, d).transpose(1, 2)
        if kh.shape[1] != qh.shape[1]:
            kh = kh.repeat_interleave(qh.shape[1] // kh.shape[1], 1)
        p = torch.softmax(qh @ kh.transpose(-1, -2) / math.sqrt(qh.shape[-1]), -1)
        entropy = -(p * p.clamp_min(1e-12).log()).sum(-1).mean().item()
        self.first_keys.setdefault(kh.shape[2], kh.clone())
        self.calls.append((qh.shape[2], kh.shape[2], entropy / math.log(kh.shape[2])))
        return func(*args, **kwargs)


def _probed(mp):
    m = mp.clone()
    probe = _AttnProbe()
    m.model_options.setdefault("transformer_options", {})["optimized_attention_override"] = probe
    return m, probe


_BLOCK_LISTS = {  # diffusion_model attributes holding (double, single) blocks
    "sd3": ("joint_blocks", None), "sd35": ("joint_blocks", None), "flux": ("double_blocks", "single_blocks"),
    "flux_kontext": ("double_blocks", "single_blocks"), "chroma": ("double_blocks", "single_blocks"),
    "auraflow": ("double_layers", "single_layers"), "qwen_image": ("transformer_blocks", None),
    "lumina2": ("layers", None), "wan21": ("blocks", None),
    "hidream": ("double_stream_blocks", "single_stream_blocks"), "hunyuan_dit": ("blocks", None),
}


def _expected_key_lengths(dx, family, text_len, ref_hw=()):
    lay = dx.token_layout(family, text_len, H, W, ref_hw=ref_hw)
    n_img = lay["n_image"]
    if family == "wan21":
        return {n_img, lay["text"].stop}  # self-attention, cross-attention
    if family == "hunyuan_dit":
        return set()  # its attention does not pass transformer_options
    keys = {lay["joint_len"]}
    if family == "sd35":
        keys.add(n_img)  # x_block_self_attn: second, image-only call
    if family == "lumina2":
        keys |= {text_len, n_img}  # context_refiner, noise_refiner
    return keys


@pytest.mark.parametrize("family", DIT_FAMILIES)
def test_tiny_dit_samples(comfy, dx, fx, family):
    from comfy import model_detection

    info = dx.DIT_INFO[family]
    t = time.perf_counter()
    mp = dx.tiny_dit_patcher(family)
    t_build = time.perf_counter() - t
    dm = mp.model.diffusion_model
    assert type(mp.model).__name__ == info["model_base"]
    assert type(dm).__name__ == info["diffusion_model"]
    assert type(mp.model.model_config).__name__ == info["config"]
    assert mp.load_device == mp.offload_device == torch.device("cpu")
    assert all(p.dtype == torch.float32 for p in dm.parameters())
    assert mp.model.latent_format.latent_channels == info["latent_channels"]
    double, single = _BLOCK_LISTS[family]
    assert len(getattr(dm, double)) == info["double"]
    assert (len(getattr(dm, single)) if single else 0) == info["single"]
    # the tiny weights have the shapes the stock loaders detect as this family
    detected = model_detection.model_config_from_unet(dm.state_dict(), "")
    assert type(detected).__name__ == info["config"]

    pos = dx.dit_conditioning(family, mp, seed=1)
    neg = dx.dit_conditioning(family, mp, seed=2)
    text_len = pos[0][0].shape[1]
    assert text_len == info["text_len"] and pos[0][0].shape[-1] == info["context_dim"]
    latent = dx.dit_latent(family, H, W)
    assert latent.ndim == info["latent_rank"] and latent.shape[1] == info["latent_channels"]

    m, probe = _probed(mp)
    hydit_keys = []
    if family == "hunyuan_dit":  # no override there: read the cross-attention key length from the block
        hook = dm.blocks[0].attn2.register_forward_pre_hook(lambda mod, args: hydit_keys.append(args[1].shape[1]))
    t = time.perf_counter()
    out = fx.sample(m, pos, neg, latent, seed=3, steps=2, cfg=2.0)
    t_sample = time.perf_counter() - t
    if family == "hunyuan_dit":
        hook.remove()
        assert set(hydit_keys) == {77 + 256}
    assert out.shape == latent.shape
    assert torch.isfinite(out).all() and out.std() > 0

    ref_hw = [r.shape[-2:] for r in pos[0][1].get("reference_latents", [])]
    assert {k for _, k, _ in probe.calls} == _expected_key_lengths(dx, family, text_len, ref_hw)
    n_img = dx.token_layout(family, text_len, H, W)["n_image"]
    assert n_img == 20
    assert all(q in (n_img, k) for q, k, _ in probe.calls)  # image queries or joint self-attention
    if family != "auraflow":  # Aura's q/k LayerNorms have no weights to peak the logits with
        for q, k, ent in probe.calls:
            assert ent < 0.9, f"nearly uniform attention (q {q}, k {k}, entropy/log(n) {ent:.2f})"

    # where the tokens sit: at the first joint call a token's key depends on its own input and the timestep
    # only, so other noise changes the target image keys but neither the text nor the (Kontext) reference keys
    lay = dx.token_layout(family, text_len, H, W, ref_hw)
    if lay["joint_len"] is not None:
        m2, probe2 = _probed(mp)
        fx.sample(m2, pos, neg, latent, seed=4, steps=2, cfg=2.0)
        k1, k2 = probe.first_keys[lay["joint_len"]], probe2.first_keys[lay["joint_len"]]
        assert torch.allclose(k1[:, :, lay["text"]], k2[:, :, lay["text"]], atol=1e-5)
        if lay["reference"] is not None:
            assert torch.allclose(k1[:, :, lay["reference"]], k2[:, :, lay["reference"]], atol=1e-5)
        noisy = (k1[:, :, lay["image"]] - k2[:, :, lay["image"]]).abs().amax(dim=(0, 1, 3))
        assert (noisy > 1e-3).all()  # every target image token

    # the text path is live: another positive prompt changes the result (same noise)
    other = fx.sample(mp, neg, neg, latent, seed=3, steps=2, cfg=2.0)
    assert (out - other).abs().max() > 1e-3
    if family == "flux_kontext":  # the reference image changes the result
        no_ref = [[pos[0][0], {k: v for k, v in pos[0][1].items() if k != "reference_latents"}]]
        assert (out - fx.sample(mp, no_ref, neg, latent, seed=3, steps=2, cfg=2.0)).abs().max() > 1e-3
    params = sum(p.numel() for p in dm.parameters()) / 1e6
    print(f"\n{family}: {params:.2f} M params, build {t_build:.2f}s, 2 steps {H}x{W} {t_sample:.2f}s, "
          f"attention calls (q, k): {sorted({(q, k) for q, k, _ in probe.calls})}")


def test_dit_conditioning_and_latents(comfy, dx):
    for family in DIT_FAMILIES:
        cond = dx.dit_conditioning(family, seed=4, batch=2)
        ctx, extra = cond[0]
        assert ctx.shape[0] == 2 and "pooled_output" in extra
        for v in extra.values():
            if torch.is_tensor(v):
                assert v.shape[0] == 2
        if family != "hunyuan_dit":
            assert dx.dit_conditioning(family, length=33)[0][0].shape[1] == 33
        lat = dx.dit_latent(family, 6, 5, batch=3)
        assert lat.shape[0] == 3 and lat.shape[-2:] == (6, 5) and not lat.any()
    with pytest.raises(ValueError):
        dx.dit_conditioning("hunyuan_dit", length=100)
    with pytest.raises(ValueError):
        dx.tiny_dit_patcher("sdxl")
    hd = dx.dit_conditioning("hidream")[0][1]
    assert hd["conditioning_llama3"].shape == (1, 32, 128, 4096) and hd["pooled_output"].shape == (1, 2048)
    ref = dx.dit_conditioning("flux_kontext", ref_hw=(6, 4))[0][1]["reference_latents"]
    assert len(ref) == 1 and ref[0].shape == (1, 16, 6, 4)
    a = dx.tiny_dit_patcher("flux").model.diffusion_model.state_dict()
    b = dx.tiny_dit_patcher("flux").model.diffusion_model.state_dict()
    c = dx.tiny_dit_patcher("flux", seed=1).model.diffusion_model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a) and not all(torch.equal(a[k], c[k]) for k in a)
    assert torch.all(a[dx.norm_param(a, "double_blocks.0.img_attn.norm.query_norm")] == dx.QK_GAIN)
    bigger = dx.tiny_dit_patcher("lumina2", pad_tokens_multiple=32)
    assert bigger.model.diffusion_model.pad_tokens_multiple == 32
    lay = dx.token_layout("lumina2", 40, H, W, pad_tokens_multiple=32)
    assert lay["text"] == slice(0, 64) and lay["image"] == slice(64, 84) and lay["joint_len"] == 96


# ---------------------------------------------------------------------------------------------------
# stock loaders (node classes called directly: the same code paths as a graph, without the executor)


@pytest.fixture(scope="module")
def stock(comfy, dx):
    t = time.perf_counter()
    names = {"sd3": dx.install_sd3(comfy), "flux": dx.install_flux(comfy)}
    files = [*dx.sd3_files(), *dx.flux_files()]
    sizes = ", ".join(f"{p.name} {p.stat().st_size / 2**20:.1f} MiB" for p in files)
    print(f"\nstock-loader files ready in {time.perf_counter() - t:.2f}s: {sizes}")
    return names


@pytest.fixture(scope="module")
def clip_l_conds(comfy, stock):
    """CLIPLoader(type "sd3") with the CLIP-L file alone, one CLIPTextEncode (fp16 on CPU is slow) and its
    ConditioningZeroOut as the negative (the SD3.5 reference workflow's negative)."""
    names = stock["sd3"]
    assert names["clip_name"] in comfy.folder_paths.get_filename_list("text_encoders")
    t = time.perf_counter()
    with torch.inference_mode():
        (te,) = comfy.nodes.CLIPLoader().load_clip(names["clip_name"], names["type"])
        pos = comfy.nodes.CLIPTextEncode().encode(te, "a photo of a cat")[0]
    neg = comfy.nodes.ConditioningZeroOut().zero_out(pos)[0]
    print(f"\nCLIPLoader + CLIPTextEncode: {time.perf_counter() - t:.2f}s")
    cond, pooled = pos[0][0], pos[0][1]["pooled_output"]
    # CLIP-L alone: features 768.. (CLIP-G, T5) and pooled 768.. (CLIP-G) are zero-padded
    assert cond.shape == (1, 77, 4096) and cond[..., :768].std() > 0.1 and not cond[..., 768:].any()
    assert pooled.shape == (1, 2048) and pooled[:, :768].std() > 0 and not pooled[:, 768:].any()
    return pos, neg


def _ksample_decode(comfy, model, vae, pos, neg, steps, cfg):
    latent = {"samples": torch.zeros(1, 16, H, W)}
    t = time.perf_counter()
    (out,) = comfy.nodes.KSampler().sample(model, 1, steps, cfg, "euler", "simple", pos, neg, latent)
    t_sample = time.perf_counter() - t
    samples = out["samples"]
    assert samples.shape == (1, 16, H, W) and torch.isfinite(samples).all() and samples.std() > 0
    (img,) = comfy.nodes.VAEDecode().decode(vae, out)
    assert img.shape == (1, 8 * H, 8 * W, 3) and torch.isfinite(img).all()
    return t_sample


def test_sd3_checkpoint_loads_as_sd3(comfy, dx, stock, clip_l_conds):
    from comfy import model_base

    names = stock["sd3"]
    assert names["ckpt_name"] in comfy.folder_paths.get_filename_list("checkpoints")
    t = time.perf_counter()
    model, clip, vae = comfy.nodes.CheckpointLoaderSimple().load_checkpoint(names["ckpt_name"])
    t_load = time.perf_counter() - t
    assert isinstance(model.model, model_base.SD3) and type(model.model.model_config).__name__ == "SD3"
    cfg = model.model.model_config.unet_config
    assert (cfg["depth"], cfg["in_channels"], cfg["adm_in_channels"]) == (dx.SD3_CKPT_DEPTH, 16, 2048)
    assert model.model.model_type == model_base.ModelType.FLOW
    assert clip is None  # no text encoder inside: CLIPLoader supplies it
    assert vae.latent_channels == 16
    t_sample = _ksample_decode(comfy, model, vae, *clip_l_conds, steps=2, cfg=2.0)
    print(f"\nsd3: CheckpointLoaderSimple {t_load:.2f}s, KSampler 2 steps at {H}x{W} {t_sample:.2f}s")


def test_flux_unet_loads_as_flux(comfy, stock, clip_l_conds):
    from comfy import model_base

    names = stock["flux"]
    assert names["unet_name"] in comfy.folder_paths.get_filename_list("diffusion_models")
    assert names["vae_name"] in comfy.folder_paths.get_filename_list("vae")
    t = time.perf_counter()
    (model,) = comfy.nodes.UNETLoader().load_unet(names["unet_name"], "default")
    t_load = time.perf_counter() - t
    assert isinstance(model.model, model_base.Flux) and not isinstance(model.model, model_base.Chroma)
    assert type(model.model.model_config).__name__ == "Flux"
    cfg = model.model.model_config.unet_config
    assert (cfg["hidden_size"], cfg["num_heads"], cfg["depth"], cfg["depth_single_blocks"]) == (3072, 24, 1, 0)
    assert (cfg["context_in_dim"], cfg["vec_in_dim"], cfg["guidance_embed"]) == (4096, 768, True)
    (vae,) = comfy.nodes.VAELoader().load_vae(names["vae_name"])
    assert vae.latent_channels == 16
    pos, _ = clip_l_conds
    t_sample = _ksample_decode(comfy, model, vae, pos, pos, steps=1, cfg=1.0)
    print(f"\nflux: UNETLoader {t_load:.2f}s, KSampler 1 step at {H}x{W} (cfg 1) {t_sample:.2f}s")
