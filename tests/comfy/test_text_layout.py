"""Token tables for every DiT text encoder layout, from ComfyUI's real tokenizers and real (tiny) encoders.

The tokenizer wrappers are ComfyUI's own classes with the vocabularies it ships. Wan's UMT5, HunyuanDiT's
mT5 and Lumina 2's Gemma read their sentencepiece model from the checkpoint; here a small sentencepiece
model trained in-process (same special-id layout as the real ones) stands in. The encoders are ComfyUI's
own classes built through ``comfy.sd.CLIP`` with tiny configs (``<name>_model_config``) and random
weights, so ``encode_from_tokens_scheduled`` gives the real conditioning layout (lengths, cuts, padding).
"""

from __future__ import annotations

import io
import logging
import types

import pytest
import torch

PROMPT = "a red cat, 21 hats"
# the prompts every family is checked with: plain, weighted, repeated words, long (T5 > 256, CLIP > 77)
PROMPTS = [PROMPT, "(red:1.3) cat BREAK blue sky", "a cat and a cat, café",
           ", ".join(f"item{i} red thing" for i in range(70))]
LUMINA_SYSTEM = "You are an assistant designed to generate superior images with the superior degree of " \
                "image-text alignment based on textual prompts or user prompts. <Prompt Start> "

CLIP_CFG = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2, "num_hidden_layers": 3,
            "projection_dim": 32}
T5_CFG = {"d_model": 32, "d_ff": 64, "d_kv": 16, "num_heads": 2, "num_layers": 1}
LLM_CFG = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 4, "num_attention_heads": 2,
           "num_key_value_heads": 1}
BERT_CFG = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2, "num_hidden_layers": 1}

_CORPUS = ["a red cat wearing hats", "twenty one red hats on a cat", "a photo of a cat and a dog",
           "blue sky over the sea", "21 hats, 42 cats", "an old wizard with a tall pointed hat, café",
           LUMINA_SYSTEM + "a red cat", "item red thing, item blue thing"] * 20


def _spiece(pad: int, eos: int, unk: int, bos: int) -> bytes:
    """A small sentencepiece model (byte fallback on) with the given special ids."""
    import sentencepiece

    buf = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(_CORPUS), model_writer=buf, vocab_size=320, hard_vocab_limit=False,
        pad_id=pad, eos_id=eos, unk_id=unk, bos_id=bos, byte_fallback=True, character_coverage=1.0,
        minloglevel=2)
    return buf.getvalue()


@pytest.fixture(scope="module")
def te(comfy):
    """ComfyUI's text-encoder modules (imported after the in-process boot)."""
    import comfy.sd
    import comfy.sd1_clip
    import comfy.supported_models_base
    import comfy.text_encoders.ace
    import comfy.text_encoders.aura_t5
    import comfy.text_encoders.flux
    import comfy.text_encoders.hidream
    import comfy.text_encoders.hunyuan_image
    import comfy.text_encoders.hunyuan_video
    import comfy.text_encoders.hydit
    import comfy.text_encoders.lumina2
    import comfy.text_encoders.omnigen2
    import comfy.text_encoders.pixart_t5
    import comfy.text_encoders.qwen_image
    import comfy.text_encoders.sd3_clip
    import comfy.text_encoders.wan
    import comfy.text_encoders.z_image

    return types.SimpleNamespace(sd=comfy.sd, sd1=comfy.sd1_clip, base=comfy.supported_models_base,
                                 **{m: getattr(comfy.text_encoders, m) for m in (
                                     "ace", "aura_t5", "flux", "hidream", "hunyuan_image", "hunyuan_video",
                                     "hydit", "lumina2",
                                     "omnigen2", "pixart_t5", "qwen_image", "sd3_clip", "wan", "z_image")})


@pytest.fixture(scope="module")
def spm_models():
    return {"t5": _spiece(pad=0, eos=1, unk=2, bos=-1), "gemma": _spiece(pad=0, eos=1, bos=2, unk=3)}


def _families(te, spm_models) -> dict[str, tuple]:
    """family -> (tokenizer class, encoder class, model_options, tokenizer_data)."""
    sd3 = te.sd3_clip.sd3_clip
    big_t5 = {**T5_CFG, "d_model": 4096}  # SD3 concatenates CLIP (padded to 4096 features) with T5
    return {
        "flux": (te.flux.FluxTokenizer, te.flux.flux_clip(),
                 {"clip_l_model_config": CLIP_CFG, "t5xxl_model_config": T5_CFG}, {}),
        "sd3": (te.sd3_clip.SD3Tokenizer, sd3(),
                {"clip_l_model_config": CLIP_CFG, "clip_g_model_config": CLIP_CFG, "t5xxl_model_config": big_t5},
                {}),
        "sd3_no_t5": (te.sd3_clip.SD3Tokenizer, sd3(t5=False),
                      {"clip_l_model_config": CLIP_CFG, "clip_g_model_config": CLIP_CFG}, {}),
        "sd3_g_t5": (te.sd3_clip.SD3Tokenizer, sd3(clip_l=False),
                     {"clip_g_model_config": CLIP_CFG, "t5xxl_model_config": big_t5}, {}),
        "chroma": (te.pixart_t5.PixArtTokenizer, te.pixart_t5.pixart_te(), {"t5xxl_model_config": T5_CFG}, {}),
        "auraflow": (te.aura_t5.AuraT5Tokenizer, te.aura_t5.AuraT5Model, {"pile_t5xl_model_config": T5_CFG}, {}),
        "wan": (te.wan.WanT5Tokenizer, te.wan.te(), {"umt5xxl_model_config": T5_CFG},
                {"spiece_model": spm_models["t5"]}),
        "qwen_image": (te.qwen_image.QwenImageTokenizer, te.qwen_image.te(), {"qwen25_7b_model_config": LLM_CFG},
                       {}),
        "z_image": (te.z_image.ZImageTokenizer, te.z_image.te(), {"qwen3_4b_model_config": LLM_CFG}, {}),
        "omnigen2": (te.omnigen2.Omnigen2Tokenizer, te.omnigen2.te(), {"qwen25_3b_model_config": LLM_CFG}, {}),
        "lumina2": (te.lumina2.LuminaTokenizer, te.lumina2.te(), {"gemma2_2b_model_config": LLM_CFG},
                    {"spiece_model": spm_models["gemma"]}),
        "hidream": (te.hidream.HiDreamTokenizer, te.hidream.hidream_clip(),
                    {"clip_l_model_config": CLIP_CFG, "clip_g_model_config": CLIP_CFG,
                     "t5xxl_model_config": T5_CFG, "llama_model_config": LLM_CFG}, {}),
        "hunyuan_dit": (te.hydit.HyditTokenizer, te.hydit.HyditModel,
                        {"hydit_clip_model_config": BERT_CFG, "mt5xl_model_config": T5_CFG},
                        {"mt5xl.spiece_model": spm_models["t5"]}),
        # HunyuanVideo 1.0: its encoder keeps the user part of a Llama-3 template
        "hunyuan_video": (te.hunyuan_video.HunyuanVideoTokenizer, te.hunyuan_video.hunyuan_video_clip(),
                          {"clip_l_model_config": CLIP_CFG, "llama_model_config": LLM_CFG}, {}),
        # HunyuanImage 2.1 / HunyuanVideo 1.5: Qwen2.5-VL, plus ByT5 for quoted text (the ByT5 encoder gets no
        # model_name, so its tiny config is the "_model_config" entry)
        "hunyuan_image": (te.hunyuan_image.HunyuanImageTokenizer, te.hunyuan_image.te(),
                          {"qwen25_7b_model_config": LLM_CFG, "_model_config": T5_CFG}, {}),
        "hunyuan_video_15": (te.hunyuan_video.HunyuanVideo15Tokenizer, te.hunyuan_image.te(),
                             {"qwen25_7b_model_config": LLM_CFG, "_model_config": T5_CFG}, {}),
        # a text encoder without a known token layout (ACE-Step's lyrics + UMT5-base): the fallback
        "ace": (te.ace.AceT5Tokenizer, te.ace.AceT5Model, {"umt5base_model_config": T5_CFG},
                {"spiece_model": spm_models["t5"]}),
        **_klein(te),
    }


def _klein(te) -> dict:
    """Flux.2 Klein's Qwen3 encoder (only newer ComfyUI has it: skipped on 0.3.75)."""
    if not hasattr(te.flux, "KleinTokenizer"):
        return {}
    cfg = {**LLM_CFG, "num_hidden_layers": 28}  # Klein stacks the hidden states of layers 9, 18 and 27
    return {"flux2_klein": (te.flux.KleinTokenizer, te.flux.klein_te(), {"qwen3_4b_model_config": cfg}, {})}


@pytest.fixture(scope="module")
def clips(te, spm_models):
    """family -> a real comfy.sd.CLIP with tiny random-weight encoders (built on first use)."""
    fams = _families(te, spm_models)
    built: dict = {}

    def get(family: str):
        if family not in fams:
            pytest.skip(f"this ComfyUI has no {family} text encoder")
        if family not in built:
            tok, enc, opts, data = fams[family]
            clip = te.sd.CLIP(te.base.ClipTarget(tok, enc), tokenizer_data=data,
                              model_options={**opts, "dtype": torch.float32})
            gen = torch.Generator().manual_seed(0)
            with torch.no_grad():
                for name, p in clip.cond_stage_model.named_parameters():
                    if ".visual." not in name:  # Qwen2.5-VL's vision tower is never run for text
                        p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
            built[family] = clip
        return built[family]

    return get


def _encode(clip, text: str):
    with torch.inference_mode():
        return clip.encode_from_tokens_scheduled(clip.tokenize(text))


def _tokens(clip, text: str) -> dict:
    return clip.tokenize(text, return_word_ids=True)


def _decode_pieces(clip, stream: str, pieces: list[str]) -> str:
    """The text of vocabulary ``pieces`` of ``stream``, decoded by that stream's own tokenizer: a Hugging Face
    tokenizer (CLIP, Qwen2, T5, BERT; Llama-3 up to ComfyUI 0.8), ComfyUI's SPieceTokenizer, or ComfyUI's
    pure-Python BPETokenizer (Llama-3 in newer ComfyUI: no ``convert_tokens_to_string``, but vocab + decode)."""
    sub = getattr(clip.tokenizer, stream, None) or getattr(clip.tokenizer, f"clip_{stream}")
    tok = sub.tokenizer
    if hasattr(tok, "convert_tokens_to_string"):
        return tok.convert_tokens_to_string(pieces).replace("</w>", " ")
    if hasattr(getattr(tok, "tokenizer", None), "decode_pieces"):  # SPieceTokenizer
        return tok.tokenizer.decode_pieces(pieces)
    if hasattr(tok, "get_vocab") and hasattr(tok, "decode"):  # BPETokenizer
        vocab = tok.get_vocab()
        return tok.decode([vocab[p] for p in pieces], skip_special_tokens=False)
    raise TypeError(f"cannot decode pieces with the {stream} tokenizer {type(tok).__name__}")


def _norm_join(clip, table, positions) -> str:
    """The normalised text of the pieces at ``positions``, decoded (one by one) by the stream's own tokenizer."""
    from attention_focus.nodes.token_table import normalize_text

    return normalize_text("".join(_decode_pieces(clip, table.rows[p].stream, [table.rows[p].piece])
                                  for p in positions))


def _norm_join_bytes(clip, table, positions) -> str:
    """As ``_norm_join``, decoding all pieces of one stream together (multi-byte characters)."""
    from attention_focus.nodes.token_table import normalize_text

    stream = table.rows[positions[0]].stream
    return normalize_text(_decode_pieces(clip, stream, [table.rows[p].piece for p in positions]))


def _qwen_start(ids: list[int]) -> int:
    """Independent statement of Qwen-Image's cut: after the 2nd '<|im_start|>' and its 'user', '\\n'."""
    starts = [i for i, t in enumerate(ids) if t == 151644]
    i = starts[1]
    assert ids[i + 1: i + 3] == [872, 198]
    return i + 3


def _expected_length(family: str, tok: dict, text: str) -> tuple[int, int]:
    """(table length, context length) from the tokenizer output and each family's documented layout."""
    n = {k: sum(len(c) for c in v) for k, v in tok.items()}
    if family == "flux":
        assert n["t5xxl"] >= 256
        return n["t5xxl"], n["t5xxl"]
    if family == "sd3":
        assert n["l"] == n["g"] == 77 * len(tok["l"])
        return n["l"] + n["t5xxl"], n["l"] + n["t5xxl"]
    if family == "sd3_no_t5":
        return n["l"], n["l"]
    if family == "sd3_g_t5":
        return n["g"] + n["t5xxl"], n["g"] + n["t5xxl"]
    if family == "chroma":
        assert tok["t5xxl"][0][-1][0] == 1  # EOS, no padding
        return n["t5xxl"], n["t5xxl"]
    if family == "auraflow":
        assert n["pile_t5xl"] >= 256
        return n["pile_t5xl"], n["pile_t5xl"]
    if family == "wan":
        assert n["umt5xxl"] >= 512
        return n["umt5xxl"], n["umt5xxl"]
    if family == "qwen_image":
        ids = [t for t, _, _ in tok["qwen25_7b"][0]]
        return len(ids) - _qwen_start(ids), len(ids) - _qwen_start(ids)
    if family in ("z_image", "omnigen2", "lumina2"):
        (key,) = tok
        return n[key], n[key]
    if family == "hidream":  # T5 context, then the Llama tokens (conditioning_llama3)
        assert n["t5xxl"] == 128 and n["llama"] >= 128
        return 128 + n["llama"], 128
    if family == "hunyuan_dit":
        assert n["hydit_clip"] >= 77 and n["mt5xl"] >= 256
        return n["hydit_clip"] + n["mt5xl"], n["hydit_clip"]
    if family == "hunyuan_video":
        start, stop = _llama_user_span([t for t, _, _ in tok["llama"][0]])
        return stop - start, stop - start
    if family in ("hunyuan_image", "hunyuan_video_15"):  # Qwen after the template cut, then ByT5 (quoted text)
        ids = [t for t, _, _ in tok["qwen25_7b"][0]]
        n_qwen = len(ids) - _qwen_start(ids)
        return n_qwen + n.get("byt5", 0), n_qwen
    if family == "flux2_klein":
        assert n["qwen3_4b"] >= 512  # padded by the tokenizer; the model pads nothing more
        return n["qwen3_4b"], n["qwen3_4b"]
    raise AssertionError(family)


def _llama_user_span(ids: list[int]) -> tuple[int, int]:
    """Independent statement of HunyuanVideo 1.0's cut: from the user header's <|end_header_id|> (past a following
    '\\n\\n') through the <|eot_id|> after it."""
    i = next(j for j in range(len(ids)) if ids[j:j + 3] == [128006, 882, 128007])
    start = i + 2 + (2 if ids[i + 3] == 271 else 0)
    stop = ids.index(128009, i) + 1
    return start, stop


FAMILIES = ["flux", "sd3", "sd3_no_t5", "sd3_g_t5", "chroma", "auraflow", "wan", "qwen_image", "z_image",
            "omnigen2", "lumina2", "hidream", "hunyuan_dit", "hunyuan_video", "hunyuan_image", "hunyuan_video_15",
            "flux2_klein"]


# ---------------------------------------------------------------------------------------------------
# Lengths: table == conditioning, for every family and prompt


@pytest.mark.parametrize("family", FAMILIES)
def test_table_has_one_row_per_conditioning_position(family, clips):
    from attention_focus.nodes.text_layout import context_tokens

    clip = clips(family)
    for text in PROMPTS + ([LUMINA_SYSTEM + PROMPT] if family == "lumina2" else []):
        cond = _encode(clip, text)
        table, note = context_tokens(clip, text)
        want_len, want_ctx = _expected_length(family, _tokens(clip, text), text)
        assert note == "", (family, text, note)
        assert (len(table), table.context_length()) == (want_len, want_ctx), (family, text)
        assert cond[0][0].shape[1] == table.context_length(), (family, text)
        checked, note = context_tokens(clip, text, context_length=cond[0][0].shape[1])
        assert note == "" and checked.rows == table.rows
        assert [r.pos for r in table.rows] == list(range(len(table)))
        assert all(r.stream for r in table.rows)
        if family == "hunyuan_dit":  # the mT5 rows are conditioning_mt5xl, after the BERT context
            assert cond[0][1]["conditioning_mt5xl"].shape[1] == len(table) - table.context_length()
            assert table.streams() == ["hydit_clip", "mt5xl"]
            assert {r.stream for r in table.rows[:table.context_length()]} == {"hydit_clip"}
        if family == "hidream":
            llama = cond[0][1]["conditioning_llama3"]
            assert table.meta["conditioning_llama3_length"] == llama.shape[-2] == len(table) - 128
            assert table.streams() == ["t5xxl", "llama"]


@pytest.mark.parametrize("family", ["flux", "sd3", "qwen_image", "hunyuan_dit"])
def test_text_encode_node_stays_bit_identical(family, clips, comfy):
    from attention_focus.nodes.hook_state import TOKENS_KEY

    clip = clips(family)
    with torch.inference_mode():
        ref = comfy.nodes.CLIPTextEncode().encode(clip, PROMPT)[0]
        ours = comfy.nodes.NODE_CLASS_MAPPINGS["AttentionFocusTextEncode"]().encode(clip, PROMPT)[0]
    for (a, da), (b, db) in zip(ref, ours, strict=True):
        assert torch.equal(a, b)
        assert set(db) == set(da) | {TOKENS_KEY}
        assert db[TOKENS_KEY].context_length() == b.shape[1]
        assert not db[TOKENS_KEY].meta.get("positional")


# ---------------------------------------------------------------------------------------------------
# Words at the right positions


def _llama_keeps_spaces(table) -> bool:
    """ComfyUI's Llama-3 tokenizer files load as a LlamaTokenizer under transformers 5 that drops the spaces
    ("a red cat" → 'ared', 'cat'): that stream then has no word boundaries (words like 'aredcat') and only the
    T5 stream labels the prompt's words; the merged word list must still be T5's (checked below)."""
    return "llama" not in table.streams() or any(w.stream == "llama" and w.text == "red" for w in table.words)


@pytest.mark.parametrize("family", FAMILIES)
def test_words_are_found_at_their_pieces(family, clips):
    from attention_focus.nodes.text_layout import context_tokens
    from attention_focus.nodes.token_table import find_positions

    clip = clips(family)
    table, _ = context_tokens(clip, PROMPT)
    if table.streams() == ["llama"] and not _llama_keeps_spaces(table):
        pytest.skip("this transformers' Llama-3 tokenizer drops the spaces (see _llama_keeps_spaces)")
    n_streams = len(table.streams())
    for word in ("a", "red", "cat", "21", "hats"):
        occ = find_positions(table, word)
        assert len(occ) == 1, (family, word, occ)
        for stream in table.streams():
            found = find_positions(table, word, stream=stream)
            if stream == "llama" and not found and not _llama_keeps_spaces(table):
                continue  # see _llama_keeps_spaces
            pos = found[0]
            assert _norm_join(clip, table, pos) == word, (family, word, stream, [table.rows[p].piece for p in pos])
            assert not any(table.rows[p].special for p in pos)
            assert {table.rows[p].stream for p in pos} == {stream}
        assert len({table.rows[p].stream for p in occ[0]}) == n_streams or not _llama_keeps_spaces(table)
    # CLIP alone splits the digits into words; with a T5 stream the coarser T5 words are listed
    words = ["a", "red", "cat", "21", "hats"]
    if table.streams() == ["clip_l"]:
        words = ["a", "red", "cat", "2", "1", "hats"]
    assert table.word_texts() == words
    assert table.word_list() == ", ".join(words)
    # text positions come in prompt order inside each stream, specials are never words
    for stream in table.streams():
        if stream == "llama" and not _llama_keeps_spaces(table):
            continue
        firsts = [find_positions(table, w, stream=stream)[0][0] for w in ("a", "red", "cat", "21", "hats")]
        assert firsts == sorted(firsts)
    assert all(r.word_index == -1 for r in table.rows if r.special)


def test_clip_and_qwen_bytes_are_decoded(clips):
    from attention_focus.nodes.text_layout import context_tokens
    from attention_focus.nodes.token_table import resolve

    for family in ("sd3", "qwen_image"):
        clip = clips(family)
        table, _ = context_tokens(clip, "a café with a 猫")
        assert "café" in table.word_texts()
        pos = resolve(table, "café", stream=table.streams()[0])
        assert _norm_join_bytes(clip, table, pos) == "café"
    clip = clips("qwen_image")
    table, _ = context_tokens(clip, "a café with a 猫")
    assert "猫" in table.word_texts() and _norm_join_bytes(clip, table, resolve(table, "猫")) == "猫"
    assert len(resolve(table, "猫")) == 3  # one character, three byte-level pieces


# ---------------------------------------------------------------------------------------------------
# SD3: CLIP and T5 copies of every word


def test_sd3_merges_clip_and_t5(clips):
    from attention_focus.nodes.text_layout import context_tokens
    from attention_focus.nodes.token_table import WordNotFound, find_positions, resolve, restrict_streams

    clip = clips("sd3")
    text = "a Cat and a dog, 21 cats and a cat"
    table, _ = context_tokens(clip, text)
    assert table.streams() == ["clip_l", "t5xxl"] and table.meta["layout"] == "sd3"
    clip_rows = [r for r in table.rows if r.stream == "clip_l"]
    assert len(clip_rows) == 77 and all(r.pos < 77 for r in clip_rows)
    cat = resolve(table, "cat")
    assert [table.rows[p].stream for p in cat] == ["clip_l", "clip_l", "t5xxl", "t5xxl"]
    assert [_norm_join(clip, table, [p]) for p in cat] == ["cat"] * 4
    # occurrences are counted per stream: cat[2] is the second cat of CLIP and of T5
    first, second = find_positions(table, "cat")
    assert first == (cat[0], cat[2]) and second == (cat[1], cat[3])
    assert find_positions(table, "cat[2]") == [second]
    assert resolve(table, "cat", stream="t5xxl") == (cat[2], cat[3])
    assert resolve(table, "cat[1]", stream="clip_l") == (cat[0],)
    with pytest.raises(WordNotFound, match=r"occurs 2 time\(s\).*per text encoder stream.*\[3\]"):
        find_positions(table, "cat[3]")
    # CLIP splits digits ('2' '1'), T5 does not ('21'): the number still matches in both streams
    n21 = resolve(table, "21")
    assert [table.rows[p].stream for p in n21] == ["clip_l", "clip_l", "t5xxl"]
    # one word list, original case from T5 (CLIP lower-cases); merged words cover both streams
    assert table.word_texts() == ["a", "Cat", "and", "a", "dog", "21", "cats", "and", "a", "cat"]
    assert table.word_list() == "a, Cat, and, dog, 21, cats, cat"
    merged = {w.text: w for w in table.merged_words()}
    assert merged["21"].positions == n21 and merged["Cat"].positions == (cat[0], cat[2])
    only_t5 = restrict_streams(table, "t5xxl")
    assert len(only_t5) == len(table) and only_t5.streams() == table.streams()
    assert resolve(only_t5, "cat") == (cat[2], cat[3])
    assert all(r.word_index == -1 for r in only_t5.rows if r.stream == "clip_l")
    with pytest.raises(ValueError, match="stream 'umt5xxl' is not in this token table; its streams are: "
                                         "clip_l, t5xxl"):
        resolve(table, "cat", stream="umt5xxl")


def test_sd3_missing_encoders_drop_their_block(clips):
    from attention_focus.nodes.text_layout import context_tokens

    no_t5, _ = context_tokens(clips("sd3_no_t5"), PROMPT)
    assert no_t5.streams() == ["clip_l"] and len(no_t5) == 77
    g_t5, _ = context_tokens(clips("sd3_g_t5"), PROMPT)
    assert g_t5.streams() == ["clip_g", "t5xxl"]
    assert g_t5.rows[0].piece == "<|startoftext|>" and g_t5.rows[76].special


# ---------------------------------------------------------------------------------------------------
# Templates


def test_qwen_image_starts_after_the_template_prefix(clips):
    from attention_focus.nodes.text_layout import context_tokens

    table, _ = context_tokens(clips("qwen_image"), PROMPT)
    assert table.rows[0].piece == "a" and not table.rows[0].special
    assert [r.piece for r in table.rows[-5:]] == ["<|im_end|>", "Ċ", "<|im_start|>", "assistant", "Ċ"]
    assert table.special_positions() == list(range(len(table) - 5, len(table)))
    assert "Describe" not in "".join(r.piece for r in table.rows)  # the system prompt is cut
    # a prompt that brings its own template: the same cut as the encoder, template rows special
    own = "<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\nred cat<|im_end|>\n<|im_start|>assistant\n"
    cond = _encode(clips("qwen_image"), own)
    t2, note = context_tokens(clips("qwen_image"), own, context_length=cond[0][0].shape[1])
    assert note == "" and t2.word_texts() == ["red", "cat"] and t2.rows[0].piece == "red"


def test_z_image_keeps_the_template_as_specials(clips):
    from attention_focus.nodes.text_layout import context_tokens

    table, _ = context_tokens(clips("z_image"), PROMPT)
    assert [r.piece for r in table.rows[:3]] == ["<|im_start|>", "user", "Ċ"]
    assert table.special_positions() == [0, 1, 2] + list(range(len(table) - 5, len(table)))
    assert table.rows[3].piece == "a" and table.word_texts() == ["a", "red", "cat", "21", "hats"]


def test_omnigen2_system_block_is_special(clips):
    from attention_focus.nodes.text_layout import context_tokens

    table, _ = context_tokens(clips("omnigen2"), PROMPT)
    assert table.word_texts() == ["a", "red", "cat", "21", "hats"]  # not the system prompt's words
    first = table.words[0].positions[0]
    assert table.special_positions() == list(range(first)) + [len(table) - 2, len(table) - 1]
    assert [r.piece for r in table.rows[first - 3:first]] == ["<|im_start|>", "user", "Ċ"]
    assert "helpful" in "".join(r.piece for r in table.rows[:first])


def test_lumina2_system_prompt_and_bos_are_specials(clips):
    from attention_focus.nodes.text_layout import context_tokens
    from attention_focus.nodes.token_table import resolve

    clip = clips("lumina2")
    plain, _ = context_tokens(clip, PROMPT)
    assert plain.special_positions() == [0] and plain.rows[0].piece == "<s>"
    table, _ = context_tokens(clip, LUMINA_SYSTEM + PROMPT)
    assert table.word_texts() == ["a", "red", "cat", "21", "hats"]
    first = resolve(table, "a")[0]
    assert table.special_positions() == list(range(first))
    assert "".join(r.piece for r in table.rows[:first]).replace("▁", "").endswith("<PromptStart>")
    assert len(table) == _encode(clip, LUMINA_SYSTEM + PROMPT)[0][0].shape[1]


def test_hunyuan_dit_bert_then_mt5(clips):
    from attention_focus.nodes.text_layout import context_tokens
    from attention_focus.nodes.token_table import resolve

    table, _ = context_tokens(clips("hunyuan_dit"), PROMPT)
    ctx = table.context_length()
    assert ctx == 77 and table.rows[0].piece == "[CLS]" and table.rows[0].special
    cat = resolve(table, "cat")
    assert [table.rows[p].stream for p in cat] == ["hydit_clip", "mt5xl"] and cat[0] < ctx <= cat[1]
    assert [b["cond"] for b in table.meta["blocks"]] == ["c_crossattn", "conditioning_mt5xl"]


def test_hunyuan_video_keeps_the_user_part_of_its_llama_template(clips):
    from attention_focus.nodes.text_layout import context_tokens
    from attention_focus.nodes.token_table import normalize_text

    clip = clips("hunyuan_video")
    table, _ = context_tokens(clip, PROMPT)
    assert table.meta["layout"] == "hunyuan_video" and table.streams() == ["llama"]
    # kept: the header's end token unless a blank line follows it (this transformers may drop it), prompt, <|eot_id|>
    assert table.rows[-1].piece == "<|eot_id|>"
    specials = [p for p, r in enumerate(table.rows) if r.piece in ("<|end_header_id|>", "<|eot_id|>")]
    assert table.special_positions() == specials and specials[0] in (0, len(table) - 1)
    assert "Describe" not in "".join(r.piece for r in table.rows)  # the system part is cut, as the encoder does
    text = [r.piece for r in table.rows if not r.special]
    assert normalize_text(_decode_pieces(clip, "llama", text)) == normalize_text(PROMPT)
    assert len(table) == _encode(clip, PROMPT)[0][0].shape[1]


@pytest.mark.parametrize("family", ["hunyuan_image", "hunyuan_video_15"])
def test_hunyuan_image_quoted_text_adds_the_byt5_glyph_stream(family, clips):
    from attention_focus.nodes.text_layout import context_tokens
    from attention_focus.nodes.token_table import resolve

    clip = clips(family)
    text = 'a shop sign that says "Hello Cat" in red'
    cond = _encode(clip, text)
    table, note = context_tokens(clip, text, context_length=cond[0][0].shape[1])
    byt5 = cond[0][1]["conditioning_byt5small"]
    assert note == "" and table.streams() == ["qwen25_7b", "byt5"]
    assert table.context_length() == cond[0][0].shape[1] and len(table) == cond[0][0].shape[1] + byt5.shape[1]
    assert [b["cond"] for b in table.meta["blocks"]] == ["c_crossattn", "conditioning_byt5small"]
    glyph = resolve(table, "Cat", stream="byt5")
    assert "".join(table.rows[p].piece for p in glyph) == "Cat"  # ByT5: one byte per token
    assert [table.rows[p].stream for p in resolve(table, "cat")] == ["qwen25_7b"] + ["byt5"] * 3
    # the wrapper the tokenizer adds ('Text "…". ') and the spaces are no words
    assert [w.text for w in table.words if w.stream == "byt5"] == ["Hello", "Cat"]
    plain, _ = context_tokens(clip, PROMPT)  # no quotes: no ByT5 tokens, no ByT5 rows
    assert plain.streams() == ["qwen25_7b"] and "conditioning_byt5small" not in _encode(clip, PROMPT)[0][1]


def test_flux2_klein_template_and_padding_are_special(clips):
    from attention_focus.nodes.text_layout import context_tokens

    clip = clips("flux2_klein")
    table, note = context_tokens(clip, PROMPT)
    assert note == "" and table.meta["layout"] == "flux2_klein" and len(table) >= 512
    assert table.word_texts() == ["a", "red", "cat", "21", "hats"]
    words = {p for w in table.words for p in w.positions}
    assert set(table.special_positions()) == set(range(len(table))) - words


# ---------------------------------------------------------------------------------------------------
# Fallback


def test_unknown_layout_gives_positions_and_a_note(clips, comfy, caplog):
    from attention_focus.nodes.hook_state import TOKENS_KEY
    from attention_focus.nodes.text_layout import context_tokens

    clip = clips("ace")
    cond = _encode(clip, PROMPT)
    n = cond[0][0].shape[1]
    table, note = context_tokens(clip, PROMPT, context_length=n)
    assert table.meta["positional"] and len(table) == n
    assert "token labels are positions" in note and "lyrics, umt5base" in note
    assert table.word_texts()[:2] == ["#0", "#1"] and table.meta["note"] == note
    # without the length it is learned by encoding once
    assert len(context_tokens(clip, PROMPT)[0]) == n
    with caplog.at_level("WARNING", logger="attention_focus"), torch.inference_mode():
        out = comfy.nodes.NODE_CLASS_MAPPINGS["AttentionFocusTextEncode"]().encode(clip, PROMPT)[0]
    assert "Attention Focus Text Encode: token labels are positions" in caplog.text
    assert torch.equal(out[0][0], cond[0][0]) and out[0][1][TOKENS_KEY].meta["positional"]


def test_mismatched_length_falls_back(clips, caplog):
    from attention_focus.nodes.text_layout import context_tokens

    clip = clips("flux")
    table, note = context_tokens(clip, PROMPT, context_length=300)
    assert len(table) == 300 and table.meta["positional"]
    assert note == "token labels are positions: the flux token layout gives 256 positions but the " \
                   "conditioning has 300"
    with caplog.at_level(logging.WARNING, logger="attention_focus"):
        assert context_tokens(clip, PROMPT, context_length=256)[1] == ""
    assert caplog.text == ""


def test_image_tokens_fall_back(clips):
    from attention_focus.nodes.text_layout import context_tokens

    real = clips("qwen_image")

    class WithImage:  # what TextEncodeQwenImageEdit's tokenize gives: an image entry among the ids
        tokenizer = real.tokenizer
        cond_stage_model = real.cond_stage_model

        def tokenize(self, text, return_word_ids=False, **kw):
            tok = real.tokenize(text, return_word_ids=return_word_ids, **kw)
            first = tok["qwen25_7b"][0]
            first[1] = ({"type": "image", "data": None},) + tuple(first[1][1:])
            return tok

    table, note = context_tokens(WithImage(), PROMPT, context_length=40)
    assert len(table) == 40 and "image inputs" in note
