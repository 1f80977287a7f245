"""What the node classes share: finding the maps of the run that made a node's image, labels, image checks,
previews. Imports ComfyUI (folder_paths) only inside functions."""

from __future__ import annotations

import math
import os

from .capture_store import AttentionMaps, MapSet, prompt_signature
from .errors import AttentionFocusError
from .provenance import record_for_image
from .sampling_run import executing_prompt
from .text_layout import context_tokens
from .token_table import TokenTable, positional_table

CATEGORY = "attention focus"
ATTENTION_MAPS = "ATTENTION_MAPS"
PROVENANCE = {"dynprompt": "DYNPROMPT", "unique_id": "UNIQUE_ID"}


def mapset_for(maps, branch: str, dynprompt, unique_id, input_name: str = "image") -> MapSet:
    """The maps of ``branch`` from the run that made this node's ``input_name`` image (see provenance)."""
    if not isinstance(maps, AttentionMaps):
        raise AttentionFocusError("attention_maps must come from Attention Focus Capture or Load Maps")
    if maps.loaded is not None:
        saved = str(maps.loaded.meta.get("branch") or "positive")
        if branch != saved:
            raise AttentionFocusError(f"branch: this maps file holds the {saved} prompt's maps, not the {branch} "
                                      f"prompt's: set branch to '{saved}' (Save Maps writes one branch per file)")
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


def labels_for(ms: MapSet, text: str, clip) -> TokenTable:
    if text.strip() and clip is not None:
        table = context_tokens(clip, text)[0]
        if len(table) != ms.maps.shape[1]:
            raise AttentionFocusError(f"text: the text gives {len(table)} token positions but the maps have "
                                      f"{ms.maps.shape[1]}: give the exact prompt used for sampling")
        check_same_prompt(ms, clip, text)
        return table
    if ms.tokens is not None:
        return ms.tokens
    return positional_table(ms.maps.shape[1])


def check_same_prompt(ms: MapSet, clip, text: str) -> None:
    """Refuse labels from a text that does not encode to the conditioning the maps were captured with: the
    encoding's per-position signature (``prompt_signature``) against the one the capture kept (one prompt in the
    branch)."""
    import torch

    known = [p["signature"] for p in ms.meta.get("prompts", []) if p.get("signature")]
    if len(known) != 1:
        return  # several prompts laid end to end (or a file without signatures): only the length is checked
    cond = clip.encode_from_tokens_scheduled(clip.tokenize(text))
    got = torch.tensor(prompt_signature(cond[0][0])) if cond else torch.zeros(0)
    ref = torch.tensor(known[0], dtype=torch.float32)
    tol = 1e-2 * max(1.0, float(ref.abs().max()))
    if got.shape != ref.shape or not torch.allclose(got, ref, rtol=1e-2, atol=tol):
        raise AttentionFocusError("text: this text (with this clip) does not encode to the prompt the maps were "
                                  "captured with, so its words would label the wrong maps: connect the exact prompt "
                                  "text and the CLIP used for sampling")


def check_opacity(v) -> float:
    """An overlay opacity from the API (NaN and out-of-range values are refused, naming the input)."""
    if not isinstance(v, (int, float)) or not math.isfinite(v) or not 0.0 <= v <= 1.0:
        raise AttentionFocusError(f"opacity must be a number from 0 to 1, not {v!r}")
    return float(v)


def check_image(ms: MapSet, image) -> None:
    b, _, lh, lw = ms.maps.shape
    lat = ms.meta.get("latent_size")
    if isinstance(lat, list) and len(lat) == 2 and all(isinstance(v, int) and v > 0 for v in lat):
        lh, lw = lat  # the maps may be on another grid (method DAAM: its reference grid)
    ib, ih, iw = image.shape[0], image.shape[1], image.shape[2]
    if ih % lh or iw % lw or ih // lh != iw // lw:
        raise AttentionFocusError(
            f"image: the maps were captured on a {lw}x{lh} latent (a {lw * 8}x{lh * 8} image) but the image is "
            f"{iw}x{ih}: connect the image decoded from the same sampler")
    if "frames" in ms.extra and ib >= b and ib % b == 0:
        return  # a video: the decoded frames of each captured video
    if ib != b:
        raise AttentionFocusError(f"image: the maps hold {b} image(s) but the IMAGE input has {ib}: connect the "
                                  "image decoded from the same sampler")


def preview(images) -> list[dict[str, str]]:
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
