"""The ComfyUI front ends the browser tests run against, and the Playwright page helpers they share.

- ``1.32.9``: the front end ComfyUI 0.3.75 pins, installed in the test venv (scripts/requirements-dev.txt).
- ``1.58.1``: the current one on PyPI, installed once with ``pip install --no-deps --target`` into
  ``$ATTENTION_FOCUS_CACHE/frontend-1.58.1`` (the venv's pinned package is never touched) and served by a
  second server started with ``--front-end-root <that package's static folder>``.

``AF_FRONTENDS`` (comma-separated versions) narrows the list, e.g. ``AF_FRONTENDS=1.32.9``.

Known differences of 1.58.1 on a 0.3.75 server: it asks for ``/api/jobs`` (the jobs API of newer servers)
to fill its queue panel and logs "Failed to fetch jobs: 404" — queueing, execution, node outputs and
``onExecuted`` work as on 1.32.9; those messages come from the front end itself and are filtered (see
``FOREIGN_ERRORS``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness.comfy_boot import CACHE, REPO

SHIPPED = "1.32.9"
CURRENT = "1.58.1"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# console errors that come from the front end or the test set-up, not from the pack
FOREIGN_ERRORS = ("Failed to load resource", "Content Security Policy", "api.comfy.org", "Jobs API",
                  "Failed to fetch jobs", "Failed to fetch queue", "reading 'id'", "net::ERR_FAILED")


def versions() -> list[str]:
    wanted = os.environ.get("AF_FRONTENDS", f"{SHIPPED},{CURRENT}")
    return [v.strip() for v in wanted.split(",") if v.strip()]


def installed_version() -> str:
    from importlib.metadata import version

    return version("comfyui-frontend-package")


def frontend_root(ver: str) -> Path | None:
    """The static folder to serve for front end ``ver``; None = the venv's own package (no flag needed)."""
    if ver == installed_version():
        return None
    target = CACHE / f"frontend-{ver}"
    static = target / "comfyui_frontend_package" / "static"
    if not (target / ".ready").is_file():
        tmp = Path(tempfile.mkdtemp(prefix=f"frontend-{ver}-", dir=CACHE))
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps",
                        "--target", str(tmp), f"comfyui-frontend-package=={ver}"], check=True)
        (tmp / ".ready").touch()
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
    if not (static / "index.html").is_file():
        raise RuntimeError(f"front end {ver}: no index.html in {static}")
    return static


def server_args(ver: str) -> list[str]:
    root = frontend_root(ver)
    return ["--front-end-root", str(root)] if root else []


class Editor:
    """One browser page on the editor of ``server``; records the pack's console errors."""

    def __init__(self, browser, server) -> None:
        self.server = server
        self.errors: list[str] = []
        self.page = browser.new_page(viewport={"width": 1500, "height": 1400})
        page = self.page
        page.route("**/*", lambda route: route.continue_() if route.request.url.startswith(server.url)
                   else route.abort())
        page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))
        page.on("console", lambda m: self.errors.append(f"{m.type}: {m.text}") if m.type == "error" else None)
        page.goto(server.url)
        page.wait_for_function("window.app && window.app.graph && document.querySelector('canvas')", timeout=60000)
        self.version = page.evaluate("window.__COMFYUI_FRONTEND_VERSION__ || ''")

    def pack_errors(self) -> list[str]:
        """Console errors except those known to come from the front end or the blocked network (an error
        that names the pack always counts)."""
        return [e for e in self.errors
                if "attention_focus" in e.lower() or not any(f in e for f in FOREIGN_ERRORS)]

    def load(self, workflow: dict, nodes: int) -> None:
        self.page.evaluate("wf => app.loadGraphData(wf)", workflow)
        self.page.wait_for_function(f"(app.graph.nodes ?? app.graph._nodes).length >= {nodes}")

    def open_file(self, path: Path) -> None:
        """Open a workflow file (.json or an output .png) the way the menu's Open does."""
        self.page.set_input_files("#comfy-file-input", str(path))

    def run(self) -> dict:
        """Click the editor's queue button; returns the /history entry of the prompt it queued."""
        before = set(self.server.get("/history"))
        toasts = self.page.locator(".p-toast-message").all_text_contents()
        assert not toasts, f"the editor shows messages: {toasts}"
        self.page.click("[data-testid='queue-button']")
        deadline = time.time() + 240
        while time.time() < deadline:
            new = [k for k in self.server.get("/history") if k not in before]
            if new:
                return self.server.wait(new[0])
            time.sleep(0.3)
        raise TimeoutError("the queue button queued nothing")

    def nodes(self, type_: str) -> list[int]:
        return self.page.evaluate(f"(app.graph.nodes ?? app.graph._nodes).filter(n => n.type === {json.dumps(type_)})"
                                  ".map(n => n.id)")

    def focus(self, node_id: int, x: int = 420, y: int = 120) -> None:
        """Zoom to 100 % with the node's top-left corner at page position (x, y)."""
        self.page.evaluate("""([id, x, y]) => {
            const n = app.graph.getNodeById(id); const c = app.canvas;
            const r = c.canvas.getBoundingClientRect();
            c.ds.scale = 1; c.ds.offset[0] = x - r.left - n.pos[0]; c.ds.offset[1] = y - r.top - n.pos[1];
            c.setDirty(true, true); }""", [node_id, x, y])
        self.page.wait_for_timeout(400)

    def node_rect(self, node_id: int, title: int = 32) -> dict:
        """The node's box on the page (title bar included), for screenshots."""
        return self.page.evaluate("""([id, title]) => {
            const n = app.graph.getNodeById(id); const c = app.canvas; const s = c.ds.scale;
            const r = c.canvas.getBoundingClientRect();
            return {x: r.left + (n.pos[0] + c.ds.offset[0]) * s - 2,
                    y: r.top + (n.pos[1] - title + c.ds.offset[1]) * s - 2,
                    width: n.size[0] * s + 4, height: (n.size[1] + title) * s + 4}; }""", [node_id, title])

    def close(self) -> None:
        self.page.close()


def example(srv, name: str, size=(128, 96), steps: int = 2, seed: int = 42) -> dict:
    """A bundled example workflow (editor format) on the fixture checkpoint, small and short."""
    wf = json.loads((REPO / "example_workflows" / name).read_text())
    for node in wf["nodes"]:
        if node["type"] == "CheckpointLoaderSimple":
            node["widgets_values"][0] = srv.ckpt
        if node["type"] == "EmptyLatentImage":
            node["widgets_values"][:2] = list(size)
        if node["type"] == "KSampler":
            node["widgets_values"][0] = seed
            node["widgets_values"][2] = steps
    return wf


def pixels(png: bytes):
    """A screenshot as an int16 (H, W, 3) array, for differences."""
    import io

    import numpy as np
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.int16)


def shot(locator):
    """What a person sees of an element: its screenshot pixels."""
    return pixels(locator.screenshot())


def write_png(path: Path, png: bytes, max_colours: int = 192) -> int:
    """Save a screenshot as a palette PNG (small enough for the repository); returns its size in bytes.

    The file is left alone when it already shows the same picture (so test runs do not churn the repository).
    """
    import io

    import numpy as np
    from PIL import Image

    img = Image.open(io.BytesIO(png)).convert("RGB").quantize(colors=max_colours, dither=Image.Dither.NONE)
    if path.is_file():
        old = Image.open(path).convert("RGB")
        if old.size == img.size and np.abs(np.asarray(old, np.int16) - np.asarray(img.convert("RGB"), np.int16)
                                           ).mean() < 2:
            return path.stat().st_size
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, optimize=True)
    return path.stat().st_size
