"""Writes the editor-format workflows in example_workflows/ (run after changing node inputs).

    python scripts/make_example_workflows.py

ComfyUI lists a pack's example_workflows/*.json as templates. The default checkpoint name is the
embedded random-weight model the demo creates; pick your own checkpoint in the loader.
"""

from __future__ import annotations

import json
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "example_workflows"
DEMO_CKPT = "attention_focus_random_sd15.safetensors"

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
    "ImageStitch": [("image1", "IMAGE"), ("image2", "IMAGE")],
}


class Graph:
    def __init__(self) -> None:
        self.nodes: list[dict] = []
        self.links: list[list] = []

    def add(self, ntype: str, widgets: list, pos: tuple[int, int], title: str | None = None) -> int:
        nid = len(self.nodes) + 1
        node = {
            "id": nid, "type": ntype, "pos": list(pos), "flags": {}, "order": nid - 1,
            # room for the slots and widgets; a multiline text widget takes about four rows
            "size": [320, 40 + 22 * max(len(INPUTS.get(ntype, [])), len(OUTPUTS[ntype]))
                     + 26 * len(widgets) + (80 if ntype.endswith("TextEncode") else 0)],
            "mode": 0,
            "inputs": [{"name": n, "type": t, "link": None} for n, t in INPUTS.get(ntype, [])],
            "outputs": [{"name": n, "type": t, "links": [], "slot_index": i}
                        for i, (n, t) in enumerate(OUTPUTS[ntype])],
            "properties": {"Node name for S&R": ntype}, "widgets_values": widgets,
        }
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


def prompts(g: Graph) -> tuple[int, int, int, int]:
    """Checkpoint loader, positive (with tokens) and negative prompts, empty latent; returns their ids."""
    ck = g.add("CheckpointLoaderSimple", [DEMO_CKPT], (0, 0))
    pos = g.add("AttentionFocusTextEncode", [PROMPT], (350, 0), "Positive prompt (with tokens)")
    neg = g.add("CLIPTextEncode", [NEGATIVE], (350, 220), "Negative prompt")
    lat = g.add("EmptyLatentImage", [256, 256, 1], (350, 640))
    g.link(ck, 1, pos, "clip")
    g.link(ck, 1, neg, "clip")
    return ck, pos, neg, lat


def captured_sampling(g: Graph, ids: tuple[int, int, int, int], model: tuple[int, int], y: int, title: str,
                      heatmap: list) -> tuple[int, int, int]:
    """Capture → KSampler → VAE Decode → Heatmap on ``model``; returns (capture, decode, heatmap) ids."""
    ck, pos, neg, lat = ids
    cap = g.add("AttentionFocusCapture", ["all", "positive", 0.0, 1.0, "mean", "all keys"], (720, y), title)
    ks = g.add("KSampler", [42, "fixed", 8, 6.0, "euler", "normal", 1.0], (1080, y))
    dec = g.add("VAEDecode", [], (1440, y))
    hm = g.add("AttentionFocusHeatmap", heatmap, (1440, y + 150))
    g.link(*model, cap, "model")
    g.link(cap, 0, ks, "model")
    g.link(pos, 0, ks, "positive")
    g.link(neg, 0, ks, "negative")
    g.link(lat, 0, ks, "latent_image")
    g.link(ks, 0, dec, "samples")
    g.link(ck, 2, dec, "vae")
    g.link(cap, 1, hm, "attention_maps")
    g.link(dec, 0, hm, "image")
    return cap, dec, hm


def heatmaps() -> Graph:
    g = Graph()
    ids = prompts(g)
    cap, dec, hm = captured_sampling(g, ids, (ids[0], 0), 0, "Attention Focus Capture",
                                     ["cat, red wizard hat, sunset", "turbo", 0.6, "per word", "positive", "all"])
    save = g.add("SaveImage", ["attention_focus/image"], (1800, 0))
    save_grid = g.add("SaveImage", ["attention_focus/heatmap_grid"], (1800, 300), "Heat-map grid")
    mask_img = g.add("MaskToImage", [], (1800, 600))
    save_masks = g.add("SaveImage", ["attention_focus/masks"], (2150, 600), "Masks")
    save_maps = g.add("AttentionFocusSaveMaps", ["attention_focus/maps", "positive"], (1080, 500))
    g.link(dec, 0, save, "images")
    g.link(hm, 1, save_grid, "images")
    g.link(hm, 2, mask_img, "mask")
    g.link(mask_img, 0, save_masks, "images")
    g.link(cap, 1, save_maps, "attention_maps")
    g.link(dec, 0, save_maps, "image")
    return g


def reweight() -> Graph:
    """Same seed with and without reweighting; both images and both heat-map grids side by side."""
    g = Graph()
    ids = prompts(g)
    rw = g.add("AttentionFocusReweight", ["red wizard hat:2.0, cat:0.5", "scale", "all", "positive", 0.0, 1.0],
               (0, 420), "Reweight: more hat, less cat")
    g.link(ids[0], 0, rw, "model")
    heatmap = ["cat, red wizard hat, sunset", "turbo", 0.6, "shared", "positive", "all"]
    _, dec_a, hm_a = captured_sampling(g, ids, (ids[0], 0), 0, "Capture (plain)", heatmap)
    _, dec_b, hm_b = captured_sampling(g, ids, (rw, 0), 700, "Capture (reweighted)", heatmap)
    both_img = g.add("ImageBatch", [], (1800, 0), "Images: plain | reweighted")
    g.link(dec_a, 0, both_img, "image1")
    g.link(dec_b, 0, both_img, "image2")
    both_grid = g.add("ImageBatch", [], (1800, 400), "Heat maps: plain | reweighted")
    g.link(hm_a, 1, both_grid, "image1")
    g.link(hm_b, 1, both_grid, "image2")
    s1 = g.add("SaveImage", ["attention_focus/reweight_images"], (2150, 0))
    s2 = g.add("SaveImage", ["attention_focus/reweight_heatmaps"], (2150, 400))
    g.link(both_img, 0, s1, "images")
    g.link(both_grid, 0, s2, "images")
    return g


def flux() -> Graph:
    """Flux.1 (stock file names of the Flux.1-dev release): capture with the exact joint softmax, a
    reweight, heat maps and masks. The same nodes serve SD3, Chroma, Qwen-Image, Wan and the rest."""
    g = Graph()
    unet = g.add("UNETLoader", ["flux1-dev.safetensors", "default"], (0, 0))
    clip = g.add("DualCLIPLoader", ["clip_l.safetensors", "t5xxl_fp16.safetensors", "flux", "default"], (0, 160))
    vae = g.add("VAELoader", ["ae.safetensors"], (0, 360))
    pos = g.add("AttentionFocusTextEncode", [PROMPT.replace("(sunset:1.2)", "sunset")], (350, 0),
                "Prompt (T5 tokens labelled)")
    guide = g.add("FluxGuidance", [3.5], (350, 260))
    neg = g.add("CLIPTextEncode", [""], (350, 400), "Negative (unused at cfg 1)")
    lat = g.add("EmptySD3LatentImage", [1024, 1024, 1], (350, 640))
    rw = g.add("AttentionFocusReweight", ["red wizard hat:1.5", "scale", "all", "positive", 0.0, 0.6],
               (720, 0), "Reweight: more hat in the first 60 % of steps")
    cap = g.add("AttentionFocusCapture", ["all", "positive", 0.0, 1.0, "mean", "all keys"], (720, 300))
    ks = g.add("KSampler", [42, "fixed", 20, 1.0, "euler", "simple", 1.0], (1080, 0))
    dec = g.add("VAEDecode", [], (1440, 0))
    hm = g.add("AttentionFocusHeatmap", ["cat, red wizard hat, sunset", "turbo", 0.6, "per word", "positive",
                                         "all"], (1440, 150))
    save = g.add("SaveImage", ["attention_focus/flux_image"], (1800, 0))
    save_grid = g.add("SaveImage", ["attention_focus/flux_heatmap_grid"], (1800, 300), "Heat-map grid")
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


SHAPES_CKPT = "attention-focus-shapes.safetensors"
SHAPES_PROMPT = "a red circle above a blue square"  # held out: never a training caption
SHAPES_WORDS = "red, circle, above, blue, square"
SHAPES_COLOUR = "red"
SHAPES_SEED = 1


def shapes() -> Graph:
    """The embedded demo model (an SD3-shaped MMDiT trained on drawn shapes, see scripts/demo_model/): heat
    maps, masks and raw maps of a held-out prompt, and the same seed with its colour word weighted down / up."""
    g = Graph()
    ck = g.add("CheckpointLoaderSimple", [SHAPES_CKPT], (0, 0), "Demo model (MMDiT + CLIP-L + TAESD)")
    pos = g.add("AttentionFocusTextEncode", [SHAPES_PROMPT], (350, 0), "Prompt (held out from training)")
    neg = g.add("CLIPTextEncode", [""], (350, 220), "Negative (empty)")
    lat = g.add("EmptySD3LatentImage", [128, 128, 1], (350, 400))
    g.link(ck, 1, pos, "clip")
    g.link(ck, 1, neg, "clip")
    cap = g.add("AttentionFocusCapture", ["all", "positive", 0.0, 1.0, "mean", "all keys"], (720, 0))
    g.link(ck, 0, cap, "model")
    decoded = {}
    for i, (tag, model, w) in enumerate((("plain", (cap, 0), None), ("down", None, 0.0), ("up", None, 3.0))):
        y = 300 * i
        if w is not None:
            rw = g.add("AttentionFocusReweight", [f"{SHAPES_COLOUR}:{w:g}", "scale", "all", "positive", 0.0, 1.0],
                       (720, 200 + y), f"Reweight {SHAPES_COLOUR} x{w:g}")
            g.link(ck, 0, rw, "model")
            model = (rw, 0)
        ks = g.add("KSampler", [SHAPES_SEED, "fixed", 20, 4.0, "euler", "simple", 1.0], (1080, y))
        dec = g.add("VAEDecode", [], (1440, y))
        g.link(*model, ks, "model")
        g.link(pos, 0, ks, "positive")
        g.link(neg, 0, ks, "negative")
        g.link(lat, 0, ks, "latent_image")
        g.link(ks, 0, dec, "samples")
        g.link(ck, 2, dec, "vae")
        decoded[tag] = dec
    hm = g.add("AttentionFocusHeatmap", [SHAPES_WORDS, "turbo", 0.6, "per word", "positive", "all"], (1800, 0))
    g.link(cap, 1, hm, "attention_maps")
    g.link(decoded["plain"], 0, hm, "image")
    save = g.add("SaveImage", ["attention_focus/image"], (2150, 0))
    save_grid = g.add("SaveImage", ["attention_focus/heatmap_grid"], (2150, 300), "Heat-map grid")
    mask_img = g.add("MaskToImage", [], (1800, 600))
    save_masks = g.add("SaveImage", ["attention_focus/masks"], (2150, 600), "Masks")
    save_maps = g.add("AttentionFocusSaveMaps", ["attention_focus/maps", "positive"], (1800, 800))
    g.link(decoded["plain"], 0, save, "images")
    g.link(hm, 1, save_grid, "images")
    g.link(hm, 2, mask_img, "mask")
    g.link(mask_img, 0, save_masks, "images")
    g.link(cap, 1, save_maps, "attention_maps")
    g.link(decoded["plain"], 0, save_maps, "image")
    left = g.add("ImageStitch", ["right", True, 4, "white"], (1800, 1000), f"{SHAPES_COLOUR} x0 | plain")
    g.link(decoded["down"], 0, left, "image1")
    g.link(decoded["plain"], 0, left, "image2")
    both = g.add("ImageStitch", ["right", True, 4, "white"], (2150, 1000), f"{SHAPES_COLOUR} x0 | plain | x3")
    g.link(left, 0, both, "image1")
    g.link(decoded["up"], 0, both, "image2")
    save_rw = g.add("SaveImage", [f"attention_focus/reweight_{SHAPES_COLOUR}_x0_plain_x3"], (2500, 1000),
                    "Reweight pair")
    g.link(both, 0, save_rw, "images")
    return g


def main() -> None:
    OUT.mkdir(exist_ok=True)
    shapes().dump(OUT / "attention_focus_shapes.json")
    heatmaps().dump(OUT / "attention_focus_heatmaps.json")
    reweight().dump(OUT / "attention_focus_reweight.json")
    flux().dump(OUT / "attention_focus_flux.json")


if __name__ == "__main__":
    main()
