"""Parsing the reweight node's ``weights`` text: ``red:2.0, wizard hat:0.3, #5:1.5, "a, b":0.5``."""

from __future__ import annotations

import math

from .token_table import parse_targets


class WeightSpecError(ValueError):
    """A malformed weights spec; the message names the bad item and shows the format."""


FORMAT = "write word:weight pairs separated by commas, e.g. 'red:2.0, wizard hat:0.5, #5:1.5'"


def parse_weights(spec: str, mode: str = "scale") -> list[tuple[str, float]]:
    """Parse ``spec`` into (target, weight) pairs; weights must be > 0 in ``renormalize`` mode."""
    if mode not in ("scale", "renormalize"):
        raise WeightSpecError(f"unknown mode {mode!r}: use scale or renormalize")
    try:
        items = _split(spec or "")
    except ValueError as e:
        raise WeightSpecError(f"{e}; {FORMAT}") from None
    out: list[tuple[str, float]] = []
    for target, raw in items:
        if not target:
            raise WeightSpecError(f"missing word before ':{raw}' in {spec!r}; {FORMAT}")
        if raw is None:
            raise WeightSpecError(f"missing weight for {target!r} in {spec!r}; {FORMAT}")
        try:
            w = float(raw)
        except ValueError:
            raise WeightSpecError(f"weight {raw!r} of {target!r} is not a number; {FORMAT}") from None
        if not math.isfinite(w):
            raise WeightSpecError(f"weight {raw!r} of {target!r} must be a finite number")
        if mode == "renormalize" and w <= 0:
            raise WeightSpecError(f"weight {w} of {target!r} is not allowed in renormalize mode (it adds "
                                  "log(w) to the logits, so w must be > 0); use scale mode for 0 or negative")
        out.append((target, w))
    return out


def _split(spec: str) -> list[tuple[str, str | None]]:
    """Split into (target, weight text) honouring quotes around targets."""
    items: list[tuple[str, str | None]] = []
    for part in _split_top(spec):
        part = part.strip()
        if not part:
            continue
        if part[0] in "\"'":
            q = part[0]
            end = part.find(q, 1)
            if end < 0:
                raise ValueError(f"unbalanced quote in {part!r}")
            target, rest = part[1:end], part[end + 1:].strip()
            if rest and not rest.startswith(":"):
                raise ValueError(f"unexpected text {rest!r} after the quoted phrase")
            items.append((target.strip(), rest[1:].strip() if rest else None))
            continue
        if ":" not in part:
            items.append((part, None))
            continue
        target, _, weight = part.rpartition(":")
        items.append((target.strip(), weight.strip()))
    return items


def _split_top(spec: str) -> list[str]:
    """Split on commas outside quotes (the quote check reuses the word-list splitter's rules)."""
    parse_targets(spec)  # raises on unbalanced quotes
    parts, buf, quote = [], [], None
    for ch in spec:
        if quote:
            buf.append(ch)
            if ch == quote:
                quote = None
        elif ch in "\"'" and not "".join(buf).strip():
            quote = ch
            buf.append(ch)
        elif ch == ",":
            parts.append("".join(buf))
            buf = []
        else:
            buf.append(ch)
    parts.append("".join(buf))
    return parts
