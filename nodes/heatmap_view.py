"""The heat-map node's word choice and its message to the editor (the viewer's data, the static grid)."""

from __future__ import annotations

from typing import Any

import torch

from .capture_store import MapSet
from .history import resample
from .maps_words import select_words, word_maps
from .token_table import TokenTable, resolve
from .viewer_data import Frames, build_view, view_words, write_view
from .word_choice import content_words
from .timelapse import frame_values, group_members, layer_values, step_caption
from .word_syntax import parse_targets


def choose_words(ms: MapSet, table: TokenTable, words: str
                 ) -> tuple[list[str], list[tuple[int, ...]], torch.Tensor]:
    """(names, token positions, (B, W, h, w) word maps) of what the node shows.

    Typed words as ``select_words`` reads them; an empty input gives the prompt's content words (function
    words such as "a", "of" only when typed, see word_choice).
    """
    if not words.strip() and not table.meta.get("positional") and table.merged_words():
        chosen = content_words(table)
        positions = [tuple(w.positions) for w in chosen]
        return [w.text for w in chosen], positions, word_maps(ms.maps.float(), positions)
    names, maps = select_words(ms, table, words)  # raises for an empty input on unlabelled maps
    return names, [resolve(table, t) for t in parse_targets(words)], maps


def viewer_record(ms: MapSet, table: TokenTable, names: list[str], positions: list[tuple[int, ...]],
                  image: torch.Tensor, colormap: str, opacity: float, normalization: str, text_stream: str,
                  streams: list[str], temp_dir: str | None = None) -> dict[str, Any]:
    """Write the viewer's files for this run (into ComfyUI's temp folder) and return the UI record."""
    if temp_dir is None:
        import folder_paths

        temp_dir = folder_paths.get_temp_directory()
    chips = view_words(table if not table.meta.get("positional") else TokenTable([], [], meta=table.meta),
                       names, positions)
    frames = history_frames(ms)  # the capture's history, where it recorded one
    tensors, header = build_view(ms, chips, colormap=colormap, opacity=opacity, normalization=normalization,
                                 image_size=(int(image.shape[1]), int(image.shape[2])), streams=streams,
                                 text_stream=text_stream, frames=frames)
    return write_view(temp_dir, ms, image, tensors, header)


def history_frames(ms: MapSet) -> dict[str, Frames] | None:
    """The capture's history (history.py: (T, G, B, K, rh, rw) sums over each frame's evaluations and each group's
    layers) as the viewer's frames: ``steps`` (layer groups summed) and ``layers`` (frames summed), each
    (B, frames, tokens, h, w) on the maps' grid (bilinear), the kept tokens at their prompt positions (others 0).
    Values are the mean probability per layer and evaluation, as the timelapse and layer grid of the History node
    show them (``timelapse.frame_values`` / ``layer_values``). None without a history."""
    hist, meta = ms.extra.get("history"), ms.meta.get("history") or {}
    if hist is None or not meta.get("tokens") or not meta.get("frames"):
        return None
    hist = hist.float()
    t, _, b, k, rh, rw = hist.shape
    b_maps, n_tok, h, w = ms.maps.shape
    kept = torch.tensor(list(meta["tokens"]), dtype=torch.long)
    if b != b_maps or len(kept) != k or (len(kept) and int(kept.max()) >= n_tok):
        return None  # not this map set's history: show the maps without it
    members = group_members(meta, ms.meta.get("layers", []))

    def full(x: torch.Tensor) -> torch.Tensor:  # (F, B, K, rh, rw) → (B, F, tokens, h, w)
        f = x.shape[0]
        up = resample(x.reshape(f * b, k, rh, rw), (h, w)).reshape(f, b, k, h, w)
        out = up.new_zeros(f, b, n_tok, h, w)
        out[:, :, kept] = up
        return out.transpose(0, 1).contiguous()

    labels = meta["frames"][:t]
    schedule = meta.get("schedule", [])
    steps_lbl = [step_caption(lb, schedule).removeprefix("steps ").removeprefix("step ") for lb in labels]
    steps = frame_values(hist, labels, sum(members), cumulative=False)
    per_group = layer_values(hist, members, int(meta.get("evaluations", 1)))
    return {"steps": Frames(steps_lbl, full(steps)), "layers": Frames(list(meta.get("groups", [])), full(per_group))}
