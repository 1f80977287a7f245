"""Start a real ComfyUI server (its own main.py) on loopback with the pack installed, and talk to it."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from collections.abc import Iterator
from typing import Any

REPO = Path(__file__).resolve().parents[2]
PACK_NAME = "attention_focus"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare_base(base: Path) -> Path:
    """A ComfyUI base directory whose custom_nodes/attention_focus links to this repository."""
    for sub in ("custom_nodes", "models/checkpoints", "input", "output", "temp", "user"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    link = base / "custom_nodes" / PACK_NAME
    if link.is_symlink() or link.exists():
        if link.resolve() != REPO:
            link.unlink()
    if not link.exists():
        link.symlink_to(REPO, target_is_directory=True)
    return base


class ComfyServer:
    """``with ComfyServer(base) as srv: srv.queue(prompt)`` — a ComfyUI subprocess on 127.0.0.1."""

    def __init__(self, base: Path, comfyui: Path, python: str = sys.executable, extra_args=(),
                 log_path: Path | None = None) -> None:
        self.base, self.comfyui, self.python = Path(base), Path(comfyui), python
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.extra_args = list(extra_args)
        self.log_path = log_path or self.base / "comfyui.log"
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> ComfyServer:
        prepare_base(self.base)
        cmd = [self.python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
               "--base-directory", str(self.base), "--output-directory", str(self.base / "output"),
               "--temp-directory", str(self.base / "temp"), "--input-directory", str(self.base / "input"),
               "--database-url", "sqlite:///:memory:", "--disable-api-nodes", "--disable-auto-launch",
               "--preview-method", "none", *self.extra_args]
        self._log = open(self.log_path, "w")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(cmd, cwd=self.comfyui, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.proc.returncode}:\n{self.log()[-4000:]}")
            try:
                self.get("/object_info/KSampler")
                return self
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.5)
        self.__exit__(None, None, None)
        raise RuntimeError(f"ComfyUI did not become ready:\n{self.log()[-4000:]}")

    def __exit__(self, *exc) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if getattr(self, "_log", None):
            self._log.close()

    def log(self) -> str:
        try:
            return Path(self.log_path).read_text(errors="replace")
        except OSError:
            return ""

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=30) as r:
            return json.loads(r.read())

    def post(self, path: str, body: Any) -> tuple[int, Any]:
        req = urllib.request.Request(self.url + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")

    def queue(self, prompt: dict) -> str:
        status, body = self.post("/prompt", {"prompt": prompt})
        if status != 200:
            raise RuntimeError(f"ComfyUI refused the prompt (HTTP {status}): {json.dumps(body, indent=1)}")
        return body["prompt_id"]

    def wait(self, prompt_id: str, timeout: float = 300) -> dict:
        """Wait for a queued prompt; returns its /history entry (status + outputs)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            hist = self.get(f"/history/{prompt_id}")
            if prompt_id in hist and hist[prompt_id].get("status", {}).get("completed") is not None:
                if hist[prompt_id]["status"].get("status_str") in ("success", "error"):
                    return hist[prompt_id]
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI died:\n{self.log()[-4000:]}")
            time.sleep(0.3)
        raise TimeoutError(f"prompt {prompt_id} did not finish in {timeout}s")


@contextlib.contextmanager
def running_server(prefix: str, models: dict[str, list[Path]] | None = None,
                   extra_args: tuple[str, ...] | list[str] = ()) -> Iterator[ComfyServer]:
    """A ComfyServer on a fresh base folder whose checkpoints hold the random SD1.5 fixture.

    ``models`` links more files into model folders: ``{"diffusion_models": [path], ...}``;
    ``extra_args`` go to main.py (e.g. ``["--cache-lru", "8"]`` or ``--front-end-root <static folder>``).
    """
    from harness.comfy_boot import comfyui_path
    from harness.fixtures import sd15_checkpoint

    ckpt = sd15_checkpoint()
    base = Path(tempfile.mkdtemp(prefix=prefix))
    links = {"checkpoints": [ckpt]}
    for folder, paths in (models or {}).items():
        links.setdefault(folder, []).extend(paths)
    for folder, paths in links.items():
        (base / "models" / folder).mkdir(parents=True, exist_ok=True)
        for path in paths:
            (base / "models" / folder / path.name).symlink_to(path)
    with ComfyServer(base, comfyui_path(), python=sys.executable, extra_args=extra_args) as srv:
        srv.ckpt = ckpt.name
        yield srv
