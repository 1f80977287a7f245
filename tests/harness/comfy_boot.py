"""Boot a real ComfyUI in this process (no server) and run prompts through its own executor.

Import order follows ComfyUI's main.py: options and CLI args first, then folder_paths and
model_management, then ``utils.*`` before ``nodes`` (afterwards bare ``utils`` is comfy/utils.py).
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import sys
import tempfile
import types
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("ATTENTION_FOCUS_CACHE", Path.home() / ".cache" / "attention-focus"))
_state: types.SimpleNamespace | None = None


def register_package() -> types.ModuleType:
    """Make the repository importable as ``attention_focus`` without running its ``__init__``.

    The pure modules (``attention_focus.nodes.*``) then import without ComfyUI; ``boot()`` later
    executes ``__init__.py`` into this same module object so tests and ComfyUI share one copy.
    """
    pkg = sys.modules.get("attention_focus")
    if pkg is None:
        pkg = types.ModuleType("attention_focus")
        pkg.__path__ = [str(REPO)]
        pkg.__file__ = str(REPO / "__init__.py")
        pkg.__package__ = "attention_focus"
        sys.modules["attention_focus"] = pkg
    return pkg


def comfyui_path() -> Path:
    """The ComfyUI tree under test: $COMFYUI_PATH, else the copy made by scripts/setup_env.sh."""
    path = Path(os.environ.get("COMFYUI_PATH", CACHE / "comfyui-0.3.75"))
    if not (path / "main.py").is_file():
        raise RuntimeError(f"No ComfyUI at {path}: run `. scripts/setup_env.sh` or set COMFYUI_PATH")
    return path


class _Server:
    """The few attributes PromptExecutor needs from a server; records the messages it sends."""

    def __init__(self) -> None:
        self.client_id = None
        self.last_node_id = None
        self.last_prompt_id = None
        self.messages: list[tuple[str, Any]] = []

    def send_sync(self, event, data, sid=None) -> None:
        self.messages.append((event, data))


class _CacheArgs(dict):
    """``cache_args`` for PromptExecutor: lru 0, ram 0, and 0 for any key a newer ComfyUI reads that this harness
    does not know (0.33.0's main.py passes ``ram_inactive`` too; execute reads it as ``cache_args[...]``).
    With the classic cache (cache_type False) none of them changes what is cached."""

    def __missing__(self, key):
        return 0


def boot() -> types.SimpleNamespace:
    """Import ComfyUI once per process and register the pack's nodes; returns handles for tests."""
    global _state
    if _state is not None:
        return _state
    root = comfyui_path()
    base = Path(tempfile.mkdtemp(prefix="af-comfy-"))
    for sub in ("custom_nodes", "output", "input", "temp", "models/checkpoints"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(root))
    import comfy.options

    comfy.options.enable_args_parsing(False)
    import comfy.cli_args as cli

    cli.args.cpu = True
    cli.args.disable_api_nodes = True
    cli.args.base_directory = str(base)
    cli.args.output_directory = str(base / "output")
    cli.args.temp_directory = str(base / "temp")
    cli.args.database_url = "sqlite:///:memory:"
    backend = os.environ.get("AF_ATTENTION_BACKEND", "")
    if backend == "pytorch":
        cli.args.use_pytorch_cross_attention = True
    elif backend == "split":
        cli.args.use_split_cross_attention = True
    import folder_paths

    folder_paths.set_output_directory(str(base / "output"))
    folder_paths.set_temp_directory(str(base / "temp"))
    folder_paths.set_input_directory(str(base / "input"))
    import comfy.model_management  # noqa: F401
    import utils.extra_config  # noqa: F401
    import utils.install_util  # noqa: F401
    import execution
    import nodes

    import logging

    root_logger = logging.getLogger()
    level = root_logger.level
    root_logger.setLevel(logging.ERROR)  # ComfyUI's audio nodes need torchaudio, which tests do not use
    try:
        asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
    finally:
        root_logger.setLevel(level)
    pack = register_package()
    spec = importlib.util.spec_from_file_location(
        "attention_focus", REPO / "__init__.py", submodule_search_locations=[str(REPO)]
    )
    spec.loader.exec_module(pack)
    nodes.NODE_CLASS_MAPPINGS.update(pack.NODE_CLASS_MAPPINGS)
    nodes.NODE_DISPLAY_NAME_MAPPINGS.update(pack.NODE_DISPLAY_NAME_MAPPINGS)
    import comfy.ldm.modules.attention as attention

    _state = types.SimpleNamespace(
        root=root, base=base, nodes=nodes, execution=execution, folder_paths=folder_paths,
        pack=pack, run=run_prompt, backend=attention.optimized_attention.__name__,
    )
    return _state


def run_prompt(prompt: dict, *, expect_error: bool = False) -> dict:
    """Validate and execute an API-format prompt with ComfyUI's own executor.

    Returns {"outputs": ui outputs per node, "messages": [...], "executor": PromptExecutor,
    "error": execution_error data or None}. Validation failures raise AssertionError with ComfyUI's
    node_errors unless ``expect_error`` (then they are returned under "validation").
    """
    st = boot()
    pid = str(uuid.uuid4())
    valid = asyncio.run(st.execution.validate_prompt(pid, prompt, None))
    if not valid[0]:
        if expect_error:
            return {"validation": valid[1], "node_errors": valid[3], "error": valid[1]}
        raise AssertionError(f"prompt did not validate: {valid[1]} {valid[3]}")
    server = _Server()
    ex = st.execution.PromptExecutor(server, cache_type=False, cache_args=_CacheArgs(lru=0, ram=0))
    ex.execute(prompt, pid, {}, valid[2])
    error = next((d for e, d in ex.status_messages if e == "execution_error"), None)
    if error is not None and not expect_error:
        raise AssertionError(f"execution failed: {error.get('exception_message')}\n"
                             + "".join(error.get("traceback", [])))
    return {"outputs": ex.history_result.get("outputs", {}) if ex.success else {},
            "messages": ex.status_messages, "executor": ex, "error": error}
