"""API-format prompts the graph tests share: stock loader, Attention Focus encode/capture, KSampler branches."""

from __future__ import annotations

TEXT = "a photo of a cat wearing a red wizard hat"


def base(ckpt: str, text: str = TEXT, negative: str = "blurry", size=(64, 48), batch: int = 1,
         capture: dict | None = None) -> dict:
    """Loader (1), Attention Focus Text Encode (2), negative CLIPTextEncode (3), Capture (4), empty latent (5)."""
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "2": {"class_type": "AttentionFocusTextEncode", "inputs": {"clip": ["1", 1], "text": text}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": negative}},
        "4": {"class_type": "AttentionFocusCapture", "inputs": {
            "model": ["1", 0], "layers": "all", "branch": "positive", "start_percent": 0.0,
            "end_percent": 1.0, "head_reduction": "mean", **(capture or {})}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": size[0], "height": size[1],
                                                          "batch_size": batch}},
    }


def branch(name: str, seed: int, words: str = "cat, hat", prefix: str | None = None, model=("4", 0),
           positive=("2", 0), steps: int = 2, sampler: str = "euler") -> dict:
    """KSampler → VAE Decode → Heatmap (grid saved) + Save Maps, node ids prefixed by ``name``."""
    prefix = prefix or name
    return {
        f"{name}6": {"class_type": "KSampler", "inputs": {
            "model": list(model), "positive": list(positive), "negative": ["3", 0], "latent_image": ["5", 0],
            "seed": seed, "steps": steps, "cfg": 5.0, "sampler_name": sampler, "scheduler": "normal",
            "denoise": 1.0}},
        f"{name}7": {"class_type": "VAEDecode", "inputs": {"samples": [f"{name}6", 0], "vae": ["1", 2]}},
        f"{name}8": {"class_type": "AttentionFocusHeatmap", "inputs": {
            "attention_maps": ["4", 1], "image": [f"{name}7", 0], "words": words, "colormap": "turbo",
            "opacity": 0.6, "normalization": "per word", "branch": "positive"}},
        f"{name}9": {"class_type": "SaveImage", "inputs": {"images": [f"{name}8", 1],
                                                          "filename_prefix": f"prov/{prefix}_grid"}},
        f"{name}10": {"class_type": "AttentionFocusSaveMaps", "inputs": {
            "attention_maps": ["4", 1], "image": [f"{name}7", 0], "filename_prefix": f"prov/{prefix}_maps",
            "branch": "positive"}},
    }
