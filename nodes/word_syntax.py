"""What users type into the word widgets: comma lists with quotes, and ``word:weight`` pairs.

One splitter serves both the heat map's ``words`` (``cat, "red, hat", #5``) and the reweight node's
``weights`` (``red:2.0, wizard hat:0.3, #5:1.5, "a, b":0.5``), so their quoting rules cannot drift apart:
a comma separates items unless it is inside quotes; a quote opens only at the start of an item (an
apostrophe inside a word, as in ``don't``, is no quote).
"""

from __future__ import annotations

import math

# |weight| and any product of weights on one token stay within this (a multiplier of 1000 already
# saturates attention; larger values only overflow fp16/fp32 inside the attention kernels)
MAX_WEIGHT = 1000.0
# renormalize adds log(w) to the logits: below this a word is already removed (log w < −6.9)
MIN_RENORMALIZE = 1e-3
FORMAT = "write word:weight pairs separated by commas, e.g. 'red:2.0, wizard hat:0.5, #5:1.5'"


class WeightSpecError(ValueError):
    """A malformed weights spec; the message names the bad item and shows the format."""


def split_items(spec: str) -> list[str]:
    """Split on commas outside quotes; items keep their quotes and spaces. ValueError on an open quote."""
    parts: list[str] = []
    buf: list[str] = []
    quote: str | None = None
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
    if quote:
        raise ValueError(f"unbalanced quote {quote} in {spec!r}: close the quoted phrase")
    parts.append("".join(buf))
    return parts


def _unquote(item: str) -> tuple[str, str]:
    """(target, rest) of one stripped item: a leading quoted phrase is the target, the rest follows it."""
    if item and item[0] in "\"'":
        end = item.find(item[0], 1)
        return item[1:end].strip(), item[end + 1:].strip()
    return item, ""


def parse_targets(spec: str) -> list[str]:
    """A comma-separated word list → its items (quotes removed, empty items dropped).

    ``'cat, "red, hat", #5'`` → ``['cat', 'red, hat', '#5']``. Raises ValueError on unbalanced quotes.
    """
    out = []
    for part in split_items(spec or ""):
        target, rest = _unquote(part.strip())
        item = (target + rest).strip()
        if item:
            out.append(item)
    return out


def parse_weights(spec: str, mode: str = "scale") -> list[tuple[str, float]]:
    """Parse ``spec`` into (target, weight) pairs.

    Weights must be finite with ``|w| ≤ MAX_WEIGHT``; in ``renormalize`` mode ``w ≥ MIN_RENORMALIZE``.
    Raises WeightSpecError naming the item and the fix.
    """
    if mode not in ("scale", "renormalize"):
        raise WeightSpecError(f"unknown mode {mode!r}: use scale or renormalize")
    try:
        parts = split_items(spec or "")
    except ValueError as e:
        raise WeightSpecError(f"weights: {e}; {FORMAT}") from None
    out: list[tuple[str, float]] = []
    for part in parts:
        part = part.strip()
        if not part:
            continue
        target, rest = _unquote(part)
        if rest and not rest.startswith(":") and part[0] in "\"'":
            raise WeightSpecError(f"weights: unexpected text {rest!r} after the quoted phrase {target!r}; {FORMAT}")
        if part[0] in "\"'":
            raw = rest[1:].strip() if rest else None
        elif ":" in part:
            target, _, raw = part.rpartition(":")
            target, raw = target.strip(), raw.strip()
        else:
            target, raw = part, None
        if not target:
            raise WeightSpecError(f"weights: missing word before ':{raw}' in {spec!r}; {FORMAT}")
        if raw is None:
            raise WeightSpecError(f"weights: missing weight for {target!r} in {spec!r}; {FORMAT}")
        try:
            w = float(raw)
        except ValueError:
            raise WeightSpecError(f"weights: {raw!r} (the weight of {target!r}) is not a number; {FORMAT}") from None
        check_weight(w, f"{raw!r} (the weight of {target!r})", mode)
        out.append((target, w))
    return out


def check_weight(w: float, what: str, mode: str) -> None:
    """Raise WeightSpecError unless ``w`` is a usable weight in ``mode`` (``what`` names it)."""
    if not math.isfinite(w) or abs(w) > MAX_WEIGHT:
        raise WeightSpecError(f"weights: {what} is outside the usable range: use a weight between "
                              f"-{MAX_WEIGHT:g} and {MAX_WEIGHT:g} (e.g. 2.0 to strengthen, 0.5 to weaken)")
    if mode == "renormalize" and w < MIN_RENORMALIZE:
        raise WeightSpecError(f"weights: {what} is not allowed in renormalize mode (it adds log(w) to the "
                              f"logits, so w must be at least {MIN_RENORMALIZE:g}); use scale mode for 0 or "
                              "negative weights")
