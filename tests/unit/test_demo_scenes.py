"""The demo model's scenes: captions describe their layouts, the held-out split is exact, objects are found
again by colour (the ground truth of the localisation benchmark)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

from demo_model import scenes as S  # noqa: E402


@pytest.fixture(scope="module")
def sampled():
    rng = np.random.default_rng(7)
    return [S.sample_scene(rng, "train") for _ in range(150)] + [S.sample_scene(rng, "heldout") for _ in range(50)]


def test_captions_describe_their_layouts(sampled):
    for sc in sampled:
        words = S.caption_words(sc.caption)
        assert len({o.colour for o in sc.objects}) == len(sc.objects), "colours must be unique in a scene"
        for w in sc.words:
            assert words[w.index] == w.text, (sc.caption, w)
            if w.cls == "shape":
                assert sc.objects[w.objects[0]].shape == w.text
            if w.cls == "colour":
                assert sc.objects[w.objects[0]].colour == w.text
        cents = [(o.cx, o.cy) for o in sc.objects]
        if sc.kind == "abs":
            assert all(S.position_holds(p, c) for p, c in zip(sc.positions, cents, strict=True)), sc.caption
        if sc.kind == "rel":
            assert S.relation_holds(sc.positions[0], cents[0], cents[1]), sc.caption
        for i, a in enumerate(sc.objects):
            for b in sc.objects[i + 1:]:
                assert np.hypot(a.cx - b.cx, a.cy - b.cy) > a.radius + b.radius, sc.caption
        # every shape and colour word of the caption is annotated with its object
        assert sum(w.cls == "shape" for w in sc.words) == len(sc.objects)
        assert sum(w.cls == "colour" for w in sc.words) == len(sc.objects)


def test_heldout_split_is_exact(sampled):
    assert not any(S.is_heldout(sc.caption) for sc in sampled[:150])
    assert all(S.is_heldout(sc.caption) for sc in sampled[150:])
    rng = np.random.default_rng(3)
    share = np.mean([S.is_heldout(S.sample_scene(rng, "any").caption) for _ in range(400)])
    assert 0.04 < share < 0.18, share


def test_relayout_keeps_the_caption(sampled):
    rng = np.random.default_rng(11)
    for sc in sampled[:40]:
        other = S.relayout(sc, rng)
        assert other is None or other.caption == sc.caption


def test_word_specs_address_repeated_words():
    objs = [S.Obj("circle", "red", "", 18, 30, 64), S.Obj("circle", "blue", "", 18, 98, 64)]
    caption, words = S.describe(objs, "abs", ["on the left", "on the right"])
    sc = S.Scene(objs, (226, 226, 220), "plain", "abs", ["on the left", "on the right"], caption, words)
    assert caption == "a red circle on the left and a blue circle on the right"
    assert [sc.word_spec(w) for w in words] == ["red", "circle[1]", "left", "blue", "circle[2]", "right"]


def test_objects_are_found_again_by_colour(sampled):
    ious = []
    for sc in sampled[:60]:
        img, masks = S.render(sc)
        for o, m in zip(sc.objects, masks, strict=True):
            got, want = S.colour_mask(img, o.colour), m > 0.5
            ious.append((got & want).sum() / (got | want).sum())
    assert min(ious) > 0.8 and np.mean(ious) > 0.93, (min(ious), np.mean(ious))


def test_grounding_loss_asks_for_the_object_and_its_coverage():
    """The token term is met by any map inside the object; the pixel term only by one that covers it."""
    import torch

    from demo_model.train_dit import ground_loss

    cover = torch.zeros(1, 16, 2)
    cover[0, 4:8, 0] = 1.0  # token 0 names an object over image tokens 4..7
    sup = torch.tensor([[True, False]])
    full, peak, outside = (torch.full((1, 16, 2), 1e-6) for _ in range(3))
    full[0, 4:8, 0] = 0.1
    peak[0, 5, 0] = 0.1
    outside[0, 10:14, 0] = 0.1
    for m in (full, peak):
        assert ground_loss([m], cover, sup.float()) < 1e-3
    assert ground_loss([outside], cover, sup.float()) > 0.9
    assert ground_loss([full], cover, sup.float(), pixel=1.0) < 1e-3
    assert ground_loss([peak], cover, sup.float(), pixel=1.0) > 0.1


def test_the_demo_prompt_is_held_out():
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
    import example_shapes

    assert S.is_heldout(example_shapes.SHAPES_PROMPT)
    words = S.caption_words(example_shapes.SHAPES_PROMPT)
    assert all(w in words for w in example_shapes.SHAPES_WORDS.split(", ")) and example_shapes.SHAPES_COLOUR in words
