"""Writes the editor-format workflows in example_workflows/ and their template thumbnails (run after changing
node inputs; Pillow is needed, so use the test environment's python):

    . scripts/setup_env.sh && "$AF_PYTHON" scripts/make_example_workflows.py

ComfyUI lists a pack's example_workflows/*.json as templates and shows ``<name>.jpg`` beside each as its
picture (a drawing of the graph, made here). Each workflow has a note saying which model to pick; the model
loaders carry ``properties.models`` entries (name, url, directory), so the front end offers to download a
missing model. The demo and the tests replace the checkpoint name with the random-weight fixture.
"""

from __future__ import annotations

import json
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "example_workflows"
SD15 = {"name": "v1-5-pruned-emaonly-fp16.safetensors", "directory": "checkpoints",
        "url": "https://huggingface.co/Comfy-Org/stable-diffusion-v1-5-archive/resolve/main/"
               "v1-5-pruned-emaonly-fp16.safetensors"}
# the files ComfyUI's own Flux.1-dev template links (comfyui-workflow-templates)
FLUX_MODELS = {
    "UNETLoader": [{"name": "flux1-dev.safetensors", "directory": "diffusion_models",
                    "url": "https://huggingface.co/Comfy-Org/flux1-dev/resolve/main/flux1-dev.safetensors"}],
    "DualCLIPLoader": [
        {"name": "clip_l.safetensors", "directory": "text_encoders",
         "url": "https://huggingface.co/comfyanonymous/flux_text_encoders/resolve/main/clip_l.safetensors"},
        {"name": "t5xxl_fp16.safetensors", "directory": "text_encoders",
         "url": "https://huggingface.co/comfyanonymous/flux_text_encoders/resolve/main/t5xxl_fp16.safetensors"}],
    "VAELoader": [{"name": "ae.safetensors", "directory": "vae",
                   "url": "https://huggingface.co/Comfy-Org/Lumina_Image_2.0_Repackaged/resolve/main/split_files/vae/"
                          "ae.safetensors"}],
}
VIEWER_WIDTH = 460  # the heat-map node's width, room for the viewer it shows after a run

# node type -> output (name, type) list
OUTPUTS = {
    "CheckpointLoaderSimple": [("MODEL", "MODEL"), ("CLIP", "CLIP"), ("VAE", "VAE")],
    "AttentionFocusTextEncode": [("CONDITIONING", "CONDITIONING")],
    "CLIPTextEncode": [("CONDITIONING", "CONDITIONING")],
    "AttentionFocusCapture": [("model", "MODEL"), ("attention_maps", "ATTENTION_MAPS")],
    "AttentionFocusReweight": [("MODEL", "MODEL")],
    "EmptyLatentImage": [("LATENT", "LATENT")],
    "KSampler": [("LATENT", "LATENT")],
    "VAEDecode": [("IMAGE", "IMAGE")],
    "AttentionFocusHeatmap": [("overlays", "IMAGE"), ("grid", "IMAGE"), ("masks", "MASK")],
    "MaskToImage": [("IMAGE", "IMAGE")],
    "SaveImage": [],
    "PreviewImage": [],
    "AttentionFocusSaveMaps": [],
    "ImageBatch": [("IMAGE", "IMAGE")],
    "UNETLoader": [("MODEL", "MODEL")],
    "DualCLIPLoader": [("CLIP", "CLIP")],
    "VAELoader": [("VAE", "VAE")],
    "EmptySD3LatentImage": [("LATENT", "LATENT")],
    "FluxGuidance": [("CONDITIONING", "CONDITIONING")],
    "AttentionFocusHistory": [("timelapse", "IMAGE"), ("layer_grid", "IMAGE"), ("summary", "STRING")],
    "AttentionFocusSegment": [("label_image", "IMAGE"), ("masks", "MASK")],
    "AttentionFocusCompare": [("grid", "IMAGE")],
    "MarkdownNote": [],
    "ImageStitch": [("IMAGE", "IMAGE")],
}
INPUTS = {
    "AttentionFocusTextEncode": [("clip", "CLIP")],
    "CLIPTextEncode": [("clip", "CLIP")],
    "AttentionFocusCapture": [("model", "MODEL")],
    "AttentionFocusReweight": [("model", "MODEL")],
    "KSampler": [("model", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING"),
                 ("latent_image", "LATENT")],
    "VAEDecode": [("samples", "LATENT"), ("vae", "VAE")],
    "AttentionFocusHeatmap": [("attention_maps", "ATTENTION_MAPS"), ("image", "IMAGE")],
    "MaskToImage": [("mask", "MASK")],
    "SaveImage": [("images", "IMAGE")],
    "PreviewImage": [("images", "IMAGE")],
    "AttentionFocusSaveMaps": [("attention_maps", "ATTENTION_MAPS"), ("image", "IMAGE")],
    "ImageBatch": [("image1", "IMAGE"), ("image2", "IMAGE")],
    "DualCLIPLoader": [],
    "FluxGuidance": [("conditioning", "CONDITIONING")],
    "AttentionFocusHistory": [("attention_maps", "ATTENTION_MAPS"), ("image", "IMAGE")],
    "AttentionFocusSegment": [("attention_maps", "ATTENTION_MAPS"), ("image", "IMAGE")],
    "AttentionFocusCompare": [("maps_a", "ATTENTION_MAPS"), ("image_a", "IMAGE"), ("maps_b", "ATTENTION_MAPS"),
                              ("image_b", "IMAGE")],
    "ImageStitch": [("image1", "IMAGE"), ("image2", "IMAGE")],
}
# widget values of the capture node after its first six: method, history_mb, history_stride, history_layers,
# influence_words, influence_steps (defaults: fast, no history, no influence)
CAPTURE_DEFAULTS = ["fast", 0.0, 1, "each layer", "", 3]
HEATMAP_DEFAULTS = ["soft", 0.5, "each frame"]  # mask_mode, mask_threshold, video_frames


class Graph:
    def __init__(self) -> None:
        self.nodes: list[dict] = []
        self.links: list[list] = []

    def add(self, ntype: str, widgets: list, pos: tuple[int, int], title: str | None = None,
            size: tuple[int, int] | None = None, models: list[dict] | None = None) -> int:
        nid = len(self.nodes) + 1
        node = {
            "id": nid, "type": ntype, "pos": list(pos), "flags": {}, "order": nid - 1,
            # room for the slots and widgets; a multiline text widget takes about four rows
            "size": list(size or (320, 40 + 22 * max(len(INPUTS.get(ntype, [])), len(OUTPUTS[ntype]))
                                  + 26 * len(widgets) + (80 if ntype.endswith("TextEncode") else 0))),
            "mode": 0,
            "inputs": [{"name": n, "type": t, "link": None} for n, t in INPUTS.get(ntype, [])],
            "outputs": [{"name": n, "type": t, "links": [], "slot_index": i}
                        for i, (n, t) in enumerate(OUTPUTS[ntype])],
            "properties": {"Node name for S&R": ntype}, "widgets_values": widgets,
        }
        if models:  # the front end offers to download these when they are missing
            node["properties"]["models"] = models
        if title:
            node["title"] = title
        self.nodes.append(node)
        return nid

    def link(self, src: int, slot: int, dst: int, name: str) -> None:
        lid = len(self.links) + 1
        s, d = self.nodes[src - 1], self.nodes[dst - 1]
        ltype = s["outputs"][slot]["type"]
        s["outputs"][slot]["links"].append(lid)
        next(i for i in d["inputs"] if i["name"] == name)["link"] = lid
        self.links.append([lid, src, slot, dst, next(j for j, i in enumerate(d["inputs"]) if i["name"] == name),
                           ltype])

    def dump(self, path: Path) -> None:
        data = {"last_node_id": len(self.nodes), "last_link_id": len(self.links), "nodes": self.nodes,
                "links": self.links, "groups": [], "config": {}, "extra": {}, "version": 0.4}
        path.write_text(json.dumps(data, indent=1) + "\n")


PROMPT = "a photo of a cat wearing a red wizard hat, (sunset:1.2) sky"
NEGATIVE = "blurry, low quality"
WORDS = "cat, red wizard hat, sunset"
AFTER_RUN = ("**After Run**, the *Attention Focus Heatmap* node shows an interactive viewer: click words to "
             "overlay their maps, hover the picture to see which words it attends to, compare with another run, "
             "download the raw maps.")
SD_NOTE = ("**Model:** any Stable Diffusion 1.x checkpoint: pick yours in *Load Checkpoint*. The default, "
           f"[{SD15['name']}]({SD15['url']}), is offered for download when it is missing (into "
           "`models/checkpoints`). SDXL works the same way; for SD3, Flux, Chroma, Qwen-Image, Wan... use their "
           "loaders (see the Flux template).\n\n" + AFTER_RUN)
REWEIGHT = "red wizard hat:2.0, cat:0.5"


def note(g: Graph, text: str, pos: tuple[int, int], size: tuple[int, int] = (330, 300)) -> int:
    return g.add("MarkdownNote", [text], pos, "Read me", size=size)


def prompts(g: Graph) -> tuple[int, int, int, int]:
    """Checkpoint loader, positive (with tokens) and negative prompts, empty latent; returns their ids."""
    ck = g.add("CheckpointLoaderSimple", [SD15["name"]], (0, 0), models=[SD15])
    pos = g.add("AttentionFocusTextEncode", [PROMPT], (350, 0), "Positive prompt (with tokens)")
    neg = g.add("CLIPTextEncode", [NEGATIVE], (350, 220), "Negative prompt")
    lat = g.add("EmptyLatentImage", [256, 256, 1], (350, 640))
    g.link(ck, 1, pos, "clip")
    g.link(ck, 1, neg, "clip")
    return ck, pos, neg, lat


def captured_sampling(g: Graph, ids: tuple[int, int, int, int], model: tuple[int, int], y: int, title: str,
                      heatmap: list | None, capture: list = CAPTURE_DEFAULTS) -> tuple[int, int, int | None]:
    """Capture → KSampler → VAE Decode (→ Heatmap) on ``model``; returns (capture, decode, heatmap) ids."""
    ck, pos, neg, lat = ids
    cap = g.add("AttentionFocusCapture", ["all", "positive", 0.0, 1.0, "mean", "all keys", *capture], (720, y),
                title)
    ks = g.add("KSampler", [42, "fixed", 8, 6.0, "euler", "normal", 1.0], (1080, y))
    dec = g.add("VAEDecode", [], (1440, y))
    hm = g.add("AttentionFocusHeatmap", [*heatmap, *HEATMAP_DEFAULTS[len(heatmap) - 6:]], (1440, y + 100),
               size=(VIEWER_WIDTH, 250)) if heatmap else None
    g.link(*model, cap, "model")
    g.link(cap, 0, ks, "model")
    g.link(pos, 0, ks, "positive")
    g.link(neg, 0, ks, "negative")
    g.link(lat, 0, ks, "latent_image")
    g.link(ks, 0, dec, "samples")
    g.link(ck, 2, dec, "vae")
    if hm:
        g.link(cap, 1, hm, "attention_maps")
        g.link(dec, 0, hm, "image")
    return cap, dec, hm


def heatmaps() -> Graph:
    g = Graph()
    ids = prompts(g)
    cap, dec, hm = captured_sampling(g, ids, (ids[0], 0), 0, "Attention Focus Capture",
                                     [WORDS, "turbo", 0.6, "per word", "positive", "all"])
    x = 1440 + VIEWER_WIDTH + 40
    save = g.add("SaveImage", ["attention_focus/image"], (x, 0))
    save_grid = g.add("SaveImage", ["attention_focus/heatmap_grid"], (x, 300), "Heat-map grid")
    mask_img = g.add("MaskToImage", [], (x, 600))
    save_masks = g.add("SaveImage", ["attention_focus/masks"], (x + 350, 600), "Masks")
    save_maps = g.add("AttentionFocusSaveMaps", ["attention_focus/maps", "positive"], (1080, 500))
    note(g, SD_NOTE, (0, 200))
    g.link(dec, 0, save, "images")
    g.link(hm, 1, save_grid, "images")
    g.link(hm, 2, mask_img, "mask")
    g.link(mask_img, 0, save_masks, "images")
    g.link(cap, 1, save_maps, "attention_maps")
    g.link(dec, 0, save_maps, "image")
    return g


def reweight() -> Graph:
    """Same seed with and without reweighting: both images, and both runs' heat maps in one grid on one
    shared scale, each row captioned with its weights (Attention Focus Compare)."""
    g = Graph()
    ids = prompts(g)
    rw = g.add("AttentionFocusReweight", [REWEIGHT, "scale", "all", "positive", 0.0, 1.0],
               (0, 420), "Reweight: more hat, less cat")
    g.link(ids[0], 0, rw, "model")
    cap_a, dec_a, _ = captured_sampling(g, ids, (ids[0], 0), 0, "Capture (plain)", None)
    cap_b, dec_b, _ = captured_sampling(g, ids, (rw, 0), 400, "Capture (reweighted)", None)
    both_img = g.add("ImageBatch", [], (1800, 0), "Images: plain | reweighted")
    g.link(dec_a, 0, both_img, "image1")
    g.link(dec_b, 0, both_img, "image2")
    cmp_ = g.add("AttentionFocusCompare", [WORDS, "turbo", 0.6, "per word", "positive", "", ""], (1800, 200),
                 "Compare: plain vs reweighted, one scale", size=(VIEWER_WIDTH, 300))
    x = 1800 + VIEWER_WIDTH + 40
    g.link(cap_a, 1, cmp_, "maps_a")
    g.link(dec_a, 0, cmp_, "image_a")
    g.link(cap_b, 1, cmp_, "maps_b")
    g.link(dec_b, 0, cmp_, "image_b")
    s1 = g.add("SaveImage", ["attention_focus/reweight_images"], (x, 0))
    s2 = g.add("SaveImage", ["attention_focus/reweight_heatmaps"], (x, 300))
    note(g, SD_NOTE + "\n\n**Reweight** changes how much the image attends to the chosen words while it is "
         "generated; *Compare* puts both runs' maps on one scale, each row captioned with its weights.",
         (0, 680), size=(330, 380))
    g.link(both_img, 0, s1, "images")
    g.link(cmp_, 0, s2, "images")
    return g


FLUX_NOTE = ("**Models** (Flux.1-dev, the files ComfyUI's own Flux template uses; the editor offers to download "
             "missing ones):\n\n" + "\n".join(f"- [{m['name']}]({m['url']}) → `models/{m['directory']}`"
                                                for ms in FLUX_MODELS.values() for m in ms)
             + "\n\nflux1-dev needs about 24 GB of GPU memory; an fp8 checkpoint works too (pick it in the loader). "
               "SD3, Chroma, Qwen-Image, Wan... work the same way with their own loaders.\n\n" + AFTER_RUN)


def flux() -> Graph:
    """Flux.1 (stock file names of the Flux.1-dev release): capture with the exact joint softmax, a
    reweight, heat maps and masks. The same nodes serve SD3, Chroma, Qwen-Image, Wan and the rest."""
    g = Graph()
    unet = g.add("UNETLoader", ["flux1-dev.safetensors", "default"], (0, 0), models=FLUX_MODELS["UNETLoader"])
    clip = g.add("DualCLIPLoader", ["clip_l.safetensors", "t5xxl_fp16.safetensors", "flux", "default"], (0, 160),
                 models=FLUX_MODELS["DualCLIPLoader"])
    vae = g.add("VAELoader", ["ae.safetensors"], (0, 360), models=FLUX_MODELS["VAELoader"])
    note(g, FLUX_NOTE, (0, 480), size=(330, 420))
    pos = g.add("AttentionFocusTextEncode", [PROMPT.replace("(sunset:1.2)", "sunset")], (350, 0),
                "Prompt (T5 tokens labelled)")
    guide = g.add("FluxGuidance", [3.5], (350, 260))
    neg = g.add("CLIPTextEncode", [""], (350, 400), "Negative (unused at cfg 1)")
    lat = g.add("EmptySD3LatentImage", [1024, 1024, 1], (350, 640))
    rw = g.add("AttentionFocusReweight", ["red wizard hat:1.5", "scale", "all", "positive", 0.0, 0.6],
               (720, 0), "Reweight: more hat in the first 60 % of steps")
    cap = g.add("AttentionFocusCapture", ["all", "positive", 0.0, 1.0, "mean", "all keys", *CAPTURE_DEFAULTS],
                (720, 300))
    ks = g.add("KSampler", [42, "fixed", 20, 1.0, "euler", "simple", 1.0], (1080, 0))
    dec = g.add("VAEDecode", [], (1440, 0))
    hm = g.add("AttentionFocusHeatmap", [WORDS, "turbo", 0.6, "per word", "positive", "all",
                                         *HEATMAP_DEFAULTS], (1440, 100),
               size=(VIEWER_WIDTH, 250))
    x = 1440 + VIEWER_WIDTH + 40
    save = g.add("SaveImage", ["attention_focus/flux_image"], (x, 0))
    save_grid = g.add("SaveImage", ["attention_focus/flux_heatmap_grid"], (x, 300), "Heat-map grid")
    save_maps = g.add("AttentionFocusSaveMaps", ["attention_focus/flux_maps", "positive"], (1080, 500))
    g.link(clip, 0, pos, "clip")
    g.link(clip, 0, neg, "clip")
    g.link(pos, 0, guide, "conditioning")
    g.link(unet, 0, rw, "model")
    g.link(rw, 0, cap, "model")
    g.link(cap, 0, ks, "model")
    g.link(guide, 0, ks, "positive")
    g.link(neg, 0, ks, "negative")
    g.link(lat, 0, ks, "latent_image")
    g.link(ks, 0, dec, "samples")
    g.link(vae, 0, dec, "vae")
    g.link(cap, 1, hm, "attention_maps")
    g.link(dec, 0, hm, "image")
    g.link(dec, 0, save, "images")
    g.link(hm, 1, save_grid, "images")
    g.link(cap, 1, save_maps, "attention_maps")
    g.link(dec, 0, save_maps, "image")
    return g


HISTORY_NOTE = ("**History** keeps the maps per step and per layer within the capture's `history_mb`: the "
                "*History* node draws a timelapse (saved as an animated WebP) and a per-layer grid. *Segment* "
                "gives each pixel to the word it attends to most (a label map and one mask per word); the "
                "heat-map masks here are binary, each at its own Otsu threshold.\n\n" + SD_NOTE)


def history_segmentation() -> Graph:
    """Capture with a 256 MB history: a timelapse (animated WebP) and a per-layer grid of two words, a label map
    of three words with its masks, and the heat-map masks at each word's Otsu threshold."""
    g = Graph()
    ids = prompts(g)
    heatmap = [WORDS, "turbo", 0.6, "per word", "positive", "all", "otsu", 0.5, "each frame"]
    cap, dec, hm = captured_sampling(g, ids, (ids[0], 0), 0, "Capture with history (256 MB)", heatmap,
                                     ["fast", 256.0, 1, "each layer", "", 3])
    x = 1440 + VIEWER_WIDTH + 40
    hist = g.add("AttentionFocusHistory", ["cat, red wizard hat", "turbo", 0.6, "shared", "per step", "positive", 4.0,
                                           True, "attention_focus/timelapse"], (x, 0), "Timelapse and layers")
    seg = g.add("AttentionFocusSegment", [WORDS, 0.3, "per word", 0.5, "positive"], (x, 450), "Label map")
    s_layers = g.add("SaveImage", ["attention_focus/layer_grid"], (x + 350, 0), "Per-layer grid")
    s_labels = g.add("SaveImage", ["attention_focus/label_map"], (x + 350, 450), "Label map")
    mask_img = g.add("MaskToImage", [], (x, 800))
    s_masks = g.add("SaveImage", ["attention_focus/otsu_masks"], (x + 350, 800), "Otsu masks")
    note(g, HISTORY_NOTE, (0, 200), size=(330, 420))
    for node in (hist, seg):
        g.link(cap, 1, node, "attention_maps")
        g.link(dec, 0, node, "image")
    g.link(hist, 1, s_layers, "images")
    g.link(seg, 0, s_labels, "images")
    g.link(hm, 2, mask_img, "mask")
    g.link(mask_img, 0, s_masks, "images")
    return g


def main() -> None:
    from example_shapes import shapes
    from thumbnails import draw_thumbnail

    OUT.mkdir(exist_ok=True)
    for name, graph, title in (("attention_focus_shapes", shapes(), "Demo model: shapes that localise"),
                               ("attention_focus_heatmaps", heatmaps(), "Heat maps of every word"),
                               ("attention_focus_reweight", reweight(), "Reweight and compare"),
                               ("attention_focus_flux", flux(), "Flux.1: capture and reweight"),
                               ("attention_focus_history_segmentation", history_segmentation(),
                                "History, segmentation, Otsu masks")):
        graph.dump(OUT / f"{name}.json")
        draw_thumbnail(graph.nodes, graph.links, title, OUT / f"{name}.jpg")


if __name__ == "__main__":
    main()
