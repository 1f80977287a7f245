"""Tiny random-weight models of the DiT families added after the first eleven: Flux.2 (dev, Klein), Chroma
Radiance, HunyuanVideo 1.0 / 1.5, HunyuanImage 2.1, Wan Camera / HuMo / Animate (and the refused VACE, S2V),
PixArt α, Omnigen2, Cosmos Predict2, LTX-Video, Mochi — each built through its real ``supported_models`` config
class and ``model_base`` class, as ``harness.dit_fixtures`` does for the others (which merges this table).

``unet_config(family)`` gives the configuration (keys as ``model_detection`` produces them, sizes tiny);
``conditioning(family, cfg, n, rnd)`` the CONDITIONING extras the family's encoder and conditioning nodes give.
"""

from __future__ import annotations

import types
from typing import Any

import torch

_FLUX2 = dict(image_model="flux2", in_channels=128, out_channels=128, vec_in_dim=None, context_in_dim=256,
              hidden_size=128, mlp_ratio=3.0, num_heads=2, depth=2, depth_single_blocks=2, axes_dim=[16, 16, 16, 16],
              theta=2000, patch_size=1, qkv_bias=False, guidance_embed=True, global_modulation=True,
              mlp_silu_act=True, ops_bias=False, default_ref_method="index", ref_index_scale=10.0)
_HUNYUAN = dict(image_model="hunyuan_video", in_channels=16, out_channels=16, patch_size=[1, 2, 2], vec_in_dim=768,
                axes_dim=[16, 24, 24], meanflow=False, context_in_dim=64, hidden_size=128, mlp_ratio=4.0,
                num_heads=2, depth=2, depth_single_blocks=2, theta=256, qkv_bias=True, byt5=False,
                guidance_embed=True, use_cond_type_embedding=False, vision_in_dim=None)
_WAN = dict(image_model="wan2.1", dim=128, out_dim=16, num_heads=2, ffn_dim=512, num_layers=2, patch_size=(1, 2, 2),
            freq_dim=256, window_size=(-1, -1), qk_norm=True, cross_attn_norm=True, eps=1e-6, in_dim=16,
            text_dim=4096, text_len=512)

# family -> what the tiny model is (same keys as harness.dit_fixtures.DIT_INFO, plus "latent_hw": the test's
# latent size where the shared 9x7 does not fit the family, and "frames")
INFO: dict[str, dict[str, Any]] = {
    "flux2": dict(config="Flux2", diffusion_model="Flux", layout="text_first", latent_channels=128, latent_rank=4,
                  text_len=40, text="Mistral-3-style context (256 features, 40 tokens): the model_base pads it on "
                  "the left to 512", notes="patch 1, global modulation, RoPE axes (16, 16, 16, 16)"),
    "flux2_klein": dict(config="Flux2", diffusion_model="Flux", layout="text_first", latent_channels=128,
                        latent_rank=4, text_len=512, text="Qwen3-style context padded by the tokenizer to 512: "
                        "nothing more is padded"),
    "chroma_radiance": dict(config="ChromaRadiance", diffusion_model="ChromaRadiance", layout="text_first",
                            latent_channels=3, latent_rank=4, text_len=48, latent_hw=(140, 108),
                            text="T5-XXL 4096, unpadded", notes="pixel space, patch 16: 9x7 patches of 140x108 px"),
    "hunyuan_video": dict(config="HunyuanVideo", diffusion_model="HunyuanVideo", layout="image_first",
                          latent_channels=16, latent_rank=5, text_len=40, latent_hw=(10, 8),
                          text="Llama-3 user part (64 features) + CLIP-L pooled 768",
                          notes="[image, text] (flipped double blocks in ComfyUI <= 0.8); its unpatchify needs even "
                                "latent sizes"),
    "hunyuan_video_i2v": dict(config="HunyuanVideoI2V", diffusion_model="HunyuanVideo", layout="image_first",
                              latent_channels=16, latent_rank=5, text_len=40, latent_hw=(10, 8),
                              text="as hunyuan_video", notes="33 input channels: the image and an inverted mask "
                                                             "are concatenated on channels (no tokens)"),
    "hunyuan_image21_refiner": dict(config="HunyuanImage21Refiner", diffusion_model="HunyuanVideo",
                                    layout="image_first", latent_channels=64, latent_rank=5, text_len=40,
                                    text="Qwen2.5-VL (64 features, 40 tokens)",
                                    notes="3-d patch 1; the image to refine is concatenated on channels"),
    "hunyuan_image21": dict(config="HunyuanImage21", diffusion_model="HunyuanVideo", layout="image_first",
                            latent_channels=64, latent_rank=4, text_len=40, byt5_len=12,
                            text="Qwen2.5-VL (64 features, 40 tokens) + ByT5 glyph tokens (1472, 12 tokens)",
                            notes="2-d patch 1; text = [LLM, ByT5]"),
    "hunyuan_video15": dict(config="HunyuanVideo15", diffusion_model="HunyuanVideo", layout="image_first",
                            latent_channels=32, latent_rank=5, text_len=40, byt5_len=12, vision_len=9,
                            text="Qwen2.5-VL 40 + ByT5 12 + SigLIP vision 9 (1152)",
                            notes="3-d patch 1; text = [vision, ByT5, LLM] (cond-type embedding)"),
    "wan_camera": dict(config="WAN21_Camera", diffusion_model="CameraWanModel", layout="cross", latent_channels=16,
                       latent_rank=5, text_len=512, text="UMT5 512 + CLIP vision 257 (1280)",
                       notes="image-to-video cross-attention: a CLIP-vision call (257 keys) then the text call"),
    "wan_humo": dict(config="WAN21_HuMo", diffusion_model="HumoWanModel", layout="cross", latent_channels=16,
                     latent_rank=5, text_len=512, text="UMT5 512 + a reference image latent (1 frame)",
                     notes="the reference frame's tokens follow the video's (queries of every call)"),
    "wan_animate": dict(config="WAN22_Animate", diffusion_model="AnimateWanModel", layout="cross",
                        latent_channels=16, latent_rank=5, text_len=512, text="UMT5 512 + CLIP vision 257 (1280)"),
    "wan_vace": dict(config="WAN21_Vace", diffusion_model="VaceWanModel", layout="cross", latent_channels=16,
                     latent_rank=5, text_len=512, text="refused"),
    "wan_s2v": dict(config="WAN22_S2V", diffusion_model="WanModel_S2V", layout="cross", latent_channels=16,
                    latent_rank=5, text_len=512, text="refused"),
    "pixart": dict(config="PixArtAlpha", diffusion_model="PixArtMS", layout="cross", latent_channels=4, latent_rank=4,
                   text_len=32, latent_hw=(36, 32), text="T5-XXL 4096 (32 tokens)",
                   notes="its attention passes no transformer_options: routed by an object patch"),
    "omnigen2": dict(config="Omnigen2", diffusion_model="OmniGen2Transformer2DModel", layout="text_first",
                     latent_channels=16, latent_rank=4, text_len=40, text="Qwen2.5-VL-3B 2048 (40 tokens)",
                     notes="[text, references, target]: the target image comes last; GQA 2 q / 1 kv heads"),
    "cosmos_predict2": dict(config="CosmosT2IPredict2", diffusion_model="MiniTrainDIT", layout="cross",
                            latent_channels=16, latent_rank=5, text_len=64, latent_hw=(10, 8),
                            text="T5 1024 (64 tokens)", notes="einops patchify: even latent sizes"),
    "ltxv": dict(config="LTXV", diffusion_model="LTXVModel", layout="cross", latent_channels=128, latent_rank=5,
                 text_len=48, latent_hw=(5, 4), text="T5-XXL 4096 (48 tokens, attention mask)", notes="patch 1"),
    "mochi": dict(config="GenmoMochi", diffusion_model="AsymmDiTJoint", layout="image_first", latent_channels=12,
                  latent_rank=5, text_len=256, prompt_tokens=20, latent_hw=(10, 8),
                  text="T5-XXL 4096 (256 tokens, 20 unmasked: the joint attention is cropped to them)",
                  notes="the x MLP must be 12288 wide (asserted): mlp_ratio_x 96 at width 128"),
}
FAMILIES = tuple(INFO)


def unet_config(family: str, complete) -> dict:
    """The tiny ``unet_config`` of ``family``; ``complete(params_family, cfg)`` adds params fields newer trees need."""
    if family in ("flux2", "flux2_klein"):
        return complete("flux", dict(_FLUX2))
    if family == "chroma_radiance":
        return complete("chroma_radiance", dict(
            image_model="chroma_radiance", in_channels=3, out_channels=3, context_in_dim=4096, hidden_size=128,
            mlp_ratio=4.0, num_heads=2, depth=2, depth_single_blocks=2, axes_dim=[8, 28, 28], theta=10000,
            patch_size=16, qkv_bias=True, in_dim=64, out_dim=128, hidden_dim=256, n_layers=2, nerf_hidden_size=32,
            nerf_mlp_ratio=4, nerf_depth=2, nerf_max_freqs=8, nerf_tile_size=0, nerf_final_head_type="conv",
            nerf_embedder_dtype=torch.float32))
    if family == "hunyuan_video":
        return complete("hunyuan_video", dict(_HUNYUAN))
    if family == "hunyuan_video_i2v":
        return complete("hunyuan_video", {**_HUNYUAN, "in_channels": 33})
    if family == "hunyuan_image21_refiner":
        return complete("hunyuan_video", {**_HUNYUAN, "in_channels": 128, "out_channels": 64, "patch_size": [1, 1, 1],
                                          "vec_in_dim": None})
    if family == "hunyuan_image21":
        return complete("hunyuan_video", {**_HUNYUAN, "in_channels": 64, "out_channels": 64, "patch_size": [1, 1],
                                          "vec_in_dim": None, "axes_dim": [32, 32], "byt5": True})
    if family == "hunyuan_video15":
        return complete("hunyuan_video", {**_HUNYUAN, "in_channels": 65, "out_channels": 32, "patch_size": [1, 1, 1],
                                          "vec_in_dim": None, "byt5": True, "guidance_embed": False,
                                          "use_cond_type_embedding": True, "vision_in_dim": 1152})
    if family == "wan_camera":
        return {**_WAN, "model_type": "camera", "in_dim": 32}
    if family == "wan_humo":
        return {**_WAN, "model_type": "humo"}
    if family == "wan_animate":
        return {**_WAN, "model_type": "animate", "in_dim": 36}
    if family == "wan_vace":
        return {**_WAN, "model_type": "vace", "vace_layers": 1, "vace_in_dim": 96}
    if family == "wan_s2v":
        return {**_WAN, "model_type": "s2v"}
    if family == "pixart":
        return dict(image_model="pixart_alpha", num_heads=3, patch_size=2, hidden_size=192, in_channels=4, depth=2,
                    model_max_length=120, micro_condition=True)
    if family == "omnigen2":
        return dict(image_model="omnigen2", axes_dim_rope=[20, 22, 22], axes_lens=[300, 512, 512],
                    ffn_dim_multiplier=None, hidden_size=128, in_channels=16, multiple_of=32, norm_eps=1e-5,
                    num_attention_heads=2, num_kv_heads=1, num_layers=2, num_refiner_layers=2, out_channels=None,
                    patch_size=2, text_feat_dim=2048, timestep_scale=1000.0)
    if family == "cosmos_predict2":
        return dict(image_model="cosmos_predict2", max_img_h=240, max_img_w=240, max_frames=128, in_channels=16,
                    out_channels=16, patch_spatial=2, patch_temporal=1, model_channels=128, concat_padding_mask=True,
                    crossattn_emb_channels=1024, pos_emb_cls="rope3d", pos_emb_learnable=True,
                    pos_emb_interpolation="crop", min_fps=1, max_fps=30, use_adaln_lora=True, adaln_lora_dim=32,
                    num_blocks=2, num_heads=2, extra_per_block_abs_pos_emb=False)
    if family == "ltxv":
        return dict(image_model="ltxv", num_layers=2, attention_head_dim=64, num_attention_heads=2,
                    cross_attention_dim=128, caption_channels=4096, in_channels=128)
    if family == "mochi":
        return dict(image_model="mochi_preview", depth=2, patch_size=2, num_heads=2, hidden_size_x=128,
                    hidden_size_y=64, mlp_ratio_x=96.0, mlp_ratio_y=4.0, learn_sigma=False, in_channels=12,
                    qk_norm=True, qkv_bias=False, out_bias=True, attn_drop=0.0, patch_embed_bias=True,
                    posenc_preserve_area=True, timestep_mlp_bias=True, attend_to_padding=False,
                    timestep_scale=1000.0, use_t5=True, t5_feat_dim=4096, t5_token_length=256, rope_theta=10000.0)
    raise ValueError(family)


def context_dim(family: str, cfg: dict) -> int:
    return {"flux2": cfg.get("context_in_dim"), "flux2_klein": cfg.get("context_in_dim"), "chroma_radiance": 4096,
            "hunyuan_video": cfg.get("context_in_dim"), "hunyuan_image21": cfg.get("context_in_dim"),
            "hunyuan_video_i2v": cfg.get("context_in_dim"), "hunyuan_image21_refiner": cfg.get("context_in_dim"),
            "hunyuan_video15": cfg.get("context_in_dim"), "pixart": 4096, "omnigen2": 2048, "cosmos_predict2": 1024,
            "ltxv": 4096, "mochi": 4096}.get(family, 4096)


def conditioning(family: str, cfg: dict, n: int, rnd, batch: int = 1, *, ref_hw=None) -> tuple[torch.Tensor, dict]:
    """(context, extras) of a CONDITIONING entry for ``family`` with ``n`` text tokens (``rnd(*shape)`` draws
    N(0, 1) values with the batch dimension in front)."""
    info = INFO[family]
    ctx = rnd(n, context_dim(family, cfg))
    extras: dict[str, Any] = {"pooled_output": None}
    if family in ("flux2", "flux2_klein"):
        extras["guidance"] = 3.5
        if ref_hw:
            extras["reference_latents"] = [rnd(128, *ref_hw)]
    elif family in ("hunyuan_video", "hunyuan_video_i2v"):
        extras.update(pooled_output=rnd(768), guidance=6.0)
    elif family in ("hunyuan_image21", "hunyuan_video15"):
        extras["conditioning_byt5small"] = rnd(info["byt5_len"], 1472)
        if family == "hunyuan_video15":
            extras["clip_vision_output"] = types.SimpleNamespace(last_hidden_state=rnd(info["vision_len"], 1152))
    elif family in ("wan_camera", "wan_animate"):
        ctx[:, 24:] = 0
        extras["clip_vision_output"] = types.SimpleNamespace(penultimate_hidden_states=rnd(257, 1280))
    elif family == "wan_humo":
        ctx[:, 24:] = 0
        if ref_hw:
            extras["reference_latents"] = [rnd(16, 1, *ref_hw)]
    elif family in ("wan_vace", "wan_s2v"):
        ctx[:, 24:] = 0
    elif family == "omnigen2":
        extras["attention_mask"] = torch.ones(batch, n, dtype=torch.long)
        if ref_hw:
            extras["reference_latents"] = [rnd(16, *ref_hw)]
    elif family == "ltxv":
        extras["attention_mask"] = torch.ones(batch, n, dtype=torch.long)
    elif family == "mochi":
        mask = torch.zeros(batch, n, dtype=torch.long)
        mask[:, : info["prompt_tokens"]] = 1
        extras["attention_mask"] = mask
    return ctx, extras
