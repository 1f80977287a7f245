"""Browser tests share one ComfyUI server and one headless Chromium per front-end version."""

from __future__ import annotations

from pathlib import Path

import pytest
from harness.frontend import CHROMIUM, FLAGS, server_args, versions


@pytest.fixture(scope="session", params=versions())
def ui(request):
    """(version, server, browser) for one front end: the shipped 1.32.9, then the current 1.58.1."""
    from harness.server import running_server
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), "Debian's chromium is required (scripts/setup_env.sh installs it)"
    ver = request.param
    with running_server(f"af-ui-{ver}-", extra_args=server_args(ver)) as srv:
        srv.post("/settings/Comfy.TutorialCompleted", True)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)  # fresh temporary profile
            try:
                yield ver, srv, browser
            finally:
                browser.close()
