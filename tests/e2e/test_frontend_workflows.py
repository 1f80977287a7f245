"""Regression tests of issue 11 on both front ends, plus the viewer's history controls and its fallback.

- A workflow reopened from an output PNG (of the second run of a browser session) or saved after a run runs
  again unchanged: the viewer's widgets are never saved into the workflow (they used to be, and the front
  end's widget-value migration shifted the word list into ``text_stream``).
- Workflows saved by the old version (7 values) are repaired on load.
- A view with per-step / per-layer frames shows a step scrubber and a layer picker that change the overlay;
  maps with several text streams get buttons that fill ``text_stream``.
- The Flux example makes the editor offer the download of its four model files.
- Without DOM widgets (an older or stripped front end) the node draws today's static grid and its words.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from harness.frontend import Editor, example, pixels, shot

REPO = Path(__file__).resolve().parents[2]
# words, colormap, opacity, normalization, branch, text_stream, mask_mode, mask_threshold, video_frames
HEATMAP_VALUES = 9
LEGACY_HEATMAP_VALUES = 6  # the widgets before 0.3, which saved the word list after them


def heatmap_values(ed: Editor) -> list:
    return ed.page.evaluate("""(async () => {
        const wf = (await app.graphToPrompt()).workflow;
        return wf.nodes.find(n => n.type === 'AttentionFocusHeatmap').widgets_values; })()""")


def text_stream(ed: Editor, widget: str = "text_stream") -> str:
    return ed.page.evaluate(f"""(app.graph.nodes ?? app.graph._nodes).find(n => n.type === 'AttentionFocusHeatmap')
        .widgets.find(w => w.name === '{widget}').value""")


def wait_viewer(ed: Editor) -> None:
    ed.focus(ed.nodes("AttentionFocusHeatmap")[0])
    ed.page.wait_for_selector(".af-viewer .af-chip", state="visible", timeout=30000)


def test_reopened_workflows_run_again(ui, tmp_path):
    ver, srv, browser = ui
    ed = Editor(browser, srv)
    ed.load(example(srv, "attention_focus_heatmaps.json", size=(64, 64), seed=303), 13)
    for _ in range(2):  # the second run's PNG holds a workflow saved after the viewer appeared
        assert ed.run()["status"]["status_str"] == "success"
    wait_viewer(ed)
    assert len(heatmap_values(ed)) == HEATMAP_VALUES, heatmap_values(ed)

    # 1. the workflow stored in the newest output PNG, opened with the editor's Open
    png = max((srv.base / "output" / "attention_focus").glob("image_*.png"), key=lambda p: p.stat().st_mtime)
    ed.page.evaluate("app.graph.clear()")
    ed.open_file(png)
    ed.page.wait_for_function("(app.graph.nodes ?? app.graph._nodes).length >= 13")
    assert text_stream(ed) == "all"
    ed.page.evaluate("""(app.graph.nodes ?? app.graph._nodes).find(n => n.type === 'KSampler')
        .widgets.find(w => w.name === 'seed').value = 304""")  # a new seed: the run is not served from cache
    hist = ed.run()
    assert hist["status"]["status_str"] == "success", hist["status"]
    wait_viewer(ed)

    # 2. the workflow saved after that run (what Save / Export write), opened again
    saved = json.loads(ed.page.evaluate("(async () => JSON.stringify((await app.graphToPrompt()).workflow))()"))
    hm = next(n for n in saved["nodes"] if n["type"] == "AttentionFocusHeatmap")
    assert len(hm["widgets_values"]) == HEATMAP_VALUES, hm["widgets_values"]
    ks = next(n for n in saved["nodes"] if n["type"] == "KSampler")
    ks["widgets_values"][0] = 305
    path = tmp_path / "saved_after_run.json"
    path.write_text(json.dumps(saved))
    ed.page.evaluate("app.graph.clear()")
    ed.open_file(path)
    ed.page.wait_for_function("(app.graph.nodes ?? app.graph._nodes).length >= 13")
    assert text_stream(ed) == "all"
    hist = ed.run()
    assert hist["status"]["status_str"] == "success", hist["status"]

    # 3. a workflow saved by the old version: six widgets, then the word list as a 7th value, repaired on load
    hm["widgets_values"] = [*hm["widgets_values"][:LEGACY_HEATMAP_VALUES],
                            "a, photo, of, cat, wearing, red, wizard, hat"]
    ks["widgets_values"][0] = 306
    path.write_text(json.dumps(saved))
    ed.page.evaluate("app.graph.clear()")
    ed.open_file(path)
    ed.page.wait_for_function("(app.graph.nodes ?? app.graph._nodes).length >= 13")
    assert text_stream(ed) == "all" and text_stream(ed, "mask_mode") == "soft"
    assert ed.run()["status"]["status_str"] == "success"
    assert not ed.pack_errors(), ed.pack_errors()
    ed.close()


def _synthetic_view(srv, frames: bool) -> dict:
    """A view file written into the server's temp folder, as the heat-map node writes it (optionally with
    step and layer frames, which captures do not record yet); returns the node's UI message."""
    from attention_focus.nodes.capture_store import MapSet
    from attention_focus.nodes.token_table import TokenRow, TokenTable, Word
    from attention_focus.nodes.viewer_data import Frames, build_view, view_words, write_view

    words = ["a", "red", "cat"]
    rows = [TokenRow(i + 1, w, i, 1.0, 1, False, 0) for i, w in enumerate(words)]
    table = TokenTable([TokenRow(0, "<bos>", -1, 1.0, 0, True, 0), *rows],
                       [Word(i, w, (i + 1,)) for i, w in enumerate(words)], text="a red cat")
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 8), torch.linspace(0, 1, 8), indexing="ij")
    maps = torch.stack([torch.full_like(xx, 0.1), xx, yy, 1 - xx])[None] * 0.5  # (1, 4 tokens, 8, 8)
    ms = MapSet(maps, table, {"steps": 1, "model_family": "sd1"})
    fr = None
    if frames:
        steps = torch.stack([maps, maps.flip(-2), maps.flip(-1)], 1)  # (1, 3 steps, 4, 8, 8)
        fr = {"steps": Frames(["1", "2", "3"], steps), "layers": Frames(["input.1", "output.3"], steps[:, :2])}
    chips = view_words(table, ["red"])
    tensors, header = build_view(ms, chips, colormap="turbo", opacity=0.8, normalization="per word",
                                 image_size=(64, 64), frames=fr, streams=["clip_l", "t5xxl"])
    temp = srv.base / "temp" / "temp"  # ComfyUI's temp folder (--temp-directory <base>/temp adds "temp")
    record = write_view(temp, ms, torch.full((1, 64, 64, 3), 0.5), tensors, header)
    return {"attention_focus_view": [record], "attention_focus_grid": []}


def test_history_controls_scrub_steps_and_layers(ui):
    ver, srv, browser = ui
    ed = Editor(browser, srv)
    page = ed.page
    ed.load(example(srv, "attention_focus_heatmaps.json"), 13)
    hm = ed.nodes("AttentionFocusHeatmap")[0]
    message = _synthetic_view(srv, frames=True)
    page.evaluate("([id, m]) => app.graph.getNodeById(id).onExecuted(m)", [hm, message])
    ed.focus(hm)
    page.wait_for_selector(".af-history", state="visible", timeout=30000)
    canvas = page.locator(".af-canvas").first
    canvas.wait_for(state="visible")
    all_steps = shot(canvas)
    page.fill(".af-steps", "2")
    page.dispatch_event(".af-steps", "input")
    page.wait_for_timeout(200)
    assert page.locator(".af-steplabel").text_content() == "step 2"
    step2 = shot(canvas)
    assert np.abs(step2 - all_steps).mean() > 2, "the step scrubber changes the overlay (frame 2 is flipped)"
    page.select_option(".af-layers", label="output.3")
    page.wait_for_timeout(200)
    assert page.input_value(".af-steps") == "0" or page.locator(".af-steplabel").text_content()
    assert np.abs(shot(canvas) - all_steps).mean() > 2
    page.select_option(".af-layers", label="all layers")
    page.fill(".af-steps", "0")
    page.dispatch_event(".af-steps", "input")
    page.wait_for_timeout(200)
    assert np.abs(shot(canvas) - all_steps).mean() < 1

    # maps of a model with two text streams: buttons that fill text_stream for the next run
    assert page.locator(".af-stream").all_text_contents() == ["all", "clip_l", "t5xxl"]
    page.click(".af-stream >> text='t5xxl'")
    assert page.evaluate(f"app.graph.getNodeById({hm}).widgets.find(w => w.name === 'text_stream').value") == "t5xxl"

    # a run whose view files are gone (ComfyUI cleared its temp folder): a note instead of the viewer
    gone = {"attention_focus_view": [{"id": "0" * 32, "words": ["cat"], "batch": 1}], "attention_focus_grid": []}
    page.evaluate("([id, m]) => app.graph.getNodeById(id).onExecuted(m)", [hm, gone])
    page.wait_for_selector(".af-message", state="visible", timeout=10000)
    assert "run the workflow again" in page.locator(".af-message").text_content()
    assert not ed.pack_errors(), ed.pack_errors()
    ed.close()


def test_without_dom_widgets_the_node_draws_the_static_grid(ui):
    """A front end without LGraphNode.addDOMWidget: the words and the grid are drawn on the canvas."""
    ver, srv, browser = ui
    ed = Editor(browser, srv)
    page = ed.page
    ed.load(example(srv, "attention_focus_heatmaps.json", size=(64, 64), seed=404), 13)
    page.evaluate("""(() => {  // remove the DOM-widget API, wherever the front end defines it
        const n = (app.graph.nodes ?? app.graph._nodes)[0];
        for (let p = Object.getPrototypeOf(n); p; p = Object.getPrototypeOf(p))
            if (Object.prototype.hasOwnProperty.call(p, 'addDOMWidget')) delete p.addDOMWidget; })()""")
    hm = ed.nodes("AttentionFocusHeatmap")[0]
    ed.focus(hm)
    clip = page.evaluate(f"""(() => {{ const n = app.graph.getNodeById({hm}); const c = app.canvas;
        const r = c.canvas.getBoundingClientRect();
        const s = c.ds.scale;
        return {{x: r.left + (n.pos[0] + c.ds.offset[0]) * s, y: r.top + (n.pos[1] + c.ds.offset[1]) * s,
                 width: n.size[0] * s, height: 400}}; }})()""")
    before = pixels(page.screenshot(clip=clip))
    assert ed.run()["status"]["status_str"] == "success"
    page.wait_for_function(f"""(() => {{ const n = app.graph.getNodeById({hm});
        const w = n.widgets.find(w => w.name === 'attention_focus_grid');
        return w && n.__afGrid.img && n.__afGrid.img.complete && n.__afGrid.img.naturalWidth > 0; }})()""",
                           timeout=30000)
    assert page.locator(".af-viewer").count() == 0
    ed.focus(hm)
    page.wait_for_timeout(500)
    after = pixels(page.screenshot(clip=clip))
    assert after.shape == before.shape
    changed = np.abs(after - before).sum(-1) > 30
    assert changed.mean() > 0.1, "the grid and the words must be drawn on the node"
    colours = len(np.unique(after[changed].reshape(-1, 3) // 16, axis=0))
    assert colours > 20, "a heat-map grid is drawn, not only text"
    words = page.evaluate(f"app.graph.getNodeById({hm}).__afGrid.words")
    assert words[:3] == ["cat", "red wizard hat", "sunset"]
    saved = page.evaluate("(async () => (await app.graphToPrompt()).workflow)()")
    assert len(next(n for n in saved["nodes"] if n["type"] == "AttentionFocusHeatmap")["widgets_values"]) == \
        HEATMAP_VALUES
    assert not ed.pack_errors(), ed.pack_errors()
    ed.close()


def test_flux_example_offers_model_downloads(ui):
    """The loaders' properties.models entries: the editor lists the missing files with a download each."""
    ver, srv, browser = ui
    ed = Editor(browser, srv)
    page = ed.page
    wf = json.loads((REPO / "example_workflows" / "attention_focus_flux.json").read_text())
    ed.load(wf, len(wf["nodes"]))
    details = page.locator("text=View details")  # 1.58: a notice first, the list in the side panel
    page.wait_for_function("document.body.innerText.includes('Missing Models') || "
                           "[...document.querySelectorAll('button')].some(b => b.innerText.includes('View details'))",
                           timeout=30000)
    if details.count():
        details.first.click()
    page.wait_for_function("document.body.innerText.includes('Missing Models')", timeout=30000)
    text = page.evaluate("document.body.innerText")
    for name in ("flux1-dev.safetensors", "clip_l.safetensors", "t5xxl_fp16.safetensors", "ae.safetensors"):
        assert name in text, name
    assert text.count("Download") >= 4, text
    ed.close()
