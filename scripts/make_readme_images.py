"""Writes the README's pictures (docs/images/): a timelapse frame strip and a label map.

    source scripts/setup_env.sh && $AF_PYTHON scripts/make_readme_images.py

They come from the embedded demo model (README, "The demo model"; a held-out prompt), run through ComfyUI's own
executor with the pack's nodes.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "scripts"))
OUT = REPO / "docs" / "images"
PROMPT = "a green square above a blue circle"  # held out from training
STEPS = 20


def main() -> None:
    from harness.comfy_boot import Session, boot

    comfy = boot()
    import numpy as np
    import torch
    from PIL import Image

    from demo_model.model import demo_checkpoint

    ckdir = Path(comfy.folder_paths.get_folder_paths("checkpoints")[0])
    ckdir.mkdir(parents=True, exist_ok=True)
    ckpt = "attention-focus-shapes.safetensors"
    if not (ckdir / ckpt).exists():
        (ckdir / ckpt).symlink_to(demo_checkpoint())
    g = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "2": {"class_type": "AttentionFocusTextEncode", "inputs": {"clip": ["1", 1], "text": PROMPT}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": ""}},
        "4": {"class_type": "AttentionFocusCapture", "inputs": {
            "model": ["1", 0], "layers": "all", "branch": "positive", "start_percent": 0.0, "end_percent": 1.0,
            "head_reduction": "mean", "history_mb": 64.0}},
        "5": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 128, "height": 128, "batch_size": 1}},
        "6": {"class_type": "KSampler", "inputs": {
            "model": ["4", 0], "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["5", 0], "seed": 1,
            "steps": STEPS, "cfg": 4.0, "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0}},
        "7": {"class_type": "VAEDecode", "inputs": {"samples": ["6", 0], "vae": ["1", 2]}},
        "8": {"class_type": "AttentionFocusHistory", "inputs": {
            "attention_maps": ["4", 1], "image": ["7", 0], "words": "green, square, circle", "colormap": "turbo",
            "opacity": 0.65, "normalization": "shared", "frames": "per step", "branch": "positive", "fps": 3.0,
            "save_webp": False, "filename_prefix": "readme/timelapse"}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "readme/timelapse"}},
        "10": {"class_type": "AttentionFocusSegment", "inputs": {
            "attention_maps": ["4", 1], "image": ["7", 0], "words": "square, circle",
            "background_threshold": 0.35, "normalization": "per word", "opacity": 0.6, "branch": "positive"}},
        "11": {"class_type": "SaveImage", "inputs": {"images": ["10", 0], "filename_prefix": "readme/labels"}},
    }
    res = Session().run(g)
    out_dir = Path(comfy.folder_paths.get_output_directory())

    def saved(node: str) -> list[np.ndarray]:
        return [np.asarray(Image.open(out_dir / f["subfolder"] / f["filename"]).convert("RGB"))
                for f in res["outputs"][node]["images"]]

    OUT.mkdir(parents=True, exist_ok=True)
    frames = saved("9")  # one row per step: image (step, sigma) | green | square | circle
    strip = torch.from_numpy(np.concatenate(frames[::4] + frames[-1:], 0))  # every 4th step and the last, stacked
    Image.fromarray(strip.numpy()).quantize(96).save(OUT / "timelapse_strip.png", optimize=True)
    Image.fromarray(saved("11")[0]).quantize(64).save(OUT / "label_map.png", optimize=True)
    for name in ("timelapse_strip.png", "label_map.png"):
        print(OUT / name, (OUT / name).stat().st_size // 1024, "KiB")


if __name__ == "__main__":
    main()
