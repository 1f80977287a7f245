"""The pack's nodes in real ComfyUI graphs: stock loader, real CLIP tokenizer/encoder, real sampler."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

LONG = ", ".join(f"item{i} thing" for i in range(30))  # > 77 tokens: several chunks


@pytest.fixture(scope="module")
def ckpt(comfy):
    from harness import fixtures

    return fixtures.install_checkpoint(comfy)


@pytest.fixture(scope="module")
def loaded(comfy, ckpt):
    with torch.inference_mode():
        return comfy.nodes.CheckpointLoaderSimple().load_checkpoint(ckpt)


def _graph(ckpt, text="a photo of a cat wearing a red wizard hat", words="cat, red wizard hat",
           size=(64, 48), batch=1, layers="all", extra=None, negative="blurry"):
    g = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "2": {"class_type": "AttentionFocusTextEncode", "inputs": {"clip": ["1", 1], "text": text}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": negative}},
        "4": {"class_type": "AttentionFocusCapture", "inputs": {
            "model": ["1", 0], "layers": layers, "branch": "both", "start_percent": 0.0,
            "end_percent": 1.0, "head_reduction": "mean"}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": size[0], "height": size[1],
                                                          "batch_size": batch}},
        "6": {"class_type": "KSampler", "inputs": {
            "model": ["4", 0], "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["5", 0],
            "seed": 3, "steps": 3, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal",
            "denoise": 1.0}},
        "7": {"class_type": "VAEDecode", "inputs": {"samples": ["6", 0], "vae": ["1", 2]}},
        "8": {"class_type": "AttentionFocusHeatmap", "inputs": {
            "attention_maps": ["4", 1], "image": ["7", 0], "words": words, "colormap": "turbo",
            "opacity": 0.6, "normalization": "per word", "branch": "positive"}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 1], "filename_prefix": "t/grid"}},
        "10": {"class_type": "AttentionFocusSaveMaps", "inputs": {
            "attention_maps": ["4", 1], "image": ["7", 0], "filename_prefix": "t/maps", "branch": "positive"}},
    }
    g.update(extra or {})
    return g


def test_text_encode_is_bit_identical_and_labels_words(comfy, loaded):
    from attention_focus.nodes.hook_state import TOKENS_KEY

    clip = loaded[1]
    for text in ["a photo of a cat", "(red:1.3) wizard ((hat))", LONG, "a cat BREAK a dog",
                 "photo-realistic word21"]:
        with torch.inference_mode():
            ref = comfy.nodes.CLIPTextEncode().encode(clip, text)[0]
            ours = comfy.nodes.NODE_CLASS_MAPPINGS["AttentionFocusTextEncode"]().encode(clip, text)[0]
        assert len(ref) == len(ours)
        for (a, da), (b, db) in zip(ref, ours, strict=True):
            assert torch.equal(a, b)
            assert torch.equal(da["pooled_output"], db["pooled_output"])
            table = db[TOKENS_KEY]
            assert len(table) == b.shape[1], "one table row per conditioning position"
    # labels survive weights, chunking and tokenizer splits
    from attention_focus.nodes.token_table import resolve

    table = ours[0][1][TOKENS_KEY]  # the last text
    assert len(resolve(table, "photo-realistic")) >= 3 and len(resolve(table, "word21")) == 3
    with torch.inference_mode():
        long_table = comfy.nodes.NODE_CLASS_MAPPINGS["AttentionFocusTextEncode"]().encode(
            clip, LONG)[0][0][1][TOKENS_KEY]
    assert len(long_table) > 77 and len(long_table) % 77 == 0
    pos = resolve(long_table, "item29")
    assert min(pos) >= 77, "a word of the second chunk is labelled in the second chunk"
    assert all(not long_table.rows[p].special for p in pos)
    with torch.inference_mode():
        w = comfy.nodes.NODE_CLASS_MAPPINGS["AttentionFocusTextEncode"]().encode(
            clip, "(red:1.3) hat")[0][0][1][TOKENS_KEY]
    assert [w.rows[p].weight for p in resolve(w, "red")] == [pytest.approx(1.3)]
    assert [w.rows[p].weight for p in resolve(w, "hat")] == [1.0]


def test_full_graph_writes_heatmaps_and_maps(comfy, ckpt):
    from attention_focus.nodes.maps_file import load_maps

    res = comfy.run(_graph(ckpt, size=(72, 40), batch=2))
    out = Path(comfy.folder_paths.get_output_directory())
    grids = res["outputs"]["9"]["images"]
    assert len(grids) == 2  # one grid per image of the batch
    saved = res["outputs"]["10"]["attention_maps"][0]
    maps, meta = load_maps(out / saved["subfolder"] / saved["filename"])
    assert maps.shape == (2, 77, 5, 9)  # latent of a 72x40 image
    assert meta["image_size"] == [40, 72] and meta["latent_size"] == [5, 9]
    assert meta["steps"] == 3 and meta["model_family"] == "sd1"
    assert [t["word_index"] for t in meta["tokens"]][0] == -1  # BOS is special
    view = res["outputs"]["8"]["attention_focus_view"][0]  # the editor viewer's record (see test_viewer_data)
    assert view["words"][:2] == ["cat", "red wizard hat"] and "photo" in view["words"] and view["batch"] == 2

    # the saved maps reload and render like the live capture
    rel = str(Path(saved["subfolder"]) / saved["filename"])
    g = {
        "1": {"class_type": "AttentionFocusLoadMaps", "inputs": {"file": rel}},
        "2": {"class_type": "EmptyImage", "inputs": {"width": 72, "height": 40, "batch_size": 2,
                                                     "color": 0}},
        "3": {"class_type": "AttentionFocusHeatmap", "inputs": {
            "attention_maps": ["1", 0], "image": ["2", 0], "words": "wizard hat", "colormap": "viridis",
            "opacity": 1.0, "normalization": "shared", "branch": "positive"}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "t/reload"}},
    }
    res2 = comfy.run(g)
    assert len(res2["outputs"]["4"]["images"]) == 2


def test_heatmap_node_outputs(comfy, loaded):
    """Masks are per image and word, at image size, in [0,1]; overlays match the maths."""
    from attention_focus.nodes.capture_store import word_maps
    from attention_focus.nodes.render import apply_colormap, normalize_maps, resize_maps

    model, clip, vae = loaded
    nm = comfy.nodes.NODE_CLASS_MAPPINGS
    with torch.inference_mode():
        pos = nm["AttentionFocusTextEncode"]().encode(clip, "a cat and a dog")[0]
        neg = comfy.nodes.CLIPTextEncode().encode(clip, "")[0]
        m, maps = nm["AttentionFocusCapture"]().patch(model, "all", "positive", 0.0, 1.0, "mean")
        lat = comfy.nodes.EmptyLatentImage().generate(48, 64, 2)[0]
        samples = comfy.nodes.common_ksampler(m, 1, 2, 4.0, "euler", "normal", pos, neg, lat)[0]
        image = vae.decode(samples["samples"])
        res = nm["AttentionFocusHeatmap"]().render(maps, image, "cat, dog", "gray", 1.0, "per word",
                                                   "positive")
    overlays, grid, masks = res["result"]
    assert masks.shape == (4, 64, 48) and masks.min() >= 0 and masks.max() <= 1
    assert overlays.shape == (4, 64, 48, 3)
    table = pos[0][1]["attention_focus_tokens"]
    from attention_focus.nodes.token_table import resolve

    wm = word_maps(maps.result().maps, [resolve(table, "cat"), resolve(table, "dog")])
    expect = normalize_maps(resize_maps(wm.reshape(4, 8, 6), (64, 48)), "per word")
    assert torch.allclose(masks, expect, atol=1e-6)
    # opacity 1 with the gray map: below the caption band, the overlay is the colour of the mask
    col = apply_colormap(expect, "gray")
    assert torch.allclose(overlays[:, 40:], col[:, 40:], atol=1e-5)


@pytest.mark.parametrize("case,match", [
    ({"8": {"words": "giraffe"}}, "giraffe.*not in the prompt.*cat"),
    ({"4": {"layers": "output.zz"}}, "bad block index"),
    ({"4": {"layers": "input.40"}}, "selects no cross-attention layer"),
    ({"4": {"start_percent": 0.9, "end_percent": 0.1}}, "start_percent"),
    ({"8": {"words": '"red, hat'}}, "unbalanced quote"),
])
def test_bad_input_gives_clear_errors(comfy, ckpt, case, match):
    g = _graph(ckpt)
    for nid, inputs in case.items():
        g[nid]["inputs"].update(inputs)
    res = comfy.run(g, expect_error=True)
    err = res["error"]
    assert err is not None
    msg = err.get("exception_message") or str(err)
    import re

    assert re.search(match, msg, re.S), msg
    assert "Traceback" not in msg


def test_maps_of_another_image_size_are_refused(comfy, ckpt):
    g = _graph(ckpt, size=(64, 64))
    g["11"] = {"class_type": "ImageScale", "inputs": {"image": ["7", 0], "upscale_method": "nearest-exact",
                                                      "width": 96, "height": 64, "crop": "disabled"}}
    g["8"]["inputs"]["image"] = ["11", 0]
    res = comfy.run(g, expect_error=True)
    assert "captured on a 8x8 latent" in res["error"]["exception_message"]


def test_invalid_maps_file_is_refused(comfy):
    out = Path(comfy.folder_paths.get_output_directory())
    bad = out / "not_maps.safetensors"
    bad.write_bytes(b"this is not a safetensors file")
    g = {"1": {"class_type": "AttentionFocusLoadMaps", "inputs": {"file": "not_maps.safetensors"}},
         "2": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0}},
         "3": {"class_type": "AttentionFocusHeatmap", "inputs": {
             "attention_maps": ["1", 0], "image": ["2", 0], "words": "", "colormap": "turbo",
             "opacity": 0.5, "normalization": "per word", "branch": "positive"}},
         "4": {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}}}
    res = comfy.run(g, expect_error=True)
    msg = (res["error"] or {}).get("exception_message", str(res.get("node_errors")))
    assert "safetensors" in msg.lower()
    g["1"]["inputs"]["file"] = "../../etc/passwd"
    res = comfy.run(g, expect_error=True)
    assert res.get("validation") is not None or res["error"] is not None


def _reweighted(ckpt, weights, mode="scale", text="a photo of a cat wearing a red wizard hat"):
    g = _graph(ckpt, text=text, words="red")
    g["12"] = {"class_type": "AttentionFocusReweight", "inputs": {
        "model": ["1", 0], "weights": weights, "mode": mode, "layers": "all", "branch": "positive",
        "start_percent": 0.0, "end_percent": 1.0}}
    g["4"]["inputs"]["model"] = ["12", 0]
    g["13"] = {"class_type": "SaveLatent", "inputs": {"samples": ["6", 0], "filename_prefix": "t/latent"}}
    return g


def _latent_of(comfy, res):
    import safetensors.torch

    rec = res["outputs"]["13"]["latents"][0]
    path = Path(comfy.folder_paths.get_output_directory()) / rec["subfolder"] / rec["filename"]
    return safetensors.torch.load_file(str(path))["latent_tensor"]


def test_reweight_node_by_word_in_a_graph(comfy, ckpt):
    text = LONG + ", a (red:1.2) wizard hat"  # the words sit in the second 77-token chunk, weighted
    base = _latent_of(comfy, comfy.run(_reweighted(ckpt, "", text=text)))
    ones = _latent_of(comfy, comfy.run(_reweighted(ckpt, "red:1, wizard hat:1.0", text=text)))
    assert torch.equal(base, ones)
    for mode in ("scale", "renormalize"):
        res = comfy.run(_reweighted(ckpt, 'red:3, "wizard hat":0.5', mode, text=text))
        assert not torch.equal(_latent_of(comfy, res), base)
    res = comfy.run(_reweighted(ckpt, "giraffe:2"), expect_error=True)
    assert re.search(r"giraffe.*not in the prompt.*wizard", res["error"]["exception_message"], re.S)
    for bad, match in [("red:abc", "not a number"), ("red:0", "renormalize"), (":2", "missing word")]:
        res = comfy.run(_reweighted(ckpt, bad, "renormalize" if bad == "red:0" else "scale"), expect_error=True)
        assert match in res["error"]["exception_message"]


def test_stock_text_encode_captures_label_by_position_or_by_given_text(comfy, loaded):
    model, clip, vae = loaded
    nm = comfy.nodes.NODE_CLASS_MAPPINGS
    text = "a cat on a red sofa"
    with torch.inference_mode():
        pos = comfy.nodes.CLIPTextEncode().encode(clip, text)[0]
        neg = comfy.nodes.CLIPTextEncode().encode(clip, "")[0]
        m, maps = nm["AttentionFocusCapture"]().patch(model, "all", "positive", 0.0, 1.0, "mean")
        lat = comfy.nodes.EmptyLatentImage().generate(64, 64, 1)[0]
        samples = comfy.nodes.common_ksampler(m, 1, 2, 4.0, "euler", "normal", pos, neg, lat)[0]
        image = vae.decode(samples["samples"])
        hm = nm["AttentionFocusHeatmap"]()
        with pytest.raises(ValueError, match="carry no token labels"):
            hm.render(maps, image, "", "turbo", 0.5, "per word", "positive")
        by_pos = hm.render(maps, image, "#2, #5", "turbo", 0.5, "per word", "positive")["result"][2]
        by_text = hm.render(maps, image, "cat, sofa", "turbo", 0.5, "per word", "positive", text=text,
                            clip=clip)["result"][2]
        with pytest.raises(ValueError, match="give the exact prompt"):
            hm.render(maps, image, "cat", "turbo", 0.5, "per word", "positive", text=LONG, clip=clip)
        # another prompt of the same length (CLIP pads to 77) would label the wrong maps: refused
        with pytest.raises(ValueError, match="does not encode to the prompt the maps were captured with"):
            hm.render(maps, image, "sofa", "turbo", 0.5, "per word", "positive", text="a sofa on a red cat",
                      clip=clip)
        # a word typed for unlabelled maps: the message says how to get labels
        with pytest.raises(ValueError, match="'cat': these maps carry no token labels.*Attention Focus Text Encode"):
            hm.render(maps, image, "cat", "turbo", 0.5, "per word", "positive")
    # "cat" is token 2 and "sofa" token 6 of "<bos> a cat on a red sofa"
    assert torch.allclose(by_pos[0], by_text[0])
    assert not torch.allclose(by_pos[1], by_text[1])


def test_heatmap_merges_text_streams_or_shows_one(comfy):
    """SD3-style maps (CLIP block then T5 block): a word's mask merges its tokens of both streams by default;
    text_stream shows one; an unknown stream is an error naming the streams."""
    import sys

    from attention_focus.nodes.capture_store import AttentionMaps, MapSet
    from attention_focus.nodes.render import normalize_maps, resize_maps

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
    from test_token_table import _sd3_like

    table = _sd3_like()
    g = torch.Generator().manual_seed(0)
    maps = torch.rand(1, len(table), 4, 6, generator=g)
    handle = AttentionMaps(mapset=MapSet(maps, table, {"latent_size": [4, 6]}))
    node = comfy.nodes.NODE_CLASS_MAPPINGS["AttentionFocusHeatmap"]()
    image = torch.zeros(1, 32, 48, 3)
    clip_pos = [r.pos for r in table.rows if r.stream == "clip_l" and r.piece.startswith("cat")]
    t5_pos = [r.pos for r in table.rows if r.stream == "t5xxl" and r.piece.lower() == "▁cat"]
    assert len(clip_pos) == 2 and len(t5_pos) == 2

    def mask(stream):
        return node.render(handle, image, "cat", "gray", 1.0, "per word", "positive",
                           text_stream=stream)["result"][2]

    def expect(pos):
        return normalize_maps(resize_maps(maps[:, pos].mean(1), (32, 48)), "per word")

    torch.testing.assert_close(mask("all"), expect(clip_pos + t5_pos))
    torch.testing.assert_close(mask("t5xxl"), expect(t5_pos))
    torch.testing.assert_close(mask("clip_l"), expect(clip_pos))
    with pytest.raises(ValueError, match="'clip_g' is not in these maps' prompt; it has clip_l, t5xxl"):
        mask("clip_g")


def test_reweights_do_not_pile_up_on_a_cached_model(comfy, ckpt):
    """Issue input: loader → Reweight → Capture → KSampler, queued again and again while the loader's
    output is cached, the weight changed 3 → 0.5 → 2 and the word cat → dog. Every result must equal a fresh
    run of its own settings (with ComfyUI ≥ 0.13's clone, hooks added downstream used to pile up upstream)."""
    from harness.comfy_boot import Session
    from attention_focus.nodes.maps_file import load_maps

    text = "a photo of a cat and a dog"

    def graph(weights, prefix, words="cat, dog", prompt=text):
        g = _reweighted(ckpt, weights, text=prompt)
        g["8"]["inputs"]["words"] = words
        g["10"]["inputs"]["filename_prefix"] = prefix
        return g

    def maps_of(res):
        f = res["outputs"]["10"]["attention_maps"][0]
        return load_maps(Path(comfy.folder_paths.get_output_directory()) / f["subfolder"] / f["filename"])[0]

    s = Session()
    for w in ("3.0", "0.5", "2.0"):
        got = maps_of(s.run(graph(f"cat:{w}", f"pile/{w}")))
    assert torch.equal(got, maps_of(Session().run(graph("cat:2.0", "pile/fresh"))))
    got = maps_of(s.run(graph("dog:2.0", "pile/dog")))
    assert torch.equal(got, maps_of(Session().run(graph("dog:2.0", "pile/dogfresh"))))
    res = s.run(graph("dog:2.0", "pile/nocat", words="dog", prompt="a photo of a dog"))
    assert res["error"] is None  # no stale 'cat' reweight survives on the cached model


def _maps_file(comfy, name: str, meta: dict, tokens: int = 3) -> str:
    import json

    from safetensors.torch import save_file

    path = Path(comfy.folder_paths.get_output_directory()) / name
    save_file({"maps": torch.zeros(1, tokens, 4, 4)}, str(path),
              metadata={"attention_focus": json.dumps({"format": "attention-focus-maps", **meta})})
    return name


def _load_and_render(name: str, **heat) -> dict:
    return {"1": {"class_type": "AttentionFocusLoadMaps", "inputs": {"file": name}},
            "2": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 32, "batch_size": 1, "color": 0}},
            "3": {"class_type": "AttentionFocusHeatmap", "inputs": {
                "attention_maps": ["1", 0], "image": ["2", 0], "words": "#1", "colormap": "turbo",
                "opacity": 0.5, "normalization": "per word", "branch": "positive", **heat}},
            "4": {"class_type": "PreviewImage", "inputs": {"images": ["3", 1]}}}


@pytest.mark.parametrize("meta,field", [
    ({"version": "abc"}, "'version'"),
    ({"version": 1, "latent_size": [4]}, "'latent_size'"),
    ({"version": 1, "steps": -2}, "'steps'"),
    ({"version": 1, "layers": "input.1.0"}, "'layers'"),
    ({"version": 1, "token_table": {"rows": "x", "words": []}}, "token table is damaged"),
])
def test_a_maps_file_with_damaged_metadata_names_the_field(comfy, meta, field):
    name = _maps_file(comfy, f"damaged_{abs(hash(str(meta)))}.safetensors", meta)
    res = comfy.run(_load_and_render(name), expect_error=True)
    msg = res["error"]["exception_message"]
    assert field in msg and "save the maps again" in msg, msg


def test_bad_values_through_the_api_name_the_input(comfy, ckpt):
    name = _maps_file(comfy, "fine.safetensors", {"version": 1})
    res = comfy.run(_load_and_render(name, opacity=float("nan")), expect_error=True)
    assert "opacity must be a number from 0 to 1" in res["error"]["exception_message"]
    g = _graph(ckpt)
    g["10"]["inputs"]["filename_prefix"] = "maps/" + "x" * 300
    msg = comfy.run(g, expect_error=True)["error"]["exception_message"]
    assert msg.startswith("filename_prefix") and "shorten it" in msg
    res = comfy.run(_reweighted(ckpt, "red:1e39"), expect_error=True)
    assert "'1e39' (the weight of 'red') is outside the usable range" in res["error"]["exception_message"]
    res = comfy.run(_reweighted(ckpt, "red:40, red wizard:40"), expect_error=True)
    msg = res["error"]["exception_message"]
    assert "the product 1600 of the weights of 'red', 'red wizard' on one token" in msg


def test_captions_never_fail_the_node(comfy, loaded, monkeypatch):
    """Non-Latin words with Pillow's bitmap default font (no FreeType / Pillow < 10.1) are drawn simplified."""
    from PIL import ImageFont

    from attention_focus.nodes import render

    bitmap = ImageFont.load_default_imagefont() if hasattr(ImageFont, "load_default_imagefont") else \
        ImageFont.load_default()
    monkeypatch.setattr(render, "_font", lambda size: bitmap)
    model, clip, vae = loaded
    nm = comfy.nodes.NODE_CLASS_MAPPINGS
    with torch.inference_mode():
        pos = nm["AttentionFocusTextEncode"]().encode(clip, "a 猫 in Tokyo, café")[0]
        neg = comfy.nodes.CLIPTextEncode().encode(clip, "")[0]
        m, maps = nm["AttentionFocusCapture"]().patch(model, "all", "positive", 0.0, 1.0, "mean")
        lat = comfy.nodes.EmptyLatentImage().generate(64, 64, 1)[0]
        samples = comfy.nodes.common_ksampler(m, 1, 2, 4.0, "euler", "normal", pos, neg, lat)[0]
        image = vae.decode(samples["samples"])
        res = nm["AttentionFocusHeatmap"]().render(maps, image, "猫, café", "turbo", 0.5, "per word", "positive")
    assert res["result"][0].shape[0] == 2


def test_default_word_list_keeps_emoji_and_embedding_names_resolve(comfy, loaded):
    from attention_focus.nodes.text_layout import context_tokens
    from attention_focus.nodes.token_table import resolve

    clip = loaded[1]
    table = context_tokens(clip, "a 🐱 in Tokyo")[0]
    assert "🐱" in table.word_texts() and resolve(table, "🐱")
