"""What the editor's interactive viewer reads: per-word maps at latent resolution, 8-bit quantised.

One heat-map run writes, into ``<ComfyUI temp>/attention_focus_view/`` (served by ``viewer_routes``):

- ``<id>.view.safetensors`` — tensor ``words``: uint8 (batch, words, h, w), each word's map quantised over
  its own range; safetensors metadata key ``attention_focus_view`` holds one JSON object (``HEADER``);
- ``<id>.maps.safetensors`` — the raw per-token maps (float16, (batch, tokens, h, w)) in the Save Maps
  format, for download (Load Maps reads it back);
- ``<id>.<b>.jpg`` — the picture under the overlay, one per image of the batch (longest side ≤ 1024 px).

Only the newest ``KEEP_VIEWS`` runs' files are kept.

Values: a map holds attention probabilities summed over the sampler's model evaluations (see
capture_store); dividing by the number of evaluations gives the **attention share**: the mean fraction of a
pixel's attention (over heads, layers and steps) that went to (each token of) the word. ``lo``/``hi``
are in share units (0..1); the viewer shows percent. A quantised value ``q`` stands for
``lo + q / 255 · (hi − lo)``.

History (optional, for captures that record steps or layers): ``frames`` maps a kind (``steps``,
``layers``) to labels and a tensor ``frames.<kind>``: uint8 (batch, frames, words, h, w) with its own
``lo``/``hi`` (batch, frames, words). Viewers hide the history controls when ``frames`` is empty.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .capture_store import MapSet, word_maps
from .maps_file import FORMAT as MAPS_FORMAT
from .maps_file import META_KEY as MAPS_META_KEY
from .maps_file import VERSION as MAPS_VERSION
from .render import COLORMAPS
from .token_table import TokenTable, resolve
from .word_choice import is_function_word

FORMAT = "attention-focus-view"
VERSION = 1
META_KEY = "attention_focus_view"
FOLDER = "attention_focus_view"
MAX_IMAGE_SIDE = 1024
KEEP_VIEWS = 64  # newest runs whose view files stay in the temp folder (ComfyUI clears it at start-up)


@dataclass(frozen=True)
class ViewWord:
    """A chip of the viewer: a word (or typed phrase) and the token positions its map averages."""

    text: str
    positions: tuple[int, ...]
    function: bool
    selected: bool


@dataclass(frozen=True)
class Frames:
    """Optional history of one kind (per step or per layer): labels and (batch, frames, tokens, h, w)
    token maps summed like the main maps; ``evaluations`` per frame (None: 1 each)."""

    labels: Sequence[str]
    maps: torch.Tensor
    evaluations: Sequence[int] | None = None


def view_words(table: TokenTable, selected: Sequence[str], selected_positions: Sequence[Sequence[int]] | None = None
               ) -> list[ViewWord]:
    """The viewer's chips: the node's selected words first (as typed), then the prompt's other content words,
    then its function words; each word once (a prompt word with the same positions as a selected one is
    not repeated)."""
    if selected_positions is None:
        selected_positions = [resolve(table, s) for s in selected]
    out: list[ViewWord] = []
    seen: set[tuple[int, ...]] = set()
    for text, pos in zip(selected, selected_positions, strict=True):
        key = tuple(sorted(pos))
        if key in seen:
            continue
        seen.add(key)
        out.append(ViewWord(text, key, is_function_word(text), True))
    rest = [w for w in table.merged_words() if tuple(sorted(w.positions)) not in seen]
    for function in (False, True):
        for w in rest:
            key = tuple(sorted(w.positions))
            if is_function_word(w.text) == function and key not in seen:
                seen.add(key)
                out.append(ViewWord(w.text, key, function, False))
    return out


def quantize(maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(..., h, w) float maps → (uint8 maps, lo (...), hi (...)): each map over its own min..max."""
    m = maps.float()
    lo = m.amin(dim=(-2, -1))
    hi = m.amax(dim=(-2, -1))
    span = (hi - lo)[..., None, None]
    scaled = torch.where(span > 0, (m - lo[..., None, None]) / torch.where(span > 0, span, torch.ones_like(span)),
                         torch.zeros_like(m))
    return (scaled * 255).round().clamp(0, 255).to(torch.uint8), lo, hi


def dequantize(q: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """Inverse of ``quantize`` (up to half a step of each map's range)."""
    return lo[..., None, None] + q.float() / 255 * (hi - lo)[..., None, None]


def evaluations_of(meta: Mapping[str, Any]) -> int:
    """Model evaluations the maps were summed over (1 when the metadata does not say)."""
    steps = meta.get("steps")
    return int(steps) if isinstance(steps, int) and not isinstance(steps, bool) and steps > 0 else 1


def _lut_hex(colormap: str) -> str:
    lut = (COLORMAPS[colormap] * 255).round().clamp(0, 255).to(torch.uint8)
    return bytes(lut.reshape(-1).tolist()).hex()


def build_view(ms: MapSet, words: Sequence[ViewWord], *, colormap: str, opacity: float, normalization: str,
               image_size: tuple[int, int], streams: Sequence[str] = (), text_stream: str = "all",
               frames: Mapping[str, Frames] | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The view file's tensors and header for ``words`` of a map set (see the module docstring)."""
    evaluations = evaluations_of(ms.meta)
    groups = [w.positions for w in words]
    share = word_maps(ms.maps.float(), groups) / evaluations if groups else ms.maps.new_zeros(
        (ms.maps.shape[0], 0, *ms.maps.shape[-2:]))
    q, lo, hi = quantize(share)
    tensors = {"words": q.contiguous()}
    frame_meta: dict[str, Any] = {}
    for kind, fr in (frames or {}).items():
        b, f = fr.maps.shape[:2]
        per = torch.stack([word_maps(fr.maps[:, i].float(), groups) for i in range(f)], 1) if groups else \
            fr.maps.new_zeros((b, f, 0, *fr.maps.shape[-2:]))
        ev = torch.tensor([max(1, int(e)) for e in (fr.evaluations or [1] * f)], dtype=torch.float32)
        fq, flo, fhi = quantize(per / ev[None, :, None, None, None])
        tensors[f"frames.{kind}"] = fq.contiguous()
        frame_meta[kind] = {"labels": [str(x) for x in fr.labels], "lo": flo.tolist(), "hi": fhi.tolist()}
    b, _, h, w = ms.maps.shape
    header = {
        "format": FORMAT, "version": VERSION, "batch": int(b), "latent": [int(h), int(w)],
        "image_size": [int(image_size[0]), int(image_size[1])], "unit": "share", "evaluations": evaluations,
        "words": [{"text": x.text, "positions": list(x.positions), "function": x.function, "selected": x.selected}
                  for x in words],
        "lo": lo.tolist(), "hi": hi.tolist(),
        "frames": frame_meta, "streams": list(streams), "text_stream": text_stream,
        "colormap": colormap, "lut": _lut_hex(colormap), "opacity": float(opacity),
        "normalization": "shared" if normalization == "shared" else "per word",
        "model_family": str(ms.meta.get("model_family", "")), "softmax": str(ms.meta.get("softmax", "")),
        "branch": str(ms.meta.get("branch", "")),
    }
    return tensors, header


def view_dir(temp_dir: str | os.PathLike) -> Path:
    return Path(temp_dir) / FOLDER


def write_view(temp_dir: str | os.PathLike, ms: MapSet, images: torch.Tensor, tensors: dict[str, torch.Tensor],
               header: dict[str, Any]) -> dict[str, Any]:
    """Write the view file, the raw maps file and the pictures; returns the node's UI record."""
    from safetensors.torch import save_file

    folder = view_dir(temp_dir)
    folder.mkdir(parents=True, exist_ok=True)
    vid = uuid.uuid4().hex
    header = {**header, "id": vid, "maps_file": f"{vid}.maps.safetensors",
              "images": [f"{vid}.{i}.jpg" for i in range(images.shape[0])]}
    save_file(tensors, str(folder / f"{vid}.view.safetensors"), metadata={META_KEY: json.dumps(header)})
    maps_meta = {"format": MAPS_FORMAT, "version": MAPS_VERSION, **ms.meta,
                 "image_size": list(header["image_size"]),
                 "tokens": ms.tokens.to_list() if ms.tokens is not None else [],
                 "token_table": ms.tokens.to_json() if ms.tokens is not None else None}
    save_file({"maps": ms.maps.detach().to(torch.float16).contiguous().cpu()}, str(folder / header["maps_file"]),
              metadata={MAPS_META_KEY: json.dumps(maps_meta, default=str)})
    for i, name in enumerate(header["images"]):
        _save_jpeg(images[i], folder / name)
    prune(folder)
    return {"id": vid, "words": [w["text"] for w in header["words"]], "batch": header["batch"]}


def prune(folder: Path, keep: int = KEEP_VIEWS) -> None:
    """Delete the files of all but the newest ``keep`` views (a long session stays bounded on disk; the
    editor shows the static grid for a run whose view is gone)."""
    views = sorted(folder.glob("*.view.safetensors"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in views[keep:]:
        vid = old.name.split(".", 1)[0]
        for f in folder.glob(f"{vid}.*"):
            f.unlink(missing_ok=True)


def _save_jpeg(image: torch.Tensor, path: Path) -> None:
    import numpy as np
    from PIL import Image

    arr = (image.detach().float().clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8)
    pil = Image.fromarray(arr[..., :3])
    side = max(pil.size)
    if side > MAX_IMAGE_SIDE:
        f = MAX_IMAGE_SIDE / side
        pil = pil.resize((max(1, round(pil.width * f)), max(1, round(pil.height * f))), Image.LANCZOS)
    pil.save(path, quality=90)


def read_view(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A view file's tensors and header (for tests and tools)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        header = json.loads((f.metadata() or {})[META_KEY])
        return {k: f.get_tensor(k) for k in f.keys()}, header
