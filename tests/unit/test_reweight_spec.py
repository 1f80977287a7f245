"""Parsing the reweight node's weights text."""

from __future__ import annotations

import pytest
from attention_focus.nodes.reweight_spec import FORMAT, WeightSpecError, parse_weights


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
        ("red:abc", ["weight 'abc' of 'red' is not a number", FORMAT]),
        (":2", ["missing word before ':2'", FORMAT]),
        ("red", ["missing weight for 'red'", FORMAT]),
        ("red:2, blue", ["missing weight for 'blue'", "'red:2, blue'"]),
        ("red:", ["weight '' of 'red' is not a number"]),
        ('"red:2', ["unbalanced quote", FORMAT]),
        ("'red, hat:2", ["unbalanced quote"]),
        ('"red" hat:2', ["unexpected text 'hat:2' after the quoted phrase", FORMAT]),
        ('"red"', ["missing weight for 'red'"]),
        ("red:nan", ["weight 'nan' of 'red' must be a finite number"]),
        ("red:inf", ["must be a finite number"]),
        ("red:-inf", ["must be a finite number"]),
    ],
)
def test_errors_name_the_item_and_the_fix(spec, fragments):
    with pytest.raises(WeightSpecError) as e:
        parse_weights(spec)
    for f in fragments:
        assert f in str(e.value)
    assert isinstance(e.value, ValueError)


@pytest.mark.parametrize("spec", ["red:0", "red:2, blue:-0.5", "red:-0.0"])
def test_renormalize_needs_positive_weights(spec):
    with pytest.raises(WeightSpecError) as e:
        parse_weights(spec, mode="renormalize")
    msg = str(e.value)
    assert "not allowed in renormalize mode" in msg and "w must be > 0" in msg and "use scale mode" in msg


def test_unknown_mode():
    with pytest.raises(WeightSpecError, match="unknown mode 'add': use scale or renormalize"):
        parse_weights("red:2", mode="add")


def test_format_example_is_valid():
    example = FORMAT.split("e.g. ")[1].strip("'")
    assert parse_weights(example) == [("red", 2.0), ("wizard hat", 0.5), ("#5", 1.5)]
