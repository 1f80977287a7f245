"""Chat templates around the prompt in LLM text encoders: which positions are template text, and where
ComfyUI's encoders cut the hidden states (so a token table lines up with the conditioning).

Same rules as the encoders in ``comfy/text_encoders`` (0.3.75; unchanged through 0.33.0 where cited):
Qwen-Image / HunyuanImage / HunyuanVideo 1.5 (``qwen_image.py`` ``encode_token_weights``), HunyuanVideo 1.0
(``hunyuan_video.py`` ``HunyuanVideoClipModel.encode_token_weights``), Mistral (Flux.2), ChatML (Qwen3: Z-Image,
Flux.2 Klein; Qwen2.5: Omnigen2), Lumina 2's system prompt. Imports nothing from ComfyUI.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from .token_pieces import piece_text
from .token_table import normalize_text

# Qwen2 chat-template ids that ComfyUI's QwenImageTEModel looks for (qwen_image.py, encode_token_weights)
_QWEN_IM_START, _QWEN_USER, _QWEN_NEWLINE = 151644, 872, 198
# Llama-3 ids HunyuanVideo's encoder looks for: <|start_header_id|>, "user", <|end_header_id|>, <|eot_id|>, "\n\n"
_LLAMA_HEADER, _LLAMA_USER, _LLAMA_HEADER_END, _LLAMA_EOT, _LLAMA_BLANK = 128006, 882, 128007, 128009, 271
_MISTRAL_MARKERS = {"[INST]", "[/INST]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]"}
LUMINA_MARKER = "<Prompt Start>"


def piece_texts(ids: Sequence[int | None], inv: Mapping[int, str], scheme: str) -> list[str]:
    return [piece_text(str(inv.get(i, "")), scheme) if i is not None else "" for i in ids]


def chatml_template(ids: Sequence[int | None], inv: Mapping[int, str], specials: set[int],
                     scheme: str) -> set[int]:
    """Positions of chat-template text: ``<|im_start|>role\\n`` headers, ``<|im_end|>`` and the newline
    after it, special tokens, and the content of every block whose role is not ``user``."""
    pieces = [str(inv.get(i, "")) if i is not None else "" for i in ids]
    texts = piece_texts(ids, inv, scheme)
    marks: set[int] = set()
    role: str | None = None  # None: outside any block (plain text counts as the user's)
    i, n = 0, len(ids)
    while i < n:
        if pieces[i] == "<|im_start|>":
            j = i + 1
            while j < n and j <= i + 8 and "\n" not in texts[j]:
                j += 1
            if j < n and "\n" in texts[j]:
                marks.update(range(i, j + 1))
                role = "".join(texts[i + 1: j]).strip().lower()
                i = j + 1
            else:
                marks.add(i)
                role = ""
                i += 1
            continue
        if pieces[i] == "<|im_end|>":
            marks.add(i)
            role = None
            if i + 1 < n and texts[i + 1] and not texts[i + 1].strip():
                marks.add(i + 1)
                i += 1
        elif (ids[i] is not None and ids[i] in specials) or (role is not None and role != "user"):
            marks.add(i)
        i += 1
    return marks


def mistral_template(ids: Sequence[int | None], inv: Mapping[int, str]) -> set[int]:
    """Positions of Mistral's ``[SYSTEM_PROMPT]...[/SYSTEM_PROMPT]`` block and ``[INST]`` markers."""
    marks: set[int] = set()
    in_system = False
    for i, t in enumerate(ids):
        piece = str(inv.get(t, "")) if t is not None else ""
        if piece == "[SYSTEM_PROMPT]":
            in_system = True
        if in_system or piece in _MISTRAL_MARKERS:
            marks.add(i)
        if piece == "[/SYSTEM_PROMPT]":
            in_system = False
    return marks


def prefix_through(ids: Sequence[int | None], inv: Mapping[int, str], specials: set[int], scheme: str,
                    marker: str) -> set[int]:
    """Positions from the start through the token that ends ``marker`` (Lumina's system prompt and its
    ``<Prompt Start>``); empty when the text has no marker."""
    chars: list[str] = []
    owner: list[int] = []
    for i, t in enumerate(piece_texts(ids, inv, scheme)):
        if ids[i] is None or ids[i] in specials:
            continue
        norm = normalize_text(t)
        chars.append(norm)
        owner.extend([i] * len(norm))
    target = normalize_text(marker)
    k = "".join(chars).find(target)
    if k < 0:
        return set()
    return set(range(owner[k + len(target) - 1] + 1))


def qwen_template_end(ids: Sequence[int | None], hunyuan_image: bool = False) -> int:
    """How many leading positions ComfyUI's QwenImageTEModel drops (it keeps ``out[:, template_end:]``).

    Same rule as the encoder: the second ``<|im_start|>`` (or the only one), moved past ``user\\n`` when
    those follow; HunyuanImage's refiner prompts (starting with '<', id 27, longer than 36) drop 36.
    """
    n = len(ids)
    if hunyuan_image and n > 36 and ids[0] == 27:
        end = 36
    else:
        end, seen = -1, 0
        for i, t in enumerate(ids):
            if t == _QWEN_IM_START and seen < 2:
                end, seen = i, seen + 1
        if n > end + 3 and ids[end + 1] == _QWEN_USER and ids[end + 2] == _QWEN_NEWLINE:
            end += 3
    return end if end >= 0 else max(n + end, 0)  # -1 keeps only the last position, as out[:, -1:] does


def llama3_user_span(ids: Sequence[int | None]) -> tuple[int, int]:
    """[start, stop) of the positions HunyuanVideo 1.0's encoder keeps of its Llama-3 template (first chunk).

    Same rule as ``HunyuanVideoClipModel.encode_token_weights``: the user header ``<|start_header_id|>user
    <|end_header_id|>`` sets the start at its end token and the next ``<|eot_id|>`` (kept) the end; a ``\n\n``
    right after the header moves the start past it. Without a user header everything is kept.
    """
    n = len(ids)
    start, stop = 0, None
    found = False
    for i, t in enumerate(ids):
        if t == _LLAMA_HEADER and i + 2 < n and ids[i + 1] == _LLAMA_USER and ids[i + 2] == _LLAMA_HEADER_END:
            start, stop, found = i + 2, -1, True
        if t == _LLAMA_EOT and stop == -1:
            stop = i + 1
    if n > start + 2 and ids[start + 1] == _LLAMA_BLANK:
        start += 2
    if not found:
        return start, n
    return start, (n - 1 if stop == -1 else stop)  # no <|eot_id|> after the header: out[:, start:-1]


def byt5_template(ids: Sequence[int | None], inv: Mapping[int, str]) -> set[int]:
    """Positions of HunyuanImage's ByT5 wrapper text and spaces: the tokenizer feeds ``Text "<quoted>". `` per
    quoted string (one token per byte); only the quoted text's non-space bytes are prompt words."""
    chars = [str(inv.get(i, "")) if i is not None else "" for i in ids]
    text = "".join(c if len(c) == 1 else "\0" for c in chars)  # one character per position
    keep: set[int] = set()
    for m in re.finditer(r'Text "(.*?)"\. ', text):
        keep.update(range(m.start(1), m.end(1)))
    return {i for i in range(len(ids)) if i not in keep or not text[i].strip()}
