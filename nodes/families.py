"""Everything the hooks know about a model family: which family a model is, its attention layers, and
the token geometry of one model call.

Duck-typed on the ComfyUI module classes (by class name and attributes), so this file imports nothing
from ComfyUI. One ``FamilySpec`` per supported diffusion-model class; ``geometry`` turns the inputs
of one model call (latent shape, context, extra conditioning) into a ``dit_layout.Geometry``;
``model_spec`` / ``model_layers`` / ``model_family`` answer the same questions for a ModelPatcher.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from .dit_layout import Geometry, TextPart, patch_grid, text_first
from .errors import AttentionFocusError
from .layer_spec import LayerKey, describe_layers, select_layers

UNET_NAMES = ("UNetModel",)


@dataclass(frozen=True)
class FamilySpec:
    """What the hooks need to know of one diffusion-model class."""

    name: str  # human name, e.g. "Flux"
    kind: str  # unet | dit
    layers: tuple[LayerKey, ...] = ()
    order: str = "txt_first"
    patch: int = 2
    registers: int = 0
    pad_multiple: int | None = None
    routed: bool = True  # its attention reaches optimized_attention_override by itself
    block_ids: bool = False  # ComfyUI (0.3.75+) puts block_type/block_index in transformer_options
    context_attr: str = ""  # module whose in_features is the expected text feature size


# supported DiT families, for messages and the README
DIT_FAMILIES = ("SD3 / SD3.5", "Flux.1 / Flux Kontext", "Chroma", "AuraFlow", "Qwen-Image", "Lumina 2 / Z-Image",
                "Wan 2.x", "HiDream", "HunyuanDiT")


def _n(mod, attr: str) -> int:
    seq = getattr(mod, attr, None)
    return len(seq) if seq is not None else 0


def _keys(kind: str, n: int, level: int, skip=()) -> list[LayerKey]:
    return [LayerKey(kind, i, 0, level) for i in range(n) if i not in skip]


def _patch(dm, default: int = 2) -> int:
    p = getattr(dm, "patch_size", default)
    if isinstance(p, (tuple, list)):
        p = p[-1]
    return int(p)


def family_spec(dm) -> FamilySpec | None:
    """The spec of a diffusion model (``model.model.diffusion_model``), or None if unsupported."""
    name = type(dm).__name__
    if name in UNET_NAMES:
        return FamilySpec("UNet", "unet")
    p = _patch(dm)
    lvl = max(0, p.bit_length() - 1)
    if name == "OpenAISignatureMMDITWrapper":
        n = _n(dm, "joint_blocks")
        return FamilySpec("SD3", "dit", tuple(_keys("double", n, lvl)), "txt_first", p,
                          int(getattr(dm, "register_length", 0) or 0), context_attr="context_embedder")
    if name in ("Flux", "Chroma"):
        skip_d = tuple(getattr(dm, "skip_mmdit", ()) or ())
        skip_s = tuple(getattr(dm, "skip_dit", ()) or ())
        layers = _keys("double", _n(dm, "double_blocks"), lvl, skip_d) + _keys("single", _n(dm, "single_blocks"),
                                                                              lvl, skip_s)
        return FamilySpec(name, "dit", tuple(layers), "txt_first", p, context_attr="txt_in", block_ids=True)
    if name == "MMDiT" and hasattr(dm, "register_tokens"):
        layers = _keys("double", _n(dm, "double_layers"), lvl) + _keys("single", _n(dm, "single_layers"), lvl)
        return FamilySpec("AuraFlow", "dit", tuple(layers), "txt_first", p, int(dm.register_tokens.shape[1]),
                          context_attr="cond_seq_linear")
    if name == "QwenImageTransformer2DModel":
        return FamilySpec("Qwen-Image", "dit", tuple(_keys("double", _n(dm, "transformer_blocks"), lvl)),
                          "txt_first", p, context_attr="txt_in", block_ids=True)
    if name == "NextDiT":
        return FamilySpec("Lumina 2", "dit", tuple(_keys("single", _n(dm, "layers"), lvl)), "txt_first", p,
                          pad_multiple=getattr(dm, "pad_tokens_multiple", None))
    if name == "WanModel":
        return FamilySpec("Wan", "dit", tuple(_keys("block", _n(dm, "blocks"), lvl)), "cross", p,
                          context_attr="text_embedding.0")
    if name == "HiDreamImageTransformer2DModel":
        layers = (_keys("double", _n(dm, "double_stream_blocks"), lvl)
                  + _keys("single", _n(dm, "single_stream_blocks"), lvl))
        return FamilySpec("HiDream", "dit", tuple(layers), "img_first", p)
    if name == "HunYuanDiT":
        return FamilySpec("HunyuanDiT", "dit", tuple(_keys("block", _n(dm, "blocks"), lvl)), "cross", p,
                          routed=False)
    return None


def _len(t, dim: int = 1) -> int:
    return int(t.shape[dim]) if isinstance(t, torch.Tensor) and t.ndim > dim else 0


def _ref_tokens(refs, patch: int) -> int:
    """Tokens of reference latents appended after the target image (Flux Kontext, Qwen-Image-Edit)."""
    total = 0
    for r in refs or []:
        if isinstance(r, torch.Tensor) and r.ndim >= 4:
            frames = int(r.shape[2]) if r.ndim == 5 else 1
            total += frames * math.ceil(int(r.shape[-2]) / patch) * math.ceil(int(r.shape[-1]) / patch)
    return total


def _refuse(spec: FamilySpec, what: str) -> None:
    raise AttentionFocusError(
        f"Attention Focus does not support {what} on {spec.name} yet: its image tokens are not laid out as the "
        "pack knows (maps and reweighting would be wrong). Remove the Attention Focus nodes from this model's "
        "chain for this workflow")


# model inputs that change a family's token layout in ways the pack does not label: (family, kwarg, variant)
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
)


def _check_inputs(spec: FamilySpec, x: torch.Tensor, extra: dict[str, Any], to: dict | None) -> None:
    """Refuse, by name, the variants of a family whose layout differs from what ``geometry`` describes."""
    if extra.get("latent_shapes") is not None:
        _refuse(spec, "packed multi-stream latents (audio + video)")
    patches = (to or {}).get("patches", {}) or {}
    for family, key, variant in _REFUSED_INPUTS:
        if family == spec.name:
            value = patches.get(key) if key == "post_input" else extra.get(key)
            if value is not None and not (isinstance(value, (list, tuple)) and len(value) == 0):
                _refuse(spec, variant)
    if spec.name == "Qwen-Image" and x.ndim == 5 and int(x.shape[2]) != 1:
        _refuse(spec, f"a {int(x.shape[2])}-frame latent (Qwen-Image-Layered)")
    if spec.name == "Lumina 2" and x.ndim == 5:
        _refuse(spec, "video latents (Ming-Image)")


def geometry(spec: FamilySpec, x: torch.Tensor, context: torch.Tensor | None, extra: dict[str, Any],
             to: dict | None = None) -> Geometry:
    """Token layout of one model call: ``x`` is the latent batch, ``context`` the c_crossattn tensor, ``extra``
    the model's keyword inputs, ``to`` its transformer_options. Exact lengths per family (see
    ``dit_layout.located``); AttentionFocusError for a known variant the pack does not label (``_REFUSED_INPUTS``).
    """
    _check_inputs(spec, x, extra, to)
    frames = int(x.shape[2]) if x.ndim == 5 else 1
    grid = patch_grid(int(x.shape[-2]), int(x.shape[-1]), spec.patch)
    n_ctx = _len(context)
    if spec.name == "HiDream":
        n_llama = _len(extra.get("encoder_hidden_states_llama3"), 2)
        # per block: [image, T5, last Llama layer, this block's Llama layer]; prompt = T5 then Llama tokens,
        # and both Llama copies of a token add up on its position
        parts = (TextPart(0, n_ctx, 0), TextPart(n_ctx, n_llama, n_ctx), TextPart(n_ctx + n_llama, n_llama, n_ctx))
        n_text = n_ctx + 2 * n_llama
        return Geometry("img_first", n_text, parts, grid, frames, n_ctx + n_llama,
                        n_text + frames * grid[0] * grid[1], spec.name)
    if spec.name == "HunyuanDiT":
        n_t5 = _len(extra.get("encoder_hidden_states_t5"))
        return Geometry("cross", n_ctx + n_t5, (TextPart(0, n_ctx + n_t5, 0),), grid, frames, n_ctx + n_t5,
                        family=spec.name)
    if spec.order == "cross":
        return Geometry("cross", n_ctx, (TextPart(0, n_ctx, 0),), grid, frames, n_ctx, family=spec.name)
    refs = _ref_tokens(extra.get("ref_latents"), spec.patch) if spec.name in ("Flux", "Qwen-Image") else 0
    return text_first(spec.registers + n_ctx, n_ctx, grid, spec.registers, spec.pad_multiple, refs, spec.name)


def prompt_length(spec: FamilySpec, cond: dict) -> int:
    """Prompt positions one conditioning entry contributes (what its token table must cover)."""
    ctx = cond.get("cross_attn")
    n = _len(ctx) if isinstance(ctx, torch.Tensor) and ctx.ndim == 3 else 0
    if spec.name == "HiDream":
        n += _len(cond.get("conditioning_llama3"), 2)
    elif spec.name == "HunyuanDiT":
        n += _len(cond.get("conditioning_mt5xl"))
    return n


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

UNSUPPORTED_BASES = ("Flux2",)  # Flux.2: Mistral text left-padded to 512 inside the model
SUPPORTED = "SD1.x, SD2.x, SDXL (UNet) and the DiTs " + ", ".join(DIT_FAMILIES)


def model_family(model) -> str:
    """A short family name for a ModelPatcher's model (``sd1``, ``sd2``, ``sdxl``, ``Flux``, ...)."""
    cfg = getattr(model.model, "model_config", None)
    name = type(cfg).__name__ if cfg is not None else type(model.model).__name__
    dm = getattr(model.model, "diffusion_model", None)
    if type(dm).__name__ not in UNET_NAMES:
        spec = family_spec(dm)
        return spec.name if spec is not None else f"{name} ({type(dm).__name__})"
    if name.startswith("SDXL") or name in ("SSD1B", "Segmind_Vega", "KOALA_700M", "KOALA_1B"):
        return "sdxl"
    if name.startswith(("SD2", "SD20", "SD21")):
        return "sd2"
    return "sd1" if name.startswith("SD1") else name.lower()


def model_spec(model) -> FamilySpec:
    """The family spec of a ModelPatcher's model; AttentionFocusError naming the family if unsupported."""
    dm = getattr(model.model, "diffusion_model", None)
    spec = family_spec(dm)
    if type(model.model).__name__ in UNSUPPORTED_BASES:  # same module class, different text layout
        spec = None
    if spec is None:
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
