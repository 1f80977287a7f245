"""Token tables follow the conditioning tensor they label (concatenations), and edits they cannot follow are named."""

from __future__ import annotations

import torch
from attention_focus.nodes import cond_tokens as ct
from attention_focus.nodes.token_pieces import build_table
from attention_focus.nodes.token_table import resolve

VOCAB = {0: "<s>", 1: "</s>", 10: "a</w>", 11: "cat</w>", 12: "red</w>", 13: "hat</w>", 14: "dog</w>"}


def _table(ids, text):
    chunk = [(0, 1.0, 0)] + [(i, 1.0, n + 1) for n, i in enumerate(ids)] + [(1, 1.0, 0)] * (6 - len(ids) - 1)
    return build_table([chunk], VOCAB, special_ids=(0, 1), text=text)


def _encoded(seed, table):
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(1, len(table), 8, generator=g)
    t[:, 0] = 0.5  # a causal text encoder's BOS output is the same for every prompt
    return t, ct.register(t, table)


def test_unchanged_conditioning_keeps_its_table():
    t, table = _encoded(1, _table([10, 11], "a cat"))
    got, note = ct.tokens_for_conditioning(t, table, 6)
    assert got is table and note == ""


def test_concatenations_are_followed():
    cat_t, cat = _encoded(1, _table([10, 11], "a cat"))
    hat_t, hat = _encoded(2, _table([10, 12, 13], "a red hat"))
    both = torch.cat([cat_t, hat_t], 1)  # ConditioningConcat(to=cat, from=hat)
    got, note = ct.tokens_for_conditioning(both, cat, 12)
    assert note == "" and len(got) == 12
    assert resolve(got, "cat") == resolve(cat, "cat")
    assert resolve(got, "hat") == tuple(6 + p for p in resolve(hat, "hat"))
    assert got.text == "a cat + a red hat"
    three = torch.cat([cat_t, hat_t, cat_t], 1)
    got, _ = ct.tokens_for_conditioning(three, cat, 18)
    assert resolve(got, "cat") == resolve(cat, "cat") + tuple(12 + p for p in resolve(cat, "cat"))


def test_foreign_tokens_are_labelled_by_position():
    cat_t, cat = _encoded(1, _table([10, 11], "a cat"))
    style = torch.randn(1, 4, 8)  # e.g. StyleModelApply's image tokens
    got, note = ct.tokens_for_conditioning(torch.cat([cat_t, style], 1), cat, 10)
    assert len(got) == 10 and "positions #6-9" in note and "StyleModelApply" in note
    assert resolve(got, "cat") == resolve(cat, "cat") and resolve(got, "#7") == (7,)
    assert "#7" not in got.word_texts()  # not offered as words


def test_an_edit_that_cannot_be_followed_is_named():
    cat_t, cat = _encoded(1, _table([10, 11], "a cat"))
    dog_t, _ = _encoded(3, _table([10, 14], "a dog"))
    got, note = ct.tokens_for_conditioning(0.5 * cat_t + 0.5 * dog_t, cat, 6)  # ConditioningAverage
    assert got is None and "changed after encoding" in note and "#N" in note
    got, note = ct.tokens_for_conditioning(torch.zeros_like(cat_t), cat, 6)  # ConditioningZeroOut
    assert got is None and "changed after encoding" in note


def test_without_a_hash_only_the_length_is_checked():
    table = _table([10, 11], "a cat")
    assert ct.tokens_for_conditioning(torch.zeros(1, 6, 8), table, 6) == (table, "")
    got, note = ct.tokens_for_conditioning(torch.zeros(1, 9, 8), table, 9)
    assert got is None and "does not match the conditioning (9)" in note
    assert ct.tokens_for_conditioning(torch.zeros(1, 6, 8), None, 6) == (None, "")
