"""ComfyUI node classes of Attention Focus: inputs, tooltips, and one call each into the modules below."""

from __future__ import annotations

import logging
import os
from typing import Any

from .capture import add_capture
from .capture_store import AttentionMaps
from .cond_tokens import register
from .errors import AttentionFocusError
from .heatmap_view import choose_words, viewer_record
from .hook_state import TOKENS_KEY
from .maps_file import MapsFileError, list_maps_files, load_maps_file, maps_from_file, safe_output_path, save_maps
from .node_common import (ATTENTION_MAPS, CATEGORY, PROVENANCE, check_image, check_opacity, labels_for, mapset_for,
                          preview)
from .render import COLORMAPS, render_heatmaps, video_word_maps
from .reweight import add_reweight
from .segmentation import MASK_MODES, threshold_masks
from .text_layout import context_tokens
from .token_table import TokenTable, restrict_streams
from .word_syntax import parse_weights

log = logging.getLogger("attention_focus")



class AttentionFocusTextEncode:
    """CLIPTextEncode that also carries the prompt's token table for labelled heat maps."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "clip": ("CLIP", {"tooltip": "The CLIP text encoder, as for CLIPTextEncode."}),
            "text": ("STRING", {"multiline": True, "dynamicPrompts": True,
                                "tooltip": "The prompt, exactly as for CLIPTextEncode: weights like (word:1.2) and "
                                           "embedding:name work and keep their labels. (ComfyUI has no BREAK "
                                           "keyword: 'BREAK' is an ordinary word there.)"}),
        }}

    RETURN_TYPES = ("CONDITIONING",)
    OUTPUT_TOOLTIPS = ("The same conditioning CLIPTextEncode gives (bit for bit), plus the token table.",)
    FUNCTION = "encode"
    CATEGORY = CATEGORY
    DESCRIPTION = "Encodes a prompt exactly like CLIPTextEncode and remembers which word sits at which token."

    def encode(self, clip, text: str):
        if clip is None:
            raise ValueError("clip input is empty: connect a CLIP (e.g. from Load Checkpoint)")
        cond = clip.encode_from_tokens_scheduled(clip.tokenize(text))
        length = int(cond[0][0].shape[1]) if cond else None
        table, note = context_tokens(clip, text, context_length=length)
        if note:
            log.warning("Attention Focus Text Encode: %s", note)
        # each entry's table remembers the exact tensor it labels (to follow ConditioningConcat & co.)
        return ([[t, {**d, TOKENS_KEY: register(t, TokenTable(table.rows, table.words, table.encoder,
                                                                  table.text, dict(table.meta)))}]
                 for t, d in cond],)


_WINDOW = {
    "start_percent": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01,
                                "tooltip": "Start of the step window, a fraction of the schedule (0 = first step)."}),
    "end_percent": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01,
                              "tooltip": "End of the step window, as a fraction of the schedule (1 = last step)."}),
}
_LAYERS = ("STRING", {"default": "all", "tooltip":
                      "Which attention layers. Keep 'all' (DAAM's aggregate) to start. UNet (SD1.x/SDXL): 'L2' = "
                      "the 16x16 grids at 512 px, Prompt-to-Prompt's choice, the most object-like maps; 'output' = "
                      "the decoder, where the layout settles; '!L0' skips the finest, noisiest grid. For Reweight, "
                      "'all' gives the strongest effect, 'output' or 'L1-2' a softer one. DiT: 'double' / 'single' "
                      "(e.g. 'double.0-9'), 'block.2-5' (Wan, HunyuanDiT). Items like 'output.3-5', 'input.7.0', "
                      "'!item' (exclude), comma-separated; a spec that matches nothing lists the model's layers."})


class AttentionFocusCapture:
    """Patch a model so that sampling records per-token cross-attention maps."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "The model to observe; works with any sampler node."}),
            "layers": _LAYERS,
            "branch": (["positive", "negative", "both"], {"default": "positive", "tooltip":
                       "Which prompt's attention to record: the positive, the negative, or both."}),
            **_WINDOW,
            "head_reduction": (["mean", "max"], {"default": "mean", "tooltip":
                               "How attention heads are combined per layer: mean (as DAAM) or max."}),
        }, "optional": {
            "dit_softmax": (["all keys", "text keys"], {"default": "all keys", "tooltip":
                            "Only for Diffusion Transformers (SD3, Flux, Qwen-Image, ...); UNets ignore it. There "
                            "every image patch looks at the prompt and at the other patches at once. 'all keys': "
                            "the true share of its attention that went to each word - exact, but small "
                            "numbers, as most attention goes to the image itself (pick it to measure). 'text "
                            "keys': only the attention to the prompt, rescaled to 100 % - stronger contrast, like "
                            "UNet maps and most DiT heat-map tools, a little cheaper (pick it to look)."}),
            "method": (["fast", "DAAM"], {"default": "fast", "tooltip":
                       "fast: every selected layer, heads averaged first, maps on the latent grid (all families, "
                       "areas and masks, cheapest memory). DAAM (SD1.x/SD2.x/SDXL): exactly DAAM 0.2.0's maps — "
                       "down and up blocks only, layers on 1/8 of its 64x64 grid (96x96 for SD2 768-v) dropped, "
                       "each head resized then averaged, maps on that grid; keeps per-head sums (more memory). "
                       "Pick DAAM to compare numbers with DAAM or papers using it."}),
            "history_mb": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 65536.0, "step": 16.0, "tooltip":
                           "0 = off. Otherwise keep the maps per step and per layer group within this many MB "
                           "(e.g. 256): the finest grid at which every step fits, else several steps per frame. "
                           "Memory never exceeds it, whatever the steps, layers, batch or image size. The "
                           "History node shows a timelapse and a per-layer grid, and says what the budget allowed."}),
            "history_stride": ("INT", {"default": 1, "min": 1, "max": 1000, "tooltip":
                               "Model evaluations per history frame (at least; the budget may need more)."}),
            "history_layers": (["each layer", "each block", "each level"], {"default": "each layer", "tooltip":
                               "History layer groups: each layer ('input 4', 'output 5.1', 'double 3', "
                               "'single 12'), each block (depths merged), or each level (one group per "
                               "resolution; least memory)."}),
            "influence_words": ("STRING", {"default": "", "multiline": False, "tooltip":
                                "Words of the positive prompt whose influence to measure ('cat, red hat'); empty = "
                                "off. At each chosen step the positive prompt is evaluated once more as it is and "
                                "once per word with that word's value rows zeroed (its keys kept, so attention is "
                                "not redistributed); the influence is the size of the change in the prediction. "
                                "Cost: (1 + words) × influence_steps extra model calls of the positive prompt "
                                "alone. The image and the attention maps are unchanged."}),
            "influence_steps": ("INT", {"default": 3, "min": 0, "max": 1000, "tooltip":
                                "At how many steps (evenly spread over the step window, first and last included) "
                                "influence is measured; bounds the cost."}),
        }, "hidden": {"unique_id": "UNIQUE_ID"}}

    RETURN_TYPES = ("MODEL", ATTENTION_MAPS)
    RETURN_NAMES = ("model", "attention_maps")
    OUTPUT_TOOLTIPS = ("The patched model: connect it to the sampler.",
                       "The maps recorded during sampling: connect to Heatmap or Save Maps.")
    FUNCTION = "patch"
    CATEGORY = CATEGORY
    DESCRIPTION = ("Records where each prompt token is attended while the sampler runs. The generated "
                   "image is unchanged.")

    def patch(self, model, layers: str, branch: str, start_percent: float, end_percent: float,
              head_reduction: str, dit_softmax: str = "all keys", method: str = "fast", history_mb: float = 0.0,
              history_stride: int = 1, history_layers: str = "each layer", influence_words: str = "",
              influence_steps: int = 3, unique_id: str | None = None):
        softmax = {"all keys": "all", "text keys": "text"}.get(dit_softmax)
        if softmax is None:
            raise AttentionFocusError(f"dit_softmax must be 'all keys' or 'text keys', not {dit_softmax!r}")
        return add_capture(model, layers, branch, start_percent, end_percent, head_reduction, softmax,
                           node_id=str(unique_id) if unique_id is not None else "", method=str(method).lower(),
                           history_mb=float(history_mb), history_stride=int(history_stride),
                           history_groups=str(history_layers).replace("each ", ""),
                           influence_words=str(influence_words or ""), influence_steps=int(influence_steps))


class AttentionFocusHeatmap:
    """Overlay per-word attention heat maps on the generated image; also give soft masks."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "attention_maps": (ATTENTION_MAPS, {"tooltip": "From Attention Focus Capture or Load Maps."}),
                "image": ("IMAGE", {"tooltip": "The decoded image of the sampler that used the capture: the maps "
                                               "shown are always that run's."}),
                "words": ("STRING", {"default": "", "multiline": False, "tooltip":
                          "Words or phrases of the prompt to map, comma-separated ('cat, red hat': a phrase "
                          "is one map). Empty = the prompt's content words (nouns, adjectives, verbs); "
                          "function words such as 'a', 'of', 'with' only when you type them here. 'hat[2]' = "
                          "the second 'hat' only; '#5' = token position 5. After a run, the viewer on this "
                          "node shows any word of the prompt with a click, without running again."}),
                "colormap": (sorted(COLORMAPS), {"default": "turbo", "tooltip": "Colour scale of the overlay."}),
                "opacity": ("FLOAT", {"default": 0.6, "min": 0.0, "max": 1.0, "step": 0.05,
                                      "tooltip": "Overlay strength: 0 = only the image, 1 = only the heat map."}),
                "normalization": (["per word", "shared"], {"default": "per word", "tooltip":
                                  "per word: each map stretched to its own min..max; shared: one scale for "
                                  "all words, so their strengths compare."}),
                "branch": (["positive", "negative"], {"default": "positive", "tooltip":
                           "Which prompt's maps to show (the capture must have recorded it)."}),
            },
            "optional": {
                "text": ("STRING", {"forceInput": True, "tooltip":
                         "The prompt, to label maps captured from a stock CLIPTextEncode."}),
                "clip": ("CLIP", {"tooltip": "The CLIP that encoded the prompt (with 'text')."}),
                "text_stream": ("STRING", {"default": "all", "tooltip":
                                "Leave 'all' unless you compare text encoders. Only models that encode the prompt "
                                "twice have several streams: SD3 'clip_l' / 't5xxl', HunyuanDiT 'hydit_clip' / "
                                "'mt5xl', HiDream 't5xxl' / 'llama'. 'all' merges each word's tokens from every "
                                "stream into one map; a stream name shows that encoder only. After a run the "
                                "viewer lists this model's streams as buttons that fill this field (a text "
                                "field, not a list: the names depend on the model loaded)."}),
                "mask_mode": (list(MASK_MODES), {"default": "soft", "tooltip":
                              "masks output: soft (the normalised map, 0..1), threshold (1 where the normalised "
                              "map ≥ mask_threshold) or otsu (binary, each mask at its own Otsu threshold)."}),
                "mask_threshold": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip":
                                   "Threshold of mask_mode 'threshold', on the normalised map."}),
                "video_frames": (["each frame", "mean"], {"default": "each frame", "tooltip":
                                 "Video models (Wan): each frame = one overlay per decoded frame, from the maps of "
                                 "its latent frame (the outputs are then frame by frame: an IMAGE batch a video "
                                 "node can save); mean = the mean over frames, on every frame."}),
            },
            "hidden": PROVENANCE,
        }

    RETURN_TYPES = ("IMAGE", "IMAGE", "MASK")
    RETURN_NAMES = ("overlays", "grid", "masks")
    OUTPUT_TOOLTIPS = ("One captioned overlay per image (video: per frame) and word.",
                       "Per image (video: per frame): the picture and every word's overlay in one grid.",
                       "One mask per image (video: per frame) and word, at image size: soft 0..1 or binary "
                       "(mask_mode).")
    FUNCTION = "render"
    CATEGORY = CATEGORY
    DESCRIPTION = ("Shows where each word of the prompt was attended, as overlays, a grid and masks. Like any "
                   "node that is not an output, it runs when an output uses it (e.g. grid → Save Image); after a "
                   "run it shows an interactive viewer in the editor.")

    def render(self, attention_maps, image, words: str, colormap: str, opacity: float, normalization: str,
               branch: str, text: str = "", clip=None, text_stream: str = "all", mask_mode: str = "soft",
               mask_threshold: float = 0.5, video_frames: str = "each frame", dynprompt=None, unique_id=None):
        opacity = check_opacity(opacity)
        ms = mapset_for(attention_maps, branch, dynprompt, unique_id)
        table = labels_for(ms, text or "", clip)
        streams = table.streams()
        if text_stream.strip().lower() not in ("", "all"):
            if text_stream.strip() not in streams:
                raise AttentionFocusError(
                    f"text_stream {text_stream.strip()!r} is not in these maps' prompt; it has "
                    f"{', '.join(streams) or 'a single unnamed stream'}. Use 'all' or one of them")
            table = restrict_streams(table, text_stream.strip())
        names, positions, wm = choose_words(ms, table, words)
        check_image(ms, image)
        if "frames" in ms.extra:  # a video: one picture per decoded frame
            wm = video_word_maps(wm, ms.extra["frames"], positions, image.shape[0], video_frames == "each frame")
        overlays, grid, masks = render_heatmaps(wm, image, names, colormap, opacity, normalization)
        if mask_mode not in MASK_MODES:
            raise AttentionFocusError(f"mask_mode must be one of {', '.join(MASK_MODES)}, not {mask_mode!r}")
        masks = threshold_masks(masks, mask_mode, float(mask_threshold))
        # the editor's viewer (web/) reads the view; it draws the static grid where it cannot show the viewer
        view = viewer_record(ms, table, names, positions, image, colormap, opacity, normalization,
                             text_stream.strip() or "all", streams)
        ui = {"attention_focus_grid": preview(grid), "attention_focus_view": [view]}
        return {"ui": ui, "result": (overlays, grid, masks)}


class AttentionFocusSaveMaps:
    """Save aggregated per-token maps (float32 .safetensors + JSON metadata) to the output folder."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "attention_maps": (ATTENTION_MAPS, {"tooltip": "From Attention Focus Capture or Load Maps."}),
            "image": ("IMAGE", {"tooltip": "The decoded image of the sampler that used the capture: the maps "
                                           "saved are that run's (also records the image size)."}),
            "filename_prefix": ("STRING", {"default": "attention_focus/maps", "tooltip":
                                "File name prefix inside ComfyUI's output folder; subfolders with '/'."}),
            "branch": (["positive", "negative"], {"default": "positive", "tooltip": "Which prompt's maps."}),
        }, "hidden": PROVENANCE}

    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "save"
    CATEGORY = CATEGORY
    DESCRIPTION = "Writes the raw per-token maps (no pickle) for analysis outside ComfyUI or reloading."

    def save(self, attention_maps, image, filename_prefix: str, branch: str, dynprompt=None, unique_id=None):
        import folder_paths

        ms = mapset_for(attention_maps, branch, dynprompt, unique_id)
        check_image(ms, image)
        out_dir = folder_paths.get_output_directory()
        path = safe_output_path(out_dir, filename_prefix)
        meta = dict(ms.meta)
        meta.update({
            "image_size": [int(image.shape[1]), int(image.shape[2])],
            "tokens": ms.tokens.to_list() if ms.tokens is not None else [],
            "token_table": ms.tokens.to_json() if ms.tokens is not None else None,
        })
        save_maps(path, ms.maps.float().cpu(), meta, ms.extra)
        rel = os.path.relpath(path, out_dir)
        sub, name = os.path.split(rel)
        b, t, h, w = ms.maps.shape
        return {"ui": {"attention_maps": [{"filename": name, "subfolder": sub, "type": "output", "shape": [b, t, h, w],
                                           "bytes": os.path.getsize(path)}]}}


class AttentionFocusLoadMaps:
    """Load maps saved by Save Maps; the Heatmap node accepts them like a live capture."""

    @classmethod
    def INPUT_TYPES(cls):
        import folder_paths

        files = list_maps_files(folder_paths.get_output_directory()) or [""]
        return {"required": {"file": (files, {"tooltip": "A maps file in ComfyUI's output folder (written by "
                                                   "Save Maps). The list refreshes after Save Maps runs, and "
                                                   "with the node's 'refresh list' button."})}}

    RETURN_TYPES = (ATTENTION_MAPS,)
    RETURN_NAMES = ("attention_maps",)
    FUNCTION = "load"
    CATEGORY = CATEGORY
    DESCRIPTION = "Reads a .safetensors maps file written by Attention Focus Save Maps."

    @classmethod
    def _path(cls, file: str) -> str:
        import folder_paths

        out = os.path.realpath(folder_paths.get_output_directory())
        path = os.path.realpath(os.path.join(out, file))
        if not file:
            raise MapsFileError("file: no maps file chosen (none in ComfyUI's output folder yet?): run Attention "
                                "Focus Save Maps first, then pick its file (the list refreshes after Save Maps)")
        if os.path.commonpath([out, path]) != out:
            raise MapsFileError(f"file: {file!r} is not a file inside ComfyUI's output folder")
        return path

    @classmethod
    def IS_CHANGED(cls, file: str):
        try:
            return os.path.getmtime(cls._path(file))
        except (OSError, ValueError):
            return float("nan")

    @classmethod
    def VALIDATE_INPUTS(cls, file: str):
        try:
            cls._path(file)
        except ValueError as e:
            return str(e)
        return True

    def load(self, file: str):
        maps, meta, extra = load_maps_file(self._path(file))
        return (AttentionMaps(mapset=maps_from_file(maps, meta, extra), family=str(meta.get("model_family", ""))),)


class AttentionFocusReweight:
    """Make the model attend more or less to chosen prompt words while it generates."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "The model to patch; works with any sampler node."}),
            "weights": ("STRING", {"default": "", "multiline": False, "tooltip":
                        "word:weight pairs, e.g. 'red:2.0, wizard hat:0.5, #5:1.5'. Phrases cover all their "
                        "tokens; 'hat[2]:0.5' only the second occurrence; quote phrases with commas. Start "
                        "between 0 and 2: weights beyond about 3 (or below 0) change the whole picture more than "
                        "the word. A word given twice gets the product of its weights."}),
            "mode": (["scale", "renormalize"], {"default": "scale", "tooltip":
                     "scale: multiply the chosen tokens' attention by w (Prompt-to-Prompt; w may be negative). "
                     "renormalize: add log(w) to their logits so attention still sums to 1 (w > 0)."}),
            "layers": _LAYERS,
            "branch": (["positive", "negative", "both"], {"default": "positive", "tooltip":
                       "Which prompt's attention to reweight."}),
            **_WINDOW,
        }}

    RETURN_TYPES = ("MODEL",)
    OUTPUT_TOOLTIPS = ("The patched model: connect it to the sampler (or to a capture node).",)
    FUNCTION = "patch"
    CATEGORY = CATEGORY
    DESCRIPTION = "Reweights cross-attention per word during sampling (Prompt-to-Prompt style)."

    def patch(self, model, weights: str, mode: str, layers: str, branch: str, start_percent: float,
              end_percent: float):
        spec = parse_weights(weights, mode)
        if not spec:
            return (model,)
        return (add_reweight(model, spec, mode, layers, branch, start_percent, end_percent),)


from .analysis_nodes import ANALYSIS_NAMES, ANALYSIS_NODES  # noqa: E402 (after the shared classes)

NODE_CLASS_MAPPINGS: dict[str, Any] = {
    "AttentionFocusTextEncode": AttentionFocusTextEncode,
    "AttentionFocusCapture": AttentionFocusCapture,
    "AttentionFocusHeatmap": AttentionFocusHeatmap,
    "AttentionFocusSaveMaps": AttentionFocusSaveMaps,
    "AttentionFocusLoadMaps": AttentionFocusLoadMaps,
    "AttentionFocusReweight": AttentionFocusReweight,
    **ANALYSIS_NODES,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "AttentionFocusTextEncode": "Attention Focus Text Encode (with tokens)",
    "AttentionFocusCapture": "Attention Focus Capture",
    "AttentionFocusHeatmap": "Attention Focus Heatmap",
    "AttentionFocusSaveMaps": "Attention Focus Save Maps",
    "AttentionFocusLoadMaps": "Attention Focus Load Maps",
    "AttentionFocusReweight": "Attention Focus Reweight",
    **ANALYSIS_NAMES,
}
