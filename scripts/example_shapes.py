"""The demo model's example workflow (example_workflows/attention_focus_shapes.json), written by
scripts/make_example_workflows.py: heat maps, masks and raw maps of a held-out prompt on the embedded demo
model, and the same seed with its colour word weighted down and up, side by side."""

from __future__ import annotations

from make_example_workflows import AFTER_RUN, CAPTURE_DEFAULTS, HEATMAP_DEFAULTS, VIEWER_WIDTH, Graph, note

SHAPES_CKPT = "attention-focus-shapes.safetensors"
SHAPES_PROMPT = "a green square above a blue circle"  # held out: never a training caption (unit-tested)
SHAPES_WORDS = "green, square, above, blue, circle"
SHAPES_COLOUR = "green"
SHAPES_SEED = 1
DOWN, UP = 0.0, 1.5
SHAPES_NOTE = ("**Model:** the pack's embedded demo model, a tiny SD3-shaped MMDiT trained on drawn shapes "
               "(README, *The demo model*). `bash scripts/demo.sh` builds the full checkpoint (with its CLIP-L, "
               "regenerated from a seed) and runs this workflow on it. The prompt is held out from training; "
               "the three samplers share one seed: plain, and the colour word weighted "
               f"x{DOWN:g} and x{UP:g}.\n\n" + AFTER_RUN)


def shapes() -> Graph:
    g = Graph()
    ck = g.add("CheckpointLoaderSimple", [SHAPES_CKPT], (0, 0), "Demo model (MMDiT + CLIP-L + TAESD)")
    g.nodes[ck - 1]["properties"]["models"] = []  # built locally (scripts/demo.sh), nothing to download
    note(g, SHAPES_NOTE, (0, 200), size=(330, 360))
    pos = g.add("AttentionFocusTextEncode", [SHAPES_PROMPT], (350, 0), "Prompt (held out from training)")
    neg = g.add("CLIPTextEncode", [""], (350, 220), "Negative (empty)")
    lat = g.add("EmptySD3LatentImage", [128, 128, 1], (350, 400))
    g.link(ck, 1, pos, "clip")
    g.link(ck, 1, neg, "clip")
    cap = g.add("AttentionFocusCapture", ["all", "positive", 0.0, 1.0, "mean", "all keys", *CAPTURE_DEFAULTS],
                (720, 0))
    g.link(ck, 0, cap, "model")
    decoded = {}
    for i, (tag, model, w) in enumerate((("plain", (cap, 0), None), ("down", None, DOWN), ("up", None, UP))):
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
    x = 1800
    hm = g.add("AttentionFocusHeatmap", [SHAPES_WORDS, "turbo", 0.6, "per word", "positive", "all",
                                         *HEATMAP_DEFAULTS], (x, 0),
               size=(VIEWER_WIDTH, 250))
    g.link(cap, 1, hm, "attention_maps")
    g.link(decoded["plain"], 0, hm, "image")
    x2 = x + VIEWER_WIDTH + 40
    save = g.add("SaveImage", ["attention_focus/image"], (x2, 0))
    save_grid = g.add("SaveImage", ["attention_focus/heatmap_grid"], (x2, 300), "Heat-map grid")
    mask_img = g.add("MaskToImage", [], (x, 600))
    save_masks = g.add("SaveImage", ["attention_focus/masks"], (x2, 600), "Masks")
    save_maps = g.add("AttentionFocusSaveMaps", ["attention_focus/maps", "positive"], (x, 800))
    g.link(decoded["plain"], 0, save, "images")
    g.link(hm, 1, save_grid, "images")
    g.link(hm, 2, mask_img, "mask")
    g.link(mask_img, 0, save_masks, "images")
    g.link(cap, 1, save_maps, "attention_maps")
    g.link(decoded["plain"], 0, save_maps, "image")
    tag = f"{SHAPES_COLOUR} x{DOWN:g} | plain | x{UP:g}"
    left = g.add("ImageStitch", ["right", True, 4, "white"], (x, 1000), f"{SHAPES_COLOUR} x{DOWN:g} | plain")
    g.link(decoded["down"], 0, left, "image1")
    g.link(decoded["plain"], 0, left, "image2")
    both = g.add("ImageStitch", ["right", True, 4, "white"], (x2, 1000), tag)
    g.link(left, 0, both, "image1")
    g.link(decoded["up"], 0, both, "image2")
    save_rw = g.add("SaveImage", [f"attention_focus/reweight_{SHAPES_COLOUR}_x{DOWN:g}_plain_x{UP:g}"],
                    (x2 + 350, 1000), "Reweight pair")
    g.link(both, 0, save_rw, "images")
    return g
