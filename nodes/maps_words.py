"""Per-word maps from per-token maps: finding the words a user typed, and one token table for the prompts of
a branch laid end to end. Pure tensor code; no ComfyUI."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from .errors import AttentionFocusError
from .token_table import TokenRow, TokenTable, Word, WordNotFound, concat_tables, resolve
from .word_syntax import parse_targets

if TYPE_CHECKING:
    from .capture_store import MapSet, PromptInfo


def word_maps(token_maps: torch.Tensor, groups: list[tuple[int, ...]]) -> torch.Tensor:
    """(B, T, H, W) → (B, len(groups), H, W): a word's map is the mean of its tokens' maps."""
    out = []
    for g in groups:
        idx = torch.tensor([p for p in g if p < token_maps.shape[1]], dtype=torch.long)
        if idx.numel() == 0:
            raise ValueError(f"positions {g} are outside the {token_maps.shape[1]} captured tokens")
        out.append(token_maps.index_select(1, idx.to(token_maps.device)).mean(1))
    return torch.stack(out, 1)


def select_words(ms: MapSet, table: TokenTable, words: str) -> tuple[list[str], torch.Tensor]:
    """The words a user typed (empty: the prompt's words) → (names, (B, W, H, W') word maps).

    AttentionFocusError names the input when a word is not in the prompt or the maps carry no labels.
    """
    names, groups = word_groups(ms, table, words)
    return names, word_maps(ms.maps.float(), groups)


def word_groups(ms: MapSet, table: TokenTable, words: str) -> tuple[list[str], list[tuple[int, ...]]]:
    """The words a user typed (empty: the prompt's words) → (names, token positions of each)."""
    try:
        targets = parse_targets(words)
    except ValueError as e:
        raise AttentionFocusError(f"words: {e}") from None
    if targets:
        try:
            groups = [resolve(table, t) for t in targets]
        except WordNotFound as e:
            note = ms.meta.get("token_note") or next(
                (p["token_note"] for p in ms.meta.get("prompts", []) if p.get("token_note")), "")
            if table.meta.get("positional"):
                raise AttentionFocusError(
                    f"words: {', '.join(repr(t) for t in targets if not t.startswith('#'))}: these maps carry no "
                    "token labels (" + (note or "the prompt was encoded with a stock CLIPTextEncode") + "), so only "
                    "positions like '#1, #2' can be named: encode the prompt with Attention Focus Text Encode, or "
                    "connect the prompt's 'text' and 'clip' to this node") from None
            raise AttentionFocusError(f"words: {e}" + (f" (Note: {note})" if note else "")) from None
        except ValueError as e:
            raise AttentionFocusError(f"words: {e}") from None
        return targets, groups
    if table.meta.get("positional"):
        note = next((p["token_note"] for p in ms.meta.get("prompts", []) if p.get("token_note")), "")
        raise AttentionFocusError(
            "words: these maps carry no token labels" + (f" ({note})" if note else
                                                         " (the prompt was encoded with a stock CLIPTextEncode)")
            + ": list token positions like '#1, #2', or connect the prompt 'text' and 'clip' inputs, or encode "
              "with Attention Focus Text Encode")
    words_all = table.merged_words()
    if not words_all:
        raise AttentionFocusError("words: the prompt has no words to show: type the words to map")
    return [w.text for w in words_all], [w.positions for w in words_all]


def positional_segment(start: int, length: int) -> TokenTable:
    """Rows labelled by their position in the whole merged sequence (``#start`` …), one 'word' each."""
    rows = [TokenRow(i, f"#{start + i}", i, 1.0, 0, False, 0) for i in range(length)]
    words = [Word(i, f"#{start + i}", (i,)) for i in range(length)]
    return TokenTable(rows, words, encoder="positions", meta={"positional": True})


def merge_prompts(prompts: list[PromptInfo]) -> tuple[TokenTable | None, list[dict[str, Any]]]:
    """One table for the prompts of a branch laid end to end (positional rows where a prompt has no
    table), and per prompt its span, area and table note; None when no prompt has a table."""
    if len(prompts) == 1:
        p = prompts[0]
        return p.tokens, [_prompt_meta(p, 0)]
    parts, meta, pos = [], [], 0
    for p in prompts:
        parts.append(p.tokens if p.tokens is not None else positional_segment(pos, p.length))
        meta.append(_prompt_meta(p, pos))
        pos += p.length
    if all(p.tokens is None for p in prompts):
        return None, meta
    table = concat_tables(parts, encoder="+".join(dict.fromkeys(t.encoder for t in parts)),
                          text=" | ".join(p.tokens.text for p in prompts if p.tokens is not None))
    return table, meta


def _prompt_meta(p: PromptInfo, start: int) -> dict[str, Any]:
    areas = [list(r) if r is not None else None for r, _ in p.regions]
    out = {"slot": p.slot, "positions": [start, start + p.length], "areas": areas,
           "masked": any(m is not None for _, m in p.regions), "token_note": p.note}
    if p.signature is not None:
        out["signature"] = p.signature
    return out
