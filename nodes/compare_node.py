"""Attention Focus Compare: two runs' heat maps side by side on one scale (e.g. with and without reweighting).

Each row is captioned with its label; an empty label names the Attention Focus Reweight weights found
upstream of that row's image ("no reweighting" when there are none). Values are compared as attention
shares (maps divided by their runs' model evaluations), so runs with different step counts compare too.
"""

from __future__ import annotations

import torch

from .capture_store import word_maps
from .errors import AttentionFocusError
from .heatmap_view import choose_words, viewer_record
from .node_defs import ATTENTION_MAPS, CATEGORY, _check_image, _labels, _mapset, _preview
from .provenance import upstream
from .render import COLORMAPS, apply_colormap, draw_caption, make_grid, resize_maps
from .token_table import WordNotFound, resolve
from .viewer_data import evaluations_of
from .word_syntax import parse_targets


def reweight_caption(dynprompt, node_id, input_name: str) -> str:
    """The weights of every Attention Focus Reweight node upstream of an input, for a caption."""
    if dynprompt is None or node_id is None:
        return ""
    parts = []
    for nid in sorted(upstream(dynprompt, str(node_id), input_name), key=str):
        try:
            node = dynprompt.get_node(nid)
        except Exception:  # noqa: BLE001 - an id the graph does not know
            continue
        if node.get("class_type") == "AttentionFocusReweight":
            w = node.get("inputs", {}).get("weights", "")
            parts.append(str(w).strip() if isinstance(w, str) else f"weights from node {w[0]}")
    parts = [p for p in parts if p]
    return "reweighted: " + "; ".join(parts) if parts else "no reweighting"


def joint_normalize(a: torch.Tensor, b: torch.Tensor, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, H, W) share maps of two runs → [0, 1] on one scale: per word (each word's min..max over both
    runs) or shared (one min..max over every word of both)."""
    if mode == "shared":
        lo = torch.minimum(a.min(), b.min())
        hi = torch.maximum(a.max(), b.max())
    else:
        lo = torch.minimum(a.amin(dim=(-2, -1)), b.amin(dim=(-2, -1)))[:, None, None]
        hi = torch.maximum(a.amax(dim=(-2, -1)), b.amax(dim=(-2, -1)))[:, None, None]
    span = torch.where(hi > lo, hi - lo, torch.ones_like(hi - lo))
    return ((a - lo) / span).clamp(0, 1), ((b - lo) / span).clamp(0, 1)


class AttentionFocusCompare:
    """Two runs' per-word heat maps in one grid, one row per run, on one shared scale."""

    @classmethod
    def INPUT_TYPES(cls):
        side = {"tooltip": "From Attention Focus Capture (or Load Maps) of run {0}."}
        image = {"tooltip": "The decoded image of run {0}'s sampler."}
        return {
            "required": {
                "maps_a": (ATTENTION_MAPS, {"tooltip": side["tooltip"].format("A")}),
                "image_a": ("IMAGE", {"tooltip": image["tooltip"].format("A")}),
                "maps_b": (ATTENTION_MAPS, {"tooltip": side["tooltip"].format("B")}),
                "image_b": ("IMAGE", {"tooltip": image["tooltip"].format("B")}),
                "words": ("STRING", {"default": "", "tooltip":
                          "Words to compare, comma-separated, as in Heatmap; empty = run A's content words."}),
                "colormap": (sorted(COLORMAPS), {"default": "turbo", "tooltip": "Colour scale of the overlay."}),
                "opacity": ("FLOAT", {"default": 0.6, "min": 0.0, "max": 1.0, "step": 0.05,
                                      "tooltip": "Overlay strength: 0 = only the image, 1 = only the heat map."}),
                "normalization": (["per word", "shared"], {"default": "per word", "tooltip":
                                  "Both runs always share the scale. per word: each word's own range over the "
                                  "two runs; shared: one range for all words of both runs."}),
                "branch": (["positive", "negative"], {"default": "positive", "tooltip": "Which prompt's maps."}),
            },
            "optional": {
                "label_a": ("STRING", {"default": "", "tooltip":
                            "Caption of row A; empty = the Reweight weights upstream of image_a."}),
                "label_b": ("STRING", {"default": "", "tooltip":
                            "Caption of row B; empty = the Reweight weights upstream of image_b."}),
            },
            "hidden": {"dynprompt": "DYNPROMPT", "unique_id": "UNIQUE_ID"},
        }

    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("grid",)
    OUTPUT_TOOLTIPS = ("Per image pair: row A and row B (the image, then each word's overlay), one scale.",)
    FUNCTION = "compare"
    CATEGORY = CATEGORY
    DESCRIPTION = "Compares two runs' heat maps (e.g. with and without reweighting) on one shared scale."

    def compare(self, maps_a, image_a, maps_b, image_b, words: str, colormap: str, opacity: float,
                normalization: str, branch: str, label_a: str = "", label_b: str = "", dynprompt=None,
                unique_id=None):
        runs = []
        for maps, image, label, name in ((maps_a, image_a, label_a, "image_a"), (maps_b, image_b, label_b, "image_b")):
            ms = _mapset(maps, branch, dynprompt, unique_id, name)
            _check_image(ms, image)
            runs.append((ms, _labels(ms, "", None), image,
                         label.strip() or reweight_caption(dynprompt, unique_id, name) or name))
        (ms_a, table_a, img_a, cap_a), (ms_b, table_b, img_b, cap_b) = runs
        names = parse_targets(words) if words.strip() else list(dict.fromkeys(choose_words(ms_a, table_a, "")[0]))
        per_run = []
        for ms, table, tag in ((ms_a, table_a, "A"), (ms_b, table_b, "B")):
            try:
                pos = [resolve(table, n) for n in names]
            except (WordNotFound, ValueError) as e:
                raise AttentionFocusError(f"words (run {tag}): {e}") from None
            per_run.append((pos, word_maps(ms.maps.float(), pos) / evaluations_of(ms.meta)))
        (pos_a, share_a), (pos_b, share_b) = per_run
        h, w = img_a.shape[1], img_a.shape[2]
        rows = []
        for i in range(min(img_a.shape[0], img_b.shape[0])):
            big_a = resize_maps(share_a[i], (h, w))
            big_b = resize_maps(share_b[i], (h, w))
            na, nb = joint_normalize(big_a, big_b, normalization)
            pic_b = resize_maps(img_b[i].permute(2, 0, 1), (h, w)).permute(1, 2, 0).clamp(0, 1)
            for pic, norm, cap in ((img_a[i].float().cpu(), na, cap_a), (pic_b.cpu(), nb, cap_b)):
                rows.append(draw_caption(pic, cap))
                for j, word in enumerate(names):
                    blend = (1 - opacity) * pic + opacity * apply_colormap(norm[j], colormap)
                    rows.append(draw_caption(blend.clamp(0, 1), word))
        grid = make_grid(torch.stack(rows), columns=1 + len(names))[None]
        views = [viewer_record(ms, table, names, pos, img, colormap, opacity, normalization, "all", table.streams())
                 for ms, table, pos, img in ((ms_a, table_a, pos_a, img_a), (ms_b, table_b, pos_b, img_b))]
        ui = {"attention_focus_grid": _preview(grid), "attention_focus_view": views,
              "attention_focus_labels": [cap_a, cap_b]}
        return {"ui": ui, "result": (grid,)}


NODE_CLASS_MAPPINGS = {"AttentionFocusCompare": AttentionFocusCompare}
NODE_DISPLAY_NAME_MAPPINGS = {"AttentionFocusCompare": "Attention Focus Compare"}
