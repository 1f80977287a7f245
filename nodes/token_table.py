"""Token tables: which prompt word sits at which position of the conditioning sequence.

A table is built from a tokenizer's output (``clip.tokenize(text, return_word_ids=True)``: chunks of
``(token, weight, segment_id)``) plus the tokenizer's ``{id: piece}`` vocabulary. It knows nothing of
ComfyUI; it is plain data that travels inside a CONDITIONING dict and inside saved maps files.

Word rules: CLIP BPE pieces end a word with ``</w>``; sentencepiece pieces (T5, Gemma) start one with
``▁``; byte-BPE pieces (Qwen) start one with ``Ġ``. Special tokens (BOS, EOS, padding, segment id 0) belong
to no word. Textual-inversion vectors (tensors, not ids) form one word per embedding, named after it.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import asdict, dataclass, field
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

# ":" ends the name: in "(embedding:name:1.2)" the ":1.2" is the weight
EMBEDDING_RE = re.compile(r"embedding:([^\s,:()\[\]]+)")


@dataclass(frozen=True)
class TokenRow:
    """One position of the conditioning sequence."""

    pos: int
    piece: str
    word_index: int  # -1 for special tokens
    weight: float
    segment: int  # tokenizer's word_id (weighted segment / embedding), 0 for specials
    special: bool
    chunk: int


@dataclass(frozen=True)
class Word:
    """A word of the prompt: its text and the positions of its tokens."""

    index: int
    text: str
    positions: tuple[int, ...]
    punctuation: bool = False


@dataclass
class TokenTable:
    """Position → token/word table of one prompt, for one text encoder."""

    rows: list[TokenRow]
    words: list[Word]
    encoder: str = ""
    text: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.rows)

    def word_texts(self, include_punctuation: bool = False) -> list[str]:
        """The prompt's words in order (punctuation-only words left out unless asked)."""
        return [w.text for w in self.words if include_punctuation or not w.punctuation]

    def word_list(self) -> str:
        """The distinct words of the prompt, in order, for messages."""
        return ", ".join(dict.fromkeys(self.word_texts())) or "(no words)"

    def special_positions(self) -> list[int]:
        return [r.pos for r in self.rows if r.special]

    def label(self, pos: int) -> str:
        """A short label for a position: its word piece, or ``#pos`` when unknown."""
        if 0 <= pos < len(self.rows):
            return self.rows[pos].piece
        return f"#{pos}"

    def to_list(self) -> list[dict[str, Any]]:
        return [asdict(r) for r in self.rows]

    def to_json(self) -> dict[str, Any]:
        """JSON-safe form (rows + words + encoder + text)."""
        return {
            "encoder": self.encoder,
            "text": self.text,
            "rows": self.to_list(),
            "words": [{"index": w.index, "text": w.text, "positions": list(w.positions),
                       "punctuation": w.punctuation} for w in self.words],
            "meta": self.meta,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TokenTable:
        rows = [TokenRow(**{k: r[k] for k in TokenRow.__dataclass_fields__}) for r in data["rows"]]
        words = [Word(int(w["index"]), str(w["text"]), tuple(int(p) for p in w["positions"]),
                      bool(w.get("punctuation", False))) for w in data["words"]]
        return cls(rows, words, str(data.get("encoder", "")), str(data.get("text", "")),
                   dict(data.get("meta", {})))


def positional_table(length: int, chunk_length: int = 77) -> TokenTable:
    """A table with no text: every position is its own 'word' labelled ``#pos``.

    Used for captures made from a stock CLIPTextEncode (no token information in the conditioning).
    """
    rows = [TokenRow(p, f"#{p}", p, 1.0, 0, False, p // max(chunk_length, 1)) for p in range(length)]
    words = [Word(p, f"#{p}", (p,)) for p in range(length)]
    return TokenTable(rows, words, encoder="positions", meta={"positional": True})


def _clean_piece(piece: str) -> tuple[str, bool, bool]:
    """Return (text, starts_word, ends_word) for a vocabulary piece."""
    ends = piece.endswith("</w>")
    if ends:
        piece = piece[: -len("</w>")]
    starts = False
    if piece.startswith("▁"):
        starts, piece = True, piece[1:]
    elif piece.startswith("Ġ"):
        starts, piece = True, piece[1:]
    return piece, starts, ends


def _is_punctuation(text: str) -> bool:
    return bool(text) and all(unicodedata.category(c)[0] in "PS" for c in text)


def build_table(
    chunks: Sequence[Sequence[tuple]],
    inv_vocab: Mapping[int, str],
    *,
    special_ids: Iterable[int] = (),
    text: str = "",
    encoder: str = "",
) -> TokenTable:
    """Build a table from tokenizer chunks of ``(token, weight, segment_id)``.

    ``special_ids`` are ids that never belong to a word (BOS, EOS, pad) even if the tokenizer gave them a
    segment id. Non-integer tokens (embedding vectors) are grouped per segment into one word each.
    """
    special_ids = set(special_ids)
    embed_names = EMBEDDING_RE.findall(text)
    embed_seen: dict[int, str] = {}
    rows: list[TokenRow] = []
    words: list[Word] = []
    cur_text: list[str] = []
    cur_pos: list[int] = []

    def close() -> None:
        if cur_pos:
            w = "".join(cur_text)
            words.append(Word(len(words), w, tuple(cur_pos), _is_punctuation(w)))
            cur_text.clear()
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
            if is_id and (segment == 0 or int(token) in special_ids):
                # ComfyUI cuts a long segment at the chunk end (EOS, pad, BOS) even inside a word or an
                # embedding; such a word stays open and continues after the break (same segment).
                if cur_embed is None and not (seen_word_end and cur_pos):
                    close()
                    prev_segment = None
                rows.append(TokenRow(pos, str(inv_vocab.get(int(token), f"<{int(token)}>")), -1, weight,
                                     segment, True, ci))
            elif not is_id:  # textual-inversion vector: one word per embedding
                if cur_embed != segment:
                    close()
                    if segment not in embed_seen:
                        k = len(embed_seen)
                        embed_seen[segment] = embed_names[k] if k < len(embed_names) else f"embedding{k + 1}"
                    cur_text.append(embed_seen[segment])
                    cur_embed = segment
                cur_pos.append(pos)
                rows.append(TokenRow(pos, f"<{embed_seen[segment]}>", len(words), weight, segment, False, ci))
                prev_segment = segment
            else:
                piece = str(inv_vocab.get(int(token), f"<{int(token)}>"))
                clean, starts, ends = _clean_piece(piece)
                # sentencepiece/byte-BPE glue punctuation to the word before ('▁wizard' ','): split it off
                so_far = "".join(cur_text)
                punct_change = bool(so_far and clean) and _is_punctuation(clean) != _is_punctuation(so_far)
                if starts or cur_embed is not None or segment != prev_segment or punct_change:
                    close()
                cur_embed = None
                cur_text.append(clean)
                cur_pos.append(pos)
                rows.append(TokenRow(pos, piece, len(words), weight, segment, False, ci))
                prev_segment = segment
                if ends:
                    seen_word_end = True
                    close()
            pos += 1
    close()
    return TokenTable(rows, words, encoder=encoder, text=text)


# ---------------------------------------------------------------------------------------------------
# Finding words and phrases


class WordNotFound(ValueError):
    """A requested word is not in the prompt; the message lists the prompt's words."""


_OCCURRENCE_RE = re.compile(r"^(.*?)\s*\[(\d+)\]$")


def _squash(text: str) -> str:
    return re.sub(r"\s+", "", text.lower())


def parse_targets(spec: str) -> list[str]:
    """Split a comma-separated word list; quoted items may contain commas (``"red, hat"``).

    Raises ValueError on unbalanced quotes.
    """
    items: list[str] = []
    buf: list[str] = []
    quote: str | None = None
    for ch in spec:
        if quote:
            if ch == quote:
                quote = None
            else:
                buf.append(ch)
        elif ch in "\"'" and not "".join(buf).strip():
            quote = ch
        elif ch == ",":
            items.append("".join(buf).strip())
            buf = []
        else:
            buf.append(ch)
    if quote:
        raise ValueError(f"unbalanced quote {quote} in {spec!r}: close the quoted phrase")
    items.append("".join(buf).strip())
    return [i for i in items if i]


def find_positions(table: TokenTable, phrase: str) -> list[tuple[int, ...]]:
    """All occurrences of ``phrase`` in the prompt, each as the token positions it covers.

    Matching is by the words' characters with spaces removed and case folded, at word boundaries, so
    ``wizard hat``, ``photo-realistic`` or ``word21`` match however the tokenizer split them. ``#12``
    (or ``#3-5``) selects raw positions. ``hat[2]`` selects the second occurrence only.
    """
    phrase = phrase.strip()
    occurrence = None
    m = _OCCURRENCE_RE.match(phrase)
    if m and not phrase.startswith("#"):
        phrase, occurrence = m.group(1).strip(), int(m.group(2))
    if phrase.startswith("#"):
        rng = phrase[1:]
        try:
            a, _, b = rng.partition("-")
            lo, hi = int(a), int(b) if b else int(a)
        except ValueError:
            raise ValueError(f"bad position {phrase!r}: use #N or #N-M with token positions") from None
        if lo < 0 or hi >= len(table) or lo > hi:
            raise ValueError(f"position {phrase!r} is outside the prompt's 0..{len(table) - 1} positions")
        return [tuple(range(lo, hi + 1))]
    target = _squash(phrase)
    if not target:
        return []
    texts = [_squash(w.text) for w in table.words]
    found: list[tuple[int, ...]] = []
    for i in range(len(texts)):
        acc = ""
        for j in range(i, len(texts)):
            acc += texts[j]
            if acc == target:
                found.append(tuple(p for w in table.words[i: j + 1] for p in w.positions))
                break
            if not target.startswith(acc):
                break
    if occurrence is not None:
        if occurrence < 1 or occurrence > len(found):
            raise WordNotFound(f"{phrase!r} occurs {len(found)} time(s) in the prompt; occurrence "
                               f"[{occurrence}] does not exist. The prompt's words are: {table.word_list()}")
        return [found[occurrence - 1]]
    return found


def resolve(table: TokenTable, phrase: str) -> tuple[int, ...]:
    """Positions of every occurrence of ``phrase`` (merged); WordNotFound lists the prompt's words."""
    occ = find_positions(table, phrase)
    if not occ:
        raise WordNotFound(f"{phrase!r} is not in the prompt. The prompt's words are: {table.word_list()}. "
                           "Use one of them, a phrase of consecutive words, or #N for a token position.")
    return tuple(sorted({p for o in occ for p in o}))
