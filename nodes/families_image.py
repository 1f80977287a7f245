"""Image DiT families: detection by structure and the exact token layout of one model call.

SD3 / SD3.5, Flux.1 / Kontext, Flux.2 (dev, Klein), Chroma, Chroma Radiance, AuraFlow, Qwen-Image, Lumina 2 /
Z-Image, HiDream, HunyuanDiT, PixArt α/Σ, Omnigen2. Each ``_detect_*`` takes the diffusion module and the
class names of its ``model_base`` model and returns a ``FamilySpec`` or None; ``GEOMETRY[name]`` turns one
model call's inputs into a ``Geometry`` (sources: the project's notes on every family's layout, per ComfyUI
version; the line numbers there). Imports nothing from ComfyUI.
"""

from __future__ import annotations

from .dit_layout import Geometry, TextPart, patch_grid, text_first
from .family_base import FamilySpec, count, keys, length, level_of, mro_names, patch_of, ref_tokens


def _sd3(dm, base: set[str]) -> FamilySpec | None:
    if "OpenAISignatureMMDITWrapper" not in mro_names(dm):
        return None
    p = patch_of(dm)[1]
    return FamilySpec("SD3", "dit", tuple(keys("double", count(dm, "joint_blocks"), level_of(p))), "txt_first", p,
                      int(getattr(dm, "register_length", 0) or 0), context_attr="context_embedder")


def _flux_like(dm, base: set[str]) -> FamilySpec | None:
    """Flux.1 / Kontext, Flux.2 (dev and Klein: global modulation, patch 1, text left-padded to 512 by the
    model_base), Chroma (distilled guidance approximator) and Chroma Radiance (pixel space, patch 16)."""
    if not all(hasattr(dm, a) for a in ("double_blocks", "single_blocks", "txt_in", "params")):
        return None
    if hasattr(dm.txt_in, "individual_token_refiner"):  # HunyuanVideo's token refiner: families_video
        return None
    p = patch_of(dm)[1]
    lvl = level_of(p)
    skip_d = tuple(getattr(dm, "skip_mmdit", ()) or ())
    skip_s = tuple(getattr(dm, "skip_dit", ()) or ())
    layers = tuple(keys("double", count(dm, "double_blocks"), lvl, skip_d)
                   + keys("single", count(dm, "single_blocks"), lvl, skip_s))
    if hasattr(dm, "distilled_guidance_layer"):
        name = "Chroma Radiance" if hasattr(dm, "img_in_patch") else "Chroma"
        return FamilySpec(name, "dit", layers, "txt_first", p, context_attr="txt_in", block_ids=True)
    if getattr(dm.params, "global_modulation", False):
        return FamilySpec("Flux.2", "dit", layers, "txt_first", p, context_attr="txt_in", block_ids=True,
                          options=frozenset({"refs"}), text_pad_to=512 if "Flux2" in base else 0)
    return FamilySpec("Flux", "dit", layers, "txt_first", p, context_attr="txt_in", block_ids=True,
                      options=frozenset({"refs"}))


def _auraflow(dm, base: set[str]) -> FamilySpec | None:
    if "MMDiT" not in mro_names(dm) or not hasattr(dm, "register_tokens"):
        return None
    p = patch_of(dm)[1]
    lvl = level_of(p)
    layers = keys("double", count(dm, "double_layers"), lvl) + keys("single", count(dm, "single_layers"), lvl)
    return FamilySpec("AuraFlow", "dit", tuple(layers), "txt_first", p, int(dm.register_tokens.shape[1]),
                      context_attr="cond_seq_linear")


def _qwen(dm, base: set[str]) -> FamilySpec | None:
    if "QwenImageTransformer2DModel" not in mro_names(dm):
        return None
    p = patch_of(dm)[1]
    return FamilySpec("Qwen-Image", "dit", tuple(keys("double", count(dm, "transformer_blocks"), level_of(p))),
                      "txt_first", p, context_attr="txt_in", block_ids=True, options=frozenset({"refs"}))


def _lumina(dm, base: set[str]) -> FamilySpec | None:
    if "NextDiT" not in mro_names(dm):
        return None
    p = patch_of(dm)[1]
    return FamilySpec("Lumina 2", "dit", tuple(keys("single", count(dm, "layers"), level_of(p))), "txt_first", p,
                      pad_multiple=getattr(dm, "pad_tokens_multiple", None))


def _hidream(dm, base: set[str]) -> FamilySpec | None:
    if "HiDreamImageTransformer2DModel" not in mro_names(dm):
        return None
    p = patch_of(dm)[1]
    lvl = level_of(p)
    layers = keys("double", count(dm, "double_stream_blocks"), lvl) + keys("single", count(dm, "single_stream_blocks"),
                                                                          lvl)
    return FamilySpec("HiDream", "dit", tuple(layers), "img_first", p)


def _hunyuan_dit(dm, base: set[str]) -> FamilySpec | None:
    if "HunYuanDiT" not in mro_names(dm):
        return None
    p = patch_of(dm)[1]
    return FamilySpec("HunyuanDiT", "dit", tuple(keys("block", count(dm, "blocks"), level_of(p))), "cross", p,
                      routed=False, route="hydit")


def _pixart(dm, base: set[str]) -> FamilySpec | None:
    """PixArt α/Σ: self-attention (KV-compressed in Σ) and cross-attention over the T5 tokens, neither passing
    transformer_options: the cross-attention is routed by an object patch (``pixart_route``)."""
    if "PixArtMS" not in mro_names(dm) or not all(hasattr(b, "cross_attn") for b in getattr(dm, "blocks", ())):
        return None
    p = patch_of(dm)[1]
    return FamilySpec("PixArt", "dit", tuple(keys("block", count(dm, "blocks"), level_of(p))), "cross", p,
                      routed=False, route="pixart")


def _omnigen2(dm, base: set[str]) -> FamilySpec | None:
    if "OmniGen2Transformer2DModel" not in mro_names(dm):
        return None
    p = patch_of(dm)[1]
    return FamilySpec("Omnigen2", "dit", tuple(keys("single", count(dm, "layers"), level_of(p))), "txt_first", p,
                      options=frozenset({"refs"}))


DETECTORS = (_sd3, _flux_like, _auraflow, _qwen, _lumina, _hidream, _hunyuan_dit, _pixart, _omnigen2)


# ---------------------------------------------------------------------------------------------------
# one model call's layout


def _grid(spec: FamilySpec, x) -> tuple[int, int]:
    return patch_grid(int(x.shape[-2]), int(x.shape[-1]), spec.patch)


def _joint_text_first(spec: FamilySpec, x, ctx, extra) -> Geometry:
    """``[registers, prompt, caption padding, image, image padding, references…]`` (SD3, Flux, Flux.2, Chroma,
    Chroma Radiance, AuraFlow, Qwen-Image, Lumina 2). Chroma ignores reference latents; Flux.2's prompt is the
    context as the model got it (left-padded to 512 by the model_base)."""
    n_ctx = length(ctx)
    refs = ref_tokens(extra.get("ref_latents"), spec.patch) if spec.has("refs") else 0
    return text_first(spec.registers + n_ctx, n_ctx, _grid(spec, x), spec.registers, spec.pad_multiple, refs,
                      spec.name)


def _hidream_geom(spec: FamilySpec, x, ctx, extra) -> Geometry:
    # per block: [image, T5, last Llama layer, this block's Llama layer]; prompt = T5 then Llama tokens, and
    # both Llama copies of a token add up on its position
    grid = _grid(spec, x)
    n_ctx = length(ctx)
    n_llama = length(extra.get("encoder_hidden_states_llama3"), 2)
    parts = (TextPart(0, n_ctx, 0), TextPart(n_ctx, n_llama, n_ctx), TextPart(n_ctx + n_llama, n_llama, n_ctx))
    n_text = n_ctx + 2 * n_llama
    return Geometry("img_first", n_text, parts, grid, 1, n_ctx + n_llama, n_text + grid[0] * grid[1], spec.name)


def _hunyuan_dit_geom(spec: FamilySpec, x, ctx, extra) -> Geometry:
    n = length(ctx) + length(extra.get("encoder_hidden_states_t5"))
    return Geometry("cross", n, (TextPart(0, n, 0),), _grid(spec, x), 1, n, family=spec.name)


def _cross(spec: FamilySpec, x, ctx, extra) -> Geometry:
    n_ctx = length(ctx)
    return Geometry("cross", n_ctx, (TextPart(0, n_ctx, 0),), _grid(spec, x), 1, n_ctx, family=spec.name)


def _omnigen2_geom(spec: FamilySpec, x, ctx, extra) -> Geometry:
    """``[prompt, reference images…, target]``: the target image comes last (main layers; the context, noise and
    reference refiners are shorter and ignored)."""
    n_ctx = length(ctx)
    grid = _grid(spec, x)
    n_img = grid[0] * grid[1]
    refs = ref_tokens(extra.get("ref_latents"), spec.patch)
    return Geometry("txt_first", n_ctx, (TextPart(0, n_ctx, 0),), grid, 1, n_ctx, n_ctx + refs + n_img, spec.name,
                    img_start=n_ctx + refs)


GEOMETRY = {"SD3": _joint_text_first, "Flux": _joint_text_first, "Flux.2": _joint_text_first,
            "Chroma": _joint_text_first, "Chroma Radiance": _joint_text_first, "AuraFlow": _joint_text_first,
            "Qwen-Image": _joint_text_first, "Lumina 2": _joint_text_first, "HiDream": _hidream_geom,
            "HunyuanDiT": _hunyuan_dit_geom, "PixArt": _cross, "Omnigen2": _omnigen2_geom}


def prompt_extra(spec: FamilySpec, cond: dict) -> int:
    """Prompt positions beyond ``cross_attn`` that a conditioning entry contributes (its second text input)."""
    if spec.name == "HiDream":
        return length(cond.get("conditioning_llama3"), 2)
    if spec.name == "HunyuanDiT":
        return length(cond.get("conditioning_mt5xl"))
    return 0
