"""Token tables that line up with the conditioning tensor of every text encoder layout ComfyUI 0.3.75 has.

``context_tokens(clip, text)`` tokenizes ``text`` the way ComfyUI's ``CLIPTextEncode`` does and returns a
``TokenTable`` with exactly one row per position of ``clip.encode_from_tokens_scheduled(...)[0][0]``, in
the same order, plus a note ("" when fine). The layout of that tensor depends on the model family; it is
recognised by the keys ``clip.tokenize`` returns (and, where the loaded encoders matter, by
``clip.cond_stage_model``):

====================  ============================  ====================================================
tokenize keys         family                        conditioning positions
====================  ============================  ====================================================
l / g / h / g+l       SD1.x, SD2.x, SDXL, Cascade   CLIP 77·k (SDXL: L and G features side by side)
l+t5xxl               Flux.1                        T5 only, max(256, n+1) (CLIP-L gives the pooled vector)
g+l+t5xxl             SD3 / SD3.5                   CLIP-L|G 77·k, then T5 ≥ 77; a block is absent when
                                                    its encoders are not loaded
g+l+t5xxl+llama       HiDream                       T5 128 (first chunk); Llama 3 goes to
                                                    ``conditioning_llama3`` (length in meta)
t5xxl                 Chroma, PixArt, Cosmos, ...   T5 as tokenized (Chroma: no padding)
pile_t5xl             AuraFlow                      Pile-T5 ≥ 256
umt5xxl               Wan 2.x                       UMT5 ≥ 512
qwen25_7b (+byt5)     Qwen-Image, HunyuanImage 2.1, chat template; starts after ``<|im_start|>user\\n``
                      HunyuanVideo 1.5              (the encoder drops the system part), ends with the
                                                    template suffix; HunyuanImage/Video: then the ByT5
                                                    glyph tokens (``conditioning_byt5small``) if loaded
l+llama               HunyuanVideo 1.0              Llama 3: the user part of the template, through its
                                                    ``<|eot_id|>`` (the encoder cuts the rest)
qwen3_4b / qwen25_3b  Z-Image / OmniGen2            whole chat template
qwen3_4b / qwen3_8b   Flux.2 Klein                  whole chat template, padded to 512 by the tokenizer
gemma2_2b / gemma3_4b Lumina 2 / NewBie             BOS + the text; a system prompt before
                                                    ``<Prompt Start>`` is template
hydit_clip+mt5xl      HunyuanDiT                    BERT ≥ 77 is the context; mT5 ≥ 256 is
                                                    ``conditioning_mt5xl``: the table holds both, BERT
                                                    first, and ``meta["context_length"]`` the BERT length
mistral3_24b          Flux.2                        whole template (the model left-pads it to 512 later)
====================  ============================  ====================================================

Template text (system prompts, role headers), BOS, EOS and padding are ``special`` rows. Each row names
its ``stream`` (``clip_l``, ``clip_g``, ``clip_h``, ``t5xxl``, ``pile_t5xl``, ``umt5xxl``, ``qwen25_7b``,
``qwen3_4b``, ``gemma2_2b``, ``hydit_clip``, ``mt5xl``, ...). For SD3 and SDXL the CLIP positions carry
L and G features; their stream is ``clip_l`` (``clip_g`` when only G is loaded).

When no table can be built that matches the context length (an unknown encoder, a length that disagrees,
image tokens in the prompt), the result is ``positional_table`` plus a note saying why the labels are
positions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .text_templates import (LUMINA_MARKER, byt5_template, chatml_template, llama3_user_span, mistral_template,
                             prefix_through, qwen_template_end)
from .token_pieces import build_table
from .token_table import TokenTable, concat_tables, positional_table


class LayoutUnknown(Exception):
    """No token layout can be given for this clip/text; the message says why."""


@dataclass
class Block:
    """Consecutive positions of the conditioning that come from one tokenizer output."""

    stream: str
    key: str  # key of clip.tokenize's dict
    chunks: list
    tokenizer: Any  # the SDTokenizer of that key
    cond: str = "c_crossattn"  # which model input the positions feed
    cut: int = 0  # leading token positions the encoder drops (Qwen-Image's template prefix)
    stop: int | None = None  # positions from here on are dropped by the encoder (HunyuanVideo 1.0's template end)
    template: str = ""  # "chatml", "mistral", "lumina": which tokens are template text


@dataclass
class Layout:
    name: str
    blocks: list[Block]
    meta: dict[str, Any]


# ---------------------------------------------------------------------------------------------------
# Public API


def context_tokens(clip, text: str, context_length: int | None = None) -> tuple[TokenTable, str]:
    """The token table of ``text`` for ``clip``'s conditioning, and a note ("" when the labels are words).

    ``context_length``: the conditioning's length if known (``cond[0][0].shape[1]``); the table is then
    checked against it. Without it, a known layout is trusted; for an unknown one the prompt is encoded
    once to learn the length of the positional table.
    """
    tokens = clip.tokenize(text, return_word_ids=True)
    try:
        layout = describe_layout(tokens, clip.tokenizer, getattr(clip, "cond_stage_model", None))
        table = _layout_table(layout, text)
    except LayoutUnknown as e:
        note = f"token labels are positions: {e}"
        table = None
    if table is not None:
        n = table.context_length()
        if context_length is None or n == context_length:
            return table, ""
        note = (f"token labels are positions: the {layout.name} token layout gives {n} positions but the "
                f"conditioning has {context_length}")
    length = context_length if context_length is not None else _encoded_length(clip, text)
    pos = positional_table(length)
    pos.text = text
    pos.meta["note"] = note
    return pos, note


def describe_layout(tokens: Mapping[str, list], wrapper: Any, model: Any = None) -> Layout:
    """Which tokenizer outputs make up the conditioning, in order (see the module table).

    ``tokens``: ``clip.tokenize(text, return_word_ids=True)``; ``wrapper``: ``clip.tokenizer``;
    ``model``: ``clip.cond_stage_model`` (None: assume every encoder of the family is loaded).
    Raises LayoutUnknown.
    """
    keys = frozenset(tokens)
    for key, chunks in tokens.items():
        for chunk in chunks:
            for entry in chunk:
                if isinstance(entry[0], Mapping):
                    raise LayoutUnknown(f"the {key} tokens hold {entry[0].get('type', 'non-text')} inputs, "
                                        "whose length in the conditioning depends on the encoder")

    def block(key: str, **kw) -> Block:
        sub = getattr(wrapper, key, None) or getattr(wrapper, f"clip_{key}", None)
        if sub is None:
            raise LayoutUnknown(f"the tokenizer has no sub-tokenizer for {key!r}")
        return Block(_stream_name(key), key, list(tokens[key]), sub, **kw)

    if keys and keys <= {"l", "g", "h"}:
        # SD1 'l', SD2 'h', SDXL 'g'+'l' (features side by side, cut to the shorter), refiner/Cascade 'g'
        order = [k for k in ("l", "g", "h") if k in keys]
        loaded = [k for k in order if _loaded(model, f"clip_{k}")]
        b = block((loaded or order)[0])
        b.chunks = b.chunks[: min(len(tokens[k]) for k in (loaded or order))]
        return Layout("clip", [b], {})
    if keys == {"l", "t5xxl"}:
        return Layout("flux", [block("t5xxl")], {})
    if keys == {"g", "l", "t5xxl"}:
        blocks = []
        has_l, has_g = _loaded(model, "clip_l"), _loaded(model, "clip_g")
        if (tokens["g"] or tokens["l"]) and (has_l or has_g):
            b = block("l" if has_l else "g")
            b.chunks = b.chunks[: min(len(tokens[k]) for k, on in (("l", has_l), ("g", has_g)) if on)]
            blocks.append(b)
        if _loaded(model, "t5xxl"):
            blocks.append(block("t5xxl"))
        if not blocks:
            raise LayoutUnknown("this SD3 text encoder has neither CLIP nor T5 loaded (the conditioning is zeros)")
        return Layout("sd3", blocks, {})
    if keys == {"g", "l", "t5xxl", "llama"}:
        if not _loaded(model, "t5xxl"):
            raise LayoutUnknown("this HiDream text encoder has no T5 loaded (the context is 128 zero rows)")
        meta = {}
        blocks = [block("t5xxl")]
        if _loaded(model, "llama"):
            # HiDreamTEModel's ll_out[:, 1:] drops the first hidden layer, not a token: all tokens stay.
            # The model attends to T5 then the Llama tokens (twice per block): label both streams.
            meta["conditioning_llama3_length"] = sum(len(c) for c in tokens["llama"])
            blocks.append(block("llama", cond="conditioning_llama3"))
        return Layout("hidream", blocks, meta)
    if keys == {"hydit_clip", "mt5xl"}:
        return Layout("hunyuan_dit", [block("hydit_clip"), block("mt5xl", cond="conditioning_mt5xl")], {})
    if keys in ({"qwen25_7b"}, {"qwen25_7b", "byt5"}):
        b = block("qwen25_7b", template="chatml")
        hunyuan = _named(model, "HunyuanImageTEModel") or _named(wrapper, "HunyuanImageTokenizer")
        b.cut = qwen_template_end([_as_id(e[0]) for c in b.chunks for e in c], hunyuan)
        if not hunyuan:
            return Layout("qwen_image", [b], {})
        # HunyuanImage 2.1 / HunyuanVideo 1.5: quoted text also goes to the ByT5 glyph encoder
        # (conditioning_byt5small, after the Qwen tokens in the prompt), when that encoder is loaded
        blocks = [b]
        if "byt5" in keys and _loaded(model, "byt5_small"):
            blocks.append(block("byt5", cond="conditioning_byt5small", template="byt5"))
        name = "hunyuan_video_15" if _named(wrapper, "HunyuanVideo15Tokenizer") else "hunyuan_image"
        return Layout(name, blocks, {})
    if keys == {"l", "llama"}:  # HunyuanVideo 1.0: the Llama-3 hidden states of the user part of its template
        b = block("llama", template="llama3")
        b.cut, b.stop = llama3_user_span([_as_id(e[0]) for e in b.chunks[0]] if b.chunks else [])
        if len(b.chunks) > 1:
            raise LayoutUnknown("the HunyuanVideo Llama prompt spans several chunks")
        return Layout("hunyuan_video", [b], {})
    if len(keys) == 1:
        (key,) = keys
        simple = {"t5xxl": "t5", "pile_t5xl": "auraflow", "umt5xxl": "wan"}
        if key in simple:
            return Layout(simple[key], [block(key)], {})
        if key in ("qwen3_4b", "qwen3_8b", "qwen25_3b"):
            if _named(wrapper, "KleinTokenizer"):  # Flux.2 Klein: padded to 512 by the tokenizer itself
                return Layout("flux2_klein", [block(key, template="chatml")], {})
            if key == "qwen3_8b":
                raise LayoutUnknown("no token layout is known for this Qwen3-8B text encoder")
            return Layout("z_image" if key == "qwen3_4b" else "omnigen2", [block(key, template="chatml")], {})
        if key in ("gemma2_2b", "gemma3_4b"):
            return Layout("lumina2", [block(key, template="lumina")], {})
        if key == "mistral3_24b":
            return Layout("flux2", [block(key, template="mistral")], {"model_left_pads_to": 512})
    raise LayoutUnknown(f"no token layout is known for this text encoder (tokenizer keys: {', '.join(sorted(keys))})")


# ---------------------------------------------------------------------------------------------------
# Building


def _layout_table(layout: Layout, text: str) -> TokenTable:
    parts: list[TokenTable] = []
    info = []
    start = 0
    for b in layout.blocks:
        t = _block_table(b, text)
        info.append({"stream": b.stream, "key": b.key, "cond": b.cond, "start": start, "length": len(t)})
        start += len(t)
        parts.append(t)
    context = sum(i["length"] for i in info if i["cond"] == "c_crossattn")
    encoder = "+".join(b.key for b in layout.blocks)
    meta = {"layout": layout.name, "context_length": context, "blocks": info, **layout.meta}
    return concat_tables(parts, encoder=encoder, text=text, meta=meta)


def _block_table(b: Block, text: str) -> TokenTable:
    sub = b.tokenizer
    inv = getattr(sub, "inv_vocab", None) or {}
    chunks = _effective_chunks(b.chunks, sub)
    ids = [_as_id(e[0]) for c in chunks for e in c]
    scheme = _scheme(sub, inv)
    specials = _special_ids(sub, ids)
    marks: set[int] = set()
    if b.template == "chatml":
        marks = chatml_template(ids, inv, specials, scheme)
    elif b.template == "mistral":
        marks = mistral_template(ids, inv)
    elif b.template == "byt5":
        marks = byt5_template(ids, inv)
    elif b.template == "lumina":
        marks = prefix_through(ids, inv, specials, scheme, LUMINA_MARKER)
    if b.stop is not None:
        chunks = _keep_leading(chunks, b.stop)
        marks = {m for m in marks if m < b.stop}
    if b.cut:
        chunks = _drop_leading(chunks, b.cut)
        marks = {m - b.cut for m in marks if m >= b.cut}
    return build_table(chunks, inv, special_ids=specials, text=text, encoder=b.key, stream=b.stream,
                       special_positions=marks, scheme=scheme)


def _stream_name(key: str) -> str:
    return f"clip_{key}" if key in ("l", "g", "h") else key


def _loaded(model: Any, attr: str) -> bool:
    """Whether ``model`` has encoder ``attr`` (SD3 and HiDream set missing encoders to None); without a
    model every encoder counts as loaded."""
    return model is None or getattr(model, attr, None) is not None


def _named(obj: Any, name: str) -> bool:
    return obj is not None and any(c.__name__ == name for c in type(obj).__mro__)


def _as_id(tok: Any) -> int | None:
    if isinstance(tok, int):
        return tok
    if hasattr(tok, "ndim") and tok.ndim == 0:
        return int(tok)
    return None


def _effective_chunks(chunks: Sequence[Sequence[tuple]], sub: Any) -> list[list[tuple]]:
    """The chunks as the encoder sees them: an embedding vector of the wrong width is dropped by
    ``SDClipModel.process_tokens`` and a pad position is appended to its chunk instead."""
    size = getattr(sub, "embedding_size", None)
    pad = getattr(sub, "pad_token", 0)
    out = []
    for c in chunks:
        keep = [e for e in c if not (_as_id(e[0]) is None and size and e[0].shape[-1] != size)]
        out.append(keep + [(pad, 1.0, 0)] * (len(c) - len(keep)))
    return out


def _drop_leading(chunks: list[list[tuple]], n: int) -> list[list[tuple]]:
    out = []
    for c in chunks:
        take = min(n, len(c))
        n -= take
        if c[take:]:
            out.append(c[take:])
    return out


def _keep_leading(chunks: list[list[tuple]], n: int) -> list[list[tuple]]:
    out = []
    for c in chunks:
        if n <= 0:
            break
        out.append(c[:n])
        n -= len(c)
    return out


def _scheme(sub: Any, inv: Mapping[int, str]) -> str:
    cls = type(getattr(sub, "tokenizer", None)).__name__
    if cls.startswith("Bert"):
        return "wordpiece"
    if cls in ("SPieceTokenizer", "T5TokenizerFast", "T5Tokenizer"):
        return "sentencepiece"
    sample = [str(inv.get(i, "")) for i in range(min(len(inv), 2000))]
    if any(p.startswith("Ġ") or p.endswith("</w>") for p in sample):
        return "bytelevel"
    if any(p.startswith("▁") for p in sample):
        return "sentencepiece"
    return "plain"


def _special_ids(sub: Any, ids: Sequence[int | None]) -> set[int]:
    """Ids that are never prompt text: BOS/EOS and the tokenizer's declared special/control tokens.

    The unknown token is left out (it stands for real text), and so is a padding id that is an ordinary
    piece (CLIP-G pads with '!', which the prompt may contain; pads are special by their segment 0).
    """
    hf = getattr(sub, "tokenizer", None)
    out: set[int] = set()
    unk = getattr(hf, "unk_token_id", None)
    try:
        out.update(int(i) for i in getattr(hf, "all_special_ids", None) or ())
    except (TypeError, ValueError):
        pass
    try:  # ComfyUI's own byte-level BPE tokenizer (newer ComfyUI, bpe_tokenizer.BPETokenizer) keeps them privately
        out.update(int(i) for i in getattr(hf, "_special_ids", None) or ())
    except (TypeError, ValueError):
        pass
    added = getattr(hf, "added_tokens_decoder", None)
    if isinstance(added, Mapping):
        out.update(int(i) for i, t in added.items() if getattr(t, "special", False))
    sp = getattr(hf, "tokenizer", None)  # comfy's SPieceTokenizer wraps a SentencePieceProcessor
    if sp is not None and hasattr(sp, "is_control"):
        size = sp.get_piece_size()
        out.update(i for i in set(ids) if i is not None and 0 <= i < size and sp.is_control(i))
        unk = sp.unk_id()
    out.discard(unk)
    out.update(t for t in (getattr(sub, "start_token", None), getattr(sub, "end_token", None)) if isinstance(t, int))
    return out


def _encoded_length(clip, text: str) -> int:
    import torch

    with torch.no_grad():
        cond = clip.encode_from_tokens_scheduled(clip.tokenize(text))
    return int(cond[0][0].shape[1])

