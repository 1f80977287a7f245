"""Stock conditioning nodes between the encoder and the sampler: areas and masks place each prompt's maps
where that prompt acts; token tables follow ConditioningConcat; edits that cannot be followed are named.

Area references are computed independently: an override records q/k of the area prompt's calls (found by
their uuid), DAAM's aggregation is done on the area's grid in float64 and placed by the test itself.
"""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def env(comfy):
    from harness import fixtures
    from harness import pack as cp

    return comfy, fixtures, cp, fixtures.tiny_unet_patcher("sd15")


def _sample_recorded(fixtures, cp, mp, pos, neg, lat):
    from harness.reference import UnetRecorder

    rec = UnetRecorder()
    inner = mp.clone()
    inner.model_options.setdefault("transformer_options", {})["optimized_attention_override"] = rec
    m, maps = cp.add_capture(inner, "all", "positive", 0.0, 1.0, "mean")
    fixtures.sample(m, pos, neg, lat, seed=2, steps=2, cfg=5.0)
    return rec, maps


def _uid_of(maps, slot: int) -> str:
    return next(u for u, p in maps.last_run.prompts.items() if p.branch == "positive" and p.slot == slot)


def _chunk_of(uid, cou: int = 0):
    """The batch chunk of a call that carries prompt ``uid`` as cond (0) or uncond (1)."""
    return lambda c: next((i for i, (u, k) in enumerate(zip(c["uuids"], c["cou"], strict=True))
                           if u == uid and k == cou), None)


@pytest.mark.parametrize("node", ["pixels", "percentage"])
def test_area_maps_land_in_their_area_and_nowhere_else(env, node):
    """Issue input: ConditioningSetArea('a cat', right half) + ConditioningCombine('a hat'). The cat prompt's
    maps are its area's attention, placed on the right half; zero on the left, where it never acts."""
    comfy, fixtures, cp, mp = env
    nodes = comfy.nodes
    cat, hat = fixtures.random_conditioning("sd15", seed=1), fixtures.random_conditioning("sd15", seed=3)
    if node == "pixels":  # 64x64 image = 8x8 latent; right half = 32 px wide at x = 32
        area = nodes.ConditioningSetArea().append(cat, 32, 64, 32, 0, 1.0)[0]
    else:
        area = nodes.ConditioningSetAreaPercentage().append(cat, 0.5, 1.0, 0.5, 0.0, 1.0)[0]
    pos = nodes.ConditioningCombine().combine(area, hat)[0]
    neg = fixtures.random_conditioning("sd15", seed=2)
    lat = torch.zeros(1, 4, 8, 8)
    rec, maps = _sample_recorded(fixtures, cp, mp, pos, neg, lat)
    res = maps.result()
    assert res.maps.shape == (1, 154, 8, 8)  # both prompts of the branch, end to end
    from harness.reference import naive_unet_maps as naive

    cat_uid, hat_uid = _uid_of(maps, 0), _uid_of(maps, 1)
    local = naive([c for c in rec.calls if cat_uid in c["uuids"]], (8, 4), 1, _chunk_of(cat_uid))
    expected = torch.zeros(1, 77, 8, 8, dtype=torch.float64)
    expected[..., 4:] = local
    torch.testing.assert_close(res.maps[:, :77].double(), expected, rtol=1e-4, atol=1e-5)
    assert torch.all(res.maps[:, :77, :, :4] == 0) and res.maps[:, :77, :, 4:].sum() > 0
    full = naive([c for c in rec.calls if hat_uid in c["uuids"]], (8, 8), 1, _chunk_of(hat_uid))
    torch.testing.assert_close(res.maps[:, 77:].double(), full, rtol=1e-4, atol=1e-5)
    assert res.meta["prompts"][0]["areas"] == [[8, 4, 0, 4]] and res.meta["prompts"][1]["areas"] == [None]


@pytest.mark.parametrize("bounds", [False, True])
def test_masked_prompts_are_weighted_by_their_mask(env, bounds):
    """ConditioningSetMask: the prompt acts through its mask; its maps are multiplied by it. With 'mask
    bounds' ComfyUI also crops the prompt to the mask's box: the maps are that crop's, placed."""
    comfy, fixtures, cp, mp = env
    nodes = comfy.nodes
    cat = fixtures.random_conditioning("sd15", seed=1)
    mask = torch.zeros(1, 16, 16)
    mask[:, 2:14, 1:9] = torch.linspace(0.2, 1.0, 8)  # a left box, graded
    pos = nodes.ConditioningSetMask().append(cat, mask, "mask bounds" if bounds else "default", 0.75)[0]
    neg = fixtures.random_conditioning("sd15", seed=2)
    lat = torch.zeros(1, 4, 16, 16)
    rec, maps = _sample_recorded(fixtures, cp, mp, pos, neg, lat)
    res = maps.result()
    uid = _uid_of(maps, 0)
    from harness.reference import naive_unet_maps

    weight = (mask * 0.75).double()
    if bounds:  # ComfyUI's box, at least 8 latent cells a side: rows 2..13, columns 1..8
        box = (12, 8, 2, 1)
        local = naive_unet_maps(rec.calls, box[:2], 1, _chunk_of(uid))
        expected = torch.zeros(1, 77, 16, 16, dtype=torch.float64)
        expected[..., 2:14, 1:9] = local
    else:
        expected = naive_unet_maps(rec.calls, (16, 16), 1, _chunk_of(uid))
    torch.testing.assert_close(res.maps.double(), expected * weight[:, None], rtol=1e-4, atol=1e-5)
    assert res.meta["prompts"][0]["masked"]


def _graph(ckpt, positive_nodes: dict, positive: list, words="cat, hat", weights=""):
    from harness.graphs import base

    g = base(ckpt)
    g.update(positive_nodes)
    model = ["4", 0]
    if weights:
        g["RW"] = {"class_type": "AttentionFocusReweight", "inputs": {
            "model": ["1", 0], "weights": weights, "mode": "scale", "layers": "all", "branch": "positive",
            "start_percent": 0.0, "end_percent": 1.0}}
        g["4"]["inputs"]["model"] = ["RW", 0]
    g.update({
        "6": {"class_type": "KSampler", "inputs": {
            "model": model, "positive": positive, "negative": ["3", 0], "latent_image": ["5", 0], "seed": 4,
            "steps": 2, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "7": {"class_type": "VAEDecode", "inputs": {"samples": ["6", 0], "vae": ["1", 2]}},
        "8": {"class_type": "AttentionFocusHeatmap", "inputs": {
            "attention_maps": ["4", 1], "image": ["7", 0], "words": words, "colormap": "turbo", "opacity": 0.6,
            "normalization": "per word", "branch": "positive"}},
        "10": {"class_type": "AttentionFocusSaveMaps", "inputs": {
            "attention_maps": ["4", 1], "image": ["7", 0], "filename_prefix": "cond/maps", "branch": "positive"}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 1], "filename_prefix": "cond/grid"}},
        "11": {"class_type": "SaveImage", "inputs": {"images": ["7", 0], "filename_prefix": "cond/image"}},
    })
    return g


def _encode(text: str, node: str) -> dict:
    return {node: {"class_type": "AttentionFocusTextEncode", "inputs": {"clip": ["1", 1], "text": text}}}


@pytest.fixture(scope="module")
def ckpt(comfy):
    from harness import fixtures

    return fixtures.install_checkpoint(comfy)


@pytest.fixture(scope="module")
def session(comfy):
    """One executor for the module: the loader's output stays cached between prompts."""
    from harness.comfy_boot import Session

    return Session()


def test_token_tables_follow_conditioning_concat(comfy, ckpt, session):
    """Issue input: ConditioningConcat(encode 'a cat', encode 'a red hat'): 'cat' keeps its position in the
    first 77 tokens, 'hat' is found in the second block (77 + its own position); reweighting 'hat' works."""
    from pathlib import Path

    import numpy as np
    from attention_focus.nodes.maps_file import load_maps
    from attention_focus.nodes.token_table import TokenTable, resolve
    from PIL import Image

    out = Path(comfy.folder_paths.get_output_directory())

    nodes = {**_encode("a cat", "P1"), **_encode("a red hat", "P2"),
             "CC": {"class_type": "ConditioningConcat", "inputs": {"conditioning_to": ["P1", 0],
                                                                  "conditioning_from": ["P2", 0]}}}
    res = session.run(_graph(ckpt, nodes, ["CC", 0]))
    f = res["outputs"]["10"]["attention_maps"][0]
    maps, meta = load_maps(out / f["subfolder"] / f["filename"])
    table = TokenTable.from_json(meta["token_table"])
    assert maps.shape[1] == len(table) == 154
    with torch.inference_mode():
        clip = comfy.nodes.CheckpointLoaderSimple().load_checkpoint(ckpt)[1]
        enc = comfy.nodes.NODE_CLASS_MAPPINGS["AttentionFocusTextEncode"]()
        cat_alone = enc.encode(clip, "a cat")[0][0][1]["attention_focus_tokens"]
        hat_alone = enc.encode(clip, "a red hat")[0][0][1]["attention_focus_tokens"]
    assert resolve(table, "cat") == resolve(cat_alone, "cat")
    assert resolve(table, "hat") == tuple(77 + p for p in resolve(hat_alone, "hat"))
    # a reweight of 'hat' on the concatenated prompt runs and changes the image

    def image(r):
        f = r["outputs"]["11"]["images"][0]
        return np.asarray(Image.open(out / f["subfolder"] / f["filename"]))

    weighted = session.run(_graph(ckpt, nodes, ["CC", 0], weights="hat:3"))
    assert not np.array_equal(image(weighted), image(res))


def test_an_edit_that_cannot_be_followed_is_named(comfy, ckpt, session):
    """ConditioningAverage mixes two prompts' token vectors: no word can be located any more. The heat map
    and the reweight say that the conditioning was changed after encoding, and what to do."""
    nodes = {**_encode("a cat", "P1"), **_encode("a dog", "P2"),
             "CA": {"class_type": "ConditioningAverage", "inputs": {
                 "conditioning_to": ["P1", 0], "conditioning_from": ["P2", 0], "conditioning_to_strength": 0.5}}}
    res = session.run(_graph(ckpt, nodes, ["CA", 0], words="cat"), expect_error=True)
    msg = res["error"]["exception_message"]
    assert "words:" in msg and "changed after encoding" in msg and "#N" in msg
    res = session.run(_graph(ckpt, nodes, ["CA", 0], words="#2", weights="cat:2"), expect_error=True)
    msg = res["error"]["exception_message"]
    assert "reweight" in msg and "changed after encoding" in msg
    # positions still work
    res = session.run(_graph(ckpt, nodes, ["CA", 0], words="#2"))
    assert res["error"] is None
