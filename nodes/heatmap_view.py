"""The heat-map node's word choice and its message to the editor (the viewer's data, the static grid)."""

from __future__ import annotations

from typing import Any

import torch

from .capture_store import MapSet, select_words, word_maps
from .token_table import TokenTable, resolve
from .viewer_data import Frames, build_view, view_words, write_view
from .word_choice import content_words
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
    frames: dict[str, Frames] | None = getattr(ms, "frames", None)  # recorded history, where a capture keeps it
    tensors, header = build_view(ms, chips, colormap=colormap, opacity=opacity, normalization=normalization,
                                 image_size=(int(image.shape[1]), int(image.shape[2])), streams=streams,
                                 text_stream=text_stream, frames=frames)
    return write_view(temp_dir, ms, image, tensors, header)
