"""Building token tables from tokenizer output: vocabulary pieces to words.

Word rules: CLIP BPE pieces end a word with ``</w>``; sentencepiece pieces (T5, Gemma) start one with
``▁``; byte-BPE pieces (Qwen, Llama 3) start one with ``Ġ``; WordPiece pieces (BERT) continue one with
``##``. Byte-level pieces (CLIP, Qwen) and sentencepiece byte-fallback pieces (``<0xE7>``) are decoded to
UTF-8, so word texts read as typed (``café``, ``猫``). Special tokens (BOS, EOS, padding, segment id 0, chat
template tokens) belong to no word. Textual-inversion vectors (tensors, not ids) form one word per
embedding, named after it. Imports nothing from ComfyUI.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Collection, Iterable, Mapping, Sequence

from .token_table import EMBEDDING_RE, TokenRow, TokenTable, Word

SCHEMES = ("auto", "plain", "bytelevel", "sentencepiece", "wordpiece")


def _make_byte_decoder() -> dict[str, int]:
    """Inverse of the byte→character alphabet of byte-level BPE vocabularies (CLIP, GPT-2, Qwen).

    Bytes that are printable Latin-1 characters stand for themselves; the other 68 bytes (controls,
    space, NBSP, soft hyphen) are given the characters from U+0100 upwards, in byte order.
    """
    own = [b for b in range(256) if 0x21 <= b <= 0x7E or 0xA1 <= b <= 0xAC or 0xAE <= b <= 0xFF]
    table = {chr(b): b for b in own}
    moved = [b for b in range(256) if b not in table.values()]
    table.update({chr(0x100 + i): b for i, b in enumerate(moved)})
    return table


_BYTE_DECODER = _make_byte_decoder()
_SP_BYTE_RE = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def _clean_piece(piece: str, scheme: str = "plain") -> tuple[str, bool, bool]:
    """Return (text, starts_word, ends_word) for a vocabulary piece."""
    if scheme == "wordpiece":
        if piece.startswith("##"):
            return piece[2:], False, False
        return piece, True, False
    ends = scheme in ("plain", "bytelevel") and piece.endswith("</w>")
    if ends:
        piece = piece[: -len("</w>")]
    starts = False
    if scheme in ("plain", "sentencepiece") and piece.startswith("▁"):
        starts, piece = True, piece[1:]
    elif scheme in ("plain", "bytelevel") and piece.startswith("Ġ"):
        starts, piece = True, piece[1:]
    return piece, starts, ends


def _piece_bytes(text: str, scheme: str) -> bytes:
    if scheme == "bytelevel":
        try:
            return bytes(_BYTE_DECODER[c] for c in text)
        except KeyError:  # not a byte-level piece (an added token): take it as text
            return text.encode("utf-8")
    if scheme == "sentencepiece":
        m = _SP_BYTE_RE.fullmatch(text)
        if m:
            return bytes([int(m.group(1), 16)])
    return text.encode("utf-8")


def piece_text(piece: str, scheme: str = "plain") -> str:
    """The text a vocabulary piece stands for (markers removed, bytes decoded; a word-start marker
    becomes a leading space). Partial UTF-8 sequences are left out."""
    clean, starts, _ = _clean_piece(piece, scheme)
    text = _piece_bytes(clean, scheme).decode("utf-8", errors="ignore")
    return " " + text if starts and scheme != "wordpiece" else text


def _detect_scheme(chunks: Sequence[Sequence[tuple]], inv_vocab: Mapping[int, str]) -> str:
    for chunk in chunks:
        for entry in chunk:
            tok = entry[0]
            if isinstance(tok, int) or (hasattr(tok, "ndim") and tok.ndim == 0):
                piece = str(inv_vocab.get(int(tok), ""))
                if piece.endswith("</w>") or piece.startswith("Ġ"):
                    return "bytelevel"
                if piece.startswith("▁"):
                    return "sentencepiece"
    return "plain"


def _is_punctuation(text: str) -> bool:
    """Punctuation and plain symbols (``,`` ``+`` ``$``) only. Emoji and other pictographs (category So)
    are content: ``a 🐱 in Tokyo`` lists 🐱 as a word."""
    return bool(text) and all(unicodedata.category(c) in ("Pc", "Pd", "Ps", "Pe", "Pi", "Pf", "Po", "Sm", "Sc",
                                                          "Sk") for c in text)


def build_table(
    chunks: Sequence[Sequence[tuple]],
    inv_vocab: Mapping[int, str],
    *,
    special_ids: Iterable[int] = (),
    text: str = "",
    encoder: str = "",
    stream: str = "",
    special_positions: Collection[int] = (),
    scheme: str = "auto",
) -> TokenTable:
    """Build a table from tokenizer chunks of ``(token, weight, segment_id)``.

    ``special_ids`` are ids that never belong to a word (BOS, EOS, pad, chat-template markers) even if the
    tokenizer gave them a segment id; ``special_positions`` are positions (0-based over the concatenated
    chunks) that are special whatever their id (a system prompt, a template's role header). Non-integer
    tokens (embedding vectors) are grouped per segment into one word each. ``stream`` names the text
    encoder on every row and word. ``scheme`` says how pieces mark words: ``bytelevel`` (``</w>``, ``Ġ``,
    decoded as bytes), ``sentencepiece`` (``▁``, ``<0xNN>`` bytes), ``wordpiece`` (``##``), ``plain``
    (any of ``</w>``, ``▁``, ``Ġ``, text as is) or ``auto`` (guessed from the pieces).
    """
    if scheme not in SCHEMES:
        raise ValueError(f"unknown piece scheme {scheme!r}: use one of {', '.join(SCHEMES)}")
    if scheme == "auto":
        scheme = _detect_scheme(chunks, inv_vocab)
    special_ids = {int(i) for i in special_ids}
    special_positions = set(special_positions)
    embed_names = EMBEDDING_RE.findall(text)
    embed_seen: dict[int, str] = {}
    rows: list[TokenRow] = []
    words: list[Word] = []
    cur_parts: list[bytes] = []
    cur_pos: list[int] = []

    def so_far() -> str:
        return b"".join(cur_parts).decode("utf-8", errors="ignore").strip()

    def close() -> None:
        if cur_pos:
            w = b"".join(cur_parts).decode("utf-8", errors="replace").strip()
            words.append(Word(len(words), w, tuple(cur_pos), not w or _is_punctuation(w), stream))
            cur_parts.clear()
            cur_pos.clear()

    pos = 0
    cur_embed: int | None = None  # segment of the embedding word being built, if any
    prev_segment: int | None = None
    seen_word_end = False  # a '</w>' piece was seen: CLIP BPE, where every word ends with one
    for ci, chunk in enumerate(chunks):
        for entry in chunk:
            token, weight = entry[0], float(entry[1])
            segment = int(entry[2]) if len(entry) > 2 else 1
            is_id = isinstance(token, int) or (hasattr(token, "ndim") and token.ndim == 0)
            if is_id and (segment == 0 or int(token) in special_ids or pos in special_positions):
                # ComfyUI cuts a long segment at the chunk end (EOS, pad, BOS) even inside a word or an
                # embedding; such a word stays open and continues after the break (same segment).
                if cur_embed is None and not (seen_word_end and cur_pos):
                    close()
                    prev_segment = None
                rows.append(TokenRow(pos, str(inv_vocab.get(int(token), f"<{int(token)}>")), -1, weight,
                                     segment, True, ci, stream))
            elif not is_id:  # textual-inversion vector: one word per embedding
                if cur_embed != segment:
                    close()
                    if segment not in embed_seen:
                        k = len(embed_seen)
                        embed_seen[segment] = embed_names[k] if k < len(embed_names) else f"embedding{k + 1}"
                    cur_parts.append(embed_seen[segment].encode("utf-8"))
                    cur_embed = segment
                cur_pos.append(pos)
                rows.append(TokenRow(pos, f"<{embed_seen[segment]}>", len(words), weight, segment, False, ci,
                                     stream))
                prev_segment = segment
            else:
                piece = str(inv_vocab.get(int(token), f"<{int(token)}>"))
                clean, starts, ends = _clean_piece(piece, scheme)
                raw = _piece_bytes(clean, scheme)
                shown = raw.decode("utf-8", errors="ignore")
                if shown and not shown.strip():
                    starts = True  # a whitespace piece (a newline) separates words
                # sentencepiece/byte-BPE glue punctuation to the word before ('▁wizard' ','): split it off
                before = so_far() if cur_embed is None else ""
                punct_change = bool(before and shown.strip()) and \
                    _is_punctuation(shown.strip()) != _is_punctuation(before)
                if starts or cur_embed is not None or segment != prev_segment or punct_change:
                    close()
                cur_embed = None
                cur_parts.append(raw)
                cur_pos.append(pos)
                rows.append(TokenRow(pos, piece, len(words), weight, segment, False, ci, stream))
                prev_segment = segment
                if ends:
                    seen_word_end = True
                    close()
            pos += 1
    close()
    return TokenTable(rows, words, encoder=encoder, text=text)
