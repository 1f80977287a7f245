"""The demo model's architecture and files: an SD3-shaped MMDiT, a 16-channel TAESD, and the CLIP-L of textenc.

* ``build_mmdit`` / ``build_taesd``: ComfyUI's own classes (``OpenAISignatureMMDITWrapper``,
  ``comfy.taesd.taesd.TAESD``), initialised for training. The MMDiT is trained with a 768-wide context
  embedder (CLIP-L's features); ``export`` zero-pads it to the 4096 features ComfyUI's SD3 text encoder
  passes (CLIP-L in features 0–767, exact zeros after), which gives the same outputs.
* ``MODEL_FILE`` (committed, fp16): ``model.diffusion_model.*`` (the MMDiT) and ``first_stage_model.*``
  (the TAESD with SD3's ``vae_scale``/``vae_shift``) — a checkpoint without text encoder, which
  CheckpointLoaderSimple loads as SD3 (CLIP then comes from CLIPLoader type "sd3").
* ``demo_checkpoint()``: the committed file plus the regenerated CLIP-L under ``text_encoders.clip_l.`` in one
  cached file: CheckpointLoaderSimple gives MODEL, CLIP and VAE from it.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
MODEL_FILE = REPO / "models" / "attention-focus-shapes.safetensors"
RECIPE_FILE = REPO / "models" / "attention-focus-shapes.json"
POS_MAX = 32  # pos_embed table 32x32 patches: generation up to 512 px
LATENT_CHANNELS = 16
VAE_SCALE, VAE_SHIFT = 1.5305, 0.0609  # SD3's TAESD latent scale/shift (ComfyUI's VAELoader values for taesd3)
CONTEXT_WIDTH = 4096
POOLED_WIDTH = 2048


def mmdit_config(depth: int, ctx_in: int, adm: int | None = None) -> dict:
    cfg = dict(in_channels=16, out_channels=16, patch_size=2, depth=depth, input_size=None,
                context_embedder_config={"target": "torch.nn.Linear",
                                         "params": {"in_features": ctx_in, "out_features": 64 * depth}},
                num_patches=POS_MAX * POS_MAX, pos_embed_max_size=POS_MAX, pos_embed_scaling_factor=None,
                x_block_self_attn_layers=[])
    if adm:
        cfg["adm_in_channels"] = adm
    return cfg


def build_mmdit(depth: int, ctx_in: int = 768, seed: int = 0, device: str = "cpu", adm: int | None = POOLED_WIDTH):
    """ComfyUI's SD3 MMDiT (hidden 64·depth, depth heads, depth joint blocks), adaLN-Zero initialised.

    ``adm``: width of the pooled text vector (SD3: 2048 = CLIP-L 768 + CLIP-G 1280, zeros here), embedded by
    ``y_embedder`` into the adaLN conditioning of every block; None: no pooled input.
    """
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.mmdit import OpenAISignatureMMDITWrapper, get_2d_sincos_pos_embed

    m = OpenAISignatureMMDITWrapper(**mmdit_config(depth, ctx_in, adm), device=device, dtype=torch.float32,
                                    operations=comfy.ops.disable_weight_init)
    if device == "meta":
        return m
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith("bias"):
                p.zero_()
            elif "adaLN_modulation" in name or name.startswith("final_layer.linear"):
                p.zero_()  # adaLN-Zero: every block starts as the identity, the output as zero
            elif name.startswith("t_embedder"):
                p.normal_(0, 0.02, generator=g)
            else:
                fan_in, fan_out = p[0].numel(), p.shape[0]
                p.uniform_(-1, 1, generator=g).mul_(math.sqrt(6 / (fan_in + fan_out)))  # xavier uniform
        pe = get_2d_sincos_pos_embed(64 * depth, POS_MAX)
        m.pos_embed.copy_(torch.from_numpy(pe).float().reshape(m.pos_embed.shape))
    return m


def build_taesd(seed: int = 0, device: str = "cpu"):
    import comfy.taesd.taesd

    with torch.device(device):
        t = comfy.taesd.taesd.TAESD(latent_channels=LATENT_CHANNELS)
    if device == "meta":
        return t
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in t.named_parameters():
            if name in ("vae_scale", "vae_shift"):
                p.fill_(VAE_SCALE if name == "vae_scale" else VAE_SHIFT)
            elif name.endswith("bias"):
                p.zero_()
            else:  # He init for the ReLU stacks; the last conv of each residual branch small
                p.normal_(0, math.sqrt(2 / p[0].numel()), generator=g)
        for mod in t.modules():
            if type(mod).__name__ == "Block":
                mod.conv[-1].weight.mul_(0.1)
    return t


def mmdit_export_state(m) -> dict[str, torch.Tensor]:
    """The MMDiT's state dict as ComfyUI loads it: context embedder zero-padded to 4096 input features."""
    sd = {k: v.detach().float().clone() for k, v in m.state_dict().items()}
    w = sd["context_embedder.weight"]
    if w.shape[1] != CONTEXT_WIDTH:
        sd["context_embedder.weight"] = torch.nn.functional.pad(w, (0, CONTEXT_WIDTH - w.shape[1]))
    return sd


def save_file(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    import safetensors.torch

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    os.close(fd)
    try:
        safetensors.torch.save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata=metadata or {})
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def export(mmdit_sd: dict, taesd_sd: dict, path: Path = MODEL_FILE, metadata: dict | None = None,
           latent_std: float = 1.0) -> Path:
    """Write the committed checkpoint (fp16): MMDiT + TAESD, no text encoder.

    ComfyUI's SD3 latent format multiplies by 1.5305 what TAESD's ``encode`` divides by ``vae_scale``: with
    ``vae_scale`` = 1.5305 · ``latent_std`` the MMDiT sees the TAESD encoder's output / ``latent_std``, and
    TAESD's decoder gets the MMDiT's latent · ``latent_std``.
    """
    out = {"model.diffusion_model." + k: v.to(torch.float16) for k, v in mmdit_sd.items()}
    out.update({"first_stage_model." + k: v.to(torch.float16) for k, v in taesd_sd.items()
                if k not in ("vae_scale", "vae_shift")})
    out["first_stage_model.vae_scale"] = torch.tensor(VAE_SCALE * latent_std, dtype=torch.float16)
    out["first_stage_model.vae_shift"] = torch.tensor(VAE_SHIFT, dtype=torch.float16)
    detected = detect(out)
    if detected != "SD3":
        raise RuntimeError(f"ComfyUI detects the exported demo model as {detected}, not SD3")
    meta = {"format": "pt"}
    meta.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()})
    save_file(out, path, meta)
    return path


def detect(sd: dict) -> str:
    import comfy.model_detection

    mc = comfy.model_detection.model_config_from_unet(sd, "model.diffusion_model.")
    return type(mc).__name__ if mc is not None else "None"


def demo_checkpoint(model_file: Path = MODEL_FILE) -> Path:
    """A complete checkpoint (MMDiT + TAESD + CLIP-L) for CheckpointLoaderSimple, built once into the cache.

    Its name carries the first 12 hex digits of the committed file's sha256, so a new model rebuilds it. The
    CLIP-L is regenerated and checked against its committed checksum (``textenc.clip_state_dict``).
    """
    import hashlib

    import safetensors.torch

    from .textenc import cache_dir, clip_state_dict

    if not model_file.is_file():
        raise FileNotFoundError(f"{model_file} is missing: train it with `bash scripts/train_demo_model.sh`")
    digest = hashlib.sha256(model_file.read_bytes()).hexdigest()[:12]
    path = cache_dir() / f"{model_file.stem}-{digest}-with-clip_l.safetensors"
    if path.is_file():
        return path
    for stale in cache_dir().glob(f"{model_file.stem}-*-with-clip_l.safetensors"):
        stale.unlink(missing_ok=True)
    sd = safetensors.torch.load_file(str(model_file))
    sd.update({"text_encoders.clip_l.transformer." + k: v for k, v in clip_state_dict().items()})
    save_file(sd, path, {"format": "pt"})
    return path
