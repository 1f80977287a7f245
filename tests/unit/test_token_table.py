"""Token tables built from real ComfyUI tokenizer output (SD1.5 CLIP BPE vocabulary).

The chunks come from ComfyUI's own ``comfy.sd1_clip.SDTokenizer``. Importing it loads
``comfy.model_management``, which must not happen inside the test process (the ``comfy`` fixture boots
ComfyUI later with its own settings), so it runs once in a subprocess and the result is cached as JSON
under $ATTENTION_FOCUS_CACHE/fixtures (keyed by the prompts, this script and ComfyUI's tokenizer source).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from attention_focus.nodes.token_pieces import build_table, piece_text
from attention_focus.nodes.token_table import (
    TokenTable,
    WordNotFound,
    concat_tables,
    find_positions,
    normalize_text,
    positional_table,
    resolve,
    restrict_streams,
)

BOS, EOS = 49406, 49407
CACHE = Path(os.environ.get("ATTENTION_FOCUS_CACHE", Path.home() / ".cache" / "attention-focus"))
COMFYUI = Path(os.environ.get("COMFYUI_PATH", CACHE / "comfyui-0.3.75"))

_REP = "a highly detailed photorealistic portrait of an old wizard wearing a tall pointed hat, "
PROMPTS = {
    "basic": "a photorealistic wizard, (red:1.3) hat",
    "repeat": "a wizard hat and a red hat, blue wizard hat",
    "nested": "((red)) hat",
    # 7 + 5·16 + 2 text tokens: the first chunk's last slot (75) holds 'photo', the second's first
    # text slot (78) holds 'realistic</w>' (ComfyUI cuts segments of >= 8 tokens at the chunk end)
    "long": "one two three four five six seven " + _REP * 5 + "dramatic lighting",
    "embed": "a portrait, embedding:myemb, (embedding:style2:1.2) oil painting",
    "hyphen": "a photo-realistic cat",
}

# Runs in a subprocess with ComfyUI on sys.path; prints {name: chunks}, embedding vectors as {"vector": n}.
_SCRIPT = r"""
import json, os, sys, tempfile
sys.path.insert(0, os.environ["COMFYUI_PATH"])
import comfy.options
comfy.options.enable_args_parsing(False)
import comfy.cli_args
comfy.cli_args.args.cpu = True
import torch, safetensors.torch
import comfy.sd1_clip
emb_dir = tempfile.mkdtemp()
safetensors.torch.save_file({"clip_l": torch.randn(3, 768)}, os.path.join(emb_dir, "myemb.safetensors"))
safetensors.torch.save_file({"clip_l": torch.randn(2, 768)}, os.path.join(emb_dir, "style2.safetensors"))
tok = comfy.sd1_clip.SDTokenizer(embedding_directory=emb_dir, tokenizer_data={})
out = {}
for name, text in json.loads(sys.stdin.read()).items():
    chunks = tok.tokenize_with_weights(text, return_word_ids=True)
    out[name] = [[[t if isinstance(t, int) else {"vector": int(t.shape[-1])}, float(w), int(i)]
                  for t, w, i in c] for c in chunks]
print("JSON:" + json.dumps(out))
"""


def _comfy_chunks() -> dict:
    sd1 = COMFYUI / "comfy" / "sd1_clip.py"
    if not sd1.is_file():
        pytest.skip(f"no ComfyUI at {COMFYUI} (run `. scripts/setup_env.sh` or set COMFYUI_PATH)")
    key = hashlib.sha256(
        (_SCRIPT + json.dumps(PROMPTS, sort_keys=True) + str(COMFYUI)).encode() + sd1.read_bytes()
    ).hexdigest()[:16]
    path = CACHE / "fixtures" / f"sd1_tokens-{key}.json"
    if path.is_file():
        return json.loads(path.read_text())
    env = {**os.environ, "COMFYUI_PATH": str(COMFYUI)}
    proc = subprocess.run([sys.executable, "-c", _SCRIPT], input=json.dumps(PROMPTS), capture_output=True,
                          text=True, env=env, timeout=300, cwd=str(COMFYUI))
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("JSON:")), None)
    assert proc.returncode == 0 and line, f"ComfyUI tokenizer failed:\n{proc.stdout}\n{proc.stderr}"
    data = json.loads(line[5:])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)
    return data


@pytest.fixture(scope="module")
def inv_vocab() -> dict[int, str]:
    vocab = COMFYUI / "comfy" / "sd1_tokenizer" / "vocab.json"
    if not vocab.is_file():
        pytest.skip(f"no CLIP vocabulary at {vocab}")
    return {v: k for k, v in json.loads(vocab.read_text(encoding="utf-8")).items()}


@pytest.fixture(scope="module")
def chunks() -> dict[str, list[list[tuple]]]:
    """ComfyUI's (token, weight, word_id) chunks per prompt; embedding vectors as real tensors."""
    raw = _comfy_chunks()
    out = {}
    for name, cs in raw.items():
        out[name] = [[(torch.randn(t["vector"]) if isinstance(t, dict) else t, w, i) for t, w, i in c]
                     for c in cs]
    return out


@pytest.fixture(scope="module")
def table(chunks, inv_vocab):
    def make(name: str) -> TokenTable:
        return build_table(chunks[name], inv_vocab, special_ids=(BOS, EOS), text=PROMPTS[name], encoder="l")
    return make


def _word(t: TokenTable, text: str, n: int = 0):
    return [w for w in t.words if w.text == text][n]


# ---------------------------------------------------------------------------------------------------
# ComfyUI's chunk layout (guards the assumptions of the tests below)


def test_comfy_chunks_have_clip_layout(chunks):
    for name, cs in chunks.items():
        for c in cs:
            assert len(c) == 77, name
            assert c[0] == (BOS, 1.0, 0)
            assert c[-1][0] == EOS and c[-1][2] == 0
    assert len(chunks["long"]) == 2
    assert len(chunks["basic"]) == 1


# ---------------------------------------------------------------------------------------------------
# Building tables


def test_word_pieces_merge_into_one_word(table, inv_vocab):
    t = table("basic")
    w = _word(t, "photorealistic")
    assert len(w.positions) >= 2  # really split by the BPE
    pieces = [t.rows[p].piece for p in w.positions]
    assert pieces[-1].endswith("</w>") and not any(p.endswith("</w>") for p in pieces[:-1])
    assert "".join(p.replace("</w>", "") for p in pieces) == "photorealistic"
    assert list(w.positions) == list(range(w.positions[0], w.positions[-1] + 1))
    assert all(t.rows[p].word_index == w.index for p in w.positions)
    assert t.word_texts() == ["a", "photorealistic", "wizard", "red", "hat"]


def test_rows_mirror_the_chunks(chunks, inv_vocab, table):
    for name in PROMPTS:
        t = table(name)
        flat = [e for c in chunks[name] for e in c]
        assert len(t) == len(flat) == 77 * len(chunks[name])
        for pos, (row, (tok, weight, seg)) in enumerate(zip(t.rows, flat, strict=True)):
            assert row.pos == pos and row.chunk == pos // 77
            assert row.weight == pytest.approx(weight) and row.segment == seg
            if isinstance(tok, int):
                assert row.piece == inv_vocab[tok]


def test_punctuation_is_flagged(table):
    t = table("basic")
    comma = _word(t, ",")
    assert comma.punctuation
    assert not _word(t, "wizard").punctuation
    assert "," not in t.word_texts()
    assert t.word_texts(include_punctuation=True) == ["a", "photorealistic", "wizard", ",", "red", "hat"]


def test_specials_belong_to_no_word(table):
    t = table("basic")
    specials = t.special_positions()
    n_text = sum(len(w.positions) for w in t.words)
    assert specials == [0] + list(range(1 + n_text, 77))  # BOS, then EOS + EOS padding
    for p in specials:
        assert t.rows[p].word_index == -1 and t.rows[p].special
    assert t.rows[0].piece == "<|startoftext|>" and t.rows[-1].piece == "<|endoftext|>"
    in_words = {p for w in t.words for p in w.positions}
    assert in_words.isdisjoint(specials)
    assert in_words == set(range(1, 1 + n_text))


def test_weighted_syntax_keeps_labels_and_weights(table):
    t = table("basic")
    red, hat, wizard = _word(t, "red"), _word(t, "hat"), _word(t, "wizard")
    assert [t.rows[p].weight for p in red.positions] == [pytest.approx(1.3)]
    assert [t.rows[p].weight for p in hat.positions] == [1.0]
    assert [t.rows[p].weight for p in wizard.positions] == [1.0]
    assert [t.rows[p].piece for p in red.positions] == ["red</w>"]
    # the parentheses and ':1.3' are syntax, not tokens
    assert t.word_texts(include_punctuation=True)[-2:] == ["red", "hat"]
    nested = table("nested")
    assert nested.word_texts() == ["red", "hat"]
    assert nested.rows[_word(nested, "red").positions[0]].weight == pytest.approx(1.21)


def test_long_prompt_spans_two_chunks(table, chunks, inv_vocab):
    t = table("long")
    text = PROMPTS["long"]
    # every word of the text, in order, punctuation included; nothing lost or split at the chunk break
    assert t.word_texts(include_punctuation=True) == re.findall(r"\w+|[^\w\s]", text)
    # positions are chunk*77 + slot
    for ci, c in enumerate(chunks["long"]):
        for slot, (tok, _, _) in enumerate(c):
            assert t.rows[ci * 77 + slot].piece == inv_vocab[tok]
            assert t.rows[ci * 77 + slot].chunk == ci
    assert t.rows[76].special and t.rows[77].special  # EOS of chunk 0, BOS of chunk 1
    assert t.rows[76].piece == "<|endoftext|>" and t.rows[77].piece == "<|startoftext|>"
    # the word cut by the chunk end stays one word around the EOS/BOS pair
    assert (t.rows[75].piece, t.rows[78].piece) == ("photo", "realistic</w>")
    cut = t.words[t.rows[75].word_index]
    assert cut.text == "photorealistic" and cut.positions == (75, 78)
    assert t.rows[78].word_index == cut.index
    occ = find_positions(t, "photorealistic")
    assert len(occ) == 5 and (75, 78) in occ
    lighting = find_positions(t, "dramatic lighting")
    assert len(lighting) == 1 and all(77 < p < 154 for p in lighting[0])
    assert [t.rows[p].piece for p in lighting[0]] == ["dramatic</w>", "lighting</w>"]
    # the word list is one list over both chunks
    assert [w.index for w in t.words] == list(range(len(t.words)))


def test_embedding_vectors_become_named_words(table):
    t = table("embed")
    assert t.word_texts() == ["a", "portrait", "myemb", "style2", "oil", "painting"]
    myemb, style2 = _word(t, "myemb"), _word(t, "style2")
    assert len(myemb.positions) == 3 and len(style2.positions) == 2
    assert [t.rows[p].piece for p in myemb.positions] == ["<myemb>"] * 3
    assert [t.rows[p].weight for p in style2.positions] == [pytest.approx(1.2)] * 2
    assert not myemb.punctuation
    assert resolve(t, "style2") == style2.positions
    assert resolve(t, "myemb") == myemb.positions
    # typed as it stands in the prompt
    assert resolve(t, "embedding:myemb") == myemb.positions
    assert resolve(t, "Embedding:style2") == style2.positions
    assert resolve(t, "embedding:style2 oil") == style2.positions + _word(t, "oil").positions


def test_embedding_split_by_chunk_end_stays_one_word():
    vec = torch.zeros(768)
    c0 = [(BOS, 1.0, 0), (1, 1.0, 1), (vec, 1.0, 2), (vec, 1.0, 2), (EOS, 1.0, 0)]
    c1 = [(BOS, 1.0, 0), (vec, 1.0, 2), (2, 1.0, 3), (EOS, 1.0, 0)]
    t = build_table([c0, c1], {1: "a</w>", 2: "cat</w>", BOS: "<s>", EOS: "</s>"}, special_ids=(BOS, EOS),
                    text="a embedding:emb cat")
    assert t.word_texts() == ["a", "emb", "cat"]
    assert _word(t, "emb").positions == (2, 3, 6)


def test_unnamed_embedding_and_scalar_tensor_ids():
    vec = torch.zeros(768)
    chunk = [(torch.tensor(BOS), 1.0, 0), (torch.tensor(1), 1.0, 1), (vec, 1.0, 2), (EOS, 1.0, 0)]
    t = build_table([chunk], {1: "a</w>", BOS: "<s>", EOS: "</s>"}, special_ids=(BOS, EOS), text="a")
    assert t.word_texts() == ["a", "embedding1"]
    assert t.special_positions() == [0, 3]


def test_hyphenated_word_matches_as_phrase(table):
    t = table("hyphen")
    assert t.word_texts(include_punctuation=True) == ["a", "photo", "-", "realistic", "cat"]
    assert resolve(t, "photo-realistic") == (2, 3, 4)
    assert resolve(t, "Photo - Realistic") == (2, 3, 4)


# ---------------------------------------------------------------------------------------------------
# Finding words


def test_find_phrase_and_occurrences(table):
    t = table("repeat")  # a wizard hat and a red hat , blue wizard hat
    pos = {w.text + str(i): w.positions[0] for i, w in enumerate(t.words)}
    assert find_positions(t, "wizard hat") == [(pos["wizard1"], pos["hat2"]), (pos["wizard9"], pos["hat10"])]
    assert find_positions(t, "hat") == [(pos["hat2"],), (pos["hat6"],), (pos["hat10"],)]
    assert find_positions(t, "hat[2]") == [(pos["hat6"],)]
    assert find_positions(t, "wizard hat [2]") == [(pos["wizard9"], pos["hat10"])]
    assert find_positions(t, "WIZARD") == [(pos["wizard1"],), (pos["wizard9"],)]
    assert find_positions(t, "hat,") == [(pos["hat6"], pos["hat6"] + 1)]
    assert find_positions(t, "ha") == []  # whole words only
    assert find_positions(t, "hats") == []
    assert find_positions(t, "  ") == []
    assert resolve(t, "hat") == (pos["hat2"], pos["hat6"], pos["hat10"])
    assert resolve(t, "red hat") == (pos["red5"], pos["hat6"])
    with pytest.raises(WordNotFound, match=r"occurs 3 time\(s\).*\[4\] does not exist"):
        find_positions(t, "hat[4]")
    with pytest.raises(WordNotFound, match="occurs 3"):
        find_positions(t, "hat[0]")


def test_raw_positions(table):
    t = table("basic")
    assert find_positions(t, "#5") == [(5,)]
    assert find_positions(t, "#3-5") == [(3, 4, 5)]
    assert resolve(t, " #0 ") == (0,)
    assert find_positions(t, "#76") == [(76,)]
    for bad in ("#77", "#3-77"):
        with pytest.raises(ValueError, match=r"outside the prompt's 0\.\.76 positions"):
            find_positions(t, bad)
    with pytest.raises(ValueError, match="runs backwards: write #3-5"):
        find_positions(t, "#5-3")
    for bad in ("#x", "#", "#-1", "#1-2-3"):
        with pytest.raises(ValueError, match="use #N or #N-M"):
            find_positions(t, bad)


def test_word_not_found_lists_the_words(table):
    t = table("basic")
    with pytest.raises(WordNotFound) as e:
        resolve(t, "dragon")
    msg = str(e.value)
    assert "'dragon' is not in the prompt" in msg
    assert "a, photorealistic, wizard, red, hat." in msg
    assert "#N" in msg
    assert isinstance(e.value, ValueError)
    with pytest.raises(WordNotFound, match=r"\(no words\)"):
        resolve(TokenTable([], []), "x")


def test_json_round_trip(table):
    t = table("long")
    t.meta["note"] = "x"
    data = json.loads(json.dumps(t.to_json()))
    back = TokenTable.from_json(data)
    assert back.rows == t.rows and back.words == t.words
    assert (back.encoder, back.text, back.meta) == ("l", PROMPTS["long"], {"note": "x"})
    assert resolve(back, "dramatic lighting") == resolve(t, "dramatic lighting")
    assert back.to_json() == t.to_json()
    assert len(t.to_list()) == len(t) and t.to_list()[0]["piece"] == "<|startoftext|>"


def test_positional_table():
    t = positional_table(154)
    assert len(t) == 154 and t.rows[80].chunk == 1 and t.rows[80].piece == "#80"
    assert t.meta == {"positional": True} and t.special_positions() == []
    assert resolve(t, "#80") == (80,) and t.label(3) == "#3" and t.label(999) == "#999"


SP_VOCAB = {0: "<pad>", 1: "</s>", 2: "▁a", 3: "▁photo", 4: "real", 5: "istic", 6: "▁wizard", 7: ",",
            8: "▁red", 9: "▁hat", 10: "▁", 11: "(", 12: "-", 13: "."}


def test_sentencepiece_words():
    # T5-style: no BOS, '▁' starts a word, EOS then <pad>; segment ids as ComfyUI gives them
    ids = [2, 3, 4, 5, 6, 7, 8, 9, 13]  # ▁a ▁photo real istic ▁wizard , ▁red ▁hat .
    chunk = [(i, 1.0, 1) for i in ids] + [(1, 1.0, 0)] + [(0, 1.0, 0)] * 3
    t = build_table([chunk], SP_VOCAB, special_ids=(0, 1), text="a photorealistic wizard, red hat.")
    assert t.word_texts(include_punctuation=True) == ["a", "photorealistic", "wizard", ",", "red", "hat", "."]
    assert _word(t, "photorealistic").positions == (1, 2, 3)
    assert _word(t, ",").punctuation and _word(t, ".").punctuation
    assert t.special_positions() == [9, 10, 11, 12]
    assert resolve(t, "wizard") == (4,)
    assert resolve(t, "wizard, red") == (4, 5, 6)
    assert resolve(t, "hat") == (7,)


def test_sentencepiece_weight_segments_and_markers():
    # "(red:1.3) photo-realistic": segment change ends a word; a lone '▁' joins the next piece
    chunk = [(8, 1.3, 1), (3, 1.0, 2), (12, 1.0, 2), (4, 1.0, 2), (5, 1.0, 2), (10, 1.0, 2), (11, 1.0, 2),
             (1, 1.0, 0)]
    t = build_table([chunk], SP_VOCAB, special_ids=(0, 1))
    assert t.word_texts(include_punctuation=True) == ["red", "photo", "-", "realistic", "("]
    assert _word(t, "(").positions == (5, 6)
    assert resolve(t, "photo-realistic") == (1, 2, 3, 4)


def test_byte_bpe_words():
    vocab = {0: "<|endoftext|>", 1: "Ġwizard", 2: "Ġhat", 3: "photo", 4: "real", 5: "istic", 6: ","}
    chunk = [(3, 1.0, 1), (4, 1.0, 1), (5, 1.0, 1), (1, 1.0, 1), (6, 1.0, 1), (2, 1.0, 1), (0, 1.0, 0)]
    t = build_table([chunk], vocab, special_ids=(0,))
    assert t.word_texts(include_punctuation=True) == ["photorealistic", "wizard", ",", "hat"]
    assert t.rows[1].piece == "real" and t.rows[6].word_index == -1


# ---------------------------------------------------------------------------------------------------
# Several text encoders in one table (SD3: CLIP then T5)

# CLIP-style block: BOS a cat and a cat , 2 1 hats EOS + EOS pads; words end with '</w>', digits split
CLIP_VOCAB = {BOS: "<|startoftext|>", EOS: "<|endoftext|>", 1: "a</w>", 2: "cat</w>", 3: "and</w>", 4: ",</w>",
              5: "2</w>", 6: "1</w>", 7: "hats</w>"}
# T5-style block: '▁' starts words, the number stays whole, case kept, EOS then <pad>
T5_VOCAB = {0: "<pad>", 1: "</s>", 10: "▁a", 11: "▁Cat", 12: "▁cat", 13: "▁and", 14: ",", 15: "▁21", 16: "▁hat",
            17: "s"}


def _sd3_like(clip_len: int = 16, t5_len: int = 14) -> TokenTable:
    clip_ids = [1, 2, 3, 1, 2, 4, 5, 6, 7]  # a cat and a cat , 2 1 hats
    c = [(BOS, 1.0, 0)] + [(i, 1.0, 1) for i in clip_ids] + [(EOS, 1.0, 0)]
    c += [(EOS, 1.0, 0)] * (clip_len - len(c))
    t5_ids = [10, 11, 13, 10, 12, 14, 15, 16, 17]  # a Cat and a cat , 21 hat s
    t = [(i, 1.0, 1) for i in t5_ids] + [(1, 1.0, 0)]
    t += [(0, 1.0, 0)] * (t5_len - len(t))
    text = "a Cat and a cat, 21 hats"
    clip = build_table([c], CLIP_VOCAB, special_ids=(BOS, EOS), text=text, encoder="l", stream="clip_l")
    t5 = build_table([t], T5_VOCAB, special_ids=(0, 1), text=text, encoder="t5xxl", stream="t5xxl")
    return concat_tables([clip, t5], encoder="l+t5xxl", text=text, meta={"layout": "sd3"})


def test_concat_keeps_streams_and_shifts_positions():
    t = _sd3_like()
    assert len(t) == 30 and t.streams() == ["clip_l", "t5xxl"]
    assert [r.pos for r in t.rows] == list(range(30))
    assert {r.stream for r in t.rows[:16]} == {"clip_l"} and {r.stream for r in t.rows[16:]} == {"t5xxl"}
    assert [r.chunk for r in t.rows[15:17]] == [0, 1]  # chunk numbers continue over the blocks
    assert [w.index for w in t.words] == list(range(len(t.words)))
    for w in t.words:
        assert all(t.rows[p].word_index == w.index and t.rows[p].stream == w.stream for p in w.positions)
    assert t.special_positions() == [0, 10, 11, 12, 13, 14, 15] + list(range(25, 30))
    assert t.context_length() == 30 and t.meta == {"layout": "sd3"}


def test_multi_stream_resolve_merges_streams():
    t = _sd3_like()
    # 'cat' is found in both streams, in CLIP's lower case and T5's 'Cat'
    assert resolve(t, "cat") == (2, 5, 17, 20)
    assert resolve(t, "CAT") == (2, 5, 17, 20)
    assert find_positions(t, "cat") == [(2, 17), (5, 20)]
    assert resolve(t, "cat, 21") == (5, 6, 7, 8, 20, 21, 22)
    # CLIP's '2' '1' and T5's '21' are the same number; 'hats' is one CLIP piece and two T5 pieces
    assert resolve(t, "21") == (7, 8, 22)
    assert resolve(t, "hats") == (9, 23, 24)
    # a phrase that ends inside a word of one stream is found only where word boundaries fit it
    assert resolve(t, "1") == (8,)
    assert resolve(t, "#16-17") == (16, 17)


def test_multi_stream_occurrences_count_per_stream():
    t = _sd3_like()
    assert find_positions(t, "cat[1]") == [(2, 17)]
    assert find_positions(t, "cat[2]") == [(5, 20)]
    assert find_positions(t, "a cat[2]") == [(4, 5, 19, 20)]
    with pytest.raises(WordNotFound, match=r"occurs 2 time\(s\) in the prompt \(counted per text encoder "
                                           r"stream\); occurrence \[3\] does not exist"):
        find_positions(t, "cat[3]")
    assert find_positions(t, "cat[2]", stream="clip_l") == [(5,)]


def test_stream_restriction():
    t = _sd3_like()
    assert resolve(t, "cat", stream="t5xxl") == (17, 20)
    assert resolve(t, "cat", stream=["clip_l"]) == (2, 5)
    assert resolve(t, "cat", stream=("clip_l", "t5xxl")) == resolve(t, "cat")
    with pytest.raises(WordNotFound, match=r"'1' is not in the prompt \(in stream 't5xxl'\)"):
        resolve(t, "1", stream="t5xxl")
    with pytest.raises(ValueError, match="stream 'clip_g' is not in this token table; its streams are: clip_l, "
                                         "t5xxl"):
        resolve(t, "cat", stream="clip_g")
    only = restrict_streams(t, "t5xxl")
    assert len(only) == len(t) and [r.pos for r in only.rows] == [r.pos for r in t.rows]
    assert {w.stream for w in only.words} == {"t5xxl"} and [w.index for w in only.words] == list(range(len(only.words)))
    assert all(r.word_index == -1 for r in only.rows[:16])
    assert all(only.words[r.word_index].positions.count(r.pos) == 1 for r in only.rows[16:] if r.word_index >= 0)
    assert resolve(only, "cat") == (17, 20) and resolve(only, "#2") == (2,)
    assert only.meta["streams"] == ["t5xxl"] and only.streams() == t.streams()
    with pytest.raises(ValueError, match="its streams are: none"):
        restrict_streams(positional_table(3), "t5xxl")


def test_word_list_names_each_word_once():
    t = _sd3_like()
    # the stream with the fewest words (T5: '21' is one word) gives the list, with its case
    assert t.word_texts() == ["a", "Cat", "and", "a", "cat", "21", "hats"]
    assert t.word_list() == "a, Cat, and, cat, 21, hats"
    merged = t.merged_words()
    assert [w.positions for w in merged] == [(1, 16), (2, 17), (3, 18), (4, 19), (5, 20), (7, 8, 22), (9, 23, 24)]
    assert [w.text for w in t.merged_words(include_punctuation=True)][5] == ","
    # the message of an unknown word lists each word once too
    with pytest.raises(WordNotFound, match=r"The prompt's words are: a, Cat, and, cat, 21, hats\."):
        resolve(t, "dog")
    # single-stream tables are unchanged
    single = _sd3_like()
    single = restrict_streams(single, "clip_l")
    assert single.word_texts() == ["a", "cat", "and", "a", "cat", "2", "1", "hats"]


def test_json_round_trip_with_streams():
    t = _sd3_like()
    t.meta["context_length"] = 16
    back = TokenTable.from_json(json.loads(json.dumps(t.to_json())))
    assert back.rows == t.rows and back.words == t.words and back.meta == t.meta
    assert back.streams() == ["clip_l", "t5xxl"] and back.context_length() == 16
    assert resolve(back, "cat[2]") == resolve(t, "cat[2]")
    assert t.to_list()[0]["stream"] == "clip_l"


def test_json_from_before_streams_loads(table):
    t = table("repeat")
    data = json.loads(json.dumps(t.to_json()))
    for r in data["rows"]:
        del r["stream"]
    for w in data["words"]:
        del w["stream"]
    old = TokenTable.from_json(data)
    assert [r.stream for r in old.rows] == [""] * len(t) and {w.stream for w in old.words} == {""}
    assert old.streams() == [] and old.context_length() == len(t)
    assert [(r.pos, r.piece, r.word_index, r.special) for r in old.rows] == \
        [(r.pos, r.piece, r.word_index, r.special) for r in t.rows]
    assert resolve(old, "hat[2]") == resolve(t, "hat[2]") and old.word_texts() == t.word_texts()
    with pytest.raises(ValueError, match="none \\(the table has no stream names\\)"):
        resolve(old, "hat", stream="clip_l")
    # words saved without 'stream' take their rows' stream
    named = _sd3_like().to_json()
    for w in named["words"]:
        del w["stream"]
    assert TokenTable.from_json(named).words == _sd3_like().words


# ---------------------------------------------------------------------------------------------------
# Piece schemes, byte decoding, template positions


def test_byte_level_pieces_decode_to_text():
    # CLIP and Qwen write UTF-8 bytes as characters: 猫 = 'ç' 'Į' '«'
    vocab = {1: "ç", 2: "Į", 3: "«</w>", 4: "cafÃ©</w>", BOS: "<s>", EOS: "</s>"}
    chunk = [(BOS, 1.0, 0), (1, 1.0, 1), (2, 1.0, 1), (3, 1.0, 1), (4, 1.0, 1), (EOS, 1.0, 0)]
    t = build_table([chunk], vocab, special_ids=(BOS, EOS))
    assert t.word_texts() == ["猫", "café"] and resolve(t, "猫") == (1, 2, 3)
    qwen = {1: "ĠcafÃ©", 2: "Ġç", 3: "Į", 4: "«", 5: "Ċ", 6: "new"}
    t = build_table([[(i, 1.0, 1) for i in (1, 2, 3, 4, 5, 6)]], qwen, scheme="bytelevel")
    assert t.word_texts() == ["café", "猫", "new"]  # a newline piece starts a word
    assert resolve(t, "new") == (4, 5) and piece_text("Ġç", "bytelevel") == " "


def test_sentencepiece_byte_fallback_and_wordpiece():
    vocab = {0: "<pad>", 1: "</s>", 2: "▁", 3: "<0xE7>", 4: "<0x8C>", 5: "<0xAB>", 6: "▁cat"}
    chunk = [(2, 1.0, 1), (3, 1.0, 1), (4, 1.0, 1), (5, 1.0, 1), (6, 1.0, 1), (1, 1.0, 0)]
    t = build_table([chunk], vocab, special_ids=(0, 1), scheme="sentencepiece")
    assert t.word_texts() == ["猫", "cat"] and resolve(t, "猫") == (0, 1, 2, 3)
    bert = {101: "[CLS]", 102: "[SEP]", 0: "[PAD]", 1: "red", 2: "ca", 3: "##t", 4: "红", 5: "猫"}
    chunk = [(101, 1.0, 0), (1, 1.0, 1), (2, 1.0, 1), (3, 1.0, 1), (4, 1.0, 1), (5, 1.0, 1), (102, 1.0, 0),
             (0, 1.0, 0)]
    t = build_table([chunk], bert, special_ids=(0, 101, 102), scheme="wordpiece")
    assert t.word_texts() == ["red", "cat", "红", "猫"] and resolve(t, "cat") == (2, 3)
    assert resolve(t, "红猫") == (4, 5)  # a phrase of one-character words
    with pytest.raises(ValueError, match="unknown piece scheme"):
        build_table([chunk], bert, scheme="bpe")


def test_lone_word_start_marker_is_no_word():
    # Pile-T5 ends a weighted segment with a lone '▁': it forms no word and never starts a match
    vocab = {1: "</s>", 2: "▁red", 3: "▁", 4: "▁c", 5: "afé"}
    chunk = [(2, 1.0, 1), (3, 1.0, 1), (4, 1.0, 2), (5, 1.0, 2), (1, 1.0, 0)]
    t = build_table([chunk], vocab, special_ids=(1,))
    assert t.word_texts() == ["red", "café"] and t.word_texts(include_punctuation=True) == ["red", "", "café"]
    assert find_positions(t, "café") == [(2, 3)]
    assert find_positions(t, "red café") == [(0, 1, 2, 3)]


def test_special_positions_mark_template_tokens():
    vocab = {1: "<|im_start|>", 2: "user", 3: "Ċ", 4: "a", 5: "Ġcat", 6: "<|im_end|>"}
    chunk = [(i, 1.0, 1) for i in (1, 2, 3, 4, 5, 6, 3)]
    t = build_table([chunk], vocab, special_ids=(1, 6), special_positions={1, 2, 6}, stream="qwen3_4b")
    assert t.special_positions() == [0, 1, 2, 5, 6] and t.word_texts() == ["a", "cat"]
    assert all(r.stream == "qwen3_4b" for r in t.rows) and t.streams() == ["qwen3_4b"]


def test_normalize_text():
    assert normalize_text(" Photo-Realistic\n") == "photo-realistic"
    assert normalize_text("ＣＡＴ") == "cat"  # full-width letters (NFKC)
    assert normalize_text("Straße") == "strasse"  # case folding


def test_a_stream_without_word_boundaries_never_gives_the_word_list():
    """A byte-level stream whose tokenizer dropped the spaces ('ared', 'cat') forms words like 'aredcat';
    the merged list comes from the stream whose words are the typed prompt's words, and a phrase only
    finds positions where a stream keeps it apart."""
    text = "a red cat, 21 hats"
    t5 = [(i, 1.0, 1) for i in (10, 21, 12, 14, 15, 16, 17)] + [(1, 1.0, 0)]
    t5_vocab = {**T5_VOCAB, 21: "▁red"}
    llama_vocab = {100: "<|begin_of_text|>", 101: "ared", 102: "cat", 103: ",", 104: "21", 105: "h", 106: "ats"}
    ll = [(100, 1.0, 0)] + [(i, 1.0, 1) for i in range(101, 107)]
    table = concat_tables([
        build_table([t5], t5_vocab, special_ids=(0, 1), text=text, encoder="t5xxl", stream="t5xxl"),
        build_table([ll], llama_vocab, special_ids=(100,), text=text, encoder="llama", stream="llama",
                    scheme="bytelevel"),
    ], text=text)
    assert [w.text for w in table.words if w.stream == "llama"] == ["aredcat", ",", "21hats"]
    assert table.word_texts() == ["a", "red", "cat", "21", "hats"]
    assert resolve(table, "cat") == (2,)
    assert resolve(table, "red cat") == (1, 2)  # 'aredcat' has no boundary before 'red'
    assert resolve(table, "a red cat") == (0, 1, 2, 9, 10)  # ... but as a whole it is the Llama pieces 9-10
