"""Everything the hooks know about a model family: which family a model is, its attention layers, and
the token geometry of one model call.

Duck-typed on the ComfyUI module classes (by structure: attributes, submodules and class names in the MRO), so
this file imports nothing from ComfyUI. The family modules (``families_image``, ``families_video``) detect
their families and give each one's exact layout; here they are put together: ``family_spec`` (module →
``FamilySpec``), ``geometry`` (one model call → ``dit_layout.Geometry``, refusing known layout-changing inputs
by name, ``_REFUSED_INPUTS``), ``prompt_length`` / ``text_lead``, and ``model_spec`` / ``model_layers`` /
``model_family`` for a ModelPatcher. Families that only newer ComfyUI has, or whose layout the pack does not
label, are refused by name with the reason (``REFUSED_MODELS``).
"""

from __future__ import annotations

from typing import Any

import torch

from . import families_image, families_video
from .dit_layout import Geometry
from .errors import AttentionFocusError
from .family_base import FamilySpec, length, mro_names, refuse
from .layer_spec import LayerKey, describe_layers, select_layers

__all__ = ["FamilySpec", "family_spec", "geometry", "prompt_length", "text_lead", "expected_context_dim",
           "model_family", "model_spec", "model_layers", "unet_layers", "resolve_layers", "refusal"]

UNET_NAMES = ("UNetModel",)

# supported DiT families, for messages and the README
DIT_FAMILIES = ("SD3 / SD3.5", "Flux.1 / Flux Kontext", "Flux.2 (dev, Klein)", "Chroma", "Chroma Radiance", "AuraFlow",
                "Qwen-Image", "Lumina 2 / Z-Image", "Wan 2.x (+ Camera, HuMo, Animate)", "HiDream", "HunyuanDiT",
                "HunyuanVideo 1.0 / I2V / 1.5", "HunyuanImage 2.1 (+ refiner)", "PixArt α/Σ", "Omnigen2",
                "Cosmos Predict2", "LTX-Video", "Mochi")

_DETECTORS = families_image.DETECTORS + families_video.DETECTORS
_GEOMETRY = {**families_image.GEOMETRY, **families_video.GEOMETRY}

# classes refused by name (diffusion-model class or model_base class, anywhere in the MRO): name → (family, why)
REFUSED_MODELS = {
    "VaceWanModel": ("Wan VACE", families_video.WAN_REFUSED_PARTS[0][1]),
    "WanModel_S2V": ("Wan S2V", families_video.WAN_REFUSED_PARTS[1][1]),
    # only in newer ComfyUI than the tested 0.3.75: not yet verified
    "LongCatImage": ("LongCat-Image", "not yet verified (a Flux-class model with its own RoPE offsets and text "
                                      "encoder; only newer ComfyUI has it)"),
    "Kandinsky5": ("Kandinsky 5", "not yet verified (only newer ComfyUI has it)"),
    "LTXAVModel": ("LTX-2", "not yet verified (audio and video share one packed latent and attend to each other; "
                            "only newer ComfyUI has it)"),
    "MageFlowTransformer2DModel": ("MageFlow", "not yet verified (only newer ComfyUI has it)"),
    "NextDiTPixelSpace": ("Z-Image pixel space", "not yet verified (only newer ComfyUI has it)"),
    "QwenImage21Transformer2DModel": ("Qwen-Image 2.1", "not yet verified (block-causal segmented attention over "
                                                        "[text, references, target]; only newer ComfyUI has it)"),
    "SCAILWanModel": ("Wan SCAIL", "not yet verified (reference frames before the video, pose tokens after it)"),
    "SCAIL2WanModel": ("Wan SCAIL", "not yet verified (reference frames before the video, pose tokens after it)"),
    "WanAnimate2Model": ("Wan Animate 2", "not yet verified (a separate pose branch with its own attention calls)"),
    "WanDancerModel": ("WanDancer", "not yet verified (extra reference CLIP tokens in the context)"),
    "CausalWanModel": ("Wan causal / autoregressive", "not yet verified (key/value cache: keys outnumber queries)"),
}


def refusal(dm, base=None) -> tuple[str, str] | None:
    """(family, reason) when the diffusion module ``dm`` (or its ``model_base`` model ``base``) is refused by name
    or by a structural part the pack does not label; None otherwise."""
    names = mro_names(dm) | (mro_names(base) if base is not None else set())
    for name, why in REFUSED_MODELS.items():
        if name in names:
            return why
    if "WanModel" in names or hasattr(dm, "text_embedding"):
        for attr, why in families_video.WAN_REFUSED_PARTS:
            if getattr(dm, attr, None) is not None:
                return why.split(" (")[0], why
    return None


def family_spec(dm, base=None) -> FamilySpec | None:
    """The spec of a diffusion model (``model.model.diffusion_model``; ``base`` = ``model.model``), or None if it is
    unsupported or refused (``refusal`` says why)."""
    if type(dm).__name__ in UNET_NAMES:
        return FamilySpec("UNet", "unet")
    if dm is None or refusal(dm, base) is not None:
        return None
    base_names = mro_names(base) if base is not None else set()
    for detect in _DETECTORS:
        spec = detect(dm, base_names)
        if spec is not None:
            return spec
    return None


# model inputs that change a family's token layout in ways the pack does not label: (family, kwarg, variant);
# the family matches every spec whose name starts with it ("Wan" covers Wan Camera, HuMo, Animate)
_REFUSED_INPUTS = (
    ("HiDream", "image_cond", "HiDream-E1 editing (the edited and the reference image share the token rows)"),
    ("Lumina 2", "ref_latents", "Z-Image Omni / edit (reference images, SigLIP tokens, target image last)"),
    ("Lumina 2", "siglip_feats", "Z-Image Omni / edit (SigLIP image tokens)"),
    ("Lumina 2", "ref_contexts", "Z-Image Omni / edit (reference captions)"),
    ("Lumina 2", "direct_context", "extra caption tokens (direct_context)"),
    ("Lumina 2", "ref_frames", "Ming-Image reference frames"),
    ("Wan", "reference_latent", "a Wan reference latent (Fun-Control reference tokens before the video)"),
    ("Wan", "time_dim_concat", "Wan time-concatenated subject frames (Phantom)"),
    ("Wan", "context_latents", "Wan in-context reference latents"),
    ("Wan", "vace_context", "Wan VACE control streams"),
    ("Flux", "post_input", "USO style reference (SigLIP tokens before the prompt)"),
    ("Qwen-Image", "post_input", "USO-style input patches (tokens before the prompt)"),
    ("Cosmos Predict2", "post_input", "input patches (tokens before the video)"),
    ("LTX-Video", "keyframe_idxs", "LTX-Video keyframe guides (guide frames appended to the video tokens)"),
    ("LTX-Video", "guide_attention_entries", "LTX-Video guide attention (the self-attention split by guides)"),
)
_PATCH_INPUTS = ("post_input",)  # keys of transformer_options["patches"], not model inputs


def _allowed(spec: FamilySpec, key: str) -> bool:
    """Inputs a family variant lays out itself (HuMo's reference frames follow the video)."""
    return key == "reference_latent" and spec.has("humo")


def _check_inputs(spec: FamilySpec, x: torch.Tensor, extra: dict[str, Any], to: dict | None) -> None:
    """Refuse, by name, the variants of a family whose layout differs from what ``geometry`` describes."""
    if extra.get("latent_shapes") is not None:
        refuse(spec, "packed multi-stream latents (audio + video)")
    patches = (to or {}).get("patches", {}) or {}
    for family, key, variant in _REFUSED_INPUTS:
        if spec.name.startswith(family) and not _allowed(spec, key):
            value = patches.get(key) if key in _PATCH_INPUTS else extra.get(key)
            if value is not None and not (isinstance(value, (list, tuple)) and len(value) == 0):
                refuse(spec, variant)
    if spec.name == "Qwen-Image" and x.ndim == 5 and int(x.shape[2]) != 1:
        refuse(spec, f"a {int(x.shape[2])}-frame latent (Qwen-Image-Layered)")
    if spec.name == "Lumina 2" and x.ndim == 5:
        refuse(spec, "video latents (Ming-Image)")


def geometry(spec: FamilySpec, x: torch.Tensor, context: torch.Tensor | None, extra: dict[str, Any],
             to: dict | None = None) -> Geometry:
    """Token layout of one model call: ``x`` is the latent batch, ``context`` the c_crossattn tensor, ``extra``
    the model's keyword inputs, ``to`` its transformer_options. Exact lengths per family (see
    ``dit_layout.located``); AttentionFocusError for a known variant the pack does not label (``_REFUSED_INPUTS``).
    """
    _check_inputs(spec, x, extra, to)
    return _GEOMETRY[spec.name](spec, x, context, extra)


def prompt_length(spec: FamilySpec, cond: dict) -> int:
    """Prompt positions one conditioning entry contributes (what its token table must cover): its context, as the
    model sees it (Flux.2: left-padded to 512), plus a second text input where the family has one."""
    ctx = cond.get("cross_attn")
    n = length(ctx) if isinstance(ctx, torch.Tensor) and ctx.ndim == 3 else 0
    n += text_lead(spec, cond)
    return n + families_image.prompt_extra(spec, cond) + families_video.prompt_extra(spec, cond)


def text_lead(spec: FamilySpec, cond: dict) -> int:
    """Positions the model puts before the prompt's own tokens (Flux.2 pads the context on the left to 512)."""
    ctx = cond.get("cross_attn")
    if not spec.text_pad_to or not isinstance(ctx, torch.Tensor) or ctx.ndim != 3:
        return 0
    return max(0, spec.text_pad_to - int(ctx.shape[1]))


def expected_context_dim(dm, spec: FamilySpec) -> int | None:
    """Text feature size the model's input projection expects, when the family has a simple one."""
    if not spec.context_attr:
        return None
    mod = dm
    for part in spec.context_attr.split("."):
        mod = mod[int(part)] if part.isdigit() else getattr(mod, part, None)
        if mod is None:
            return None
    n = getattr(mod, "in_features", None)
    return int(n) if isinstance(n, int) else None


# ---------------------------------------------------------------------------------------------------
# ModelPatcher-level questions

SUPPORTED = "SD1.x, SD2.x, SDXL (UNet) and the DiTs " + ", ".join(DIT_FAMILIES)


def model_family(model) -> str:
    """A short family name for a ModelPatcher's model (``sd1``, ``sd2``, ``sdxl``, ``Flux``, ...)."""
    cfg = getattr(model.model, "model_config", None)
    name = type(cfg).__name__ if cfg is not None else type(model.model).__name__
    dm = getattr(model.model, "diffusion_model", None)
    if type(dm).__name__ not in UNET_NAMES:
        spec = family_spec(dm, model.model)
        if spec is not None:
            return spec.name
        refused = refusal(dm, model.model) if dm is not None else None
        return refused[0] if refused is not None else f"{name} ({type(dm).__name__})"
    if name.startswith("SDXL") or name in ("SSD1B", "Segmind_Vega", "KOALA_700M", "KOALA_1B"):
        return "sdxl"
    if name.startswith(("SD2", "SD20", "SD21")):
        return "sd2"
    return "sd1" if name.startswith("SD1") else name.lower()


def model_spec(model) -> FamilySpec:
    """The family spec of a ModelPatcher's model; AttentionFocusError naming the family if unsupported."""
    dm = getattr(model.model, "diffusion_model", None)
    spec = family_spec(dm, model.model)
    if spec is None:
        refused = refusal(dm, model.model) if dm is not None else None
        if refused is not None:
            raise AttentionFocusError(f"Attention Focus does not support {refused[0]} ({type(dm).__name__}): "
                                      f"{refused[1]}. Supported: {SUPPORTED}.")
        cfg = getattr(model.model, "model_config", None)
        name = type(cfg).__name__ if cfg is not None else type(model.model).__name__
        raise AttentionFocusError(f"Attention Focus does not support the {name} model family "
                                  f"({type(dm).__name__}) yet. Supported: {SUPPORTED}.")
    return spec


def model_layers(model) -> list[LayerKey]:
    """Every image→text attention layer of the model, in execution order."""
    spec = model_spec(model)
    return unet_layers(model) if spec.kind == "unet" else list(spec.layers)


def unet_layers(model) -> list[LayerKey]:
    """Every cross-attention layer of a UNet, with its resolution level, in execution order."""
    dm = model.model.diffusion_model

    def depth(block) -> int:
        return sum(len(m.transformer_blocks) for m in block if type(m).__name__ in
                   ("SpatialTransformer", "SpatialVideoTransformer") and hasattr(m, "transformer_blocks")
                   and any(getattr(tb, "attn2", None) is not None for tb in m.transformer_blocks))

    layers: list[LayerKey] = []
    level = 0
    for i, block in enumerate(dm.input_blocks):
        if any(type(m).__name__ == "Downsample" for m in block):
            level += 1
        layers += [LayerKey("input", i, d, level) for d in range(depth(block))]
    mid = dm.middle_block
    layers += [LayerKey("middle", 0, d, level) for d in range(depth(mid) if mid is not None else 0)]
    for i, block in enumerate(dm.output_blocks):
        layers += [LayerKey("output", i, d, level) for d in range(depth(block))]
        if any(type(m).__name__ == "Upsample" for m in block):
            level -= 1
    return layers


def resolve_layers(model, spec: str) -> list[LayerKey]:
    """Layers of ``model`` selected by ``spec``; errors name the available layers."""
    available = model_layers(model)
    chosen = select_layers(spec, available)
    if not chosen:
        raise AttentionFocusError(f"the layer spec {spec!r} selects no cross-attention layer of this model. "
                                  f"Available: {describe_layers(available)}")
    return chosen
