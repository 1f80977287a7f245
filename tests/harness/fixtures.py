"""Random-weight models of the real architectures, built from ComfyUI's own classes (never downloaded).

Two kinds of fixture:

* ``sd15_checkpoint()``: a complete SD1.5 ``.safetensors`` checkpoint (UNet + full CLIP-L + TAESD) that
  ComfyUI's stock ``CheckpointLoaderSimple`` detects as SD1.5. Built once into a cache
  (``$ATTENTION_FOCUS_CACHE/fixtures``) under a name that carries ``VERSION`` and the ComfyUI version,
  so any change rebuilds it. ``install_checkpoint(comfy)`` links it into the booted ComfyUI.
* ``tiny_unet_patcher(family)``: an in-process, tiny but real ``model_base`` model (SD1.5, SD2-v, SDXL
  topology) wrapped in a CPU ``ModelPatcher``; ``random_conditioning`` and ``sample`` drive it through
  ComfyUI's own ``comfy.sample.sample`` (the KSampler path).

Key names and shapes always come from ``state_dict()`` of ComfyUI's classes built on the ``meta``
device, so they follow the ComfyUI version under test. Values are seeded per key (crc32 of the key
name), so they do not depend on iteration order.
"""

from __future__ import annotations

import json
import os
import tempfile
import zlib
from pathlib import Path
from typing import Any

import torch

from harness.comfy_boot import CACHE, boot

# Bump when the fixture recipe changes: cached files are keyed by it.
VERSION = "2"

FAMILIES = ("sd15", "sd2v", "sdxl")
CONTEXT_DIM = {"sd15": 768, "sd2v": 1024, "sdxl": 2048}
POOLED_DIM = {"sd15": 768, "sd2v": 1024, "sdxl": 1280}

# std of to_q / to_k = QK_GAIN / sqrt(fan_in): with unit-variance inputs the attention logits get a
# std of about QK_GAIN**2 (2.25), so softmax maps are peaked, not uniform.
QK_GAIN = 1.5


def cache_dir() -> Path:
    """``$ATTENTION_FOCUS_CACHE/fixtures`` (default ``~/.cache/attention-focus/fixtures``)."""
    d = CACHE / "fixtures"
    d.mkdir(parents=True, exist_ok=True)
    return d


def _comfy_version() -> str:
    st = boot()
    try:
        text = (st.root / "comfyui_version.py").read_text()
        return text.split("__version__ =", 1)[1].strip().strip("\"'")
    except (OSError, IndexError):
        return "unknown"


# ---------------------------------------------------------------------------------------------------
# seeded random state dicts


def _key_generator(seed: int, key: str) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(key.encode())) & 0x7FFF_FFFF_FFFF)


def fan_in_std(qk_gain: float = QK_GAIN):
    """Weight rule for UNets and VAEs: N(0, 1/sqrt(fan_in)), to_q/to_k N(0, qk_gain/sqrt(fan_in)).

    Activations stay O(1) through the residual stack and the attention path changes the output, so
    reweighting is visible; with unit-variance inputs the q.k logits have a std of about qk_gain**2.
    """
    def rule(key: str, shape: torch.Size) -> float:
        gain = qk_gain if key.endswith((".to_q.weight", ".to_k.weight")) else 1.0
        return gain / shape[1:].numel() ** 0.5
    return rule


def clip_std(n_layers: int = 12, std: float = 0.02):
    """Weight rule for CLIP text models: N(0, 0.02), residual outputs (out_proj, fc2) scaled down by
    sqrt(2 * n_layers) (GPT-2 style), so the residual stream keeps each token's identity: random deep
    attention stacks otherwise collapse all tokens to one vector and UNet cross-attention turns uniform.
    """
    def rule(key: str, shape: torch.Size) -> float:
        if key.endswith((".out_proj.weight", ".fc2.weight")):
            return std / (2 * n_layers) ** 0.5
        return std
    return rule


def _random_value(key: str, shape: torch.Size, module: torch.nn.Module | None, seed: int,
                  weight_std) -> torch.Tensor:
    """Per-key rules: norms 1/0, biases 0, token embeddings N(0, 1), position embeddings N(0, 0.1),
    other >= 2-d weights N(0, weight_std(key, shape)), anything else N(0, 0.02)."""
    name = key.rsplit(".", 1)[-1]
    if isinstance(module, (torch.nn.GroupNorm, torch.nn.LayerNorm)):
        return torch.ones(shape) if name == "weight" else torch.zeros(shape)
    if name == "vae_scale":
        return torch.ones(shape)
    if name in ("bias", "vae_shift"):
        return torch.zeros(shape)
    gen = _key_generator(seed, key)
    if isinstance(module, torch.nn.Embedding):
        return torch.randn(shape, generator=gen) * (1.0 if "token" in key else 0.1)
    if len(shape) >= 2:
        return torch.randn(shape, generator=gen) * weight_std(key, shape)
    return torch.randn(shape, generator=gen) * 0.02


def random_state_dict(module: torch.nn.Module, seed: int = 0, prefix: str = "", *,
                      dtype: torch.dtype = torch.float32, weight_std=None,
                      skip: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """Seeded random values for every ``state_dict()`` key of ``module`` (which may live on meta).

    ``weight_std(key, shape) -> float`` is the rule for >= 2-d weights (default ``fan_in_std()``).
    ``prefix`` is prepended to the saved names (seeds use the module's own key, so they do not depend
    on it nor on the order of keys). Keys ending with any of ``skip`` are left out.
    """
    weight_std = weight_std or fan_in_std()
    modules = dict(module.named_modules())
    out = {}
    for key, t in module.state_dict(keep_vars=True).items():
        if key.endswith(skip):
            continue
        owner = modules.get(key.rsplit(".", 1)[0]) if "." in key else module
        value = _random_value(key, t.shape, owner, seed, weight_std)
        out[prefix + key] = value.to(t.dtype if not t.dtype.is_floating_point else dtype).contiguous()
    return out


def _save_atomic(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    import safetensors.torch

    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    os.close(fd)
    try:
        safetensors.torch.save_file(tensors, tmp, metadata=metadata)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


# ---------------------------------------------------------------------------------------------------
# UNet configurations


def unet_config(family: str, **overrides: Any) -> dict:
    """The ``unet_config`` dict of a tiny model of ``family``, in the form ``model_detection`` produces.

    Topology overrides: ``model_channels``, ``channel_mult``, ``num_res_blocks`` (int, per level),
    ``depth`` (transformer depth per level), ``depth_middle``. Any other key replaces the entry of the
    returned config directly (e.g. ``context_dim``, ``num_head_channels``).
    """
    presets = {
        # SD1.x: 8 heads (forced by SD15.unet_extra_config); attention on every level but the last,
        # and in the middle block (as SD1.5, where the 8x-downsampled level has no cross-attention).
        "sd15": dict(model_channels=64, channel_mult=[1, 2, 2], num_res_blocks=1, depth=[1, 1, 0],
                     depth_middle=1),
        # SD2.x: 64-channel heads, linear proj_in/out (use_linear_in_transformer), context 1024.
        "sd2v": dict(model_channels=64, channel_mult=[1, 2, 2], num_res_blocks=1, depth=[1, 1, 0],
                     depth_middle=1),
        # SDXL-shaped: no attention on level 0, depth 1 then 2 (SDXL: 0, 2, 10), middle depth 2.
        "sdxl": dict(model_channels=64, channel_mult=[1, 2, 4], num_res_blocks=1, depth=[0, 1, 2],
                     depth_middle=2),
    }
    if family not in presets:
        raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")
    topo = presets[family]
    for k in list(overrides):
        if k in topo:
            topo[k] = overrides.pop(k)
    mult = list(topo["channel_mult"])
    nres = topo["num_res_blocks"]
    nres = [nres] * len(mult) if isinstance(nres, int) else list(nres)
    depth = list(topo["depth"])
    t_in = [d for d, n in zip(depth, nres, strict=True) for _ in range(n)]
    t_out = [d for d, n in zip(depth, nres, strict=True) for _ in range(n + 1)]
    cfg = {
        "use_checkpoint": False, "image_size": 32, "use_spatial_transformer": True, "legacy": False,
        "adm_in_channels": None, "in_channels": 4, "out_channels": 4,
        "model_channels": topo["model_channels"], "num_res_blocks": nres, "channel_mult": mult,
        "transformer_depth": t_in, "transformer_depth_output": t_out,
        "transformer_depth_middle": topo["depth_middle"],
        "use_linear_in_transformer": family != "sd15", "context_dim": CONTEXT_DIM[family],
        "use_temporal_resblock": False, "use_temporal_attention": False,
    }
    if family == "sdxl":
        cfg["num_classes"] = "sequential"
        cfg["adm_in_channels"] = 2816  # pooled 1280 + 6 size embeddings x 256 (model_base.SDXL.encode_adm)
    cfg.update(overrides)
    return cfg


def _model_config(family: str, cfg: dict, dtype: torch.dtype):
    import comfy.supported_models as sm

    cls = {"sd15": sm.SD15, "sd2v": sm.SD20, "sdxl": sm.SDXL}[family]
    mc = cls(cfg)  # adds unet_extra_config: SD15 num_heads 8; SD20 64-ch heads + attn_precision fp32
    mc.set_inference_dtype(dtype, None)
    return mc


# ---------------------------------------------------------------------------------------------------
# 1. SD1.5 checkpoint for the stock loader

SD15_CKPT_CONFIG = dict(model_channels=320, channel_mult=[1, 2], num_res_blocks=1, depth=[1, 1],
                        depth_middle=1)


def _sd15_modules(dtype: torch.dtype):
    """UNet, CLIP-L text model and TAESD, built on the meta device from ComfyUI's classes."""
    import comfy.clip_model
    import comfy.ops
    import comfy.sd1_clip
    import comfy.taesd.taesd
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    mc = _model_config("sd15", unet_config("sd15", **SD15_CKPT_CONFIG), dtype)
    ops = comfy.ops.disable_weight_init
    unet = UNetModel(**mc.unet_config, device="meta", operations=ops)
    with open(Path(comfy.sd1_clip.__file__).parent / "sd1_clip_config.json") as f:
        clip_cfg = json.load(f)
    clip = comfy.clip_model.CLIPTextModel(clip_cfg, dtype, "meta", ops)
    with torch.device("meta"):
        taesd = comfy.taesd.taesd.TAESD()
    return unet, clip, taesd


def sd15_checkpoint(dtype: torch.dtype = torch.float16, seed: int = 0) -> Path:
    """Path of a cached random-weight SD1.5 checkpoint (built on first use, atomically).

    UNet: model_channels 320, context 768, 8 heads, 2 levels (channel_mult [1, 2]), 1 res block and
    transformer depth 1 per level, attention in the middle block: cross-attention grids at latent
    H x W, ceil(H/2) x ceil(W/2) (input 1, 3, middle, output 0-3). Full CLIP-L text encoder under
    ``cond_stage_model.transformer.text_model.`` and TAESD under ``first_stage_model.``.
    """
    boot()
    tag = str(dtype).rsplit(".", 1)[-1]
    path = cache_dir() / f"sd15-rand-v{VERSION}-comfy{_comfy_version()}-{tag}-s{seed}.safetensors"
    if path.is_file():
        return path
    for stale in path.parent.glob("sd15-rand-v*.safetensors"):
        if not stale.name.startswith(f"sd15-rand-v{VERSION}-"):  # an older recipe: rebuilt, not reused
            stale.unlink(missing_ok=True)
    unet, clip, taesd = _sd15_modules(dtype)
    sd = random_state_dict(unet, seed, "model.diffusion_model.", dtype=dtype)
    # SD1.5 checkpoints carry no text_projection (ComfyUI's SD15 key conversion would misplace it).
    sd.update(random_state_dict(clip, seed + 1, "cond_stage_model.transformer.", dtype=dtype,
                                weight_std=clip_std(clip.num_layers), skip=("text_projection.weight",)))
    sd.update(random_state_dict(taesd, seed + 2, "first_stage_model.", dtype=dtype))
    import comfy.model_detection

    detected = comfy.model_detection.model_config_from_unet(sd, "model.diffusion_model.")
    if type(detected).__name__ != "SD15":  # fail here, not in a loader deep inside a test
        raise RuntimeError(f"ComfyUI detects the SD1.5 fixture as {type(detected).__name__}")
    _save_atomic(sd, path, {"format": "pt"})  # one key: safetensors writes metadata in hash order
    return path


def link_model(comfy, folder: str, src: Path) -> str:
    """Link (or copy) ``src`` into the booted ComfyUI's models/<folder>; returns the name its loaders list."""
    name = "af-" + src.name
    dst = Path(comfy.base) / "models" / folder / name
    if not dst.exists():
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            dst.symlink_to(src)
        except OSError:
            import shutil

            shutil.copyfile(src, dst)
    if name not in comfy.folder_paths.get_filename_list(folder):
        comfy.folder_paths.add_model_folder_path(folder, str(dst.parent))
    return name


def install_checkpoint(comfy=None, dtype: torch.dtype = torch.float16) -> str:
    """Link the SD1.5 fixture into the booted ComfyUI's models/checkpoints; returns its ckpt_name."""
    return link_model(comfy or boot(), "checkpoints", sd15_checkpoint(dtype))


# ---------------------------------------------------------------------------------------------------
# 2. tiny in-process UNets


def tiny_unet_patcher(family: str, seed: int = 0, **overrides: Any):
    """A tiny real ``model_base`` model of ``family`` ("sd15", "sd2v", "sdxl") in a CPU ModelPatcher.

    sd15: BaseModel/SD15, eps; sd2v: BaseModel/SD20, v-prediction, attn_precision fp32;
    sdxl: model_base.SDXL/SDXL, eps, context 2048, adm 2816 (pooled 1280). ``overrides`` go to
    ``unet_config`` (see there). fp32 weights, seeded per key.
    """
    boot()
    import comfy.model_base as mb
    import comfy.model_patcher

    mc = _model_config(family, unet_config(family, **overrides), torch.float32)
    cpu = torch.device("cpu")
    if family == "sdxl":
        model = mb.SDXL(mc, model_type=mb.ModelType.EPS, device=cpu)
    else:
        mt = mb.ModelType.V_PREDICTION if family == "sd2v" else mb.ModelType.EPS
        model = mb.BaseModel(mc, model_type=mt, device=cpu)
    dm = model.diffusion_model
    dm.load_state_dict(random_state_dict(dm, seed), strict=True)
    return comfy.model_patcher.ModelPatcher(model, load_device=cpu, offload_device=cpu)


def random_conditioning(family: str, n_chunks: int = 1, seed: int = 0, batch: int = 1) -> list:
    """A ComfyUI CONDITIONING ``[[cond, {"pooled_output": pooled}]]`` shaped like CLIPTextEncode's.

    cond: [batch, 77 * n_chunks, 768 | 1024 | 2048], pooled: [batch, 768 | 1024 | 1280], N(0, 1).
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")
    gen = torch.Generator().manual_seed(seed)
    cond = torch.randn(batch, 77 * n_chunks, CONTEXT_DIM[family], generator=gen)
    pooled = torch.randn(batch, POOLED_DIM[family], generator=gen)
    return [[cond, {"pooled_output": pooled}]]


def sample(patcher, positive, negative, latent: torch.Tensor, seed: int, steps: int, cfg: float,
           sampler_name: str = "euler", scheduler: str = "normal", denoise: float = 1.0) -> torch.Tensor:
    """Sample like the stock KSampler (nodes.common_ksampler): same noise, same comfy.sample.sample."""
    import comfy.sample

    with torch.inference_mode():
        latent = comfy.sample.fix_empty_latent_channels(patcher, latent)
        noise = comfy.sample.prepare_noise(latent, seed)
        return comfy.sample.sample(patcher, noise, steps, cfg, sampler_name, scheduler, positive, negative,
                                   latent, denoise=denoise, disable_pbar=True, seed=seed)
