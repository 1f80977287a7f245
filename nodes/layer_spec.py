"""Layer selection syntax shared by the capture and reweight nodes, and the step-window check.

A layer is identified by ``(block, index, depth)`` plus its resolution ``level`` (0 = latent size,
1 = half, ...). UNet blocks are ``input``/``middle``/``output`` (aliases ``down``/``mid``/``up``);
DiT blocks are ``double`` (two-stream joint blocks: SD3, Flux, AuraFlow, Qwen-Image, HiDream), ``single``
(one-stream joint blocks: Flux, AuraFlow, HiDream, Lumina 2) or ``block`` (blocks with a separate
cross-attention: Wan, HunyuanDiT); index = block number, depth 0, level 1 (the patch grid).

Spec grammar (comma-separated items, whitespace ignored, case-insensitive)::

    all                      every cross-attention layer (the default; also an empty spec)
    input | middle | output  every layer of that block kind
    input.4                  input block 4 (all its transformer depths)
    output.3-5               output blocks 3 to 5
    output.0.2-4             output block 0, transformer depths 2 to 4 (SDXL)
    L0 | L1-2                resolution levels (L0 = the finest, e.g. 64x64 for SD1.5 at 512 px)
    !middle  !L3  !input.1   exclude (applied after the includes; with only excludes, from all)

Example: ``output, !L0`` = decoder layers except the finest level.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import NamedTuple
from collections.abc import Iterable

KIND_ALIASES = {
    "input": "input", "in": "input", "down": "input",
    "middle": "middle", "mid": "middle",
    "output": "output", "out": "output", "up": "output",
    "double": "double", "joint": "double",
    "single": "single",
    "block": "block", "blocks": "block",
}


class LayerKey(NamedTuple):
    """A cross-attention layer: block kind, block index, depth inside the block, resolution level."""

    block: str
    index: int
    depth: int
    level: int

    def name(self) -> str:
        return f"{self.block}.{self.index}.{self.depth}"


class LayerSpecError(ValueError):
    """A malformed layer spec; the message shows the grammar."""


@dataclass(frozen=True)
class _Item:
    exclude: bool
    kind: str | None  # None = any kind (level item or "all")
    index: tuple[int, int] | None
    depth: tuple[int, int] | None
    level: tuple[int, int] | None

    def matches(self, key: LayerKey) -> bool:
        if self.kind is not None and key.block != self.kind:
            return False
        for rng, v in ((self.index, key.index), (self.depth, key.depth), (self.level, key.level)):
            if rng is not None and not rng[0] <= v <= rng[1]:
                return False
        return True


HELP = ("Layer spec: comma-separated items such as 'all', 'input', 'middle', 'output', 'output.3-5', "
        "'input.7.0', 'L0', 'L1-2', 'double.0-9', 'single', 'block.2-5', and '!item' to exclude.")


def _range(text: str, what: str, spec: str) -> tuple[int, int]:
    m = re.fullmatch(r"(\d+)(?:-(\d+))?", text)
    if not m:
        raise LayerSpecError(f"bad {what} {text!r} in layer spec {spec!r}. {HELP}")
    lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
    if lo > hi:
        raise LayerSpecError(f"empty range {text!r} in layer spec {spec!r}: write low-high")
    return lo, hi


def parse_layer_spec(spec: str) -> list[_Item]:
    """Parse a spec; raises LayerSpecError naming the bad item."""
    items: list[_Item] = []
    for raw in (spec or "").split(","):
        tok = raw.strip().lower().replace(" ", "")
        if not tok:
            continue
        exclude = tok.startswith("!")
        if exclude:
            tok = tok[1:]
        if tok in ("all", "*"):
            items.append(_Item(exclude, None, None, None, None))
            continue
        m = re.fullmatch(r"l(\S+)", tok)
        if m and tok[1:2].isdigit():
            items.append(_Item(exclude, None, None, None, _range(m.group(1), "level", spec)))
            continue
        parts = tok.split(".")
        if parts[0] not in KIND_ALIASES or len(parts) > 3:
            raise LayerSpecError(f"unknown layer item {raw.strip()!r} in {spec!r}. {HELP}")
        index = _range(parts[1], "block index", spec) if len(parts) > 1 else None
        depth = _range(parts[2], "depth", spec) if len(parts) > 2 else None
        items.append(_Item(exclude, KIND_ALIASES[parts[0]], index, depth, None))
    return items


def select_layers(spec: str, layers: Iterable[LayerKey]) -> list[LayerKey]:
    """The layers of ``layers`` that ``spec`` selects, in the given order."""
    items = parse_layer_spec(spec)
    inc = [i for i in items if not i.exclude]
    exc = [i for i in items if i.exclude]
    out = []
    for key in layers:
        if inc and not any(i.matches(key) for i in inc):
            continue
        if any(i.matches(key) for i in exc):
            continue
        out.append(key)
    return out


def describe_layers(layers: Iterable[LayerKey]) -> str:
    """Compact human summary, e.g. 'input.1.0 (L0), middle.0.0 (L2)'."""
    return ", ".join(f"{k.name()} (L{k.level})" for k in layers)


def check_step_window(start_percent: float, end_percent: float) -> None:
    """Validate a schedule window given as fractions 0..1 of the sampling schedule."""
    for name, v in (("start_percent", start_percent), ("end_percent", end_percent)):
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"{name}={v} is outside 0..1: give the window as a fraction of the schedule")
    if start_percent > end_percent:
        raise ValueError(f"start_percent={start_percent} is after end_percent={end_percent}: "
                         "the window must start before it ends")


def level_of(size: int, latent: int) -> int:
    """Resolution level of a grid side ``size`` for a latent side ``latent`` (ceil-halving per level)."""
    level, s = 0, latent
    while s > size and level < 16:
        s = -(-s // 2)
        level += 1
    return level
