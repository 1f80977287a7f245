"""What users type: the heat map's word lists and the reweight node's weights."""

from __future__ import annotations

import pytest
from attention_focus.nodes.word_syntax import (FORMAT, MAX_WEIGHT, WeightSpecError, parse_targets, parse_weights,
                                               split_items)


def test_good_spec():
    expected = [("red", 2.0), ("wizard hat", 0.3), ("#5", 1.5)]
    assert parse_weights("red:2.0, wizard hat:0.3, #5:1.5") == expected
    assert parse_weights("red:2.0, wizard hat:0.3, #5:1.5", "renormalize") == expected


def test_whitespace_numbers_and_ranges():
    assert parse_weights("  red : 2 ,blue:.5,  #3-5:1e-1 ,hat[2]:3") == [
        ("red", 2.0), ("blue", 0.5), ("#3-5", 0.1), ("hat[2]", 3.0)]
    assert parse_weights("a:b:2") == [("a:b", 2.0)]  # the last colon separates the weight


def test_quoted_phrases():
    assert parse_weights('"red, hat":0.5, blue:2') == [("red, hat", 0.5), ("blue", 2.0)]
    assert parse_weights("'a, b' : 1.5") == [("a, b", 1.5)]
    assert parse_weights('"x:y":3') == [("x:y", 3.0)]  # a colon inside quotes is part of the phrase
    assert parse_weights('" wizard hat ":0.5') == [("wizard hat", 0.5)]


def test_empty_specs():
    assert parse_weights("") == []
    assert parse_weights(None) == []
    assert parse_weights(" , ,") == []


def test_negative_and_zero_weights_in_scale_mode():
    assert parse_weights("red:-1.5, blue:0") == [("red", -1.5), ("blue", 0.0)]
    assert parse_weights("red:-1.5", mode="scale") == [("red", -1.5)]


@pytest.mark.parametrize(
    "spec, fragments",
    [
        ("red:abc", ["'abc' (the weight of 'red') is not a number", FORMAT]),
        (":2", ["missing word before ':2'", FORMAT]),
        ("red", ["missing weight for 'red'", FORMAT]),
        ("red:2, blue", ["missing weight for 'blue'", "'red:2, blue'"]),
        ("red:", ["'' (the weight of 'red') is not a number"]),
        ('"red:2', ["unbalanced quote", FORMAT]),
        ("'red, hat:2", ["unbalanced quote"]),
        ('"red" hat:2', ["unexpected text 'hat:2' after the quoted phrase", FORMAT]),
        ('"red"', ["missing weight for 'red'"]),
        ("red:nan", ["'nan' (the weight of 'red') is outside the usable range", "between -1000 and 1000"]),
        ("red:inf", ["outside the usable range"]),
        ("red:-inf", ["outside the usable range"]),
        ("red:1e39", ["'1e39' (the weight of 'red') is outside the usable range"]),
        ("red:-1000.5", ["outside the usable range"]),
    ],
)
def test_errors_name_the_item_and_the_fix(spec, fragments):
    with pytest.raises(WeightSpecError) as e:
        parse_weights(spec)
    for f in fragments:
        assert f in str(e.value)
    assert isinstance(e.value, ValueError)


@pytest.mark.parametrize("spec", ["red:0", "red:2, blue:-0.5", "red:-0.0", "red:1e-4"])
def test_renormalize_needs_positive_weights(spec):
    with pytest.raises(WeightSpecError) as e:
        parse_weights(spec, mode="renormalize")
    msg = str(e.value)
    assert "not allowed in renormalize mode" in msg and "w must be at least 0.001" in msg and "use scale mode" in msg


def test_unknown_mode():
    with pytest.raises(WeightSpecError, match="unknown mode 'add': use scale or renormalize"):
        parse_weights("red:2", mode="add")


def test_format_example_is_valid():
    example = FORMAT.split("e.g. ")[1].strip("'")
    assert parse_weights(example) == [("red", 2.0), ("wizard hat", 0.5), ("#5", 1.5)]


def test_weight_limits_are_inclusive():
    assert parse_weights(f"red:{MAX_WEIGHT}, blue:-{MAX_WEIGHT}") == [("red", MAX_WEIGHT), ("blue", -MAX_WEIGHT)]
    assert parse_weights("red:0.001", "renormalize") == [("red", 0.001)]


def test_parse_targets():
    assert parse_targets("red, wizard hat ,#5") == ["red", "wizard hat", "#5"]
    assert parse_targets('"red, hat", blue') == ["red, hat", "blue"]
    assert parse_targets("'a, b',c") == ["a, b", "c"]
    assert parse_targets("don't, stop") == ["don't", "stop"]  # an apostrophe inside a word is no quote
    assert parse_targets(" , ,") == []
    assert parse_targets("") == []
    with pytest.raises(ValueError, match="unbalanced quote"):
        parse_targets('red, "wizard hat')
    with pytest.raises(ValueError, match="unbalanced quote"):
        parse_targets("'red")


def test_one_splitter_for_words_and_weights():
    spec = '"red, hat":2, don\'t:0.5, #5:1'
    assert split_items(spec) == ['"red, hat":2', " don't:0.5", " #5:1"]
    assert [t for t, _ in parse_weights(spec)] == ["red, hat", "don't", "#5"]
    assert parse_targets('"red, hat", don\'t, #5') == ["red, hat", "don't", "#5"]
