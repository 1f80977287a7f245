"""Token tables: which prompt word sits at which position of the conditioning sequence.

A table is built from a tokenizer's output (``clip.tokenize(text, return_word_ids=True)``: chunks of
``(token, weight, segment_id)``) plus the tokenizer's ``{id: piece}`` vocabulary. It knows nothing of
ComfyUI; it is plain data that travels inside a CONDITIONING dict and inside saved maps files.

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
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

# ":" ends the name: in "(embedding:name:1.2)" the ":1.2" is the weight
EMBEDDING_RE = re.compile(r"embedding:([^\s,:()\[\]]+)")
_TYPED_EMBEDDING_RE = re.compile(EMBEDDING_RE.pattern, re.IGNORECASE)  # what users type, any case

SCHEMES = ("auto", "plain", "bytelevel", "sentencepiece", "wordpiece")


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
# Building tables from tokenizer output


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
        if lo < 0 or hi >= len(table) or lo > hi:
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
