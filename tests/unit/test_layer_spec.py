"""Layer selection grammar, the step-window check and resolution levels."""

from __future__ import annotations

import math

import pytest
from attention_focus.nodes.layer_spec import (
    HELP,
    LayerKey,
    LayerSpecError,
    check_step_window,
    describe_layers,
    level_of,
    parse_layer_spec,
    select_layers,
)

# SD1.5's 16 cross-attention layers (64x64 latent at 512 px: L0 64, L1 32, L2 16, L3 8)
SD15 = (
    [LayerKey("input", i, 0, lvl) for i, lvl in ((1, 0), (2, 0), (4, 1), (5, 1), (7, 2), (8, 2))]
    + [LayerKey("middle", 0, 0, 3)]
    + [LayerKey("output", i, 0, lvl) for i, lvl in ((3, 2), (4, 2), (5, 2), (6, 1), (7, 1), (8, 1),
                                                    (9, 0), (10, 0), (11, 0))]
)
# SDXL-like: several transformer depths per block
SDXL = [LayerKey("input", 7, d, 2) for d in range(10)] + [LayerKey("output", 0, d, 2) for d in range(10)]
DIT = [LayerKey("double", i, 0, 0) for i in range(19)] + [LayerKey("single", i, 0, 0) for i in range(38)]


def names(keys):
    return [k.name() for k in keys]


def test_layer_key():
    k = LayerKey("output", 3, 1, 2)
    assert k.name() == "output.3.1"
    assert describe_layers([k, LayerKey("middle", 0, 0, 3)]) == "output.3.1 (L2), middle.0.0 (L3)"
    assert describe_layers([]) == ""


@pytest.mark.parametrize("spec", ["", "all", "ALL", "*", " , all ,", None])
def test_all(spec):
    assert select_layers(spec, SD15) == SD15


def test_block_kinds_and_aliases():
    inputs = [k for k in SD15 if k.block == "input"]
    outputs = [k for k in SD15 if k.block == "output"]
    for spec in ("input", "in", "down", "Down"):
        assert select_layers(spec, SD15) == inputs
    for spec in ("output", "out", "up"):
        assert select_layers(spec, SD15) == outputs
    for spec in ("middle", "mid"):
        assert names(select_layers(spec, SD15)) == ["middle.0.0"]
    assert select_layers("input, output", SD15) == inputs + outputs  # the given order is kept
    assert select_layers("output, input", SD15) == inputs + outputs
    assert len(select_layers("double", DIT)) == 19 and len(select_layers("joint", DIT)) == 19
    assert select_layers("single.36-37", DIT) == [LayerKey("single", 36, 0, 0), LayerKey("single", 37, 0, 0)]


def test_indices_ranges_and_depths():
    assert names(select_layers("input.4", SD15)) == ["input.4.0"]
    assert names(select_layers("output.3-5", SD15)) == ["output.3.0", "output.4.0", "output.5.0"]
    assert names(select_layers("output.5-5", SD15)) == ["output.5.0"]
    assert names(select_layers("output . 9 - 10", SD15)) == ["output.9.0", "output.10.0"]
    assert select_layers("input.3", SD15) == []  # no cross-attention in input block 3
    assert names(select_layers("output.0.2-4", SDXL)) == ["output.0.2", "output.0.3", "output.0.4"]
    assert names(select_layers("input.7.0, output.0.9", SDXL)) == ["input.7.0", "output.0.9"]


def test_levels():
    assert names(select_layers("L0", SD15)) == ["input.1.0", "input.2.0", "output.9.0", "output.10.0",
                                                  "output.11.0"]
    assert [k.level for k in select_layers("l1-2", SD15)] == [1, 1, 2, 2, 2, 2, 2, 1, 1, 1]
    assert names(select_layers("L3", SD15)) == ["middle.0.0"]
    assert select_layers("L4-9", SD15) == []


def test_excludes():
    # the docstring's example: decoder layers except the finest level
    assert names(select_layers("output, !L0", SD15)) == ["output.3.0", "output.4.0", "output.5.0",
                                                          "output.6.0", "output.7.0", "output.8.0"]
    only_excl = select_layers("!middle", SD15)  # excludes alone select from all
    assert len(only_excl) == 15 and all(k.block != "middle" for k in only_excl)
    assert select_layers("!L0, !L1", SD15) == [k for k in SD15 if k.level >= 2]
    assert names(select_layers("input, !input.1-5", SD15)) == ["input.7.0", "input.8.0"]
    assert select_layers("!all", SD15) == []
    assert select_layers("input, !input", SD15) == []
    assert names(select_layers("output.0, !output.0.1-9", SDXL)) == ["output.0.0"]


def test_parse_items():
    items = parse_layer_spec("!output.3-5.1, L2, middle")
    assert [(i.exclude, i.kind, i.index, i.depth, i.level) for i in items] == [
        (True, "output", (3, 5), (1, 1), None),
        (False, None, None, None, (2, 2)),
        (False, "middle", None, None, None),
    ]


@pytest.mark.parametrize(
    "spec, fragment",
    [
        ("input.x", "bad block index 'x'"),
        ("L3-1", "empty range '3-1'"),
        ("foo", "unknown layer item 'foo'"),
        ("output.1.2.3", "unknown layer item 'output.1.2.3'"),
        ("output.1.x", "bad depth 'x'"),
        ("output.5-3", "empty range '5-3'"),
        ("input.", "bad block index ''"),
        ("L1.5", "bad level '1.5'"),
        ("Lx", "unknown layer item 'Lx'"),
        ("!", "unknown layer item '!'"),
        ("input, bogus", "unknown layer item 'bogus'"),
        ("input.-1", "bad block index '-1'"),
    ],
)
def test_errors_name_the_item(spec, fragment):
    with pytest.raises(LayerSpecError) as e:
        select_layers(spec, SD15)
    msg = str(e.value)
    assert fragment in msg
    assert repr(spec) in msg  # the whole spec is quoted
    assert isinstance(e.value, ValueError)


def test_errors_show_the_grammar():
    for spec in ("foo", "input.x", "output.1.2.3"):
        with pytest.raises(LayerSpecError, match="Layer spec: comma-separated items"):
            parse_layer_spec(spec)
    with pytest.raises(LayerSpecError, match="write low-high"):
        parse_layer_spec("L3-1")
    assert "'!item' to exclude" in HELP


@pytest.mark.parametrize("start, end", [(0.0, 1.0), (0.0, 0.0), (1.0, 1.0), (0.25, 0.75), (0.5, 0.5)])
def test_step_window_ok(start, end):
    check_step_window(start, end)


@pytest.mark.parametrize(
    "start, end, fragment",
    [
        (-0.1, 1.0, "start_percent=-0.1 is outside 0..1"),
        (0.0, 1.5, "end_percent=1.5 is outside 0..1"),
        (0.0, 50.0, "as a fraction of the schedule"),
        (0.8, 0.2, "start_percent=0.8 is after end_percent=0.2"),
        (math.nan, 1.0, "start_percent=nan is outside 0..1"),
    ],
)
def test_step_window_errors(start, end, fragment):
    with pytest.raises(ValueError) as e:
        check_step_window(start, end)
    assert fragment in str(e.value)


def test_level_of_ceil_halving():
    # an odd latent side: 75 → 38 → 19 → 10 (ceil-halving, as stride-2 convolutions with padding 1)
    assert [level_of(s, 75) for s in (75, 38, 19, 10)] == [0, 1, 2, 3]
    assert [level_of(s, 64) for s in (64, 32, 16, 8)] == [0, 1, 2, 3]
    assert [level_of(s, 13) for s in (13, 7, 4, 2)] == [0, 1, 2, 3]
    assert level_of(5, 9) == 1 and level_of(3, 9) == 2
    assert level_of(128, 128) == 0 and level_of(80, 64) == 0  # not smaller than the latent: level 0
    assert level_of(1, 1 << 20) == 16  # the loop is bounded
