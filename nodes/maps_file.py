"""Saving and loading aggregated attention maps as .safetensors (float32 tensor + JSON metadata).

File layout: one tensor ``maps`` of shape (batch, tokens, H, W), float32; the safetensors
metadata key ``attention_focus`` holds one JSON object (format, version, model family, sizes, steps,
layers, token table). No pickle anywhere. Optional tensors, each described by the metadata entry of the same
name (older readers ignore them): ``history`` (frames, layer groups, batch, kept tokens, h, w), ``frames``
(batch, video frames, tokens, H, W) and ``influence`` (batch, words, H, W).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import torch

FORMAT = "attention-focus-maps"
VERSION = 1
META_KEY = "attention_focus"
EXTRA_DIMS = {"history": 6, "frames": 5, "influence": 4}  # optional tensors and their number of dimensions
_BATCH_DIM = {"history": 2, "frames": 0, "influence": 0}


class MapsFileError(ValueError):
    """A file that is not a valid Attention Focus maps file; the message says why and what to do."""


def save_maps(path: str | Path, maps: torch.Tensor, meta: dict[str, Any],
              extra: dict[str, torch.Tensor] | None = None) -> None:
    """Write ``maps`` (float32, 4-D), the optional ``extra`` tensors and ``meta`` (JSON-serialisable) to ``path``."""
    from safetensors.torch import save_file

    if maps.ndim != 4:
        raise ValueError(f"maps must be (batch, tokens, H, W), got shape {tuple(maps.shape)}")
    tensors = {"maps": maps.detach().float().contiguous().cpu()}
    for name, t in (extra or {}).items():
        if EXTRA_DIMS.get(name) != t.ndim:
            raise ValueError(f"unknown extra tensor {name!r} of shape {tuple(t.shape)}")
        tensors[name] = t.detach().float().contiguous().cpu()
    meta = {"format": FORMAT, "version": VERSION, **meta}
    tmp = Path(f"{path}.tmp")
    save_file(tensors, str(tmp), metadata={META_KEY: json.dumps(meta)})
    os.replace(tmp, path)


def load_maps(path: str | Path) -> tuple[torch.Tensor, dict[str, Any]]:
    """Read and validate a maps file; raises MapsFileError with the reason and the fix."""
    maps, meta, _ = load_maps_file(path)
    return maps, meta


def load_maps_file(path: str | Path) -> tuple[torch.Tensor, dict[str, Any], dict[str, torch.Tensor]]:
    """Read and validate a maps file: (maps, meta, optional tensors); MapsFileError with the reason and the fix."""
    from safetensors import safe_open

    path = Path(path)
    name = path.name
    if not path.is_file():
        raise MapsFileError(f"maps file {name!r} does not exist: save maps with Attention Focus Save Maps first")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            keys = list(f.keys())
            maps = f.get_tensor("maps") if "maps" in keys else None
            extra = {k: f.get_tensor(k) for k in keys if k in EXTRA_DIMS}
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise MapsFileError(f"{name!r} is not a readable safetensors file ({type(e).__name__}): choose a file "
                            "written by Attention Focus Save Maps") from None
    if META_KEY not in header:
        raise MapsFileError(f"{name!r} is a safetensors file but not an Attention Focus maps file (no "
                            f"'{META_KEY}' metadata; is it a model checkpoint?): choose a file written by "
                            "Attention Focus Save Maps")
    try:
        meta = json.loads(header[META_KEY])
    except json.JSONDecodeError as e:
        raise MapsFileError(f"{name!r} has damaged metadata (bad JSON: {e.msg}); save the maps again") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise MapsFileError(f"{name!r} has format {meta.get('format') if isinstance(meta, dict) else None!r}, "
                            f"not {FORMAT!r}: choose a file written by Attention Focus Save Maps")
    _check_fields(name, meta)
    if meta.get("version", 0) > VERSION:
        raise MapsFileError(f"{name!r} was written by a newer Attention Focus (file version "
                            f"{meta.get('version')}, this one reads {VERSION}): update the node pack")
    if maps is None:
        raise MapsFileError(f"{name!r} has no 'maps' tensor; save the maps again")
    if maps.ndim != 4 or not maps.is_floating_point():
        raise MapsFileError(f"{name!r}: 'maps' must be a 4-D float tensor, found {maps.dtype} "
                            f"{tuple(maps.shape)}; save the maps again")
    tokens = meta.get("tokens")
    if tokens and len(tokens) != maps.shape[1]:
        raise MapsFileError(f"{name!r}: the token table has {len(tokens)} entries but the maps have "
                            f"{maps.shape[1]} tokens; the file is inconsistent, save the maps again")
    for key, t in extra.items():
        if t.ndim != EXTRA_DIMS[key] or not t.is_floating_point() or not isinstance(meta.get(key), dict) \
                or t.shape[_BATCH_DIM[key]] != maps.shape[0]:
            raise MapsFileError(f"{name!r}: its {key!r} tensor {tuple(t.shape)} does not fit the maps "
                                f"{tuple(maps.shape)} or has no description; the file is damaged, save the maps again")
    return maps.float(), meta, {k: t.float() for k, t in extra.items()}


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _ints(n: int | None):
    return lambda v: isinstance(v, list) and (n is None or len(v) == n) and all(_is_int(x) and x >= 0 for x in v)


# metadata fields this reader uses: name → (check, what it must be)
_FIELDS = {
    "version": (lambda v: _is_int(v) and v >= 0, "a whole number"),
    "model_family": (lambda v: isinstance(v, str), "a text"),
    "branch": (lambda v: isinstance(v, str), "a text"),
    "head_reduction": (lambda v: isinstance(v, str), "a text"),
    "softmax": (lambda v: isinstance(v, str), "a text"),
    "steps": (lambda v: _is_int(v) and v >= 0, "a whole number"),
    "latent_size": (_ints(2), "a list of two whole numbers"),
    "image_size": (_ints(2), "a list of two whole numbers"),
    "layers": (lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v), "a list of texts"),
    "levels": (_ints(None), "a list of whole numbers"),
    "tokens": (lambda v: isinstance(v, list) and all(isinstance(x, dict) for x in v), "a list of token rows"),
    "token_table": (lambda v: v is None or isinstance(v, dict), "a token table object or null"),
    "prompts": (lambda v: isinstance(v, list) and all(isinstance(x, dict) for x in v), "a list of objects"),
}


def _check_fields(name: str, meta: dict[str, Any]) -> None:
    for key, (ok, what) in _FIELDS.items():
        if key in meta and not ok(meta[key]):
            raise MapsFileError(f"{name!r}: metadata field {key!r} is {json.dumps(meta[key])[:60]}, but must be "
                                f"{what}; the file is damaged or was edited: save the maps again")


def maps_from_file(maps: torch.Tensor, meta: dict[str, Any], extra: dict[str, torch.Tensor] | None = None):
    """A MapSet from a loaded file (the token table rebuilt; MapsFileError if it is damaged)."""
    from .capture_store import MapSet
    from .token_table import TokenTable

    table = meta.get("token_table")
    tokens = None
    if table:
        try:
            tokens = TokenTable.from_json(table)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise MapsFileError(f"the file's token table is damaged ({type(e).__name__}: {e}); save the maps "
                                "again") from None
        if len(tokens) != maps.shape[1]:
            raise MapsFileError(f"the file's token table has {len(tokens)} rows but the maps have {maps.shape[1]} "
                                "tokens; save the maps again")
    return MapSet(maps, tokens, meta, dict(extra or {}))


# longest file name most file systems allow (bytes); the counter and suffix take the rest
_NAME_MAX = 255
_ALLOWED = re.compile(r"[^A-Za-z0-9 _.\-]")


def safe_output_path(output_dir: str | Path, filename_prefix: str, suffix: str = ".safetensors") -> Path:
    """A fresh ``<prefix>_00001_<suffix>`` path inside ``output_dir``; the prefix can never escape it."""
    root = Path(output_dir).resolve()
    raw = (filename_prefix or "").replace("\x00", "")
    if "\\" in raw or re.match(r"^[A-Za-z]:", raw) or raw.startswith(("/", "~")):
        raise ValueError(f"filename_prefix {filename_prefix!r} must be a relative name such as 'attention/maps' "
                         "(no drive, no absolute path, no backslashes)")
    parts = []
    for part in raw.split("/"):
        part = _ALLOWED.sub("_", part).strip(" ")
        if part in ("", ".", ".."):
            if part == "..":
                raise ValueError(f"filename_prefix {filename_prefix!r} may not contain '..'")
            continue
        parts.append(part)
    if not parts:
        raise ValueError(f"filename_prefix {filename_prefix!r} has no usable name; use e.g. 'attention_focus/maps'")
    for i, part in enumerate(parts):
        if len(part.encode("utf-8")) + (len(suffix) + 7 if i == len(parts) - 1 else 0) > _NAME_MAX:
            raise ValueError(f"filename_prefix: the name {part[:40]!r}… is {len(part)} characters long; file and "
                             f"folder names may have at most {_NAME_MAX - len(suffix) - 7} characters: shorten it")
    folder = root.joinpath(*parts[:-1])
    if not folder.resolve().is_relative_to(root):
        raise ValueError(f"filename_prefix {filename_prefix!r} leads outside the output folder")
    folder.mkdir(parents=True, exist_ok=True)
    base = parts[-1]
    pat = re.compile(re.escape(base) + r"_(\d{5})_" + re.escape(suffix) + "$")
    nums = [int(m.group(1)) for p in folder.iterdir() if (m := pat.match(p.name))]
    path = folder / f"{base}_{max(nums, default=0) + 1:05d}_{suffix}"
    if not path.resolve().is_relative_to(root):
        raise ValueError(f"filename_prefix {filename_prefix!r} leads outside the output folder")
    return path


def list_maps_files(output_dir: str | Path) -> list[str]:
    """Relative paths (with '/') of the .safetensors files under ``output_dir``, sorted."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*.safetensors") if p.is_file())
