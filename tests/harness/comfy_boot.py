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
    from harness.test_nodes import NODES as test_nodes

    nodes.NODE_CLASS_MAPPINGS.update(test_nodes)  # test-only graph shapes (interrupts, multi-pass, expansion)
    import comfy.ldm.modules.attention as attention

    _state = types.SimpleNamespace(
        root=root, base=base, nodes=nodes, execution=execution, folder_paths=folder_paths,
        pack=pack, run=run_prompt, backend=attention.optimized_attention.__name__,
    )
    return _state


class Session:
    """One ComfyUI PromptExecutor kept across prompts, as the server keeps it: node outputs are cached
    between ``run`` calls the way ``cache`` says (``classic``, ``lru``, ``ram`` = RAM pressure, ``none``)."""

    def __init__(self, cache: str = "classic", lru: int = 0, ram: float = 4.0) -> None:
        st = boot()
        kinds = {"classic": st.execution.CacheType.CLASSIC, "lru": st.execution.CacheType.LRU,
                 "ram": st.execution.CacheType.RAM_PRESSURE, "none": st.execution.CacheType.NONE}
        self.server = _Server()
        self.executor = st.execution.PromptExecutor(self.server, cache_type=kinds[cache],
                                                    cache_args=_CacheArgs(lru=lru, ram=ram))
        self.execution = st.execution

    def run(self, prompt: dict, *, expect_error: bool = False) -> dict:
        """Validate and execute ``prompt``; as ``run_prompt``, plus "executed": the node ids that ran."""
        pid = str(uuid.uuid4())
        valid = asyncio.run(self.execution.validate_prompt(pid, prompt, None))
        if not valid[0]:
            if expect_error:
                return {"validation": valid[1], "node_errors": valid[3], "error": valid[1]}
            raise AssertionError(f"prompt did not validate: {valid[1]} {valid[3]}")
        start = len(self.server.messages)
        ex = self.executor
        ex.execute(prompt, pid, {"client_id": "attention-focus-tests"}, valid[2])
        error = next((d for e, d in ex.status_messages if e == "execution_error"), None)
        if error is not None and not expect_error:
            raise AssertionError(f"execution failed: {error.get('exception_message')}\n"
                                 + "".join(error.get("traceback", [])))
        executed = [d.get("node") for e, d in self.server.messages[start:]
                    if e == "executing" and isinstance(d, dict) and d.get("node") is not None]
        return {"outputs": ex.history_result.get("outputs", {}) if ex.success else {},
                "messages": ex.status_messages, "executor": ex, "error": error, "executed": executed,
                "prompt_id": pid}


def run_prompt(prompt: dict, *, expect_error: bool = False) -> dict:
    """Validate and execute an API-format prompt with a fresh ComfyUI executor (nothing cached).

    Returns {"outputs": ui outputs per node, "messages": [...], "executor": PromptExecutor,
    "error": execution_error data or None}. Validation failures raise AssertionError with ComfyUI's
    node_errors unless ``expect_error`` (then they are returned under "validation").
    """
    return Session().run(prompt, expect_error=expect_error)
