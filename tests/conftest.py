"""Test-wide set-up: makes the repository importable as the package ``attention_focus``.

The pure tensor modules (``attention_focus.nodes.*``) are imported without ComfyUI. Tests that need
ComfyUI use the ``comfy`` fixture (tests/harness/comfy_boot.py), which boots a real ComfyUI in-process
and then executes the pack's ``__init__.py`` into this same package object, so both sides share modules.
"""

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from harness.comfy_boot import register_package  # noqa: E402

register_package()


@pytest.fixture(scope="session")
def comfy():
    """A real ComfyUI (0.3.75 or $COMFYUI_PATH) booted in this process, with the pack registered."""
    from harness.comfy_boot import boot

    return boot()
