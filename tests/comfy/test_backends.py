"""The capture and reweight guarantees on ComfyUI's other attention backends.

ComfyUI picks its attention function once per process (CPU default: sub-quadratic), so the key tests
re-run in a subprocess with PyTorch SDPA (what most GPU users run) and with the split backend.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]
SELECT = "independent or bit_identical or explicit or raises_its_share"
EXPECTED = {"pytorch": "attention_pytorch", "split": "attention_split"}


def test_default_backend_is_sub_quadratic(comfy):
    if os.environ.get("AF_ATTENTION_BACKEND"):
        pytest.skip("this process runs another backend on purpose")
    assert comfy.backend == "attention_sub_quad"


def test_reports_backend(comfy):
    want = os.environ.get("AF_ATTENTION_BACKEND")
    if want:
        assert comfy.backend == EXPECTED[want]


@pytest.mark.parametrize("backend", ["pytorch", "split"])
def test_guarantees_hold_on_backend(backend):
    if os.environ.get("AF_ATTENTION_BACKEND"):
        pytest.skip("already inside a backend subprocess")
    env = dict(os.environ, AF_ATTENTION_BACKEND=backend)
    cmd = [sys.executable, "-m", "pytest", "-c", str(TESTS / "pytest.ini"), "-q",
           str(TESTS / "comfy" / "test_capture_unet.py"), str(TESTS / "comfy" / "test_reweight_unet.py"),
           str(TESTS / "comfy" / "test_backends.py"), "-k", SELECT + " or reports_backend"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    tail = (r.stdout + r.stderr)[-3000:]
    assert r.returncode == 0, tail
    assert " passed" in r.stdout and "failed" not in r.stdout.splitlines()[-1], tail
