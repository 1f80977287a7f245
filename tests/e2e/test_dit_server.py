"""End to end on Diffusion Transformers: random-weight SD3 and Flux files loaded by ComfyUI's stock
loader nodes in a real server subprocess, captured, rendered, saved and reweighted over HTTP."""

from __future__ import annotations

import pytest

PROMPT = "a red cat on a wooden table"


@pytest.fixture(scope="module")
def server(comfy):
    from harness import dit_fixtures as dfx
    from harness.server import running_server

    sd3_ckpt, clip_l = dfx.sd3_files()
    flux_unet, flux_vae = dfx.flux_files()
    models = {"checkpoints": [sd3_ckpt], "text_encoders": [clip_l], "diffusion_models": [flux_unet],
              "vae": [flux_vae]}
    with running_server("af-e2e-dit-", models) as srv:
        srv.files = {"sd3": sd3_ckpt.name, "clip_l": clip_l.name, "flux": flux_unet.name, "vae": flux_vae.name}
        yield srv


def graph(srv, family: str, words: str = "cat, red", reweight: str = "", prefix: str = "dit") -> dict:
    """Loader → (reweight) → capture → KSampler → decode → heat map, saved maps and grid."""
    f = srv.files
    if family == "sd3":
        g = {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": f["sd3"]}}}
        model, vae = ["1", 0], ["1", 2]
    else:
        g = {"1": {"class_type": "UNETLoader", "inputs": {"unet_name": f["flux"], "weight_dtype": "default"}},
             "11": {"class_type": "VAELoader", "inputs": {"vae_name": f["vae"]}}}
        model, vae = ["1", 0], ["11", 0]
    g.update({
        "2": {"class_type": "CLIPLoader", "inputs": {"clip_name": f["clip_l"], "type": "sd3", "device": "default"}},
        "3": {"class_type": "AttentionFocusTextEncode", "inputs": {"clip": ["2", 0], "text": PROMPT}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["2", 0], "text": "blurry"}},
        "6": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 72, "height": 56, "batch_size": 1}},
    })
    if reweight:
        g["12"] = {"class_type": "AttentionFocusReweight", "inputs": {
            "model": model, "weights": reweight, "mode": "scale", "layers": "all", "branch": "positive",
            "start_percent": 0.0, "end_percent": 1.0}}
        model = ["12", 0]
    g.update({
        "5": {"class_type": "AttentionFocusCapture", "inputs": {
            "model": model, "layers": "all", "branch": "positive", "start_percent": 0.0, "end_percent": 1.0,
            "head_reduction": "mean"}},
        "7": {"class_type": "KSampler", "inputs": {
            "model": ["5", 0], "seed": 3, "steps": 3, "cfg": 2.0, "sampler_name": "euler", "scheduler": "simple",
            "positive": ["3", 0], "negative": ["4", 0], "latent_image": ["6", 0], "denoise": 1.0}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["7", 0], "vae": vae}},
        "9": {"class_type": "AttentionFocusHeatmap", "inputs": {
            "attention_maps": ["5", 1], "image": ["8", 0], "words": words, "colormap": "turbo", "opacity": 0.6,
            "normalization": "per word", "branch": "positive"}},
        "10": {"class_type": "SaveImage", "inputs": {"images": ["9", 1], "filename_prefix": f"{prefix}/grid"}},
        "13": {"class_type": "AttentionFocusSaveMaps", "inputs": {
            "attention_maps": ["5", 1], "image": ["8", 0], "filename_prefix": f"{prefix}/maps",
            "branch": "positive"}},
        "14": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": f"{prefix}/image"}},
    })
    return g


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_stock_loaders_capture_and_heatmaps(server, family):
    from attention_focus.nodes.maps_file import load_maps

    hist = server.wait(server.queue(graph(server, family, prefix=family)))
    assert hist["status"]["status_str"] == "success", hist["status"]
    out = server.base / "output" / family
    maps_files = sorted(out.glob("maps_*.safetensors"))
    assert len(maps_files) == 1 and len(list(out.glob("grid_*.png"))) == 1
    tensor, meta = load_maps(maps_files[0])
    # 56x72 px → a 7x9 latent; the patch grid (4x5) was upsampled and its circular padding cropped away
    assert tuple(tensor.shape) == (1, 77, 7, 9), tensor.shape
    assert meta["model_family"] == ("SD3" if family == "sd3" else "Flux")
    assert meta["softmax"] == "all"  # the exact joint softmax is the default
    words = [w["text"] for w in meta["token_table"]["words"]]
    assert {"red", "cat", "wooden", "table"} <= set(words)
    assert len(meta["layers"]) == (2 if family == "sd3" else 1)
    assert float(tensor.min()) >= 0 and float(tensor[0, 2].sum()) > 0


def test_reweight_changes_the_flux_image_and_errors_name_the_problem(server):
    import numpy as np
    from PIL import Image

    for prefix, rw in (("flux_a", ""), ("flux_b", "cat:4.0")):
        hist = server.wait(server.queue(graph(server, "flux", reweight=rw, prefix=prefix)))
        assert hist["status"]["status_str"] == "success", hist["status"]
    a, b = (np.asarray(Image.open(next((server.base / "output" / p).glob("image_*.png"))))
            for p in ("flux_a", "flux_b"))
    assert a.shape == b.shape and not np.array_equal(a, b), "reweighting must change the Flux image"

    hist = server.wait(server.queue(graph(server, "sd3", words="giraffe", prefix="sd3_err")))
    assert hist["status"]["status_str"] == "error"
    err = next(m[1] for m in hist["status"]["messages"] if m[0] == "execution_error")
    assert "'giraffe' is not in the prompt" in err["exception_message"] and "cat" in err["exception_message"]
    assert list((server.base / "output" / "sd3_err").glob("image_*.png")), "the generated image must be kept"


def test_flux_example_workflow_is_valid_apart_from_model_files(server):
    """The bundled Flux example converts to an API prompt the server accepts, except for the model file
    names (the real Flux.1 files are not here): every other widget value passes ComfyUI's validation."""
    import json
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    sys.path.insert(0, str(repo / "scripts"))
    from workflow_api import to_api

    wf = json.loads((repo / "example_workflows" / "attention_focus_flux.json").read_text())
    prompt = to_api(wf, server.get("/object_info"))
    classes = {n["class_type"] for n in prompt.values()}
    assert {"AttentionFocusTextEncode", "AttentionFocusCapture", "AttentionFocusReweight", "AttentionFocusHeatmap",
            "AttentionFocusSaveMaps", "UNETLoader", "DualCLIPLoader"} <= classes
    status, body = server.post("/prompt", {"prompt": prompt})
    assert status == 400
    problems = [(e["type"], e["extra_info"]["input_name"]) for n in body["node_errors"].values() for e in n["errors"]]
    assert problems and all(t == "value_not_in_list" and name in ("unet_name", "clip_name1", "clip_name2", "vae_name")
                            for t, name in problems), problems
