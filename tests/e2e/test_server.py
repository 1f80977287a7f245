"""End to end: ComfyUI's own main.py as a server subprocess with the pack in custom_nodes, over HTTP."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))

NODES = ["AttentionFocusTextEncode", "AttentionFocusCapture", "AttentionFocusHeatmap", "AttentionFocusSaveMaps",
         "AttentionFocusLoadMaps", "AttentionFocusReweight", "AttentionFocusCompare"]


@pytest.fixture(scope="module")
def server():
    from harness.server import running_server

    with running_server("af-e2e-") as srv:
        yield srv


def example_prompt(server, name: str, width: int, height: int, steps: int) -> dict:
    """A bundled example workflow as an API prompt, on the fixture checkpoint, small and short."""
    from workflow_api import to_api

    wf = json.loads((REPO / "example_workflows" / name).read_text())
    prompt = to_api(wf, server.get("/object_info"))
    for node in prompt.values():
        if node["class_type"] == "CheckpointLoaderSimple":
            node["inputs"]["ckpt_name"] = server.ckpt
        if node["class_type"] == "EmptyLatentImage":
            node["inputs"].update({"width": width, "height": height})
        if node["class_type"] == "KSampler":
            node["inputs"]["steps"] = steps
    return prompt


def test_every_node_is_registered_with_tooltips(server):
    info = server.get("/object_info")
    for name in NODES:
        assert name in info, f"{name} missing from /object_info"
        node = info[name]
        assert node["category"] == "attention focus"
        assert node["display_name"].startswith("Attention Focus")
        for section in ("required", "optional"):
            for inp, spec in node["input"].get(section, {}).items():
                assert len(spec) > 1 and spec[1].get("tooltip"), f"{name}.{inp} has no tooltip"
    bad = [line for line in server.log().splitlines()
           if ("IMPORT FAILED" in line or "Cannot import" in line) and "attention_focus" in line]
    assert not bad, bad
    # the front-end extension is served
    assert any("attention_focus" in p for p in server.get("/extensions"))


def test_templates_have_thumbnails_and_notes(server):
    """Every example workflow is a template with a picture (no 404 in the template browser) and a note."""
    import urllib.request

    names = server.get("/workflow_templates")["attention_focus"]
    assert sorted(names) == sorted(p.stem for p in (REPO / "example_workflows").glob("*.json"))
    for name in names:
        with urllib.request.urlopen(f"{server.url}/api/workflow_templates/attention_focus/{name}.jpg") as r:
            assert r.headers["Content-Type"] == "image/jpeg" and 5_000 < len(r.read()) < 100_000
        wf = json.loads((REPO / "example_workflows" / f"{name}.json").read_text())
        notes = [n for n in wf["nodes"] if n["type"] == "MarkdownNote"]
        assert notes and "**Model" in notes[0]["widgets_values"][0], name
        loaders = [n for n in wf["nodes"] if n["type"].endswith("Loader") or n["type"] == "CheckpointLoaderSimple"]
        for node in loaders:  # the front end offers the download of a missing model from these entries
            models = node["properties"]["models"]
            assert {m["name"] for m in models} <= set(node["widgets_values"]), node["type"]
            assert all(m["url"].startswith("https://huggingface.co/") and m["directory"] for m in models)


def test_bundled_example_workflow_runs_and_writes_files(server):
    prompt = example_prompt(server, "attention_focus_heatmaps.json", 96, 64, 3)
    classes = {n["class_type"] for n in prompt.values()}
    assert {"AttentionFocusTextEncode", "AttentionFocusCapture", "AttentionFocusHeatmap",
            "AttentionFocusSaveMaps"} <= classes
    hist = server.wait(server.queue(prompt))
    assert hist["status"]["status_str"] == "success", hist["status"]
    out = server.base / "output"
    files = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert any(f.startswith("attention_focus/image_") and f.endswith(".png") for f in files), files
    assert any(f.startswith("attention_focus/heatmap_grid_") for f in files), files
    masks = [f for f in files if f.startswith("attention_focus/masks_")]
    assert len(masks) == 3, files  # three words: cat, red wizard hat, sunset
    maps = [f for f in files if f.endswith(".safetensors")]
    assert len(maps) == 1

    from attention_focus.nodes.maps_file import load_maps

    tensor, meta = load_maps(out / maps[0])
    assert tensor.shape == (1, 77, 8, 12) and meta["image_size"] == [64, 96]
    words = [w["text"] for w in meta["token_table"]["words"]]
    assert "sunset" in words and "wizard" in words

    # the saved maps load back through the loader node over HTTP
    g = {"1": {"class_type": "AttentionFocusLoadMaps", "inputs": {"file": maps[0]}},
         "2": {"class_type": "EmptyImage", "inputs": {"width": 96, "height": 64, "batch_size": 1, "color": 0}},
         "3": {"class_type": "AttentionFocusHeatmap", "inputs": {
             "attention_maps": ["1", 0], "image": ["2", 0], "words": "cat", "colormap": "magma",
             "opacity": 0.5, "normalization": "per word", "branch": "positive"}},
         "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 1], "filename_prefix": "reload"}}}
    hist = server.wait(server.queue(g))
    assert hist["status"]["status_str"] == "success", hist["status"]


def test_bad_input_errors_and_server_keeps_running(server):
    prompt = example_prompt(server, "attention_focus_heatmaps.json", 64, 64, 2)
    for node in prompt.values():
        if node["class_type"] == "AttentionFocusHeatmap":
            node["inputs"]["words"] = "giraffe"
    hist = server.wait(server.queue(prompt))
    assert hist["status"]["status_str"] == "error"
    err = next(m[1] for m in hist["status"]["messages"] if m[0] == "execution_error")
    assert "'giraffe' is not in the prompt" in err["exception_message"]
    assert "cat" in err["exception_message"]
    # the image written before the failing node is kept; the server still answers and runs prompts
    assert server.get("/object_info/AttentionFocusCapture")
    status, body = server.post("/prompt", {"prompt": {"1": {"class_type": "AttentionFocusCapture",
                                                            "inputs": {"layers": "all"}}}})
    assert status == 400  # invalid prompt: refused with node_errors, not a crash
    assert os.path.exists(server.base / "output")


def test_reweight_example_workflow_side_by_side(server):
    import numpy as np
    from PIL import Image
    prompt = example_prompt(server, "attention_focus_reweight.json", 64, 64, 3)
    hist = server.wait(server.queue(prompt))
    assert hist["status"]["status_str"] == "success", hist["status"]
    out = server.base / "output" / "attention_focus"
    imgs = sorted(out.glob("reweight_images_*.png"))
    grids = sorted(out.glob("reweight_heatmaps_*.png"))
    assert len(imgs) == 2 and len(grids) == 1
    a, b = (np.asarray(Image.open(p)) for p in imgs)
    assert a.shape == b.shape and not np.array_equal(a, b), "reweighting must change the image"
    # one grid, two rows (plain, reweighted) of image + 3 words, the rows captioned with their weights
    grid = np.asarray(Image.open(grids[0]))
    assert grid.shape[:2] == (2 * 64 + 3 * 2, 4 * 64 + 5 * 2)
    compare = next(o for o in hist["outputs"].values() if "attention_focus_labels" in o)
    assert compare["attention_focus_labels"] == ["no reweighting", "reweighted: red wizard hat:2.0, cat:0.5"]
