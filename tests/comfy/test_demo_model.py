"""The embedded demo model (models/attention-focus-shapes.safetensors): it loads through ComfyUI's stock
checkpoint loader, its text encoder regenerates bit for bit, and — a small version of
bench/bench_localization.py — its heat maps lie on the objects their words name, and weighting a colour word
down / up changes that colour.

The floors sit a safe margin below the values measured on the same prompts (README, "The demo model"), and
each localisation test also checks that the floor would catch an attribution bug: the same maps read with the
grid transposed, or each word's map taken from the same kind of word of another object ("red" read from
"blue": a wrong token or chunk), fall below it.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))

N_PROMPTS = 24
CASE_SEED = 99  # other held-out prompts than the benchmark's (1234)
# mIoU at DAAM's τ per capture softmax and word class; measured on these prompts: see the README
# (measured: all keys 0.392 / 0.435, text keys 0.406 / 0.467; transposed < 0.1, another object's word < 0.07)
FLOORS = {"all": {"shape": 0.30, "colour": 0.34}, "text": {"shape": 0.30, "colour": 0.36}}
BROKEN_CEILING = 0.2  # a transposed grid or maps read from another object's word must score below this
# measured: share in the mask 0.460 (x0) / 0.925 (x1.5); pixels ÷ plain 0.567 / 1.156
REWEIGHT_FLOORS = {"down_share": 0.7, "up_share": 0.8, "up_minus_down_pixels": 0.3}
UP = 1.5  # bench/bench_localization.py's up weight (at 3 the picture changes more than the colour grows)


@pytest.fixture(scope="module")
def demo(comfy):
    from demo_model import evaluate as E

    return E.load_demo()


@pytest.fixture(scope="module")
def generated(demo):
    """The held-out cases, each generated once with the default capture and the text-keys capture."""
    from demo_model import evaluate as E

    settings = [E.CaptureSetting("all"), E.CaptureSetting("text")]
    cases = E.heldout_cases(N_PROMPTS, CASE_SEED)
    return settings, [(scene, seed, *E.generate(demo, scene.caption, seed, settings)) for scene, seed in cases]


def test_committed_file_is_small_detected_and_documented(comfy):
    import safetensors.torch

    from demo_model import model as M

    size = M.MODEL_FILE.stat().st_size
    assert size <= 20 * 2**20, size
    recipe = json.loads(M.RECIPE_FILE.read_text())
    assert recipe["file_sha256"] == hashlib.sha256(M.MODEL_FILE.read_bytes()).hexdigest(), \
        "the model file is not the one its recipe describes"
    assert recipe["command"].startswith("bash scripts/train_demo_model.sh") and "seed" in recipe["recipe"]
    sd = safetensors.torch.load_file(str(M.MODEL_FILE))
    assert M.detect(sd) == "SD3"
    assert not any(k.startswith(("text_encoders.", "cond_stage_model.")) for k in sd)


def test_text_encoder_regenerates_bit_for_bit(comfy):
    from demo_model import textenc

    sd = textenc.clip_state_dict(check=False)
    assert textenc.state_dict_sha256(sd) == textenc.CLIP_SHA256
    assert sum(v.numel() for v in sd.values()) > 123_000_000


def test_stock_loader_gives_sd3_with_clip_l_and_taesd(demo):
    assert type(demo.model.model.model_config).__name__ == "SD3"
    assert demo.clip.cond_stage_model.clip_l is not None and demo.clip.cond_stage_model.t5xxl is None
    assert type(demo.vae.first_stage_model).__name__ == "TAESD"


def test_vae_round_trip_keeps_objects(demo):
    """VAEEncode → VAEDecode of a drawn scene: the objects come back in their colours and places."""
    import torch

    from demo_model import scenes as S

    rng = np.random.default_rng(5)
    ious = []
    for _ in range(4):
        sc = S.sample_scene(rng, "heldout")
        img, masks = S.render(sc)
        with torch.inference_mode():
            back = demo.vae.decode(demo.vae.encode(torch.from_numpy(img)[None]))[0].float().clamp(0, 1).numpy()
        for o, m in zip(sc.objects, masks, strict=True):
            got, want = S.colour_mask(back, o.colour), m > 0.5
            ious.append((got & want).sum() / max(1, (got | want).sum()))
    assert np.mean(ious) > 0.6, ious


def _word_maps(ms, scene, transform, swap):
    from demo_model import evaluate as E

    if transform is not None:
        ms = type(ms)(transform(ms.maps), ms.tokens, ms.meta)
    wmaps = E.word_maps(ms, scene)
    if swap:  # each word read from the same-class word of another object (a wrong-token / wrong-chunk bug)
        by = {(w.cls, w.objects): w.index for w in scene.words}
        wmaps = {w.index: wmaps[by[(w.cls, ((w.objects[0] + 1) % len(scene.objects),))]] for w in scene.words
                 if len(scene.objects) > 1 and len(w.objects) == 1
                 and (w.cls, ((w.objects[0] + 1) % len(scene.objects),)) in by}
    return wmaps


def _miou(generated, setting, cls, transform=None, swap=False):
    """mIoU at DAAM's τ of the ``cls`` words whose objects were drawn, and how many words were scored."""
    from demo_model import evaluate as E

    ious = []
    for scene, _, image, maps in generated:
        found = E.find_objects(scene, image)
        wmaps = _word_maps(maps[setting], scene, transform, swap)
        for w in scene.words:
            if w.cls == cls and w.index in wmaps and all(found.present[o] for o in w.objects):
                gt = np.logical_or.reduce([found.masks[o] for o in w.objects])
                ious.append(E.iou(E.expand(wmaps[w.index], image.shape[0]) >= E.DAAM_TAU, gt))
    return float(np.mean(ious)), len(ious)


@pytest.mark.parametrize("cls", ["shape", "colour"])
def test_heat_maps_lie_on_the_objects_their_words_name(generated, cls):
    from demo_model import evaluate as E

    settings, gen = generated
    found = sum(sum(E.find_objects(s, img).present) for s, _, img, _ in gen)
    assert found >= 0.75 * sum(len(s.objects) for s, *_ in gen), "the demo model no longer draws the objects"
    for st in settings:
        m, n = _miou(gen, st, cls)
        print(f"{st.name}: mIoU of {cls} words {m:.3f} over {n}")
        assert n >= N_PROMPTS, n
        assert m >= FLOORS[st.softmax][cls], f"{st.name}: mIoU of {cls} words {m:.3f} < floor {FLOORS[st.softmax][cls]}"
    # the floor catches attribution bugs: a transposed grid; each word's map taken from another object's word
    st = settings[0]
    transposed, _ = _miou(gen, st, cls, transform=lambda t: t.transpose(-1, -2).contiguous())
    assert transposed < BROKEN_CEILING < FLOORS[st.softmax][cls], transposed
    swapped, n = _miou(gen, st, cls, swap=True)
    print(f"{cls}: transposed {transposed:.3f}, read from another object's word {swapped:.3f} over {n}")
    assert n >= N_PROMPTS // 2 and swapped < BROKEN_CEILING, (swapped, n)


def test_reweighting_a_colour_word_changes_that_colour(demo, generated):
    """Same seed, the first object's colour word weighted x0 and x1.5: inside the object's mask (from the
    unweighted picture) its colour mostly goes at x0, and stays at x1.5; over the picture, x1.5 draws more of
    it than x0."""
    from demo_model import evaluate as E
    from demo_model import scenes as S

    _, gen = generated
    down, up, down_px, up_px = [], [], [], []
    for scene, seed, image, _ in gen[:12]:
        colour = scene.objects[0].colour
        mask = S.colour_mask(image, colour)
        if mask.sum() < E.MIN_PIXELS:
            continue
        for w, share, px in ((0.0, down, down_px), (UP, up, up_px)):
            img = E.generate(demo, scene.caption, seed, reweight=[(colour, w)])[0]
            share.append(E.colour_effect(img, mask, colour)[0])
            px.append(S.colour_mask(img, colour).sum() / mask.sum())
    print(f"reweight x0 / x{UP:g}: share {np.mean(down):.3f} / {np.mean(up):.3f}, pixels (÷ plain) "
          f"{np.mean(down_px):.3f} / {np.mean(up_px):.3f} over {len(down)} prompts")
    assert len(down) >= 6
    assert np.mean(down) < REWEIGHT_FLOORS["down_share"], down
    assert np.mean(up) > REWEIGHT_FLOORS["up_share"], up
    assert np.mean(up_px) > np.mean(down_px) + REWEIGHT_FLOORS["up_minus_down_pixels"], (up_px, down_px)
