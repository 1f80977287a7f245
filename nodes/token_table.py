"""Token tables: which prompt word sits at which position of the conditioning sequence.

A table is built from a tokenizer's output by ``token_pieces.build_table`` (chunks of ``(token, weight,
segment_id)`` plus the tokenizer's ``{id: piece}`` vocabulary). It knows nothing of ComfyUI; it is plain
data that travels inside a CONDITIONING dict and inside saved maps files. This module holds the table and
finding words in it.

Word rules: CLIP BPE pieces end a word with ``</w>``; sentencepiece pieces (T5, Gemma) start one with
``▁``; byte-BPE pieces (Qwen, Llama 3) start one with ``Ġ``; WordPiece pieces (BERT) continue one with
``##``. Byte-level pieces (CLIP, Qwen) and sentencepiece byte-fallback pieces (``<0xE7>``) are decoded to
UTF-8, so word texts read as typed (``café``, ``猫``). Special tokens (BOS, EOS, padding, segment id 0, chat
template tokens) belong to no word. Textual-inversion vectors (tensors, not ids) form one word per
embedding, named after it.

Streams: a table may hold the positions of several text encoders one after the other (SD3: CLIP then T5;
HunyuanDiT: BERT then mT5). Each row and word names its ``stream``; words never span streams, and a word is
found once per stream (see ``find_positions``). Tables saved before streams existed load with stream ``""``.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

# ":" ends the name: in "(embedding:name:1.2)" the ":1.2" is the weight
EMBEDDING_RE = re.compile(r"embedding:([^\s,:()\[\]]+)")
_TYPED_EMBEDDING_RE = re.compile(EMBEDDING_RE.pattern, re.IGNORECASE)  # what users type, any case


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
    stream: str = ""  # the text encoder this position comes from ("clip_l", "t5xxl", ...); "" = unknown


@dataclass(frozen=True)
class Word:
    """A word of the prompt (in one stream): its text and the positions of its tokens."""

    index: int
    text: str
    positions: tuple[int, ...]
    punctuation: bool = False  # punctuation only, or no visible text: left out of word lists
    stream: str = ""


@dataclass
class TokenTable:
    """Position → token/word table of one prompt, for one text encoder layout."""

    rows: list[TokenRow]
    words: list[Word]
    encoder: str = ""
    text: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.rows)

    def streams(self) -> list[str]:
        """The named streams of the table in position order (empty for tables without stream names)."""
        return [s for s in dict.fromkeys(r.stream for r in self.rows) if s]

    def context_length(self) -> int:
        """Length of the conditioning tensor (``c_crossattn``) the table describes.

        Equal to ``len(self)`` except where the table also covers a second text input of the model
        (HunyuanDiT: BERT positions are the context, the mT5 positions that follow are
        ``conditioning_mt5xl``).
        """
        return int(self.meta.get("context_length", len(self.rows)))

    def merged_words(self, include_punctuation: bool = False) -> list[Word]:
        """The prompt's words once each, every word carrying its positions in all streams.

        Single-stream tables: the words themselves. Multi-stream tables: the words of the stream with the
        most words that are words of the typed prompt, then the fewest words (so ``21`` from T5 covers
        CLIP's ``2`` ``1``, and a stream whose pieces lost the spaces is not the list); for its
        n-th occurrence of a word, the n-th occurrence of the same text in each other stream is added
        (matched like ``find_positions``). A word another stream splits differently at its boundaries
        keeps only the positions of the streams where it is found.
        """
        groups = _stream_groups(self)
        if len(groups) <= 1:
            return [w for w in self.words if include_punctuation or not w.punctuation]
        texts = {name: [normalize_text(w.text) for w in ws] for name, ws in groups}

        typed = {normalize_text(t) for t in re.findall(r"\w+", self.text)}

        def score(group) -> tuple[int, int]:
            # most words that are words of the typed prompt (a stream whose tokenizer lost the spaces
            # has almost none), then the fewest words
            name, ws = group
            hits = sum(1 for w, t in zip(ws, texts[name], strict=True) if not w.punctuation and t in typed)
            return hits, -sum(not w.punctuation for w in ws)

        primary = max(groups, key=score)
        out: list[Word] = []
        for w in primary[1]:
            if w.punctuation and not include_punctuation:
                continue
            target = normalize_text(w.text)
            own = _find_in(primary[1], target, texts[primary[0]]) if target else []
            k = own.index(w.positions) if w.positions in own else -1
            pos = set(w.positions)
            if k >= 0:
                for name, ws in groups:
                    if name != primary[0]:
                        occ = _find_in(ws, target, texts[name])
                        if k < len(occ):
                            pos.update(occ[k])
            out.append(Word(len(out), w.text, tuple(sorted(pos)), w.punctuation, ""))
        return out

    def word_texts(self, include_punctuation: bool = False) -> list[str]:
        """The prompt's words in order (punctuation-only words left out unless asked), once per word
        even when the table holds several streams."""
        return [w.text for w in self.merged_words(include_punctuation)]

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
                       "punctuation": w.punctuation, "stream": w.stream} for w in self.words],
            "meta": self.meta,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TokenTable:
        """Inverse of ``to_json``; also reads tables saved before rows and words had a ``stream``."""
        names = [f.name for f in fields(TokenRow)]
        rows = [TokenRow(**{k: r[k] for k in names if k in r}) for r in data["rows"]]
        words = []
        for w in data["words"]:
            positions = tuple(int(p) for p in w["positions"])
            stream = w.get("stream")
            if stream is None:
                stream = rows[positions[0]].stream if positions and 0 <= positions[0] < len(rows) else ""
            words.append(Word(int(w["index"]), str(w["text"]), positions, bool(w.get("punctuation", False)),
                              str(stream)))
        return cls(rows, words, str(data.get("encoder", "")), str(data.get("text", "")),
                   dict(data.get("meta", {})))


def positional_table(length: int, chunk_length: int = 77) -> TokenTable:
    """A table with no text: every position is its own 'word' labelled ``#pos``.

    Used for captures made from a stock CLIPTextEncode (no token information in the conditioning) and
    for text encoders whose layout is unknown.
    """
    rows = [TokenRow(p, f"#{p}", p, 1.0, 0, False, p // max(chunk_length, 1)) for p in range(length)]
    words = [Word(p, f"#{p}", (p,)) for p in range(length)]
    return TokenTable(rows, words, encoder="positions", meta={"positional": True})


def concat_tables(parts: Sequence[TokenTable], *, encoder: str = "", text: str = "",
                  meta: Mapping[str, Any] | None = None) -> TokenTable:
    """Tables of consecutive blocks of one sequence (e.g. CLIP then T5) as one table.

    Positions, word indices and chunk numbers of later parts are shifted; streams are kept.
    """
    rows: list[TokenRow] = []
    words: list[Word] = []
    chunk_base = 0
    for part in parts:
        p0, w0 = len(rows), len(words)
        for r in part.rows:
            rows.append(replace(r, pos=r.pos + p0, word_index=r.word_index + w0 if r.word_index >= 0 else -1,
                                chunk=r.chunk + chunk_base))
        for w in part.words:
            words.append(replace(w, index=w.index + w0, positions=tuple(p + p0 for p in w.positions)))
        chunk_base += (max((r.chunk for r in part.rows), default=-1) + 1)
    return TokenTable(rows, words, encoder=encoder, text=text, meta=dict(meta or {}))


def restrict_streams(table: TokenTable, streams: str | Iterable[str]) -> TokenTable:
    """The same table with words only from ``streams`` (a name or several).

    Rows and positions stay as they are, so the table still lines up with the conditioning and with
    captured maps (``#N`` still addresses any position); rows of other streams belong to no word.
    Raises ValueError for a stream the table does not have.
    """
    keep = _stream_set(table, streams)
    if keep is None:
        return table
    remap: dict[int, int] = {}
    words: list[Word] = []
    for w in table.words:
        if w.stream in keep:
            remap[w.index] = len(words)
            words.append(replace(w, index=len(words)))
    rows = [replace(r, word_index=remap.get(r.word_index, -1)) for r in table.rows]
    meta = {**table.meta, "streams": [s for s in table.streams() if s in keep]}
    return TokenTable(rows, words, table.encoder, table.text, meta)


# ---------------------------------------------------------------------------------------------------
# Finding words and phrases


class WordNotFound(ValueError):
    """A requested word is not in the prompt; the message lists the prompt's words."""


_OCCURRENCE_RE = re.compile(r"^(.*?)\s*\[(\d+)\]$")


def normalize_text(text: str) -> str:
    """The form words are compared in: Unicode NFKC, case folded, whitespace removed.

    CLIP lower-cases and T5/Qwen keep case; NFKC makes full-width and composed characters compare equal.
    """
    return re.sub(r"\s+", "", unicodedata.normalize("NFKC", text).casefold())


def _stream_set(table: TokenTable, streams: str | Iterable[str] | None) -> set[str] | None:
    if streams is None:
        return None
    keep = {streams} if isinstance(streams, str) else set(streams)
    have = set(table.streams())
    missing = sorted(keep - have)
    if missing:
        listed = ", ".join(table.streams()) or "none (the table has no stream names)"
        raise ValueError(f"stream {', '.join(map(repr, missing))} is not in this token table; its streams are: "
                         f"{listed}")
    return keep


def _stream_groups(table: TokenTable, streams: str | Iterable[str] | None = None) -> list[tuple[str, list[Word]]]:
    """The table's words per stream, streams in position order (one group for stream-less tables)."""
    keep = _stream_set(table, streams)
    groups: dict[str, list[Word]] = {}
    for w in table.words:
        if keep is None or w.stream in keep:
            groups.setdefault(w.stream, []).append(w)
    return list(groups.items())


def _find_in(words: Sequence[Word], target: str, texts: Sequence[str] | None = None) -> list[tuple[int, ...]]:
    """Occurrences of the normalised ``target`` as a run of whole consecutive words (``texts``: the
    words' normalised texts, if already computed)."""
    if texts is None:
        texts = [normalize_text(w.text) for w in words]
    found: list[tuple[int, ...]] = []
    for i in range(len(texts)):
        if not texts[i]:
            continue  # a match starts at a word with text (not at a lone '▁' before it)
        acc = ""
        for j in range(i, len(texts)):
            acc += texts[j]
            if acc == target:
                found.append(tuple(p for w in words[i: j + 1] for p in w.positions))
                break
            if not target.startswith(acc):
                break
    return found


def find_positions(table: TokenTable, phrase: str, stream: str | Iterable[str] | None = None
                   ) -> list[tuple[int, ...]]:
    """All occurrences of ``phrase`` in the prompt, each as the token positions it covers.

    Matching is by the words' characters with spaces removed, NFKC-normalised and case folded, at word
    boundaries, so ``wizard hat``, ``photo-realistic`` or ``word21`` match however the tokenizer split
    them. ``#12`` (or ``#3-5``) selects raw positions. ``hat[2]`` selects the second occurrence only.
    A textual-inversion word is found by its name, typed as ``name`` or as in the prompt, ``embedding:name``.

    Multi-stream tables (SD3: CLIP and T5; HunyuanDiT: BERT and mT5): the phrase is searched in each
    stream separately (a phrase never spans two streams) and occurrences are counted per stream; the
    n-th item of the result holds the n-th occurrence of every stream that has one, so ``cat`` gives
    each ``cat`` with its CLIP and T5 positions, and ``cat[2]`` the second ``cat`` of each stream.
    ``stream`` ("t5xxl" or several names) restricts the search to those streams; ``#N`` ignores it.
    A phrase that ends inside a word of one stream (``1`` where T5 has the word ``21`` and CLIP the
    words ``2`` ``1``) is found only in the streams whose word boundaries fit it.
    """
    phrase = _TYPED_EMBEDDING_RE.sub(r"\1", phrase.strip())  # 'embedding:name' as typed in the prompt = 'name'
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
        if lo > hi:
            raise ValueError(f"position range {phrase!r} runs backwards: write #{hi}-{lo}")
        if lo < 0 or hi >= len(table):
            raise ValueError(f"position {phrase!r} is outside the prompt's 0..{len(table) - 1} positions")
        return [tuple(range(lo, hi + 1))]
    groups = _stream_groups(table, stream)
    target = normalize_text(phrase)
    if not target:
        return []
    per_stream = [_find_in(words, target) for _, words in groups]
    count = max((len(o) for o in per_stream), default=0)
    if len(per_stream) == 1:
        found = per_stream[0]
    else:
        found = [tuple(sorted({p for occ in per_stream if k < len(occ) for p in occ[k]})) for k in range(count)]
    if occurrence is not None:
        if occurrence < 1 or occurrence > len(found):
            per = " (counted per text encoder stream)" if len(groups) > 1 else ""
            raise WordNotFound(f"{phrase!r} occurs {len(found)} time(s) in the prompt{per}; occurrence "
                               f"[{occurrence}] does not exist. The prompt's words are: {table.word_list()}")
        return [found[occurrence - 1]]
    return found


def resolve(table: TokenTable, phrase: str, stream: str | Iterable[str] | None = None) -> tuple[int, ...]:
    """Positions of every occurrence of ``phrase`` (merged over occurrences and streams); WordNotFound
    lists the prompt's words. ``stream`` restricts to some streams as in ``find_positions``."""
    if stream is not None and not isinstance(stream, str):
        stream = list(stream)
    occ = find_positions(table, phrase, stream)
    if not occ:
        where = "" if stream is None else f" (in stream {stream!r})" if isinstance(stream, str) else \
            f" (in streams {', '.join(stream)})"
        raise WordNotFound(f"{phrase!r} is not in the prompt{where}. The prompt's words are: {table.word_list()}. "
                           "Use one of them, a phrase of consecutive words, or #N for a token position.")
    return tuple(sorted({p for o in occ for p in o}))
