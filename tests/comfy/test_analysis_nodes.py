"""The analysis nodes (History, Segment, Compare, the Heatmap's threshold masks, Save/Load with the history) on
maps captured from a real ComfyUI UNet with real CLIP token labels; expectations computed here by hand."""

from __future__ import annotations

import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

PROMPT = "a photorealistic cat wearing a hat and a red hat"


@pytest.fixture(scope="module")
def runs(comfy):
    """Two captured runs (seeds 1 and 2) of a tiny SD1.5-shaped UNet with a labelled prompt, 4 steps, history on."""
    from comfy.sd1_clip import SD1Tokenizer

    from attention_focus.nodes.cond_tokens import register
    from attention_focus.nodes.hook_state import TOKENS_KEY
    from attention_focus.nodes.text_layout import context_tokens
    from harness import fixtures
    from harness import pack as cp

    tok = SD1Tokenizer()
    clip = types.SimpleNamespace(tokenizer=tok, tokenize=lambda t, return_word_ids=False, **k:
                                 tok.tokenize_with_weights(t, return_word_ids))
    mp = fixtures.tiny_unet_patcher("sd15")
    pos = fixtures.random_conditioning("sd15", seed=1)
    pos[0][1][TOKENS_KEY] = register(pos[0][0], context_tokens(clip, PROMPT, context_length=77)[0])
    neg = fixtures.random_conditioning("sd15", seed=2)
    out = []
    for seed in (1, 2):
        m, maps = cp.add_capture(mp, "all", "positive", 0.0, 1.0, "mean", history_mb=32)
        fixtures.sample(m, pos, neg, torch.zeros(1, 4, 16, 16), seed=seed, steps=4, cfg=5.0)
        image = torch.rand(1, 128, 128, 3, generator=torch.Generator().manual_seed(seed))
        out.append((maps, image))
    return comfy, out


def _node(comfy, name):
    return comfy.nodes.NODE_CLASS_MAPPINGS[name]()


def test_history_node_timelapse_layer_grid_and_webp(runs):
    comfy, ((maps, image), _) = runs
    from PIL import Image

    res = _node(comfy, "AttentionFocusHistory").render(maps, image, "cat, hat", "turbo", 0.6, "shared", "per step",
                                                        "positive", 4.0, True, "t/timelapse")
    clip, grid, summary = res["result"]
    meta = maps.result().meta["history"]
    assert clip.shape[0] == 4 == len(meta["frames"])  # one frame per step
    assert clip.shape[2] == 3 * 128 + 4 * 2  # image | cat | hat in a row, 2 px padding
    assert grid.shape[0] == 2  # one layer grid per word
    assert summary.startswith("history: 16x16 cells, 7 layer groups, 4 frames (every evaluation)")
    f = res["ui"]["images"][0]
    webp = Image.open(Path(comfy.folder_paths.get_output_directory()) / f["subfolder"] / f["filename"])
    assert webp.n_frames == 4 and res["ui"]["animated"] == (True,)
    # cumulative: the last frame shows the whole run's mean, which is the time-sum over all layers
    cum = _node(comfy, "AttentionFocusHistory").render(maps, image, "cat", "turbo", 1.0, "per frame", "cumulative",
                                                        "positive", 4.0, False, "t/x")["result"][0]
    assert cum.shape[0] == 4 and not torch.equal(cum[0], cum[-1])


def test_save_and_load_keep_the_history(runs):
    comfy, ((maps, image), _) = runs
    saved = _node(comfy, "AttentionFocusSaveMaps").save(maps, image, "t/hist_maps", "positive")
    f = saved["ui"]["attention_maps"][0]
    (loaded,) = _node(comfy, "AttentionFocusLoadMaps").load(f"{f['subfolder']}/{f['filename']}")
    live, back = maps.result(), loaded.loaded
    assert torch.equal(back.extra["history"], live.extra["history"].cpu())
    assert back.meta["history"]["frames"] == live.meta["history"]["frames"]
    node = _node(comfy, "AttentionFocusHistory")
    a = node.render(maps, image, "hat", "turbo", 0.6, "shared", "per step", "positive", 4.0, False, "t/a")["result"]
    b = node.render(loaded, image, "hat", "turbo", 0.6, "shared", "per step", "positive", 4.0, False, "t/b")["result"]
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def _word(ms, word):
    """A word's map: the mean of the tokens of all its occurrences."""
    return ms.maps[:, [p for w in ms.tokens.merged_words() if w.text == word for p in w.positions]].mean(1)


def test_segment_node_is_the_hand_computed_arg_max(runs):
    comfy, ((maps, image), _) = runs
    ms = maps.result()
    pic, masks = _node(comfy, "AttentionFocusSegment").segment(maps, image, "cat, hat, red", 0.4, "per word", 0.5,
                                                                "positive")["result"]
    words = torch.stack([_word(ms, w) for w in ("cat", "hat", "red")], 1)[0]  # (3, 16, 16)
    lo, hi = words.amin((1, 2), keepdim=True), words.amax((1, 2), keepdim=True)
    norm = (words - lo) / (hi - lo)
    best, arg = norm.max(0)
    labels = torch.where(best >= 0.4, arg + 1, 0)
    big = labels.repeat_interleave(8, 0).repeat_interleave(8, 1)  # nearest, ×8
    assert masks.shape == (3, 128, 128)
    for j in range(3):
        assert torch.equal(masks[j], (big == j + 1).float())
    assert pic.shape[1] > 128 and pic.shape[2] == 128  # legend below


def test_heatmap_threshold_and_otsu_masks(runs):
    comfy, ((maps, image), _) = runs
    from attention_focus.nodes.segmentation import otsu_thresholds

    node = _node(comfy, "AttentionFocusHeatmap")
    soft = node.render(maps, image, "cat, hat", "turbo", 0.6, "per word", "positive")["result"][2]
    thr = node.render(maps, image, "cat, hat", "turbo", 0.6, "per word", "positive", mask_mode="threshold",
                      mask_threshold=0.5)["result"][2]
    otsu = node.render(maps, image, "cat, hat", "turbo", 0.6, "per word", "positive", mask_mode="otsu")["result"][2]
    assert torch.equal(thr, (soft >= 0.5).float())
    t = otsu_thresholds(soft)
    assert torch.equal(otsu, (soft >= t[:, None, None]).float())
    assert set(otsu.unique().tolist()) == {0.0, 1.0}


def test_compare_node_differences_on_one_scale(runs):
    comfy, ((ma, ia), (mb, ib)) = runs
    tiles, grid = _node(comfy, "AttentionFocusDifference").compare(ma, ia, mb, ib, "cat, hat", 1.0,
                                                                 "positive")["result"]
    a, b = ma.result(), mb.result()
    d = torch.stack([_word(a, w) - _word(b, w) for w in ("cat", "hat")], 1)
    scale = float(d.abs().max())
    assert tiles.shape == (2, 128, 128, 3) and grid.shape[0] == 1
    # the colour at a pixel far from the caption is the diverging colour of d / scale there (bicubic ×8)
    up = F.interpolate(d.reshape(2, 1, 16, 16), size=(128, 128), mode="bicubic", align_corners=False)[:, 0]
    from attention_focus.nodes.segmentation import diverging

    torch.testing.assert_close(tiles[:, 100, 100], diverging(up[:, 100, 100] / scale), atol=1e-5, rtol=1e-5)


def test_difference_of_a_run_with_itself_is_zero_for_the_default_words(runs):
    """Empty words: both sides take the same tokens (the prompt's content words), so A − A is 0 everywhere; the
    prompt's repeated 'hat' is one word on both sides."""
    from attention_focus.nodes.segmentation import diverging

    comfy, ((ma, ia), _) = runs
    tiles, _ = _node(comfy, "AttentionFocusDifference").compare(ma, ia, ma, ia, "", 1.0, "positive")["result"]
    assert tiles.shape[0] >= 3  # photorealistic, cat, wearing, hat, red ...
    torch.testing.assert_close(tiles[:, 100, 100], diverging(torch.zeros(tiles.shape[0])).expand(tiles.shape[0], 3),
                               atol=1e-6, rtol=0)


def test_loaded_maps_refuse_the_other_branch(runs):
    comfy, ((maps, image), _) = runs
    saved = _node(comfy, "AttentionFocusSaveMaps").save(maps, image, "t/branch_maps", "positive")
    f = saved["ui"]["attention_maps"][0]
    (loaded,) = _node(comfy, "AttentionFocusLoadMaps").load(f"{f['subfolder']}/{f['filename']}")
    heatmap = _node(comfy, "AttentionFocusHeatmap")
    heatmap.render(loaded, image, "cat", "turbo", 0.6, "per word", "positive")
    with pytest.raises(ValueError, match="holds the positive prompt's maps, not the negative.*set branch"):
        heatmap.render(loaded, image, "cat", "turbo", 0.6, "per word", "negative")


def test_influence_node_pairs_attention_and_influence(comfy):
    from harness import fixtures
    from harness import pack as cp

    mp = fixtures.tiny_unet_patcher("sd15")
    pos, neg = fixtures.random_conditioning("sd15", seed=1), fixtures.random_conditioning("sd15", seed=2)
    m, maps = cp.add_capture(mp, "all", "positive", 0.0, 1.0, "mean", influence_words="#2, #4-5", influence_steps=2)
    fixtures.sample(m, pos, neg, torch.zeros(1, 4, 8, 8), seed=1, steps=3, cfg=5.0)
    image = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(0))
    node = _node(comfy, "AttentionFocusInfluence")
    pairs, grid = node.render(maps, image, "", "turbo", 0.6, "per word")["result"]
    assert pairs.shape == (2, 64 + 2 * 2, 2 * 64 + 3 * 2, 3) and grid.shape[0] == 1
    one, _ = node.render(maps, image, "#4-5", "turbo", 0.6, "per word")["result"]
    assert torch.equal(one[0], pairs[1])
    with pytest.raises(ValueError, match="had no influence measured"):
        node.render(maps, image, "#7", "turbo", 0.6, "per word")


def test_new_nodes_in_a_real_graph(comfy):
    """The capture's new inputs and the analysis nodes validate and run in ComfyUI's executor (stock loader,
    real CLIP, KSampler, VAE decode), with method DAAM on a non-square image."""
    from harness import fixtures
    from harness.comfy_boot import Session
    from harness.graphs import base

    ckpt = fixtures.install_checkpoint(comfy)
    g = base(ckpt, capture={"method": "DAAM", "history_mb": 16.0, "history_stride": 1,
                            "history_layers": "each block", "influence_words": "cat, hat", "influence_steps": 2})
    g.update({
        "6": {"class_type": "KSampler", "inputs": {
            "model": ["4", 0], "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["5", 0], "seed": 1,
            "steps": 3, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "7": {"class_type": "VAEDecode", "inputs": {"samples": ["6", 0], "vae": ["1", 2]}},
        "8": {"class_type": "AttentionFocusHistory", "inputs": {
            "attention_maps": ["4", 1], "image": ["7", 0], "words": "cat, hat", "colormap": "turbo", "opacity": 0.6,
            "normalization": "shared", "frames": "per step", "branch": "positive", "fps": 4.0, "save_webp": True,
            "filename_prefix": "g/timelapse"}},
        "9": {"class_type": "AttentionFocusSegment", "inputs": {
            "attention_maps": ["4", 1], "image": ["7", 0], "words": "cat, hat", "background_threshold": 0.3,
            "normalization": "per word", "opacity": 0.5, "branch": "positive"}},
        "10": {"class_type": "SaveImage", "inputs": {"images": ["9", 0], "filename_prefix": "g/labels"}},
        "11": {"class_type": "AttentionFocusInfluence", "inputs": {
            "attention_maps": ["4", 1], "image": ["7", 0], "words": "", "colormap": "turbo", "opacity": 0.6,
            "normalization": "per word"}},
        "12": {"class_type": "SaveImage", "inputs": {"images": ["11", 1], "filename_prefix": "g/influence"}},
        "13": {"class_type": "AttentionFocusHeatmap", "inputs": {
            "attention_maps": ["4", 1], "image": ["7", 0], "words": "cat", "colormap": "turbo", "opacity": 0.6,
            "normalization": "per word", "branch": "positive", "mask_mode": "otsu"}},
        "14": {"class_type": "SaveImage", "inputs": {"images": ["13", 1], "filename_prefix": "g/heat"}},
        "15": {"class_type": "AttentionFocusDifference", "inputs": {
            "attention_maps_a": ["4", 1], "image_a": ["7", 0], "attention_maps_b": ["4", 1], "image_b": ["7", 0],
            "words": "cat", "opacity": 0.6, "branch": "positive"}},
        "16": {"class_type": "SaveImage", "inputs": {"images": ["15", 1], "filename_prefix": "g/compare"}},
    })
    res = Session().run(g)
    out = res["outputs"]
    assert out["8"]["animated"] == [True] and out["8"]["text"][0].startswith("history: ")
    for node in ("10", "12", "14", "16"):
        assert out[node]["images"], node


def test_heatmap_viewer_gets_the_history_as_step_and_layer_frames(runs):
    """The Heatmap node's view file carries the capture's real history: one step frame per history frame and one
    layer frame per group, each the word's mean probability per layer and evaluation (computed here from the raw
    history), to 8-bit precision."""
    from attention_focus.nodes.viewer_data import dequantize, read_view, view_dir

    comfy, ((maps, image), _) = runs
    res = _node(comfy, "AttentionFocusHeatmap").render(maps, image, "cat", "turbo", 0.6, "per word", "positive")
    (ui,) = res["ui"]["attention_focus_view"]
    tensors, header = read_view(view_dir(comfy.folder_paths.get_temp_directory()) / f"{ui['id']}.view.safetensors")
    ms = maps.result()
    meta, hist = ms.meta["history"], ms.extra["history"].double()  # (T, G, B, K, h, w)
    assert [w["text"] for w in header["words"]][0] == "cat"
    steps, layers = header["frames"]["steps"], header["frames"]["layers"]
    assert len(steps["labels"]) == len(meta["frames"]) == 4 and steps["labels"][0].startswith("1/4, sigma ")
    assert layers["labels"] == meta["groups"]
    from attention_focus.nodes.token_table import resolve

    col = [meta["tokens"].index(p) for p in resolve(ms.tokens, "cat")]
    word = hist[:, :, :, col].mean(3)  # (T, G, B, h, w)
    members = [len(g) for g in meta["group_layers"]]
    ev = [int(f[1]) - int(f[0]) + 1 for f in meta["frames"]]
    exp_steps = word.sum(1) / (sum(members) * torch.tensor(ev, dtype=torch.float64)[:, None, None, None])
    exp_layers = word.sum(0) / (torch.tensor(members, dtype=torch.float64)[:, None, None, None] * sum(ev))
    for kind, exp, fr in (("steps", exp_steps, steps), ("layers", exp_layers, layers)):
        q = tensors[f"frames.{kind}"]  # (B, frames, words, h, w)
        lo, hi = torch.tensor(fr["lo"]), torch.tensor(fr["hi"])
        got = dequantize(q, lo, hi)[0, :, 0].double()
        step = float((hi - lo).max()) / 255
        assert got.shape == exp[:, 0].shape
        torch.testing.assert_close(got, exp[:, 0], atol=step, rtol=0)
        assert float(exp[:, 0].std()) > 10 * step  # the frames differ: the check is not trivially met
