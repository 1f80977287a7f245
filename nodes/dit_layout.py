"""Where text and image tokens sit in one Diffusion Transformer forward, on plain numbers.

A DiT attention call sees one sequence of queries and one of keys. For the maps we need the image
queries (the target image's patch grid, without reference-image or padding tokens) and the keys of
the prompt's tokens. ``Geometry`` describes one forward (one batched model call); ``locate`` decides
whether an attention call with ``lq`` queries and ``lk`` keys is an image→text attention of that
forward and where its rows and text columns are.

Orders: ``txt_first`` = joint attention over ``[text, image, refs…]`` (SD3, Flux, Chroma, AuraFlow,
Qwen-Image, Lumina 2); ``img_first`` = ``[image, text]`` (HiDream, Mochi); ``cross`` = separate
cross-attention, queries are image tokens and keys are text tokens (Wan, HunyuanDiT, PixArt, Cosmos, LTXV).
Where other tokens come before the target image or the text (HunyuanVideo's reference latent, Omnigen2's
reference images, HuMo's appended reference frames), ``img_start`` / ``text_start`` / ``n_queries`` place them
exactly; every length is still checked.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from .errors import AttentionFocusError


class LayoutError(AttentionFocusError):
    """An attention call whose shape the known layout of its family does not explain: refused, never guessed."""


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
    n_total: int = 0  # joint orders: the exact sequence length of an image→text call (0: not checked)
    family: str = ""  # for messages
    img_start: int | None = None  # first target-image row (joint: in the sequence; cross: among the queries)
    text_start: int | None = None  # joint orders: first key of the text span (default: the order's own)
    n_queries: int = 0  # cross: exact query count of a text cross-attention call (0: the target's tokens)

    @property
    def n_q(self) -> int:
        """Queries of an image→text cross-attention call (target tokens plus any appended/prepended ones)."""
        return self.n_queries or self.n_img

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


def padded(n: int, multiple: int | None) -> int:
    """``n`` rounded up to a multiple (Lumina 2 / Z-Image pad captions and images to 32 tokens)."""
    return n + (-n) % multiple if multiple else n


def text_first(n_text: int, prompt_len: int, grid: tuple[int, int], registers: int = 0,
               pad_multiple: int | None = None, extra: int = 0, family: str = "") -> Geometry:
    """Joint ``[registers, prompt, caption padding, image, image padding, references…]`` layout (SD3, Flux,
    AuraFlow, Qwen, Lumina); ``extra`` = reference-image tokens after the target image."""
    span = padded(n_text, pad_multiple)
    n_img = grid[0] * grid[1]
    total = span + padded(n_img, pad_multiple) + extra
    return Geometry("txt_first", span, (TextPart(registers, prompt_len, 0),), grid, 1, prompt_len, total, family)


def located(geom: Geometry, lq: int, lk: int, ambiguous_odd: bool = True) -> Located | None:
    """Where the image queries and text keys of a call are, or None if it is not image→text attention.

    Joint calls are recognised by their length: image-only and text-only calls (MMDiT-X, Lumina refiners)
    are shorter than text span + image grid; a call at least that long must have exactly the family's
    length (``n_total``: text, image, padding and reference tokens), else LayoutError — a variant whose
    layout is unknown is refused, never mislabelled. Cross-attention: a call with the text's key count
    must have the family's query count (``n_q``), else LayoutError. A call whose query and key counts both
    equal the text and query counts is ambiguous (self-attention looks the same); ``ambiguous_odd`` says
    which the caller decided.
    """
    n_img, n_text = geom.n_img, geom.n_text
    start = geom.img_start or 0
    if geom.order == "cross":
        if lk != n_text or (lq == lk and not ambiguous_odd):
            return None
        if lq != geom.n_q:
            raise LayoutError(
                f"Attention Focus does not know this {geom.family or 'model'} layout: a cross-attention call over the "
                f"{n_text} text tokens has {lq} queries where the {n_img} image tokens"
                f"{f' + {geom.n_q - n_img} reference tokens' if geom.n_q > n_img else ''} were expected (an input "
                "that adds frames or reference tokens). Remove the Attention Focus nodes from this model's chain")
        return Located(slice(start, start + n_img), 0, False)
    if lq != lk or lk < n_text + n_img:
        return None
    if geom.n_total and lk != geom.n_total:
        raise LayoutError(
            f"Attention Focus does not know this {geom.family or 'model'} layout: a joint attention call has {lk} "
            f"tokens where {geom.n_total} were expected ({n_text} text + {n_img} image"
            f"{f' + {geom.n_total - n_text - n_img} reference/padding' if geom.n_total > n_text + n_img else ''}). "
            "It is a variant the pack cannot label yet; remove the Attention Focus nodes from this model's chain")
    if geom.order == "txt_first":
        rows = geom.img_start if geom.img_start is not None else n_text
        return Located(slice(rows, rows + n_img), geom.text_start or 0, True)
    base = geom.text_start if geom.text_start is not None else start + n_img
    return Located(slice(start, start + n_img), base, True)
