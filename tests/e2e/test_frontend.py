"""The real ComfyUI front end (comfyui-frontend-package) in Debian's headless Chromium, driven by Playwright.

Loads the bundled example workflow in the graph editor, queues it with the editor's own queue button
and checks what the pack's web extension does: nodes registered, colours, and the list of prompt words
shown on the heat-map node after it ran.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
NODES = ["AttentionFocusTextEncode", "AttentionFocusCapture", "AttentionFocusHeatmap", "AttentionFocusSaveMaps",
         "AttentionFocusLoadMaps", "AttentionFocusReweight"]


@pytest.fixture(scope="module")
def server():
    from harness.server import running_server

    with running_server("af-ui-") as srv:
        yield srv


def test_editor_loads_queues_and_shows_words(server, tmp_path):
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), "Debian's chromium is required (scripts/setup_env.sh installs it)"
    server.post("/settings/Comfy.TutorialCompleted", True)
    wf = json.loads((REPO / "example_workflows" / "attention_focus_heatmaps.json").read_text())
    for node in wf["nodes"]:
        if node["type"] == "CheckpointLoaderSimple":
            node["widgets_values"][0] = server.ckpt
        if node["type"] == "EmptyLatentImage":
            node["widgets_values"][:2] = [64, 64]
        if node["type"] == "KSampler":
            node["widgets_values"][2] = 2
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)  # a fresh temporary profile
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.route("**/*", lambda route: route.continue_() if route.request.url.startswith(server.url)
                   else route.abort())
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(server.url)
        page.wait_for_function("window.app && window.app.graph && document.querySelector('canvas')",
                               timeout=60000)
        registered = page.evaluate(f"{json.dumps(NODES)}.filter(n => !(n in LiteGraph.registered_node_types))")
        assert registered == [], f"not registered in the editor: {registered}"
        assert page.evaluate("app.extensions.some(e => e.name === 'attention_focus.ui')")
        page.evaluate("wf => app.loadGraphData(wf)", wf)
        page.wait_for_function("app.graph._nodes.length >= 13")
        colours = page.evaluate("app.graph._nodes.filter(n => n.type.startsWith('AttentionFocus'))"
                                ".map(n => n.color)")
        assert colours and all(c == "#2a3b4d" for c in colours), colours
        page.click("[data-testid='queue-button']")
        page.wait_for_function(
            "(() => { const n = app.graph._nodes.find(n => n.type === 'AttentionFocusHeatmap');"
            " const w = n && n.widgets && n.widgets.find(w => w.name === 'prompt words');"
            " return w && w.value && w.value.length > 0; })()", timeout=240000)
        words = page.evaluate("app.graph._nodes.find(n => n.type === 'AttentionFocusHeatmap')"
                              ".widgets.find(w => w.name === 'prompt words').value")
        page.screenshot(path=str(tmp_path / "editor.png"))
        browser.close()
    assert "cat" in words and "wizard" in words and "sunset" in words, words
    ours = [e for e in errors if "attention_focus" in e.lower()]
    assert not ours, ours
    out = server.base / "output" / "attention_focus"
    assert list(out.glob("heatmap_grid_*.png")), "the queued workflow wrote its heat-map grid"
