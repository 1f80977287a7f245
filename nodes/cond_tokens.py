"""Keeping token tables true to the conditioning they label, whatever nodes sit between encoder and sampler.

Attention Focus Text Encode puts the prompt's token table into the conditioning dict and registers the
content of the tensor it labels (a hash of its bytes). At the start of a run the table of every prompt is
checked against the tensor the sampler really gets:

- same content: the table is used as it is;
- a concatenation along tokens of registered encodings (ConditioningConcat, also chained, also with the
  other side from another Text Encode): the tables are joined in that order, so ``cat`` keeps position 1 and
  ``hat`` of a second 77-token prompt becomes 80;
- extra tokens after registered encodings that no text encoder of ours made (StyleModelApply appends image
  tokens): those positions are labelled by position (``#N``);
- anything else (ConditioningAverage, ConditioningZeroOut, a node that edits token vectors): the table no
  longer describes the tokens, so no table, with a note saying the conditioning was changed after encoding
  and what to do. Word lookups then fail with that note; ``#N`` positions keep working.

Only tensors are compared, never the graph: this works for any node, stock or not.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

import torch

from .token_table import TokenRow, TokenTable, Word, concat_tables

_MAX_ENTRIES = 512
_REGISTRY: OrderedDict[str, TokenTable] = OrderedDict()
_FIRST_ROW: dict[str, set[int]] = {}  # hash of an encoding's first token row → lengths of such encodings
CHANGED = ("the conditioning was changed after encoding (by a node such as ConditioningAverage or "
           "ConditioningZeroOut that edits the token vectors), so its words can no longer be located")
CHANGED_FIX = ("address tokens by position (#N), or connect the output of Attention Focus Text Encode to the "
               "sampler without such a node in between")


def content_hash(t: torch.Tensor) -> str:
    """Hash of a (B, L, C) conditioning tensor's dtype, shape and bytes."""
    raw = t.detach().cpu().contiguous()
    h = hashlib.blake2b(f"{raw.dtype}{tuple(raw.shape)}".encode(), digest_size=16)
    h.update(raw.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def register(cond: torch.Tensor, table: TokenTable) -> TokenTable:
    """Remember that ``table`` labels the tensor ``cond``; returns the table with the hash in its meta."""
    key = content_hash(cond)
    table.meta["content_hash"] = key
    _REGISTRY[key] = table
    _FIRST_ROW.setdefault(content_hash(cond[:, :1]), set()).add(int(cond.shape[1]))
    _REGISTRY.move_to_end(key)
    while len(_REGISTRY) > _MAX_ENTRIES:
        _REGISTRY.popitem(last=False)
    return table


def _segments(ctx: torch.Tensor) -> list[TokenTable | int] | None:
    """Split ``ctx`` along tokens into registered encodings (greedy, longest first) and runs of unknown
    tokens (their length); None when no registered encoding is found at all."""
    n = int(ctx.shape[1])
    out: list[TokenTable | int] = []
    pos = 0
    found = False
    while pos < n:
        for length in sorted(_FIRST_ROW.get(content_hash(ctx[:, pos:pos + 1]), ()), reverse=True):
            if pos + length <= n:
                table = _REGISTRY.get(content_hash(ctx[:, pos:pos + length]))
                if table is not None:
                    out.append(table)
                    pos += length
                    found = True
                    break
        else:
            if out and isinstance(out[-1], int):
                out[-1] += 1
            else:
                out.append(1)
            pos += 1
    return out if found else None


def _unknown(start: int, length: int) -> TokenTable:
    """Rows for tokens no text encoder of ours made, labelled by their global position (left out of default
    word lists; ``#N`` still addresses them)."""
    rows = [TokenRow(i, f"#{start + i}", i, 1.0, 0, False, 0, "other") for i in range(length)]
    words = [Word(i, f"#{start + i}", (i,), True, "other") for i in range(length)]
    return TokenTable(rows, words, encoder="positions")


def tokens_for_conditioning(ctx, table, length: int) -> tuple[TokenTable | None, str]:
    """The token table that fits the conditioning tensor ``ctx`` (``length``: the prompt positions the model
    sees, all text inputs included), and a note when it is not the one that came with it. See the module
    docstring. Tables that also cover a second text input (HunyuanDiT's mT5, HiDream's Llama) are checked but
    not followed through edits."""
    if not isinstance(table, TokenTable):
        return None, ""
    key = table.meta.get("content_hash")
    n_ctx = table.context_length()
    if not isinstance(ctx, torch.Tensor) or ctx.ndim != 3 or key is None:  # no hash: length check only
        return (table, "") if len(table) == length else (None, _mismatch(table, length))
    if int(ctx.shape[1]) == n_ctx and content_hash(ctx) == key:
        return (table, "") if len(table) == length else (None, _mismatch(table, length))
    parts = _segments(ctx) if n_ctx == len(table) else None
    if not parts or not any(isinstance(p, TokenTable) and p.meta.get("content_hash") == key for p in parts):
        return None, f"{CHANGED}: {CHANGED_FIX}"
    tables, pos, extra = [], 0, []
    for p in parts:
        if isinstance(p, int):
            tables.append(_unknown(pos, p))
            extra.append(f"#{pos}-{pos + p - 1}")
            pos += p
        else:
            tables.append(p)
            pos += len(p)
    meta = {k: v for k, v in table.meta.items() if k not in ("content_hash", "context_length")}
    merged = concat_tables(tables, encoder=table.encoder, text=" + ".join(t.text for t in tables if t.text),
                           meta=meta)
    if len(merged) != length:
        return None, _mismatch(merged, length)
    note = ""
    if extra:
        note = (f"positions {', '.join(extra)} of the conditioning come from a node that is no text encoder "
                "(e.g. StyleModelApply); they are labelled by position")
    return merged, note


def _mismatch(table: TokenTable, length: int) -> str:
    return (f"the token table ({len(table)} positions) does not match the conditioning ({length}); {CHANGED_FIX}")
