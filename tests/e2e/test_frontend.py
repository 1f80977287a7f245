"""The pack's editor extension in the real ComfyUI front end (1.32.9 and 1.58.1), Debian's headless Chromium
driven by Playwright, against a real server (tests/e2e/conftest.py shares one per front end).

What a person sees is checked, not only widget values: the chips are on screen and not covered,
overlays are compared as screenshot pixels, hover answers are checked against the maps saved by the run.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from harness.frontend import CURRENT, Editor, example, shot, write_png

REPO = Path(__file__).resolve().parents[2]
NODES = ["AttentionFocusTextEncode", "AttentionFocusCapture", "AttentionFocusHeatmap", "AttentionFocusSaveMaps",
         "AttentionFocusLoadMaps", "AttentionFocusReweight"]
DOCS_PICTURE = REPO / "docs" / "viewer.png"


def with_load_maps(wf: dict) -> dict:
    """The workflow plus a muted (never run) Load Maps node whose list should refresh after Save Maps."""
    nid = max(n["id"] for n in wf["nodes"]) + 1
    wf["nodes"].append({"id": nid, "type": "AttentionFocusLoadMaps", "pos": [1080, 800], "size": [320, 100],
                        "flags": {}, "order": nid, "mode": 2, "inputs": [],
                        "outputs": [{"name": "attention_maps", "type": "ATTENTION_MAPS", "links": []}],
                        "properties": {}, "widgets_values": [""]})
    wf["last_node_id"] = nid
    return wf


def visible_and_uncovered(page, selector: str) -> list[str]:
    """Texts of the elements matching ``selector`` that are on screen and topmost at their centre."""
    return page.evaluate("""sel => [...document.querySelectorAll(sel)].filter(e => {
        const r = e.getBoundingClientRect();
        if (r.width < 4 || r.height < 4) return false;
        const t = document.elementFromPoint(r.left + r.width / 2, r.top + r.height / 2);
        return t === e || e.contains(t); }).map(e => e.textContent)""", selector)


def saved_maps(srv, hist: dict) -> tuple[torch.Tensor, dict]:
    from attention_focus.nodes.maps_file import load_maps

    rec = next(o["attention_maps"][0] for o in hist["outputs"].values() if "attention_maps" in o)
    return load_maps(srv.base / "output" / rec["subfolder"] / rec["filename"])


def view_of(srv, hist: dict, node_id: int) -> tuple[dict, dict]:
    from attention_focus.nodes.viewer_data import read_view

    vid = hist["outputs"][str(node_id)]["attention_focus_view"][0]["id"]
    path = srv.base / f"{vid}.view.safetensors"  # through the pack's route, as the viewer reads it
    with urllib.request.urlopen(f"{srv.url}/attention_focus/view/{vid}.view.safetensors", timeout=30) as r:
        path.write_bytes(r.read())
    return read_view(path)


def clearest_cell(maps: torch.Tensor, header: dict) -> tuple[int, int, str]:
    """The latent cell whose top word (computed from the saved float32 maps, as the viewer ranks its chips)
    leads the second by the most quantisation steps; returns (y, x, word)."""
    share = torch.stack([maps[0, list(w["positions"])].mean(0) for w in header["words"]]) / header["evaluations"]
    top2 = share.topk(2, dim=0)
    step = (torch.tensor(header["hi"][0]) - torch.tensor(header["lo"][0])) / 255
    margin = (top2.values[0] - top2.values[1]) / (step[top2.indices[0]] + step[top2.indices[1]])
    y, x = divmod(int(margin.argmax()), margin.shape[1])
    assert margin.max() > 2, "no cell with a clear top word"
    return y, x, header["words"][int(top2.indices[0, y, x])]["text"]


def test_nodes_register_in_the_editor(ui):
    ver, srv, browser = ui
    ed = Editor(browser, srv)
    assert ed.version == ver
    missing = ed.page.evaluate(f"{json.dumps(NODES)}.filter(n => !(n in LiteGraph.registered_node_types))")
    assert missing == [], f"not registered in the editor: {missing}"
    assert ed.page.evaluate("app.extensions.some(e => e.name === 'attention_focus.ui')")
    ed.load(example(srv, "attention_focus_heatmaps.json"), 13)
    colours = ed.page.evaluate("(app.graph.nodes ?? app.graph._nodes).filter(n => n.type.startsWith('AttentionFocus'))"
                               ".map(n => n.color)")
    assert colours and all(c == "#2a3b4d" for c in colours), colours
    assert not ed.pack_errors(), ed.pack_errors()
    ed.close()


def test_viewer_appears_after_run_and_answers_clicks_and_hover(ui):
    ver, srv, browser = ui
    ed = Editor(browser, srv)
    page = ed.page
    ed.load(with_load_maps(example(srv, "attention_focus_heatmaps.json", seed=101)), 14)
    hist = ed.run()
    assert hist["status"]["status_str"] == "success", hist["status"]
    hm = ed.nodes("AttentionFocusHeatmap")[0]
    ed.focus(hm)
    page.wait_for_selector(".af-viewer .af-chip", state="visible", timeout=30000)
    page.wait_for_selector(".af-viewer canvas.af-canvas", state="visible")

    # the word list: chips a person can see and click; typed words first, function words last and dimmed
    chips = page.eval_on_selector_all(".af-chip", "es => es.map(e => [e.textContent, e.classList.contains('af-fn')])")
    texts = [t for t, _ in chips]
    assert texts[:3] == ["cat", "red wizard hat", "sunset"], texts
    assert {"photo", "wearing", "sky"} <= set(texts) and texts[-1] in ("a", "of")
    fn = [f for _, f in chips]
    assert fn == sorted(fn) and [t for t, f in chips if f] == ["a", "of", "a", "a"], chips
    shown = visible_and_uncovered(page, ".af-chip")
    assert set(shown) == set(texts), f"chips not visible or covered: {set(texts) - set(shown)}"
    assert page.is_hidden(".af-history"), "no history in these maps: no step / layer controls"

    # clicking words changes the overlay (screenshot pixels of the picture)
    canvas = page.locator(".af-canvas").first
    only_cat = shot(canvas)
    page.click(".af-chip >> text='sunset'")
    page.wait_for_timeout(200)
    with_sunset = shot(canvas)
    assert np.abs(with_sunset - only_cat).mean() > 2, "adding a word must change the overlay"
    page.click(".af-chip >> text='cat'")
    page.click(".af-chip >> text='sunset'")
    page.wait_for_timeout(200)
    assert np.abs(shot(canvas) - only_cat).mean() > 2  # no word selected: only the picture
    page.click(".af-chip >> text='cat'")
    page.wait_for_timeout(200)
    assert np.abs(shot(canvas) - only_cat).mean() < 1  # back to the first state

    # colour bar: the selected word's share range in %, as the view file says
    maps, meta = saved_maps(srv, hist)
    tensors, header = view_of(srv, hist, hm)
    cat = next(i for i, w in enumerate(header["words"]) if w["text"] == "cat")
    bar = page.locator(".af-barlabels")
    assert "%" in bar.text_content()
    assert float(bar.get_attribute("data-lo")) == pytest.approx(header["lo"][0][cat], rel=1e-5)
    assert float(bar.get_attribute("data-hi")) == pytest.approx(header["hi"][0][cat], rel=1e-5)
    page.select_option(".af-scale", "shared")
    page.click(".af-chip >> text='photo'")
    page.wait_for_timeout(200)
    photo = next(i for i, w in enumerate(header["words"]) if w["text"] == "photo")
    assert float(bar.get_attribute("data-hi")) == pytest.approx(max(header["hi"][0][cat], header["hi"][0][photo]),
                                                                rel=1e-5)
    before = shot(canvas)
    page.fill(".af-opacity", "0.2")
    page.dispatch_event(".af-opacity", "input")
    page.wait_for_timeout(200)
    assert np.abs(shot(canvas) - before).mean() > 1, "the opacity slider changes the overlay"

    # hover: the viewer ranks the words at the pixel; its top word is the one the saved maps give there
    y, x, word = clearest_cell(maps, header)
    h, w = header["latent"]
    box = canvas.bounding_box()
    page.mouse.move(box["x"] + (x + 0.5) / w * box["width"], box["y"] + (y + 0.5) / h * box["height"])
    page.wait_for_function(f"document.querySelector('.af-readout').dataset.cell === '{y},{x}'")
    assert page.get_attribute(".af-readout", "data-top") == word
    assert page.locator(".af-rank.af-top").text_content().startswith(word)

    # the raw maps download: float16 per-token maps, equal to what Save Maps wrote
    from attention_focus.nodes.maps_file import load_maps

    href = page.get_attribute(".af-download", "href")
    with urllib.request.urlopen(srv.url + href if href.startswith("/") else href, timeout=30) as r:
        assert "attachment" in r.headers.get("Content-Disposition", "")
        raw = r.read()
    path = srv.base / "downloaded.safetensors"
    path.write_bytes(raw)
    got, got_meta = load_maps(path)
    assert torch.allclose(got, maps, rtol=2e-3, atol=1e-6) and got_meta["token_table"] == meta["token_table"]
    assert len(raw) < maps.numel() * 2 + 64 * 1024  # float16 plus metadata
    assert tensors["words"].numel() == len(header["words"]) * h * w  # one byte per word and latent cell

    # Save Maps shows what it wrote; Load Maps lists the new file without a reload
    saved = next(o["attention_maps"][0] for o in hist["outputs"].values() if "attention_maps" in o)
    ed.focus(ed.nodes("AttentionFocusSaveMaps")[0])
    note = page.locator(".af-saved")
    note.wait_for(state="visible")
    assert saved["filename"] in note.text_content() and "KB" in note.text_content()
    assert visible_and_uncovered(page, ".af-saved"), "the Save Maps note is covered"
    lm = ed.nodes("AttentionFocusLoadMaps")[0]
    page.wait_for_function(f"""app.graph.getNodeById({lm}).widgets.find(w => w.name === 'file')
        .options.values.includes({json.dumps(f"{saved['subfolder']}/{saved['filename']}")})""", timeout=10000)
    workflow = json.loads(page.evaluate("(async () => JSON.stringify((await app.graphToPrompt()).workflow))()"))
    kept = {n["type"]: n["widgets_values"] for n in workflow["nodes"] if n["type"].startswith("AttentionFocus")}
    assert kept["AttentionFocusLoadMaps"] == [""] and len(kept["AttentionFocusSaveMaps"]) == 2, kept  # no pack widget

    if ver == CURRENT:  # the README's picture: the node with its viewer, a word clicked, a pixel hovered
        ed.focus(hm, y=60)
        page.select_option(".af-scale", "per word")
        page.fill(".af-opacity", "0.6")
        page.dispatch_event(".af-opacity", "input")
        for word in ("photo", "sunset"):
            page.click(f".af-chip >> text='{word}'")
        box = page.locator(".af-canvas").first.bounding_box()
        page.mouse.move(box["x"] + box["width"] * 0.4, box["y"] + box["height"] * 0.45)
        page.wait_for_timeout(300)
        size = write_png(DOCS_PICTURE, page.screenshot(clip=ed.node_rect(hm)))
        assert size < 300 * 1024
    assert not ed.pack_errors(), ed.pack_errors()
    ed.close()


def test_compare_two_runs_on_one_scale(ui):
    """Two runs of the heat-map example: the second run's viewer shows the first beside it on one scale;
    the reweight example's Compare node opens with both runs, captioned with their weights."""
    ver, srv, browser = ui
    ed = Editor(browser, srv)
    page = ed.page
    hists = []
    for seed in (202, 203):
        ed.load(example(srv, "attention_focus_heatmaps.json", size=(64, 64), seed=seed), 13)
        hists.append(ed.run())
        assert hists[-1]["status"]["status_str"] == "success", hists[-1]["status"]
    hm = ed.nodes("AttentionFocusHeatmap")[0]
    ed.focus(hm)
    viewer = page.locator(f".af-viewer[data-node='{hm}']")
    viewer.locator("canvas.af-canvas").wait_for(state="visible")
    page.wait_for_function(f"""[...document.querySelectorAll(".af-viewer[data-node='{hm}'] .af-compare option")]
        .some(o => o.textContent.endsWith('run 1'))""", timeout=30000)
    label = next(o for o in viewer.locator(".af-compare option").all_text_contents() if o.endswith("run 1"))
    viewer.locator(".af-compare").select_option(label=label)
    page.wait_for_function(f"document.querySelectorAll(\".af-viewer[data-node='{hm}'] .af-stage.af-two canvas\")"
                           ".length === 2")
    a, b = viewer.locator(".af-canvas").all()
    assert np.abs(shot(a) - shot(b)).mean() > 1, "the two runs differ"
    _, first = view_of(srv, hists[0], hm)
    _, second = view_of(srv, hists[1], hm)
    i = next(i for i, w in enumerate(second["words"]) if w["text"] == "cat")
    j = next(j for j, w in enumerate(first["words"]) if w["text"] == "cat")
    bar = viewer.locator(".af-barlabels")
    assert float(bar.get_attribute("data-hi")) == pytest.approx(max(second["hi"][0][i], first["hi"][0][j]), rel=1e-5)
    assert float(bar.get_attribute("data-lo")) == pytest.approx(min(second["lo"][0][i], first["lo"][0][j]), rel=1e-5)
    assert "both runs" in bar.text_content()

    # with and without reweighting: the Compare node's viewer shows both runs at once, captioned
    ed.load(example(srv, "attention_focus_reweight.json", size=(64, 64), seed=204), 16)
    assert ed.run()["status"]["status_str"] == "success"
    cmp_ = ed.nodes("AttentionFocusCompare")[0]
    ed.focus(cmp_)
    both = page.locator(f".af-viewer[data-node='{cmp_}']")
    both.locator(".af-stage.af-two canvas").first.wait_for(state="visible", timeout=30000)
    captions = both.locator("figcaption").all_text_contents()
    assert captions == ["no reweighting", "reweighted: red wizard hat:2.0, cat:0.5"]
    a, b = both.locator(".af-canvas").all()
    assert np.abs(shot(a) - shot(b)).mean() > 1, "reweighting changes the picture and its maps"
    assert not ed.pack_errors(), ed.pack_errors()
    ed.close()
