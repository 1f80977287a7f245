"""Where text and image tokens sit in one Diffusion Transformer forward, on plain numbers.

A DiT attention call sees one sequence of queries and one of keys. For the maps we need the image
queries (the target image's patch grid, without reference-image or padding tokens) and the keys of
the prompt's tokens. ``Geometry`` describes one forward (one batched model call); ``locate`` decides
whether an attention call with ``lq`` queries and ``lk`` keys is an image→text attention of that
forward and where its rows and text columns are.

Orders: ``txt_first`` = joint attention over ``[text, image, refs…]`` (SD3, Flux, Chroma, AuraFlow,
Qwen-Image, Lumina 2); ``img_first`` = ``[image, text]`` (HiDream); ``cross`` = separate
cross-attention, queries are image tokens and keys are text tokens (Wan, HunyuanDiT).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TextPart:
    """A run of prompt tokens inside the text span: key offset (within the span), length, prompt position."""

    key_start: int
    length: int
    prompt_start: int


@dataclass(frozen=True)
class Geometry:
    """Token layout of one DiT forward."""

    order: str  # txt_first | img_first | cross
    n_text: int  # keys of the text span (registers, prompt streams, caption padding)
    parts: tuple[TextPart, ...]  # where the prompt's tokens sit in the text span
    grid: tuple[int, int]  # image patch grid (rows, columns) of the target latent
    frames: int = 1
    prompt_len: int = 0

    @property
    def n_img(self) -> int:
        return self.frames * self.grid[0] * self.grid[1]

    def key_map(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(text key offsets, prompt positions): one entry per captured key column (relative to the span).

        Built once per geometry (one per model call), not per attention layer.
        """
        return self._key_map

    @functools.cached_property
    def _key_map(self) -> tuple[torch.Tensor, torch.Tensor]:
        keys, pos = [], []
        for p in self.parts:
            keys += range(p.key_start, p.key_start + p.length)
            pos += range(p.prompt_start, p.prompt_start + p.length)
        return torch.tensor(keys, dtype=torch.long), torch.tensor(pos, dtype=torch.long)

    @functools.cached_property
    def folds(self) -> bool:
        """Whether several key columns carry one prompt position, or some positions have none (HiDream's
        repeated Llama stream): the captured columns then have to be summed onto prompt positions."""
        pos = self._key_map[1]
        return len(set(pos.tolist())) != len(pos) or self.prompt_len != len(pos)


@dataclass(frozen=True)
class Located:
    """An image→text attention call: image query rows and where the text span starts among the keys."""

    rows: slice
    key_base: int
    joint: bool  # keys include image tokens (softmax over text + image)


def patch_grid(height: int, width: int, patch: int) -> tuple[int, int]:
    """Patch grid of a latent: odd sizes are padded up (ComfyUI's pad_to_patch_size), so ceil."""
    return math.ceil(height / patch), math.ceil(width / patch)


def text_first(n_text: int, prompt_len: int, grid: tuple[int, int], registers: int = 0,
               pad_multiple: int | None = None) -> Geometry:
    """Joint ``[registers, prompt, caption padding, image, …]`` layout (SD3, Flux, AuraFlow, Qwen, Lumina)."""
    span = n_text
    if pad_multiple:
        span += (-n_text) % pad_multiple
    return Geometry("txt_first", span, (TextPart(registers, prompt_len, 0),), grid, 1, prompt_len)


def located(geom: Geometry, lq: int, lk: int, ambiguous_odd: bool = True) -> Located | None:
    """Where the image queries and text keys of a call are, or None if it is not image→text attention.

    Joint calls are recognised by their length (text span + image grid, plus any reference or
    padding tokens); image-only and text-only calls (MMDiT-X, Lumina refiners) are shorter. For
    cross-attention a call whose query and key counts both equal the text and image counts is
    ambiguous (self-attention looks the same); ``ambiguous_odd`` says which the caller decided.
    """
    n_img, n_text = geom.n_img, geom.n_text
    if geom.order == "cross":
        if lq != n_img or lk != n_text:
            return None
        if lq == lk and not ambiguous_odd:
            return None
        return Located(slice(0, n_img), 0, False)
    if lq != lk or lk < n_text + n_img:
        return None
    if geom.order == "txt_first":
        return Located(slice(n_text, n_text + n_img), 0, True)
    return Located(slice(0, n_img), n_img, True)
