"""Token layouts with other tokens before the target or the text (plain numbers, no ComfyUI): HunyuanVideo's
reference latent, Omnigen2's references before the target, HuMo's reference frames after the video's queries,
Mochi's cropped text, Flux.2's left padding."""

from __future__ import annotations

import pytest
import torch

from attention_focus.nodes import dit_layout as dl
from attention_focus.nodes.families import prompt_length, text_lead
from attention_focus.nodes.family_base import FamilySpec


def test_image_first_with_a_reference_latent_before_the_image():
    # HunyuanVideo (ComfyUI <= 0.8): [ref 6][image 20][text 10]
    g = dl.Geometry("img_first", 10, (dl.TextPart(0, 10, 0),), (5, 4), 1, 10, 36, "HunyuanVideo", img_start=6,
                    text_start=26)
    assert dl.located(g, 36, 36) == dl.Located(slice(6, 26), 26, True)
    assert dl.located(g, 10, 10) is None  # the token refiner's text-only calls
    with pytest.raises(dl.LayoutError, match="has 40 tokens where 36 were expected"):
        dl.located(g, 40, 40)


def test_text_first_with_references_before_the_target():
    # Omnigen2: [text 12][refs 8][target 20]; HunyuanVideo 0.33: [text][ref][image] likewise
    g = dl.Geometry("txt_first", 12, (dl.TextPart(0, 12, 0),), (5, 4), 1, 12, 40, "Omnigen2", img_start=20)
    assert dl.located(g, 40, 40) == dl.Located(slice(20, 40), 0, True)
    assert dl.located(g, 20, 20) is None and dl.located(g, 8, 8) is None  # noise / reference refiners


def test_cross_attention_with_extra_queries():
    # Wan HuMo: queries = 2 frames x 20 + a 6-token reference frame; the text has 16 keys
    g = dl.Geometry("cross", 16, (dl.TextPart(0, 16, 0),), (5, 4), 2, 16, family="Wan HuMo", n_queries=46)
    assert g.n_q == 46 and g.n_img == 40
    assert dl.located(g, 46, 16) == dl.Located(slice(0, 40), 0, False)
    with pytest.raises(dl.LayoutError, match="has 40 queries where the 40 image tokens \\+ 6 reference tokens"):
        dl.located(g, 40, 16)
    assert dl.located(g, 46, 46) is None  # self-attention


def test_a_cropped_text_folds_onto_the_whole_prompt():
    # Mochi: 256 prompt positions, the model attends to the first 20 only
    g = dl.Geometry("img_first", 20, (dl.TextPart(0, 20, 0),), (5, 4), 1, 256, 40, "Mochi")
    assert g.folds and g.key_map()[1].tolist() == list(range(20))
    assert dl.located(g, 40, 40) == dl.Located(slice(0, 20), 20, True)


def test_flux2_prompt_is_the_left_padded_context():
    spec = FamilySpec("Flux.2", "dit", text_pad_to=512)
    short, long = {"cross_attn": torch.zeros(1, 40, 8)}, {"cross_attn": torch.zeros(1, 600, 8)}
    assert (text_lead(spec, short), prompt_length(spec, short)) == (472, 512)
    assert (text_lead(spec, long), prompt_length(spec, long)) == (0, 600)
    klein = FamilySpec("Flux.2", "dit")  # a Flux.2 module without the padding model_base
    assert (text_lead(klein, short), prompt_length(klein, short)) == (0, 40)


def test_lead_padded_table():
    from attention_focus.nodes.token_pieces import build_table, lead_padded
    from attention_focus.nodes.token_table import resolve

    t = build_table([[(1, 1.0, 1), (2, 1.0, 1)]], {1: "▁red", 2: "▁cat"}, stream="mistral3_24b")
    assert lead_padded(t, 0) is t and lead_padded(None, 5) is None
    p = lead_padded(t, 3)
    assert len(p) == 5 and [r.special for r in p.rows] == [True] * 3 + [False] * 2
    assert resolve(p, "cat") == (4,) and p.word_texts() == ["red", "cat"] and p.meta["lead_padding"] == 3
    assert {r.stream for r in p.rows} == {"mistral3_24b"}
