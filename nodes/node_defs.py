"""ComfyUI node classes of Attention Focus: inputs, tooltips, and one call each into the modules below."""

from __future__ import annotations

import logging
import math
import os
from typing import Any

from .capture import add_capture
from .capture_store import AttentionMaps, MapSet
from .cond_tokens import register
from .errors import AttentionFocusError
from .heatmap_view import choose_words, viewer_record
from .hook_state import TOKENS_KEY
from .maps_file import MapsFileError, list_maps_files, load_maps, maps_from_file, safe_output_path, save_maps
from .provenance import record_for_image
from .render import COLORMAPS, render_heatmaps
from .reweight import add_reweight
from .sampling_run import executing_prompt
from .text_layout import context_tokens
from .token_table import TokenTable, positional_table, restrict_streams
from .word_syntax import parse_weights

log = logging.getLogger("attention_focus")

CATEGORY = "attention focus"
ATTENTION_MAPS = "ATTENTION_MAPS"
_PROVENANCE = {"dynprompt": "DYNPROMPT", "unique_id": "UNIQUE_ID"}


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
              head_reduction: str, dit_softmax: str = "all keys", unique_id: str | None = None):
        softmax = {"all keys": "all", "text keys": "text"}.get(dit_softmax)
        if softmax is None:
            raise AttentionFocusError(f"dit_softmax must be 'all keys' or 'text keys', not {dit_softmax!r}")
        return add_capture(model, layers, branch, start_percent, end_percent, head_reduction, softmax,
                           node_id=str(unique_id) if unique_id is not None else "")


def _mapset(maps, branch: str, dynprompt, unique_id, input_name: str = "image") -> MapSet:
    """The maps of ``branch`` from the run that made this node's ``input_name`` image (see provenance)."""
    if not isinstance(maps, AttentionMaps):
        raise AttentionFocusError("attention_maps must come from Attention Focus Capture or Load Maps")
    if maps.loaded is not None:
        return maps.loaded
    prompt_id, list_index = executing_prompt()

    def describe(node_id: str) -> str:
        try:
            return f"{dynprompt.get_node(node_id).get('class_type', 'node')} (node {node_id})"
        except Exception:  # noqa: BLE001 - an id the graph does not know
            return f"node {node_id}"

    graph = dynprompt if unique_id is not None else None
    record = record_for_image(maps.node_id, maps.latest, graph, str(unique_id), input_name, prompt_id, list_index,
                              describe=describe)
    return record.result(branch)


def _labels(ms: MapSet, text: str, clip) -> TokenTable:
    if text.strip() and clip is not None:
        table = context_tokens(clip, text)[0]
        if len(table) != ms.maps.shape[1]:
            raise AttentionFocusError(f"text: the text gives {len(table)} token positions but the maps have "
                                      f"{ms.maps.shape[1]}: give the exact prompt used for sampling")
        return table
    if ms.tokens is not None:
        return ms.tokens
    return positional_table(ms.maps.shape[1])


def _check_image(ms: MapSet, image) -> None:
    b, _, lh, lw = ms.maps.shape
    ib, ih, iw = image.shape[0], image.shape[1], image.shape[2]
    if ih % lh or iw % lw or ih // lh != iw // lw:
        raise AttentionFocusError(
            f"image: the maps were captured on a {lw}x{lh} latent (a {lw * 8}x{lh * 8} image) but the image is "
            f"{iw}x{ih}: connect the image decoded from the same sampler")
    if ib != b:
        raise AttentionFocusError(f"image: the maps hold {b} image(s) but the IMAGE input has {ib}: connect the "
                                  "image decoded from the same sampler")


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
            },
            "hidden": _PROVENANCE,
        }

    RETURN_TYPES = ("IMAGE", "IMAGE", "MASK")
    RETURN_NAMES = ("overlays", "grid", "masks")
    OUTPUT_TOOLTIPS = ("One captioned overlay per image and word.",
                       "Per image: the picture and every word's overlay in one grid.",
                       "One soft mask per image and word, at image size, values 0..1.")
    FUNCTION = "render"
    CATEGORY = CATEGORY
    DESCRIPTION = ("Shows where each word of the prompt was attended, as overlays, a grid and masks. Like any "
                   "node that is not an output, it runs when an output uses it (e.g. grid → Save Image); after a "
                   "run it shows an interactive viewer in the editor.")

    def render(self, attention_maps, image, words: str, colormap: str, opacity: float, normalization: str,
               branch: str, text: str = "", clip=None, text_stream: str = "all", dynprompt=None, unique_id=None):
        if not isinstance(opacity, (int, float)) or not math.isfinite(opacity) or not 0.0 <= opacity <= 1.0:
            raise AttentionFocusError(f"opacity must be a number from 0 to 1, not {opacity!r}")
        ms = _mapset(attention_maps, branch, dynprompt, unique_id)
        table = _labels(ms, text or "", clip)
        streams = table.streams()
        if text_stream.strip().lower() not in ("", "all"):
            if text_stream.strip() not in streams:
                raise AttentionFocusError(
                    f"text_stream {text_stream.strip()!r} is not in these maps' prompt; it has "
                    f"{', '.join(streams) or 'a single unnamed stream'}. Use 'all' or one of them")
            table = restrict_streams(table, text_stream.strip())
        names, positions, wm = choose_words(ms, table, words)
        _check_image(ms, image)
        overlays, grid, masks = render_heatmaps(wm, image, names, colormap, opacity, normalization)
        # the editor's viewer (web/) reads the view; it draws the static grid where it cannot show the viewer
        view = viewer_record(ms, table, names, positions, image, colormap, opacity, normalization,
                             text_stream.strip() or "all", streams)
        ui = {"attention_focus_grid": _preview(grid), "attention_focus_view": [view]}
        return {"ui": ui, "result": (overlays, grid, masks)}


def _preview(images) -> list[dict[str, str]]:
    """Save images as PNGs in ComfyUI's temp folder for the node's preview; returns their UI records."""
    import uuid

    import folder_paths
    import numpy as np
    from PIL import Image

    tmp = folder_paths.get_temp_directory()
    os.makedirs(tmp, exist_ok=True)
    out = []
    for img in images:
        name = f"attention_focus_{uuid.uuid4().hex[:12]}.png"
        arr = (img.clamp(0, 1).numpy() * 255).round().astype(np.uint8)
        Image.fromarray(arr).save(os.path.join(tmp, name), compress_level=1)
        out.append({"filename": name, "subfolder": "", "type": "temp"})
    return out


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
        }, "hidden": _PROVENANCE}

    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "save"
    CATEGORY = CATEGORY
    DESCRIPTION = "Writes the raw per-token maps (no pickle) for analysis outside ComfyUI or reloading."

    def save(self, attention_maps, image, filename_prefix: str, branch: str, dynprompt=None, unique_id=None):
        import folder_paths

        ms = _mapset(attention_maps, branch, dynprompt, unique_id)
        _check_image(ms, image)
        out_dir = folder_paths.get_output_directory()
        path = safe_output_path(out_dir, filename_prefix)
        meta = dict(ms.meta)
        meta.update({
            "image_size": [int(image.shape[1]), int(image.shape[2])],
            "tokens": ms.tokens.to_list() if ms.tokens is not None else [],
            "token_table": ms.tokens.to_json() if ms.tokens is not None else None,
        })
        save_maps(path, ms.maps.float().cpu(), meta)
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
        if not file or os.path.commonpath([out, path]) != out:
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
        maps, meta = load_maps(self._path(file))
        return (AttentionMaps(mapset=maps_from_file(maps, meta), family=str(meta.get("model_family", ""))),)


class AttentionFocusReweight:
    """Make the model attend more or less to chosen prompt words while it generates."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "The model to patch; works with any sampler node."}),
            "weights": ("STRING", {"default": "", "multiline": False, "tooltip":
                        "word:weight pairs, e.g. 'red:2.0, wizard hat:0.5, #5:1.5'. Phrases cover all their "
                        "tokens; 'hat[2]:0.5' only the second occurrence; quote phrases with commas."}),
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


NODE_CLASS_MAPPINGS: dict[str, Any] = {
    "AttentionFocusTextEncode": AttentionFocusTextEncode,
    "AttentionFocusCapture": AttentionFocusCapture,
    "AttentionFocusHeatmap": AttentionFocusHeatmap,
    "AttentionFocusSaveMaps": AttentionFocusSaveMaps,
    "AttentionFocusLoadMaps": AttentionFocusLoadMaps,
    "AttentionFocusReweight": AttentionFocusReweight,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "AttentionFocusTextEncode": "Attention Focus Text Encode (with tokens)",
    "AttentionFocusCapture": "Attention Focus Capture",
    "AttentionFocusHeatmap": "Attention Focus Heatmap",
    "AttentionFocusSaveMaps": "Attention Focus Save Maps",
    "AttentionFocusLoadMaps": "Attention Focus Load Maps",
    "AttentionFocusReweight": "Attention Focus Reweight",
}
