"""Video DiT families (and HunyuanImage 2.1, which shares HunyuanVideo's class): detection by structure and the
exact token layout of one model call.

Wan 2.x and its subclasses that keep the plain Wan text cross-attention (Camera, HuMo, Animate), HunyuanVideo
1.0 / I2V / 1.5 and HunyuanImage 2.1 (+ refiner), Cosmos Predict2, LTX-Video, Mochi. Video geometry always
names ``frames`` (latent frames after the temporal patch) and the per-frame patch ``grid``: the target's tokens
are frame-major, row-major within a frame. Imports nothing from ComfyUI.
"""

from __future__ import annotations

import math

from .dit_layout import Geometry, TextPart, patch_grid
from .family_base import FamilySpec, count, keys, length, level_of, mro_names, patch_of, refuse

# Wan subclasses whose layout is not the plain one, by the structure that makes them differ: attribute → reason
WAN_REFUSED_PARTS = (
    ("vace_blocks", "Wan VACE (its control blocks attend to the prompt again, with the control stream as queries, "
                    "under the same block index)"),
    ("audio_injector", "Wan S2V (reference and motion frames are appended to the video tokens, and its blocks do "
                       "not pass transformer_options in ComfyUI 0.3.75)"),
)


def _wan(dm, base: set[str]) -> FamilySpec | None:
    """WanModel and subclasses with its structure: per block self-attention, then cross-attention over the text."""
    if not all(hasattr(dm, a) for a in ("blocks", "text_embedding", "patch_embedding", "head")):
        return None
    if not all(hasattr(b, "cross_attn") and hasattr(b, "self_attn") for b in dm.blocks):
        return None
    pt, p = patch_of(dm)
    options = set()
    if hasattr(dm, "audio_proj"):  # HuMo: the reference latent's frames follow the video's
        options.add("humo")
    if getattr(dm, "ref_conv", None) is not None:
        options.add("ref_conv")
    if hasattr(dm.blocks[0].cross_attn, "k_img") if len(dm.blocks) else False:
        options.add("i2v")  # image-to-video cross-attention: a CLIP-vision call, then the text call
    name = "Wan"
    if hasattr(dm, "control_adapter"):
        name = "Wan Camera"
    elif "humo" in options:
        name = "Wan HuMo"
    elif hasattr(dm, "face_adapter"):
        name = "Wan Animate"
    return FamilySpec(name, "dit", tuple(keys("block", count(dm, "blocks"), level_of(p))), "cross", p,
                      context_attr="text_embedding.0", options=frozenset(options), patch_t=pt)


def _hunyuan_video(dm, base: set[str]) -> FamilySpec | None:
    """HunyuanVideo's class: HunyuanVideo 1.0 / I2V (Llama), 1.5 (Qwen2.5-VL + ByT5 + SigLIP vision tokens) and
    HunyuanImage 2.1 (+ refiner; Qwen2.5-VL + ByT5). Flux-style double and single blocks."""
    txt_in = getattr(dm, "txt_in", None)
    if txt_in is None or not hasattr(txt_in, "individual_token_refiner") or not hasattr(dm, "double_blocks"):
        return None
    pt, p = patch_of(dm)
    lvl = level_of(p)
    options = set()
    if getattr(dm, "byt5_in", None) is not None:
        options.add("byt5")
    if getattr(dm, "vision_in", None) is not None:
        options.add("vision")
    if getattr(dm, "cond_type_embedding", None) is not None:
        options.add("cond_type")  # 1.5: [vision, ByT5, LLM]; else [LLM, ByT5] (vision first)
    flipped = bool(dm.double_blocks) and getattr(dm.double_blocks[0], "flipped_img_txt", False)
    order = "img_first" if flipped else "txt_first"  # ComfyUI ≤ 0.8: [ref, image, text]; 0.33: [text, ref, image]
    if "HunyuanImage21Refiner" in base:
        name = "HunyuanImage 2.1 refiner"
    elif "HunyuanImage21" in base:
        name = "HunyuanImage 2.1"
    elif "HunyuanVideo15" in base or "cond_type" in options:
        name = "HunyuanVideo 1.5"
    else:
        name = "HunyuanVideo"
    layers = keys("double", count(dm, "double_blocks"), lvl) + keys("single", count(dm, "single_blocks"), lvl)
    return FamilySpec(name, "dit", tuple(layers), order, p, context_attr="txt_in.input_embedder", block_ids=True,
                      options=frozenset(options), patch_t=pt)


def _cosmos(dm, base: set[str]) -> FamilySpec | None:
    if "MiniTrainDIT" not in mro_names(dm):
        return None
    p = int(getattr(dm, "patch_spatial", 2))
    return FamilySpec("Cosmos Predict2", "dit", tuple(keys("block", count(dm, "blocks"), level_of(p))), "cross", p,
                      patch_t=int(getattr(dm, "patch_temporal", 1)))


def _ltxv(dm, base: set[str]) -> FamilySpec | None:
    if "LTXVModel" not in mro_names(dm) or not hasattr(dm, "transformer_blocks"):
        return None
    return FamilySpec("LTX-Video", "dit", tuple(keys("block", count(dm, "transformer_blocks"), 0)), "cross", 1)


def _mochi(dm, base: set[str]) -> FamilySpec | None:
    if "AsymmDiTJoint" not in mro_names(dm):
        return None
    p = int(getattr(dm, "patch_size", 2))
    return FamilySpec("Mochi", "dit", tuple(keys("double", count(dm, "blocks"), level_of(p))), "img_first", p)


DETECTORS = (_wan, _hunyuan_video, _cosmos, _ltxv, _mochi)


# ---------------------------------------------------------------------------------------------------
# one model call's layout


def _video_grid(spec: FamilySpec, x) -> tuple[int, tuple[int, int]]:
    """(frames after the temporal patch, per-frame patch grid) of the target latent."""
    frames = math.ceil(int(x.shape[2]) / spec.patch_t) if x.ndim == 5 else 1
    return frames, patch_grid(int(x.shape[-2]), int(x.shape[-1]), spec.patch)


def _wan_geom(spec: FamilySpec, x, ctx, extra) -> Geometry:
    """Cross-attention over the text; the queries are the video tokens, plus HuMo's reference frames after them
    (a ``reference_latent`` [B, C, T_r, H_r, W_r], patch-embedded by the same conv)."""
    if spec.has("i2v") and extra.get("clip_fea") is None:
        refuse(spec, "image-to-video without CLIP vision features (its image branch then attends to the prompt's "
                     "tokens through its own projection, a second call per block that is no text attention; connect "
                     "a clip_vision_output to the image-to-video node)")
    frames, grid = _video_grid(spec, x)
    n_ctx = length(ctx)
    n_q = 0
    ref = extra.get("reference_latent")
    if spec.has("humo") and ref is not None and getattr(ref, "ndim", 0) == 5:
        r_frames, r_grid = _video_grid(spec, ref)
        n_q = frames * grid[0] * grid[1] + r_frames * r_grid[0] * r_grid[1]
    return Geometry("cross", n_ctx, (TextPart(0, n_ctx, 0),), grid, frames, n_ctx, family=spec.name, n_queries=n_q)


def _hunyuan_video_geom(spec: FamilySpec, x, ctx, extra) -> Geometry:
    """``[ref latent][image][text]`` (ComfyUI ≤ 0.8) or ``[text][ref latent][image]`` (0.33); text = LLM tokens,
    ByT5 glyph tokens (models with ``byt5_in``) and SigLIP vision tokens (1.5, ``clip_fea``) — vision tokens are
    attended to but are no prompt positions. Prompt = LLM tokens, then ByT5 tokens."""
    frames, grid = _video_grid(spec, x)
    n_img = frames * grid[0] * grid[1]
    ref = extra.get("ref_latent")
    n_ref = 0
    if ref is not None and getattr(ref, "ndim", 0) == 5:
        r_frames, r_grid = _video_grid(spec, ref)
        n_ref = r_frames * r_grid[0] * r_grid[1]
    n_ctx = length(ctx)
    n_b = length(extra.get("txt_byt5")) if spec.has("byt5") else 0
    n_v = length(extra.get("clip_fea")) if spec.has("vision") else 0
    if spec.has("cond_type"):
        parts = (TextPart(n_v + n_b, n_ctx, 0), TextPart(n_v, n_b, n_ctx))
    else:
        parts = (TextPart(n_v, n_ctx, 0), TextPart(n_v + n_ctx, n_b, n_ctx))
    parts = tuple(p for p in parts if p.length)
    n_text = n_ctx + n_b + n_v
    total = n_text + n_ref + n_img
    if spec.order == "img_first":
        return Geometry("img_first", n_text, parts, grid, frames, n_ctx + n_b, total, spec.name, img_start=n_ref,
                        text_start=n_ref + n_img)
    return Geometry("txt_first", n_text, parts, grid, frames, n_ctx + n_b, total, spec.name, img_start=n_text + n_ref)


def _cross_video(spec: FamilySpec, x, ctx, extra) -> Geometry:
    frames, grid = _video_grid(spec, x)
    n_ctx = length(ctx)
    return Geometry("cross", n_ctx, (TextPart(0, n_ctx, 0),), grid, frames, n_ctx, family=spec.name)


def _mochi_geom(spec: FamilySpec, x, ctx, extra) -> Geometry:
    """``[video][text cropped to num_tokens]``: keys past the prompt's own tokens are cut off by the model."""
    frames, grid = _video_grid(spec, x)
    n_ctx = length(ctx)
    n_tok = extra.get("num_tokens")
    crop = min(n_ctx, int(n_tok)) if isinstance(n_tok, (int, float)) else n_ctx
    n_img = frames * grid[0] * grid[1]
    return Geometry("img_first", crop, (TextPart(0, crop, 0),), grid, frames, n_ctx, n_img + crop, spec.name)


GEOMETRY = {"Wan": _wan_geom, "Wan Camera": _wan_geom, "Wan HuMo": _wan_geom, "Wan Animate": _wan_geom,
            "HunyuanVideo": _hunyuan_video_geom, "HunyuanVideo 1.5": _hunyuan_video_geom,
            "HunyuanImage 2.1": _hunyuan_video_geom, "HunyuanImage 2.1 refiner": _hunyuan_video_geom,
            "Cosmos Predict2": _cross_video, "LTX-Video": _cross_video, "Mochi": _mochi_geom}


def prompt_extra(spec: FamilySpec, cond: dict) -> int:
    """Prompt positions beyond ``cross_attn`` (HunyuanImage 2.1 / HunyuanVideo 1.5: the ByT5 glyph tokens)."""
    if spec.has("byt5"):
        return length(cond.get("conditioning_byt5small"))
    return 0
