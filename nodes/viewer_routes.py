"""The pack's HTTP route: the viewer's files (see viewer_data) from ComfyUI's temp folder.

``GET /attention_focus/view/{name}`` (also under ``/api/...``, as ComfyUI mirrors every route) serves
``<id>.view.safetensors``, ``<id>.maps.safetensors`` (as a download) and ``<id>.<b>.jpg``; any other name
is a 404. Registered on ``server.PromptServer.instance`` when ComfyUI runs as a server; in-process
(no server) nothing is registered.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from .viewer_data import view_dir

log = logging.getLogger("attention_focus")

ROUTE = "/attention_focus/view/{name}"
_NAME = re.compile(r"^([0-9a-f]{32})\.(view\.safetensors|maps\.safetensors|\d{1,4}\.jpg)$")
_TYPES = {"view.safetensors": "application/octet-stream", "maps.safetensors": "application/octet-stream",
          "jpg": "image/jpeg"}


def resolve_name(temp_dir: str | Path, name: str) -> Path | None:
    """The file a request names, or None (a name of another form, or a file that does not exist)."""
    m = _NAME.match(name or "")
    if not m:
        return None
    path = view_dir(temp_dir) / name
    return path if path.is_file() else None


def register() -> bool:
    """Add the route to the running ComfyUI server; False when there is none (in-process use)."""
    try:
        from server import PromptServer
    except ImportError:
        return False
    server = getattr(PromptServer, "instance", None)
    if server is None:
        return False
    from aiohttp import web

    @server.routes.get(ROUTE)
    async def attention_focus_view(request):
        import folder_paths

        name = request.match_info.get("name", "")
        path = resolve_name(folder_paths.get_temp_directory(), name)
        if path is None:
            return web.Response(status=404, text="no such Attention Focus view file (ComfyUI clears its temp "
                                                 "folder at start-up: run the workflow again)")
        kind = _NAME.match(name).group(2)
        headers = {"Content-Type": _TYPES["jpg" if kind.endswith("jpg") else kind], "Cache-Control": "no-cache"}
        if kind == "maps.safetensors":
            headers["Content-Disposition"] = f'attachment; filename="attention_maps_{name[:12]}.safetensors"'
        return web.FileResponse(path, headers=headers)

    return True
