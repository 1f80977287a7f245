"""ComfyUI node classes of the analyses: history (timelapse, layer grid), segmentation, comparison, influence.

Thin classes: inputs, tooltips, one call each into the pure modules (timelapse, segmentation, influence).
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from .errors import AttentionFocusError
from .maps_file import safe_output_path
from .heatmap_view import choose_words
from .maps_words import word_groups, word_maps
from .node_common import (ATTENTION_MAPS, CATEGORY, PROVENANCE, check_image, check_opacity, labels_for, mapset_for,
                          preview)
from .render import COLORMAPS
from .segmentation import difference, label_map, render_differences, render_labels
from .timelapse import (frame_values, group_members, history_word_maps, layer_values, render_layer_grid,
                        render_timelapse, step_caption, write_webp)

_WORDS = ("STRING", {"default": "", "multiline": False, "tooltip":
                     "Comma-separated words or phrases of the prompt ('cat, red hat'); empty = the prompt's content "
                     "words (function words such as 'a', 'of' only when typed), as in the Heatmap node."})
_MAPS = (ATTENTION_MAPS, {"tooltip": "From Attention Focus Capture or Load Maps."})
_IMAGE = ("IMAGE", {"tooltip": "The decoded image of the sampler that used the capture: the maps shown are that "
                               "run's."})
_BRANCH = (["positive", "negative"], {"default": "positive", "tooltip": "Which prompt's maps."})
_COLORMAP = (sorted(COLORMAPS), {"default": "turbo", "tooltip": "Colour scale of the overlays."})
_OPACITY = ("FLOAT", {"default": 0.6, "min": 0.0, "max": 1.0, "step": 0.05, "tooltip": "Overlay strength."})


def _progress(total: int):
    """ComfyUI's progress bar for ``total`` pictures (a no-op outside ComfyUI)."""
    try:
        import comfy.utils

        bar = comfy.utils.ProgressBar(total)
        return bar.update
    except Exception:  # noqa: BLE001 - no ComfyUI, or no server to report to
        return None


class AttentionFocusHistory:
    """A capture's history as pictures: a per-word timelapse over the steps and a grid per layer group."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "attention_maps": _MAPS, "image": _IMAGE, "words": _WORDS, "colormap": _COLORMAP, "opacity": _OPACITY,
            "normalization": (["shared", "per frame"], {"default": "shared", "tooltip":
                              "shared: one scale per word over all frames, so you see when in the schedule the word "
                              "takes its place; per frame: each frame stretched to its own range."}),
            "frames": (["per step", "cumulative"], {"default": "per step", "tooltip":
                       "per step: each frame shows its own evaluations; cumulative: the map as it builds up."}),
            "branch": _BRANCH,
            "fps": ("FLOAT", {"default": 4.0, "min": 0.5, "max": 60.0, "step": 0.5,
                              "tooltip": "Frames per second of the animated WebP."}),
            "save_webp": ("BOOLEAN", {"default": True, "tooltip": "Save the timelapse as an animated WebP."}),
            "filename_prefix": ("STRING", {"default": "attention_focus/timelapse", "tooltip":
                                "File name prefix of the WebP inside ComfyUI's output folder."}),
        }, "hidden": PROVENANCE}

    RETURN_TYPES = ("IMAGE", "IMAGE", "STRING")
    RETURN_NAMES = ("timelapse", "layer_grid", "summary")
    OUTPUT_TOOLTIPS = ("One frame per history frame (per image of the batch, in order): the image captioned with the "
                       "step and sigma, then each word's overlay.",
                       "Per image and word: one tile per layer group (ComfyUI's block names), on one scale.",
                       "What the history holds: grid, layer groups, frames, stride, memory against the budget.")
    FUNCTION = "render"
    OUTPUT_NODE = True
    CATEGORY = CATEGORY
    DESCRIPTION = ("Shows when in the schedule and in which layers each word was attended. Needs a capture with "
                   "history_mb > 0.")

    def render(self, attention_maps, image, words: str, colormap: str, opacity: float, normalization: str,
               frames: str, branch: str, fps: float, save_webp: bool, filename_prefix: str, dynprompt=None,
               unique_id=None):
        opacity = check_opacity(opacity)
        ms = mapset_for(attention_maps, branch, dynprompt, unique_id)
        meta = ms.meta.get("history") or {}
        if "history" not in ms.extra:
            why = meta.get("error") or "the capture node's history_mb is 0"
            raise AttentionFocusError(f"these maps have no history ({why}): set history_mb on Attention Focus "
                                      "Capture (e.g. 256) and run the sampler again")
        check_image(ms, image)
        names, groups, _ = choose_words(ms, labels_for(ms, "", None), words)
        wh = history_word_maps(ms.extra["history"].float(), list(meta["tokens"]), groups)
        members = group_members(meta, ms.meta.get("layers", []))
        values = frame_values(wh, meta["frames"], sum(members), frames == "cumulative")
        captions = [step_caption(f, meta.get("schedule", [])) for f in meta["frames"]]
        b = values.shape[1]
        step = _progress(b * values.shape[0] + b * len(names))
        clip = render_timelapse(values, image, names, captions, colormap, opacity,
                                "shared" if normalization == "shared" else "per frame", step)
        grid = render_layer_grid(layer_values(wh, members, int(meta.get("evaluations", 1))), image, names,
                                 list(meta["groups"]), colormap, opacity, step)
        ui = {"text": [meta.get("summary", "")]}
        if save_webp:
            import folder_paths

            out_dir = folder_paths.get_output_directory()
            path = safe_output_path(out_dir, filename_prefix, suffix=".webp")
            write_webp(clip, path, fps)
            sub, name = os.path.split(os.path.relpath(path, out_dir))
            ui.update({"images": [{"filename": name, "subfolder": sub, "type": "output"}], "animated": (True,)})
        else:
            ui["images"] = preview(grid)
        return {"ui": ui, "result": (clip, grid, meta.get("summary", ""))}


class AttentionFocusSegment:
    """A label map from the words' maps: per pixel the word attended most, or background."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "attention_maps": _MAPS, "image": _IMAGE, "words": _WORDS,
            "background_threshold": ("FLOAT", {"default": 0.3, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip":
                                     "A pixel whose best word's normalised value is below this is background."}),
            "normalization": (["per word", "shared"], {"default": "per word", "tooltip":
                              "per word: each map stretched to 0..1 before the arg-max (DAAM-style); shared: one "
                              "scale, so the arg-max is that of the raw attention (ConceptAttention-style)."}),
            "opacity": _OPACITY, "branch": _BRANCH,
        }, "hidden": PROVENANCE}

    RETURN_TYPES = ("IMAGE", "MASK")
    RETURN_NAMES = ("label_image", "masks")
    OUTPUT_TOOLTIPS = ("Per image: each word's region in its colour, with a legend below.",
                       "One binary mask per image and word (word order as typed), at image size.")
    FUNCTION = "segment"
    CATEGORY = CATEGORY
    DESCRIPTION = "Segments the image by the words of the prompt: per pixel the word with the most attention."

    def segment(self, attention_maps, image, words: str, background_threshold: float, normalization: str,
                opacity: float, branch: str, dynprompt=None, unique_id=None):
        opacity = check_opacity(opacity)
        ms = mapset_for(attention_maps, branch, dynprompt, unique_id)
        check_image(ms, image)
        names, groups, _ = choose_words(ms, labels_for(ms, "", None), words)
        labels = label_map(word_maps(ms.maps.float(), groups), float(background_threshold), normalization)
        big = F.interpolate(labels[:, None].float(), size=tuple(image.shape[1:3]), mode="nearest")[:, 0]
        ids = torch.arange(1, len(names) + 1, device=big.device, dtype=big.dtype)
        masks = (big[:, None] == ids[None, :, None, None]).float()
        pic = render_labels(labels, image, names, opacity)
        return {"ui": {"images": preview(pic)}, "result": (pic, masks.reshape(-1, *masks.shape[-2:]).cpu())}


class AttentionFocusDifference:
    """Two captures' maps (two seeds, prompts or weightings) → per-word differences on one shared scale."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "attention_maps_a": _MAPS,
            "image_a": ("IMAGE", {"tooltip": "The image decoded from the sampler of capture A."}),
            "attention_maps_b": _MAPS,
            "image_b": ("IMAGE", {"tooltip": "The image decoded from the sampler of capture B."}),
            "words": _WORDS, "opacity": _OPACITY, "branch": _BRANCH,
        }, "hidden": PROVENANCE}

    RETURN_TYPES = ("IMAGE", "IMAGE")
    RETURN_NAMES = ("differences", "grid")
    OUTPUT_TOOLTIPS = ("One tile per image and word: A − B over image A, red where A attends more, blue where B "
                       "does, on one scale for every word (caption: ±the scale).",
                       "Per image: A, B and every word's difference.")
    FUNCTION = "compare"
    CATEGORY = CATEGORY
    DESCRIPTION = "Where two runs attend differently to each word (mean attention probabilities, A − B)."

    def compare(self, attention_maps_a, image_a, attention_maps_b, image_b, words: str, opacity: float, branch: str,
                dynprompt=None, unique_id=None):
        opacity = check_opacity(opacity)
        msa = mapset_for(attention_maps_a, branch, dynprompt, unique_id, "image_a")
        msb = mapset_for(attention_maps_b, branch, dynprompt, unique_id, "image_b")
        check_image(msa, image_a)
        check_image(msb, image_b)
        if msa.meta.get("method", "fast") != msb.meta.get("method", "fast"):
            raise AttentionFocusError("the two captures use different methods (fast / DAAM), whose numbers do not "
                                      "compare: capture both with the same method")
        table_a, table_b = labels_for(msa, "", None), labels_for(msb, "", None)
        names, ga, _ = choose_words(msa, table_a, words)
        if words.strip():
            gb = choose_words(msb, table_b, words)[1]
        elif table_b.rows == table_a.rows:  # the same prompt: the same tokens on both sides
            gb = ga
        else:  # A's content words, looked up in B's prompt
            gb = choose_words(msb, table_b, ", ".join(f'"{n}"' for n in names))[1]
        a, b = word_maps(msa.maps.float(), ga), word_maps(msb.maps.float(), gb)
        if b.shape[0] not in (1, a.shape[0]):
            raise AttentionFocusError(f"image_b: capture B holds {b.shape[0]} image(s) and A {a.shape[0]}: compare "
                                      "batches of the same size (or B with one image)")
        d, scale = difference(a, b.expand(a.shape[0], *b.shape[1:]))
        tiles, grid = render_differences(d, scale, image_a, image_b, names, opacity)
        return {"ui": {"images": preview(grid)}, "result": (tiles, grid)}


class AttentionFocusInfluence:
    """Each word's influence (the change its removal makes to the prediction) beside its attention map."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "attention_maps": _MAPS, "image": _IMAGE,
            "words": ("STRING", {"default": "", "multiline": False, "tooltip":
                      "Words among the capture's influence_words (empty: all of them)."}),
            "colormap": _COLORMAP, "opacity": _OPACITY,
            "normalization": (["per word", "shared"], {"default": "per word", "tooltip":
                              "per word: each map stretched to its own range; shared: one scale for all words' "
                              "attention maps and one for all their influence maps."}),
        }, "hidden": PROVENANCE}

    RETURN_TYPES = ("IMAGE", "IMAGE")
    RETURN_NAMES = ("pairs", "grid")
    OUTPUT_TOOLTIPS = ("Per image and word: the attention overlay then the influence overlay, captioned alike.",
                       "Per image: two rows, attention above influence, one column per word.")
    FUNCTION = "render"
    CATEGORY = CATEGORY
    DESCRIPTION = ("Where a word is attended next to what it does: needs a capture with influence_words and "
                   "influence_steps set.")

    def render(self, attention_maps, image, words: str, colormap: str, opacity: float, normalization: str,
               dynprompt=None, unique_id=None):
        from .render import make_grid, render_heatmaps
        from .word_syntax import parse_targets

        opacity = check_opacity(opacity)
        ms = mapset_for(attention_maps, "positive", dynprompt, unique_id)
        meta = ms.meta.get("influence")
        if "influence" not in ms.extra or not meta:
            raise AttentionFocusError("these maps have no influence maps: set influence_words and influence_steps on "
                                      "Attention Focus Capture and run the sampler again")
        check_image(ms, image)
        known = list(meta["words"])
        try:
            chosen = parse_targets(words) or known
        except ValueError as e:
            raise AttentionFocusError(f"words: {e}") from None
        missing = [w for w in chosen if w not in known]
        if missing:
            raise AttentionFocusError(f"words: {', '.join(map(repr, missing))} had no influence measured; the capture "
                                      f"measured {', '.join(map(repr, known))}")
        names, groups = word_groups(ms, labels_for(ms, "", None), ", ".join(f'"{w}"' for w in chosen))
        att = word_maps(ms.maps.float(), groups)
        inf = ms.extra["influence"].float()[:, [known.index(w) for w in chosen]]
        inf = F.interpolate(inf, size=tuple(att.shape[-2:]), mode="bilinear", align_corners=False) \
            if inf.shape[-2:] != att.shape[-2:] else inf
        steps = ", ".join(map(str, meta.get("steps", [])))
        a_tiles = render_heatmaps(att, image, [f"{n}: attention" for n in names], colormap, opacity,
                                  normalization)[0]
        i_tiles = render_heatmaps(inf, image, [f"{n}: influence (steps {steps})" for n in names], colormap, opacity,
                                  normalization)[0]
        b, n = att.shape[:2]
        pairs, grids = [], []
        for i in range(b):
            row_a, row_i = a_tiles[i * n:(i + 1) * n], i_tiles[i * n:(i + 1) * n]
            for j in range(n):
                pairs.append(make_grid(torch.stack([row_a[j], row_i[j]]), columns=2))
            grids.append(make_grid(torch.cat([row_a, row_i]), columns=n))
        grid = torch.stack(grids)
        return {"ui": {"images": preview(grid)}, "result": (torch.stack(pairs), grid)}


ANALYSIS_NODES = {"AttentionFocusHistory": AttentionFocusHistory, "AttentionFocusSegment": AttentionFocusSegment,
                  "AttentionFocusDifference": AttentionFocusDifference,
                  "AttentionFocusInfluence": AttentionFocusInfluence}
ANALYSIS_NAMES = {"AttentionFocusHistory": "Attention Focus History (timelapse, layers)",
                  "AttentionFocusSegment": "Attention Focus Segment (label map)",
                  "AttentionFocusDifference": "Attention Focus Difference (A - B)",
                  "AttentionFocusInfluence": "Attention Focus Influence (what a word does)"}
