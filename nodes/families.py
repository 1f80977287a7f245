"""Which model family a diffusion model is, its attention layers, and its per-forward token geometry.

Duck-typed on the ComfyUI module classes (by class name and attributes), so this file imports nothing
from ComfyUI. One ``FamilySpec`` per supported diffusion-model class; ``geometry`` turns the inputs
of one model call (latent shape, context, extra conditioning) into a ``dit_layout.Geometry``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from .dit_layout import Geometry, TextPart, patch_grid, text_first
from .layer_spec import LayerKey

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
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def level(self) -> int:
        """Resolution level of the patch grid (2 → 1: the grid is half the latent)."""
        return max(0, self.patch.bit_length() - 1)


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


def geometry(spec: FamilySpec, x: torch.Tensor, context: torch.Tensor | None, extra: dict[str, Any]) -> Geometry:
    """Token layout of one model call: ``x`` is the latent batch, ``context`` the c_crossattn tensor."""
    frames = int(x.shape[2]) if x.ndim == 5 else 1
    grid = patch_grid(int(x.shape[-2]), int(x.shape[-1]), spec.patch)
    n_ctx = _len(context)
    if spec.name == "HiDream":
        n_llama = _len(extra.get("encoder_hidden_states_llama3"), 2)
        # per block: [image, T5, last Llama layer, this block's Llama layer]; prompt = T5 then Llama tokens,
        # and both Llama copies of a token add up on its position
        parts = (TextPart(0, n_ctx, 0), TextPart(n_ctx, n_llama, n_ctx), TextPart(n_ctx + n_llama, n_llama, n_ctx))
        return Geometry("img_first", n_ctx + 2 * n_llama, parts, grid, frames, n_ctx + n_llama)
    if spec.name == "HunyuanDiT":
        n_t5 = _len(extra.get("encoder_hidden_states_t5"))
        return Geometry("cross", n_ctx + n_t5, (TextPart(0, n_ctx + n_t5, 0),), grid, frames, n_ctx + n_t5)
    if spec.order == "cross":
        return Geometry("cross", n_ctx, (TextPart(0, n_ctx, 0),), grid, frames, n_ctx)
    return text_first(spec.registers + n_ctx, n_ctx, grid, spec.registers, spec.pad_multiple)


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
