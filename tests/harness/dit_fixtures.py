"""Random-weight DiT models (SD3, SD3.5, Flux, Flux Kontext, Chroma, AuraFlow, Qwen-Image, Lumina 2, Wan 2.1,
HiDream, HunyuanDiT, and the families of ``harness.dit_fixtures_more``: Flux.2, Chroma Radiance, HunyuanVideo /
HunyuanImage, Wan subclasses, PixArt, Omnigen2, Cosmos Predict2, LTX-Video, Mochi) built from ComfyUI's own
classes, plus stock-loader files for SD3 and Flux.

Two kinds of fixture, as in ``harness.fixtures`` (whose seeded helpers they use):

* ``tiny_dit_patcher(family)``: a tiny but real ``model_base`` model in a CPU ``ModelPatcher``, built through
  the family's ``supported_models`` config class (so model_sampling and latent format are ComfyUI's).
  ``dit_conditioning`` / ``dit_latent`` make a CONDITIONING and an empty latent shaped like the stock nodes'
  output; ``harness.fixtures.sample`` drives them through ``comfy.sample.sample``. ``token_layout`` says where
  text and image tokens sit in the attention calls (checked against real forwards in
  tests/comfy/test_dit_fixtures.py).
* ``sd3_files()`` / ``flux_files()``: cached ``.safetensors`` files that ComfyUI's stock loaders detect as
  SD3 (CheckpointLoaderSimple; CLIP-L through CLIPLoader type "sd3") and Flux (UNETLoader + VAELoader);
  ``install_sd3(comfy)`` / ``install_flux(comfy)`` link them into the booted ComfyUI.

Weights (``dit_state_dict``): >= 2-d weights N(0, 1/sqrt(fan_in)); every norm weight 1 and bias 0 (Flux's
RMSNorm ``scale`` included, ``weight`` in newer ComfyUI: ``norm_param`` finds either); q/k norms (QK-norm
families) QK_GAIN, so q.k logits have a std of about QK_GAIN**2 and attention maps are peaked. Without QK-norm
(SD3) the q and k rows of the fused qkv weight get QK_GAIN instead. AuraFlow's q/k LayerNorms have no affine
weights: its logits keep a std of about 1.
Register/padding tokens N(0, 1), learned position tables N(0, 0.1), SD3's ``pos_embed`` the real 2-D sin-cos.
"""

from __future__ import annotations

import inspect
import math
from pathlib import Path
from typing import Any

import torch

from harness import dit_fixtures_more as more
from harness.comfy_boot import boot
from harness.fixtures import (
    QK_GAIN,
    _comfy_version,
    _key_generator,
    _random_value,
    _save_atomic,
    cache_dir,
    clip_std,
    fan_in_std,
    link_model,
    random_state_dict,
)

# Bump when a recipe of the cached stock-loader files changes: their names carry it.
DIT_VERSION = "1"

DIT_FAMILIES = ("sd3", "sd35", "flux", "flux_kontext", "chroma", "auraflow", "qwen_image", "lumina2", "wan21",
                "hidream", "hunyuan_dit")
MORE_FAMILIES = more.FAMILIES  # harness.dit_fixtures_more: their own tests in tests/comfy/test_dit_families.py

# What the tiny models are and where their tokens sit. "layout": "text_first" = one joint attention over
# [text, image] (registers, if any, first), "image_first" = [image, text], "cross" = image queries attend to
# text keys in separate cross-attention calls (plus image-only self-attention). "double"/"single": blocks of
# the tiny config (double = joint/two-stream or per-block, single = one stream over [text, image]).
DIT_INFO: dict[str, dict[str, Any]] = {
    "sd3": dict(
        config="SD3", model_base="SD3", diffusion_model="OpenAISignatureMMDITWrapper", layout="text_first",
        register_tokens=0, double=2, single=0, heads=2, head_dim=64, latent_channels=16, latent_rank=4,
        text="77 CLIP-L|G tokens (features 0-2047, rest 0) + T5 tokens (4096); pooled 2048",
        text_len=154, context_dim=4096,
        notes="no QK-norm, no RoPE (2-D sin-cos pos_embed, max 64x64 patches); last joint block is pre_only",
    ),
    "sd35": dict(
        config="SD3", model_base="SD3", diffusion_model="OpenAISignatureMMDITWrapper", layout="text_first",
        register_tokens=0, double=3, single=0, heads=3, head_dim=64, latent_channels=16, latent_rank=4,
        text="as sd3", text_len=154, context_dim=4096,
        notes="MMDiT-X: qk_norm rms; blocks 0 and 1 (x_block_self_attn_layers) make a second, image-only "
              "attention call; last block pre_only",
    ),
    "flux": dict(
        config="Flux", model_base="Flux", diffusion_model="Flux", layout="text_first",
        register_tokens=0, double=2, single=2, heads=2, head_dim=64, latent_channels=16, latent_rank=4,
        text="T5-XXL 4096 (256 tokens); pooled CLIP-L 768; guidance 3.5", text_len=256, context_dim=4096,
        notes="dev-style (guidance_embed); RoPE axes (8, 28, 28); QK RMSNorm",
    ),
    "flux_kontext": dict(
        config="Flux", model_base="Flux", diffusion_model="Flux", layout="text_first",
        register_tokens=0, double=2, single=2, heads=2, head_dim=64, latent_channels=16, latent_rank=4,
        text="as flux + reference_latents [B, 16, 8, 8] (raw latent)", text_len=256, context_dim=4096,
        notes="reference tokens appended after the target image tokens (RoPE index 1)",
    ),
    "chroma": dict(
        config="Chroma", model_base="Chroma", diffusion_model="Chroma", layout="text_first",
        register_tokens=0, double=2, single=2, heads=2, head_dim=64, latent_channels=16, latent_rank=4,
        text="T5-XXL 4096, unpadded (64 tokens); no pooled", text_len=64, context_dim=4096,
        notes="modulations from the distilled-guidance approximator (hidden 256, 2 layers)",
    ),
    "auraflow": dict(
        config="AuraFlow", model_base="AuraFlow", diffusion_model="MMDiT", layout="text_first",
        register_tokens=8, double=2, single=2, heads=2, head_dim=64, latent_channels=4, latent_rank=4,
        text="Pile-T5-XL 2048 (256 tokens)", text_len=256, context_dim=2048,
        notes="8 learned register tokens before the text; learned pos table 16x16; q/k LayerNorm without "
              "affine weights (logit std ~1)",
    ),
    "qwen_image": dict(
        config="QwenImage", model_base="QwenImage", diffusion_model="QwenImageTransformer2DModel",
        layout="text_first", register_tokens=0, double=2, single=0, heads=2, head_dim=64, latent_channels=16,
        latent_rank=5, text="Qwen2.5-VL-7B 3584, template stripped (64 tokens)", text_len=64,
        context_dim=3584, notes="RoPE axes (8, 28, 28); text RoPE ids start after the image centre",
    ),
    "lumina2": dict(
        config="Lumina2", model_base="Lumina2", diffusion_model="NextDiT", layout="text_first",
        register_tokens=0, double=2, single=0, heads=3, head_dim=64, latent_channels=16, latent_rank=4,
        text="Gemma-2-2B 2304 (128 tokens, system prompt included); attention_mask all ones",
        text_len=128, context_dim=2304,
        notes="double = main joint layers; plus 2 context_refiner (text-only) and 2 noise_refiner (image-only) "
              "layers; GQA 3 q heads / 1 kv head; pad_tokens_multiple None (Lumina 2; 32 = Z-Image style)",
    ),
    "wan21": dict(
        config="WAN21_T2V", model_base="WAN21", diffusion_model="WanModel", layout="cross",
        register_tokens=0, double=2, single=0, heads=2, head_dim=64, latent_channels=16, latent_rank=5,
        text="UMT5-XXL 4096, 512 tokens, zero after 24 prompt tokens", text_len=512, context_dim=4096,
        notes="per block: self_attn (image) + cross_attn (512 text keys); sampled as one frame [B,16,1,H,W]",
    ),
    "hidream": dict(
        config="HiDream", model_base="HiDream", diffusion_model="HiDreamImageTransformer2DModel",
        layout="image_first", register_tokens=0, double=2, single=2, heads=2, head_dim=64, latent_channels=16,
        latent_rank=4, text="T5 4096 (128) + conditioning_llama3 [B, 32, 128, 4096] + pooled 2048",
        text_len=128, context_dim=4096,
        notes="text per block = [T5, Llama layer llama_layers[-1], Llama layer of the block] (3 x 128); "
              "llama_layers (0, 1, 31, 31); MoE feed-forward (4 experts, 2 active)",
    ),
    "hunyuan_dit": dict(
        config="HunyuanDiT", model_base="HunyuanDiT", diffusion_model="HunYuanDiT", layout="cross",
        register_tokens=0, double=4, single=0, heads=2, head_dim=64, latent_channels=4, latent_rank=4,
        text="BERT 1024 (77, mask) + mT5-XL 2048 (256, mask): cross-attention keys = 77 + 256",
        text_len=77, context_dim=1024,
        notes="v1.2 ('hydit'); depth 4 so that one long skip connection exists; attn_precision fp32; "
              "attention does not pass transformer_options (no optimized_attention_override)",
    ),
}

DIT_INFO.update(more.INFO)
_CONFIG_CLASS = {f: info["config"] for f, info in DIT_INFO.items()}

_KONTEXT_REF_HW = (8, 8)
_WAN_PROMPT_TOKENS = 24
_HYDIT_PROMPT_TOKENS = (16, 16)  # BERT, mT5: tokens with mask 1 (the others get the learned padding)


def _check_family(family: str) -> None:
    if family not in DIT_INFO:
        raise ValueError(f"unknown family {family!r}; expected one of {DIT_FAMILIES + MORE_FAMILIES}")


# ---------------------------------------------------------------------------------------------------
# configurations


def _mmdit_config(depth: int, pos_max: int, **extra: Any) -> dict:
    hidden = 64 * depth  # MMDiT: hidden = 64 * depth, heads = depth
    return dict(in_channels=16, out_channels=16, patch_size=2, depth=depth, input_size=None,
                adm_in_channels=2048,
                context_embedder_config={"target": "torch.nn.Linear",
                                         "params": {"in_features": 4096, "out_features": hidden}},
                num_patches=pos_max * pos_max, pos_embed_max_size=pos_max, pos_embed_scaling_factor=None,
                x_block_self_attn_layers=[], **extra)


# Fields that newer ComfyUI versions added, without a default, to the params dataclass of a family (0.8.0:
# FluxParams.txt_ids_dims, ChromaParams.txt_ids_dims and .vec_in_dim; 0.33.0: ChromaRadianceParams.use_x0,
# HunyuanVideoParams.meanflow_sum and ChromaRadianceParams.use_sequential_txt_ids), with the value model_detection
# gives a Flux.1 / Chroma / Chroma Radiance / HunyuanVideo file. ``_complete_params`` fills them in only where the
# tree under test has such a field.
_PARAMS_CLASS = {"flux": ("comfy.ldm.flux.model", "FluxParams"), "chroma": ("comfy.ldm.chroma.model", "ChromaParams"),
                 "chroma_radiance": ("comfy.ldm.chroma_radiance.model", "ChromaRadianceParams"),
                 "hunyuan_video": ("comfy.ldm.hunyuan_video.model", "HunyuanVideoParams")}
_DETECTED_DEFAULTS = {"txt_ids_dims": [], "vec_in_dim": None, "use_x0": False, "meanflow_sum": False,
                      "use_sequential_txt_ids": False}


def _params_fields(family: str) -> dict[str, inspect.Parameter]:
    """The constructor parameters of the family's params dataclass in the ComfyUI under test ({} if none)."""
    if family not in _PARAMS_CLASS:
        return {}
    boot()
    import importlib

    module, name = _PARAMS_CLASS[family]
    return dict(inspect.signature(getattr(importlib.import_module(module), name)).parameters)


def _complete_params(family: str, cfg: dict) -> dict:
    """``cfg`` plus the required params fields the tree under test has and ``cfg`` lacks (see _DETECTED_DEFAULTS)."""
    for field, param in _params_fields(family).items():
        if field in cfg or param.default is not inspect.Parameter.empty:
            continue
        if field not in _DETECTED_DEFAULTS:
            raise RuntimeError(f"this ComfyUI's {_PARAMS_CLASS[family][1]} requires {field!r}, which the {family} "
                               "fixture does not know: add what model_detection sets to _DETECTED_DEFAULTS")
        value = _DETECTED_DEFAULTS[field]
        cfg[field] = list(value) if isinstance(value, list) else value
    return cfg


def _flux_config(hidden: int, heads: int, axes: list[int], depth: int, single: int, context: int = 4096) -> dict:
    return _complete_params("flux", dict(
        image_model="flux", in_channels=16, out_channels=16, vec_in_dim=768, context_in_dim=context,
        hidden_size=hidden, mlp_ratio=4.0, num_heads=heads, depth=depth, depth_single_blocks=single,
        axes_dim=list(axes), theta=10000, patch_size=2, qkv_bias=True, guidance_embed=True))


def dit_unet_config(family: str, **overrides: Any) -> dict:
    """The ``unet_config`` of the tiny model of ``family`` (keys as ``model_detection`` produces them, plus
    the sizes detection leaves at the class defaults). ``overrides`` replace entries (sd3/sd35: ``depth`` and
    ``pos_embed_max_size`` also resize the dependent entries)."""
    _check_family(family)
    if family in more.INFO:
        cfg = more.unet_config(family, _complete_params)
        cfg.update(overrides)
        return cfg
    if family in ("sd3", "sd35"):  # depth sets hidden (64 * depth) and heads; the pos table is square
        depth = overrides.pop("depth", 2 if family == "sd3" else 3)
        cfg = _mmdit_config(depth, overrides.pop("pos_embed_max_size", 64))
        if family == "sd35":
            cfg.update(qk_norm="rms", x_block_self_attn_layers=[i for i in (0, 1) if i < depth - 1])
    elif family in ("flux", "flux_kontext"):
        cfg = _flux_config(128, 2, [8, 28, 28], 2, 2)
    elif family == "chroma":
        cfg = dict(image_model="chroma", in_channels=64, out_channels=64, context_in_dim=4096, hidden_size=128,
                   mlp_ratio=4.0, num_heads=2, depth=2, depth_single_blocks=2, axes_dim=[8, 28, 28],
                   theta=10000, patch_size=2, qkv_bias=True, in_dim=64, out_dim=128, hidden_dim=256, n_layers=2)
        _complete_params("chroma", cfg)
    elif family == "auraflow":
        cfg = dict(max_seq=16 * 16, cond_seq_dim=2048, n_double_layers=2, n_layers=4, dim=128, n_heads=2,
                   global_conddim=128, in_channels=4, out_channels=4, patch_size=2)
    elif family == "qwen_image":
        cfg = dict(image_model="qwen_image", in_channels=64, out_channels=16, num_layers=2, attention_head_dim=64,
                   num_attention_heads=2, joint_attention_dim=3584, axes_dims_rope=(8, 28, 28), patch_size=2)
    elif family == "lumina2":
        cfg = dict(image_model="lumina2", patch_size=2, in_channels=16, dim=192, cap_feat_dim=2304, n_layers=2,
                   n_refiner_layers=2, qk_norm=True, n_heads=3, n_kv_heads=1, axes_dims=[20, 22, 22],
                   axes_lens=[300, 512, 512], rope_theta=10000.0, ffn_dim_multiplier=4.0)
    elif family == "wan21":
        cfg = dict(image_model="wan2.1", model_type="t2v", dim=128, out_dim=16, num_heads=2, ffn_dim=512,
                   num_layers=2, patch_size=(1, 2, 2), freq_dim=256, window_size=(-1, -1), qk_norm=True,
                   cross_attn_norm=True, eps=1e-6, in_dim=16, text_dim=4096, text_len=512)
    elif family == "hidream":
        cfg = dict(image_model="hidream", attention_head_dim=64, axes_dims_rope=[32, 16, 16],
                   caption_channels=[4096, 4096], max_resolution=[128, 128], in_channels=16, out_channels=16,
                   llama_layers=[0, 1, 31, 31], num_attention_heads=2, num_routed_experts=4,
                   num_activated_experts=2, num_layers=2, num_single_layers=2, patch_size=2, text_emb_dim=2048)
    else:  # hunyuan_dit
        cfg = dict(image_model="hydit", depth=4, hidden_size=128, num_heads=2, mlp_ratio=4.0, patch_size=2,
                   in_channels=4, text_states_dim=1024, text_states_dim_t5=2048, text_len=77, text_len_t5=256,
                   qk_norm=True, learn_sigma=True)
    cfg.update(overrides)
    return cfg


def _model_config(family: str, cfg: dict, dtype: torch.dtype):
    import comfy.supported_models as sm

    cls = getattr(sm, _CONFIG_CLASS[family])
    if not cls.matches(cfg):
        raise ValueError(f"{family} config does not match supported_models.{cls.__name__}: {cfg}")
    mc = cls(cfg)
    mc.set_inference_dtype(dtype, None)
    return mc


# ---------------------------------------------------------------------------------------------------
# weights

_QK_TOKENS = {"q", "k", "query", "key"}
_UNIT_TOKENS = ("register", "register_tokens", "text_embedding_padding", "x_pad_token", "cap_pad_token")
_POS_TABLES = ("positional_encoding", "positional_embedding")


def _is_qk_norm(module_name: str) -> bool:
    parts = module_name.rsplit(".", 1)[-1].split("_")
    return bool(_QK_TOKENS.intersection(parts)) and any(p.startswith(("norm", "ln", "rms")) for p in parts)


def _is_norm(module: torch.nn.Module | None) -> bool:
    return module is not None and "norm" in type(module).__name__.lower()


def dit_state_dict(module: torch.nn.Module, seed: int = 0, prefix: str = "", *, dtype: torch.dtype = torch.float32,
                   qk_gain: float = QK_GAIN) -> dict[str, torch.Tensor]:
    """Seeded random weights for a DiT (``module`` may live on meta); rules in the module docstring.

    Generic values are those of ``harness.fixtures.random_state_dict`` (same per-key seeds); each tensor is
    converted to ``dtype`` as it is made, so a large model never exists in fp32 all at once.
    """
    modules = dict(module.named_modules())
    entries = module.state_dict(keep_vars=True)
    qk_norm_found = any(_is_norm(mod) and _is_qk_norm(name) and any(True for _ in mod.parameters(recurse=False))
                        for name, mod in modules.items())
    weight_std = fan_in_std(qk_gain)
    out = {}
    for key, t in entries.items():
        owner_name, name = key.rsplit(".", 1) if "." in key else ("", key)
        owner = modules.get(owner_name) if owner_name else module
        shape = t.shape
        if _is_norm(owner):
            gain = qk_gain if _is_qk_norm(owner_name) else 1.0
            value = torch.zeros(shape) if name == "bias" else torch.full(shape, gain)
        elif name in _UNIT_TOKENS and len(shape) >= 2:
            value = torch.randn(shape, generator=_key_generator(seed, key))
        elif name in _POS_TABLES:
            value = torch.randn(shape, generator=_key_generator(seed, key)) * 0.1
        elif name == "pos_embed" and len(shape) == 3:  # MMDiT: fixed 2-D sin-cos table
            from comfy.ldm.modules.diffusionmodules.mmdit import get_2d_sincos_pos_embed

            value = torch.from_numpy(get_2d_sincos_pos_embed(shape[2], math.isqrt(shape[1]))).float().reshape(shape)
        else:
            value = _random_value(key, shape, owner, seed, weight_std)
            if not qk_norm_found and key.endswith(".qkv.weight") and shape[0] % 3 == 0:
                value[: 2 * shape[0] // 3] *= qk_gain  # no QK-norm (SD3): peak through the q and k rows
        target = t.dtype if not t.dtype.is_floating_point else dtype
        out[prefix + key] = value.to(target).contiguous()
    return out


def norm_param(state_dict: dict, module: str) -> str:
    """The key of the scale parameter of the norm ``module`` in ``state_dict``: ``<module>.weight`` or, in older
    ComfyUI (Flux's own RMSNorm, 0.3.x), ``<module>.scale``."""
    for name in ("weight", "scale"):
        if f"{module}.{name}" in state_dict:
            return f"{module}.{name}"
    raise KeyError(f"no {module}.weight nor {module}.scale in the state dict")


# ---------------------------------------------------------------------------------------------------
# in-process tiny models


def tiny_dit_patcher(family: str, seed: int = 0, **overrides: Any):
    """A tiny real ``model_base`` DiT of ``family`` (one of DIT_FAMILIES) in a CPU ModelPatcher, fp32.

    ``overrides`` replace ``dit_unet_config`` entries (e.g. ``pad_tokens_multiple=32`` for lumina2,
    ``depth=3`` for sd3). "flux_kontext" is the same model as "flux" (Kontext is a conditioning feature).
    """
    boot()
    import comfy.model_patcher

    mc = _model_config(family, dit_unet_config(family, **overrides), torch.float32)
    cpu = torch.device("cpu")
    model = mc.get_model({}, "", device=cpu)
    dm = model.diffusion_model
    dm.load_state_dict(dit_state_dict(dm, seed), strict=True)
    return comfy.model_patcher.ModelPatcher(model, load_device=cpu, offload_device=cpu)


def _unet_config_of(family: str, patcher) -> dict:
    if patcher is not None:
        return patcher.model.model_config.unet_config
    return dit_unet_config(family)


def _latent_format(family: str, patcher):
    if patcher is not None:
        return patcher.model.latent_format
    import comfy.latent_formats as lf

    return {"auraflow": lf.SDXL, "hunyuan_dit": lf.SDXL, "sd3": lf.SD3, "sd35": lf.SD3,
            "qwen_image": lf.Wan21, "wan21": lf.Wan21}.get(family, lf.Flux)()


def dit_conditioning(family: str, patcher=None, length: int | None = None, seed: int = 0, batch: int = 1, *,
                     ref_hw: tuple[int, int] = _KONTEXT_REF_HW, refs: tuple[int, int] | None = None) -> list:
    """A CONDITIONING ``[[context, extras]]`` shaped like the family's CLIPTextEncode output (N(0, 1) values).

    ``length``: text tokens (default DIT_INFO[family]["text_len"]); feature sizes come from ``patcher``'s
    unet_config when given (so overridden configs still fit). extras always carry ``pooled_output`` (None
    where the family's encoder has none) and every key ``extra_conds`` needs: sd3/sd35 pooled 2048;
    flux pooled 768 + guidance 3.5 (+ ``reference_latents`` [raw latent of ``ref_hw``] for flux_kontext);
    lumina2 ``attention_mask``; hidream pooled 2048 + ``conditioning_llama3`` [B, 32, L, 4096];
    hunyuan_dit ``attention_mask`` [B, 77], ``conditioning_mt5xl`` [B, 256, 2048], ``attention_mask_mt5xl``;
    the families of ``harness.dit_fixtures_more`` as its ``conditioning`` says (``refs``: a reference latent of that
    size for flux2 / wan_humo / omnigen2).
    """
    _check_family(family)
    cfg = _unet_config_of(family, patcher)
    gen = torch.Generator().manual_seed(seed)
    n = int(length if length is not None else DIT_INFO[family]["text_len"])
    if n < 1:
        raise ValueError("length must be >= 1")

    def rnd(*shape: int) -> torch.Tensor:
        return torch.randn(batch, *shape, generator=gen)

    extras: dict[str, Any] = {"pooled_output": None}
    if family in more.INFO:
        ctx, extras = more.conditioning(family, cfg, n, rnd, batch, ref_hw=refs)
        return [[ctx, extras]]
    if family in ("sd3", "sd35"):
        dim = cfg["context_embedder_config"]["params"]["in_features"]
        ctx = rnd(n, dim)
        ctx[:, :77, 2048:] = 0  # CLIP-L|G tokens (768 + 1280 features) padded to the T5 width
        extras["pooled_output"] = rnd(cfg["adm_in_channels"])
    elif family in ("flux", "flux_kontext"):
        ctx = rnd(n, cfg["context_in_dim"])
        extras["pooled_output"] = rnd(cfg["vec_in_dim"])
        extras["guidance"] = 3.5
        if family == "flux_kontext":
            fmt = _latent_format(family, patcher)
            ref = rnd(cfg["in_channels"], *ref_hw) / fmt.scale_factor + fmt.shift_factor
            extras["reference_latents"] = [ref]
    elif family == "chroma":
        ctx = rnd(n, cfg["context_in_dim"])
    elif family == "auraflow":
        ctx = rnd(n, cfg["cond_seq_dim"])
    elif family == "qwen_image":
        ctx = rnd(n, cfg["joint_attention_dim"])
    elif family == "lumina2":
        ctx = rnd(n, cfg["cap_feat_dim"])
        extras["attention_mask"] = torch.ones(batch, n, dtype=torch.long)
    elif family == "wan21":
        ctx = rnd(n, cfg["text_dim"])
        ctx[:, _WAN_PROMPT_TOKENS:] = 0  # UMT5 padding is zeroed (zero_out_masked)
    elif family == "hidream":
        ctx = rnd(n, cfg["caption_channels"][1])
        n_llama = max(cfg["llama_layers"]) + 1
        extras["pooled_output"] = rnd(cfg["text_emb_dim"])
        extras["conditioning_llama3"] = rnd(max(32, n_llama), n, cfg["caption_channels"][0])
    else:  # hunyuan_dit: both lengths are fixed by the model (padding table and attention pool)
        if length is not None and length != cfg["text_len"]:
            raise ValueError(f"hunyuan_dit text length is fixed at {cfg['text_len']} (+ {cfg['text_len_t5']} mT5)")
        ctx = rnd(cfg["text_len"], cfg["text_states_dim"])
        mask = torch.zeros(batch, cfg["text_len"], dtype=torch.long)
        mask[:, : _HYDIT_PROMPT_TOKENS[0]] = 1
        mask_t5 = torch.zeros(batch, cfg["text_len_t5"], dtype=torch.long)
        mask_t5[:, : _HYDIT_PROMPT_TOKENS[1]] = 1
        extras.update(attention_mask=mask, conditioning_mt5xl=rnd(cfg["text_len_t5"], cfg["text_states_dim_t5"]),
                      attention_mask_mt5xl=mask_t5)
    return [[ctx, extras]]


def dit_latent(family: str, height: int, width: int, batch: int = 1, frames: int = 1) -> torch.Tensor:
    """An empty (zero) latent of ``height`` x ``width`` cells: [B, C, H, W], or [B, 16, 1, H, W] for the
    Wan-VAE families (qwen_image, wan21) as the sampler sees it (EmptySD3LatentImage gives 4-d zeros there and
    comfy.sample.fix_empty_latent_channels adds the frame axis; EmptyHunyuanLatentVideo gives 5-d)."""
    _check_family(family)
    info = DIT_INFO[family]
    if info["latent_rank"] == 5:
        return torch.zeros(batch, info["latent_channels"], frames, height, width)
    return torch.zeros(batch, info["latent_channels"], height, width)


def token_layout(family: str, text_len: int, height: int, width: int, ref_hw: tuple = (),
                 pad_tokens_multiple: int | None = None) -> dict:
    """Where tokens sit in the attention of the tiny (and real) models for a ``height`` x ``width`` latent.

    ``text_len``: tokens of the conditioning tensor (for hidream the T5 length = Llama length). Returns
    ``grid`` (ceil(H/2), ceil(W/2)), ``n_image``, ``n_ref`` and, for joint families, slices ``text`` (registers
    included: prompt token p is at ``text.start + registers + p``), ``image`` (target), ``reference`` and
    ``joint_len``; for "cross" families ``text`` is the key range of the cross-attention and ``joint_len`` None.
    ``ref_hw``: reference latents (H, W) (Kontext). ``pad_tokens_multiple``: lumina2 padding (Z-Image style).
    """
    _check_family(family)
    info = DIT_INFO[family]
    grid = (-(-height // 2), -(-width // 2))
    n_img = grid[0] * grid[1]
    n_ref = sum(-(-h // 2) * -(-w // 2) for h, w in ref_hw)
    reg = info["register_tokens"]
    n_txt = reg + text_len
    n_img_padded = n_img
    if family == "hidream":
        n_txt = 3 * text_len
    elif family == "hunyuan_dit":
        n_txt = 77 + 256
    if pad_tokens_multiple:
        n_txt += (-n_txt) % pad_tokens_multiple
        n_img_padded += (-n_img) % pad_tokens_multiple
    out = dict(grid=grid, n_image=n_img, n_ref=n_ref, registers=reg, layout=info["layout"])
    if info["layout"] == "cross":
        out.update(text=slice(0, n_txt), image=slice(0, n_img), reference=None, joint_len=None)
    elif info["layout"] == "image_first":
        out.update(image=slice(0, n_img), reference=None, text=slice(n_img, n_img + n_txt), joint_len=n_img + n_txt)
    else:
        img0 = n_txt
        out.update(text=slice(0, n_txt), image=slice(img0, img0 + n_img),
                   reference=slice(img0 + n_img, img0 + n_img + n_ref) if n_ref else None,
                   joint_len=n_txt + n_img_padded + n_ref)
    return out


# ---------------------------------------------------------------------------------------------------
# stock-loader files (cached, never committed)

SD3_CKPT_DEPTH = 2
SD3_CKPT_POS_MAX = 64
FLUX_FILE_DTYPE = torch.float8_e4m3fn

# TAESD latent scale/shift of the SD3 and Flux VAEs (what VAELoader sets for taesd3 / taef1)
_TAESD_SCALE = {"sd3": (1.5305, 0.0609), "flux": (0.3611, 0.1159)}


def _dtype_tag(dtype: torch.dtype) -> str:
    return str(dtype).rsplit(".", 1)[-1]


def _cached(stem: str, tag: str) -> Path:
    """``cache_dir()/<stem>-v<DIT_VERSION>-comfy<version>-<tag>.safetensors``; older recipes are removed."""
    path = cache_dir() / f"{stem}-v{DIT_VERSION}-comfy{_comfy_version()}-{tag}.safetensors"
    if not path.is_file():
        for stale in path.parent.glob(f"{stem}-v*.safetensors"):
            if not stale.name.startswith(f"{stem}-v{DIT_VERSION}-"):
                stale.unlink(missing_ok=True)
    return path


def _taesd_state_dict(family: str, seed: int, prefix: str, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    import comfy.taesd.taesd

    with torch.device("meta"):
        taesd = comfy.taesd.taesd.TAESD(latent_channels=16)
    sd = random_state_dict(taesd, seed, prefix, dtype=dtype)
    scale, shift = _TAESD_SCALE[family]
    sd[prefix + "vae_scale"] = torch.tensor(scale, dtype=dtype)
    sd[prefix + "vae_shift"] = torch.tensor(shift, dtype=dtype)
    return sd


def _meta_model(family: str, cfg: dict, dtype: torch.dtype) -> torch.nn.Module:
    """The diffusion model class of ``family`` ("sd3" or "flux") built on the meta device."""
    import comfy.ldm.flux.model
    import comfy.ldm.modules.diffusionmodules.mmdit as mmdit
    import comfy.ops

    mc = _model_config(family, cfg, dtype)
    cls = mmdit.OpenAISignatureMMDITWrapper if family == "sd3" else comfy.ldm.flux.model.Flux
    return cls(**mc.unet_config, device="meta", operations=comfy.ops.disable_weight_init)


def _detected(sd: dict, prefix: str) -> str:
    import comfy.model_detection

    mc = comfy.model_detection.model_config_from_unet(sd, prefix)
    return type(mc).__name__ if mc is not None else "None"


def sd3_checkpoint(dtype: torch.dtype = torch.float16, seed: int = 0) -> Path:
    """A random SD3 checkpoint: MMDiT depth 2 (hidden 128, 2 heads, context 4096, pooled 2048, pos_embed
    64x64) under ``model.diffusion_model.`` and a 16-channel TAESD (SD3 scale/shift) under
    ``first_stage_model.``; no text encoders (CheckpointLoaderSimple then returns CLIP None)."""
    boot()
    path = _cached("sd3-rand", f"d{SD3_CKPT_DEPTH}-{_dtype_tag(dtype)}-s{seed}")
    if path.is_file():
        return path
    cfg = _mmdit_config(SD3_CKPT_DEPTH, SD3_CKPT_POS_MAX)
    sd = dit_state_dict(_meta_model("sd3", cfg, dtype), seed, "model.diffusion_model.", dtype=dtype)
    sd.update(_taesd_state_dict("sd3", seed + 2, "first_stage_model.", dtype))
    if _detected(sd, "model.diffusion_model.") != "SD3":
        raise RuntimeError(f"ComfyUI detects the SD3 fixture as {_detected(sd, 'model.diffusion_model.')}")
    _save_atomic(sd, path, {"format": "pt"})
    return path


def clip_l_file(dtype: torch.dtype = torch.float16, seed: int = 0) -> Path:
    """A random CLIP-L text encoder (``text_model.*`` + ``text_projection.weight``) for the stock CLIPLoader."""
    boot()
    path = _cached("clip_l-rand", f"{_dtype_tag(dtype)}-s{seed}")
    if path.is_file():
        return path
    import json

    import comfy.clip_model
    import comfy.ops
    import comfy.sd1_clip

    with open(Path(comfy.sd1_clip.__file__).parent / "sd1_clip_config.json") as f:
        clip_cfg = json.load(f)
    clip = comfy.clip_model.CLIPTextModel(clip_cfg, dtype, "meta", comfy.ops.disable_weight_init)
    sd = random_state_dict(clip, seed + 1, dtype=dtype, weight_std=clip_std(clip.num_layers))
    _save_atomic(sd, path, {"format": "pt"})
    return path


def sd3_files(dtype: torch.dtype = torch.float16, seed: int = 0) -> tuple[Path, Path]:
    """(SD3 checkpoint, CLIP-L text encoder): see ``sd3_checkpoint`` and ``clip_l_file``."""
    return sd3_checkpoint(dtype, seed), clip_l_file(dtype, seed)


def flux_unet_file(dtype: torch.dtype = FLUX_FILE_DTYPE, seed: int = 0) -> Path:
    """The smallest Flux.1-dev diffusion model UNETLoader detects as Flux: hidden 3072 (24 heads x 128, forced
    by detection), 1 double block, 0 single, guidance_embed, vec_in 768, context_in_dim 4096 (CLIPLoader type
    "sd3" with CLIP-L alone gives [B, 77, 4096] with CLIP-L in features 0-767; pooled[:, :768] is CLIP-L's).
    Saved without prefix, float8_e4m3fn by default (ComfyUI upcasts on load; on CPU it runs fp32)."""
    boot()
    path = _cached("flux-rand", f"d1s0-{_dtype_tag(dtype)}-s{seed}")
    if path.is_file():
        return path
    cfg = _flux_config(3072, 24, [16, 56, 56], 1, 0)
    sd = dit_state_dict(_meta_model("flux", cfg, dtype), seed, dtype=dtype)
    if _detected(sd, "") != "Flux":
        raise RuntimeError(f"ComfyUI detects the Flux fixture as {_detected(sd, '')}")
    _save_atomic(sd, path, {"format": "pt"})
    return path


def flux_vae_file(dtype: torch.dtype = torch.float16, seed: int = 0) -> Path:
    """A random 16-channel TAESD (taef1 scale/shift) in one file: VAELoader loads it as a Flux VAE."""
    boot()
    path = _cached("taef1-rand", f"{_dtype_tag(dtype)}-s{seed}")
    if path.is_file():
        return path
    _save_atomic(_taesd_state_dict("flux", seed + 2, "", dtype), path, {"format": "pt"})
    return path


def flux_files(dtype: torch.dtype = FLUX_FILE_DTYPE, seed: int = 0) -> tuple[Path, Path]:
    """(Flux diffusion model, VAE): see ``flux_unet_file`` and ``flux_vae_file``. The text encoder is the
    CLIP-L of ``sd3_files`` (CLIPLoader type "sd3"); ``install_flux`` links it too."""
    return flux_unet_file(dtype, seed), flux_vae_file(seed=seed)


def install_sd3(comfy=None) -> dict[str, str]:
    """Link the SD3 files into the booted ComfyUI; returns the node inputs
    {"ckpt_name": CheckpointLoaderSimple, "clip_name" + "type": CLIPLoader}."""
    comfy = comfy or boot()
    ckpt, clip_l = sd3_files()
    return {"ckpt_name": link_model(comfy, "checkpoints", ckpt),
            "clip_name": link_model(comfy, "text_encoders", clip_l), "type": "sd3"}


def install_flux(comfy=None) -> dict[str, str]:
    """Link the Flux files (and the CLIP-L) into the booted ComfyUI; returns the node inputs
    {"unet_name": UNETLoader, "vae_name": VAELoader, "clip_name" + "type": CLIPLoader}."""
    comfy = comfy or boot()
    unet, vae = flux_files()
    return {"unet_name": link_model(comfy, "diffusion_models", unet),
            "vae_name": link_model(comfy, "vae", vae),
            "clip_name": link_model(comfy, "text_encoders", clip_l_file()), "type": "sd3"}
