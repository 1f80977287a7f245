"""DAAM's definition of a heat map (Tang et al. 2023, ``daam`` 0.2.0), reproduced exactly, on plain tensors.

What DAAM 0.2.0 computes for a Stable Diffusion UNet (read from its ``trace.py`` and ``hook.py``):

- layers: the cross-attention (``attn2``) of every transformer block of the *down* and *up* blocks — never the
  middle block — (ComfyUI: every ``input`` and ``output`` layer, all depths);
- a reference grid of side ``s``: 64 (its ``latent_hw`` 4096) for SD1.x, SD2.x-base and SDXL, 96 (9216) for the
  SD2.x 768-v models, whatever the image size;
- a call with ``n = h·w`` image queries has the factor ``f = ⌊√(s² // n)⌋`` (integer division first); calls with
  ``f == 8`` are dropped (e.g. the 8×8 layers at 256 px, the 16×16 ones at 1024 px for SD1.5);
- per (layer, head): the sum over steps of the softmax probabilities ``softmax(q kᵀ/√d)`` of the prompt's batch
  half, as a (tokens, h, w) grid;
- per (layer, head): that sum resized bicubically (``align_corners=False``) to s×s, clamped ≥ 0;
- the mean over every (layer, head) pair (a layer with more heads weighs more);
- a word: the mean of the maps of all its tokens, over all its occurrences.

What differs here, on purpose: the prompt's chunk of the batch is found through ComfyUI's ``cond_or_uncond``
(DAAM takes the second half of the batch·heads axis, which at cfg ≤ 1 — no unconditional half — is the second
half of the *heads* of the prompt: DAAM then averages half of the heads; here every head of the prompt counts);
a batch of several images gets one map each (DAAM refuses batches); contexts longer than 77 tokens (DAAM
skips every call whose key length is not 77) are captured, folded onto the prompt's tokens; non-square
images (DAAM assumes ``h = w = √n``) use the same s×s grid, so the heat-map node stretches the map to the image.

Memory: per captured prompt and kept layer ℓ one fp32 per-head sum::

    bytes = 4 · batch · prompt_tokens · Σ_ℓ heads_ℓ · h_ℓ · w_ℓ

SD1.5 at 512²: 8 heads, 5 layers each at 64², 32², 16² → 4·77·8·26 880 = 66 MB per image; SDXL at 1024²:
10 layers of 10 heads at 64², 50 of 20 heads at 32² → 441 MB per image (the middle block is not kept).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .attention_math import MAX_LOGITS, additive_mask, to_bhld
from .layer_spec import LayerKey

DAAM_BLOCKS = ("input", "output")  # diffusers' down_blocks and up_blocks
DROPPED_FACTOR = 8


def reference_side(family: str, v_prediction: bool) -> int:
    """DAAM's reference grid side: 96 for the SD2.x 768-v models, 64 for every other SD1.x/SD2.x/SDXL model.

    (DAAM reads it from the pipeline's ``sample_size``; ComfyUI does not keep it, but the 768 px SD2 models are
    exactly the v-prediction ones.)
    """
    return 96 if family == "sd2" and v_prediction else 64


def factor(n_queries: int, side: int) -> int:
    """DAAM's spatial factor of a call with ``n_queries`` image queries: ⌊√(side² // n)⌋."""
    return int(math.sqrt((side * side) // max(1, n_queries)))


def keeps(layer: LayerKey, hw: tuple[int, int], side: int) -> bool:
    """Whether DAAM keeps a call of ``layer`` on an h×w grid: down/up blocks only, factor ≠ 8."""
    return layer.block in DAAM_BLOCKS and factor(hw[0] * hw[1], side) != DROPPED_FACTOR


def head_probs(q: torch.Tensor, k: torch.Tensor, heads: int, *, bhld: bool = False,
               mask: torch.Tensor | None = None, key_bias: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(q kᵀ/√d) per head, fp32: (B, heads, Lq, Lk), computed in query chunks of ≤ MAX_LOGITS logits.

    ``mask``: additive or boolean-keep, broadcastable to (B, H, Lq, Lk); ``key_bias``: additive (B, Lk).
    """
    qh = to_bhld(q, heads, bhld)
    kh = to_bhld(k, heads, bhld)
    b, h, lq, d = qh.shape
    lk = kh.shape[2]
    kt = kh.float().transpose(-1, -2)
    out = torch.empty(b, h, lq, lk, dtype=torch.float32, device=q.device)
    kb = None if key_bias is None else key_bias.float()[:, None, None, :]
    step = max(1, MAX_LOGITS // max(1, b * h * lk))
    for s in range(0, lq, step):
        e = min(lq, s + step)
        logits = torch.matmul(qh[:, :, s:e].float(), kt) / math.sqrt(d)
        if mask is not None:
            logits = logits + additive_mask(mask, lq, s, e)
        if kb is not None:
            logits = logits + kb
        out[:, :, s:e] = torch.softmax(logits, dim=-1)
    return out


def aggregate(parts: dict[LayerKey, torch.Tensor], heads: dict[LayerKey, int], side: int) -> torch.Tensor:
    """DAAM's maps from per-head sums: (B, T, side, side).

    ``parts``: layer → (B·heads, T, h, w) per-head step sums (image-major); ``heads``: layer → heads. Each
    (layer, head) map is resized bicubically to side×side and clamped ≥ 0; the result is the mean over every
    (layer, head) pair. Accumulated one layer at a time (transient: one layer's resized heads).
    """
    acc = None
    pairs = 0
    for layer, grid in parts.items():
        n_heads = heads.get(layer, 1)
        bh, t = grid.shape[:2]
        b = bh // n_heads
        up = F.interpolate(grid.float(), size=(side, side), mode="bicubic", align_corners=False).clamp_(min=0)
        up = up.reshape(b, n_heads, t, side, side).sum(1)
        acc = up if acc is None else acc.add_(up)
        pairs += n_heads
    if acc is None:
        raise ValueError("nothing was captured for this prompt")
    return acc / pairs
