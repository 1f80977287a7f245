"""Maps always belong to the image they are shown with: one capture feeding several samplers, ComfyUI's node
caches (classic, LRU, RAM pressure) between prompts, re-queues after a downstream change, interrupted runs,
batches, graph expansion — and clear refusals where a map cannot be matched to one run.

The right value is always computed independently: the same sampler alone in a fresh executor (nothing
cached, nothing else sampling) gives the maps and the heat-map grid its image must show.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image


@pytest.fixture(scope="module")
def ckpt(comfy):
    from harness import fixtures

    return fixtures.install_checkpoint(comfy)


def _out(comfy) -> Path:
    return Path(comfy.folder_paths.get_output_directory())


def saved_maps(comfy, res, node: str) -> torch.Tensor:
    from attention_focus.nodes.maps_file import load_maps

    f = res["outputs"][node]["attention_maps"][0]
    return load_maps(_out(comfy) / f["subfolder"] / f["filename"])[0]


def saved_image(comfy, res, node: str) -> np.ndarray:
    f = res["outputs"][node]["images"][0]
    return np.asarray(Image.open(_out(comfy) / f["subfolder"] / f["filename"]))


_REFS: dict = {}


def reference(comfy, ckpt, seed: int, words: str = "cat, hat", batch: int = 1, sampler: str = "euler"):
    """(maps, grid pixels) of one sampler run alone in a fresh executor."""
    from harness.comfy_boot import Session
    from harness.graphs import base, branch

    key = (seed, words, batch, sampler)
    if key not in _REFS:
        res = Session().run({**base(ckpt, batch=batch), **branch("R", seed, words, prefix=f"ref{seed}",
                                                                 sampler=sampler)})
        _REFS[key] = (saved_maps(comfy, res, "R10"), saved_image(comfy, res, "R9"))
    return _REFS[key]


def _cached(res) -> set[str]:
    return {n for e, d in res["messages"] if e == "execution_cached" for n in d.get("nodes", [])}


@pytest.mark.parametrize("first", ["A", "B"])
def test_two_samplers_on_one_capture_each_show_their_own_run(comfy, ckpt, first):
    """Issue input 1: Heatmap A must keep seed 5's maps after sampler B (seed 6) ran on the same capture,
    whichever sampler ran last, and after a re-queue that changes only Heatmap A's words."""
    from harness.comfy_boot import Session
    from harness.graphs import base, branch

    seeds = {"A": 5, "B": 6}
    s = Session()
    s.run({**base(ckpt), **branch(first, seeds[first], prefix=f"{first}solo")})
    g = {**base(ckpt), **branch("A", 5, prefix=f"A{first}"), **branch("B", 6, prefix=f"B{first}")}
    res = s.run(g)
    other = "B" if first == "A" else "A"
    assert f"{first}6" in _cached(res) and f"{other}6" in res["executed"], "the other sampler ran last"
    for name in ("A", "B"):
        assert torch.equal(saved_maps(comfy, res, f"{name}10"), reference(comfy, ckpt, seeds[name])[0]), name
        assert np.array_equal(saved_image(comfy, res, f"{name}9"), reference(comfy, ckpt, seeds[name])[1]), name
    # change only Heatmap A's words (and Save Maps A's file name, so it saves again): the samplers are cached
    g["A8"]["inputs"]["words"] = "hat"
    g["A10"]["inputs"]["filename_prefix"] = f"prov/A{first}_again"
    res = s.run(g)
    assert {"A6", "B6"} <= _cached(res) and "A8" in res["executed"]
    assert torch.equal(saved_maps(comfy, res, "A10"), reference(comfy, ckpt, 5)[0])
    assert np.array_equal(saved_image(comfy, res, "A9"), reference(comfy, ckpt, 5, "hat")[1])


@pytest.mark.parametrize("cache", ["lru", "ram"])
def test_a_cache_that_keeps_several_results_serves_each_with_its_own_maps(comfy, ckpt, cache):
    """LRU / RAM-pressure caches keep seed 5's and seed 6's results; going back to seed 5 is served from the
    cache without sampling — the maps must be seed 5's, not those of the last run (seed 6)."""
    from harness.comfy_boot import Session
    from harness.graphs import base, branch

    s = Session(cache, lru=32)
    for seed in (5, 6):
        s.run({**base(ckpt), **branch("A", seed, prefix=f"{cache}{seed}")})
    g = {**base(ckpt), **branch("A", 5, words="hat", prefix=f"{cache}5again")}
    res = s.run(g)
    assert "A6" in _cached(res), "seed 5's sampler output must come from the cache"
    assert torch.equal(saved_maps(comfy, res, "A10"), reference(comfy, ckpt, 5)[0])
    assert np.array_equal(saved_image(comfy, res, "A9"), reference(comfy, ckpt, 5, "hat")[1])


def test_an_interrupted_run_leaves_nothing_and_a_requeue_is_right(comfy, ckpt):
    from harness.comfy_boot import Session
    from harness.graphs import base, branch

    s = Session()
    s.run({**base(ckpt), **branch("A", 5, prefix="intA"), **branch("B", 6, prefix="intB")})
    g = {**base(ckpt), **branch("A", 5, prefix="intA2"), **branch("B", 7, prefix="intB2", model=("I", 0)),
         "I": {"class_type": "AFTestInterruptAt", "inputs": {"model": ["4", 0], "evaluation": 2}}}
    res = s.run(g, expect_error=True)
    assert any(e == "execution_interrupted" for e, _ in res["messages"]), "ComfyUI's interrupt must stop B"
    # queue again without the interrupt; Heatmap A re-renders with other words
    g["B6"]["inputs"]["model"] = ["4", 0]
    del g["I"]
    g["A8"]["inputs"]["words"] = "hat"
    g["A10"]["inputs"]["filename_prefix"] = "prov/intA3"
    res = s.run(g)
    assert torch.equal(saved_maps(comfy, res, "A10"), reference(comfy, ckpt, 5)[0])
    assert torch.equal(saved_maps(comfy, res, "B10"), reference(comfy, ckpt, 7)[0])


def test_batches_keep_one_map_per_image_of_their_own_run(comfy, ckpt):
    from harness.comfy_boot import Session
    from harness.graphs import base, branch

    s = Session()
    g = {**base(ckpt, batch=2), **branch("A", 5, prefix="bA"), **branch("B", 6, prefix="bB")}
    s.run(g)
    g["A8"]["inputs"]["words"] = "hat"
    g["A10"]["inputs"]["filename_prefix"] = "prov/bA2"
    res = s.run(g)
    maps = saved_maps(comfy, res, "A10")
    ref = reference(comfy, ckpt, 5, batch=2)[0]
    assert maps.shape[0] == 2 and torch.equal(maps, ref)
    assert not torch.equal(maps[0], maps[1])


def test_a_sampler_inside_a_graph_expansion(comfy, ckpt):
    """Group / subgraph packs expand a node into a KSampler at run time; its maps follow the group node."""
    from harness.comfy_boot import Session
    from harness.graphs import base, branch

    s = Session()
    g = {**base(ckpt), **branch("A", 5, prefix="grpA"), **branch("B", 6, prefix="grpB")}
    g["B6"] = {"class_type": "AFTestSamplerGroup", "inputs": {
        "model": ["4", 0], "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["5", 0], "seed": 6}}
    s.run(g)
    g["B8"]["inputs"]["words"] = "hat"
    g["B10"]["inputs"]["filename_prefix"] = "prov/grpB2"
    res = s.run(g)
    assert "B6" in _cached(res)
    assert torch.equal(saved_maps(comfy, res, "B10"), reference(comfy, ckpt, 6)[0])
    assert torch.equal(saved_maps(comfy, res, "A10"), reference(comfy, ckpt, 5)[0])


def _error(res) -> str:
    err = res["error"]
    assert err is not None, "the node must refuse"
    return err["exception_message"]


def test_refusals_name_the_input_and_the_fix(comfy, ckpt):
    from harness.comfy_boot import Session
    from harness.graphs import base, branch

    s = Session()
    g = {**base(ckpt), **branch("A", 5, prefix="refA"), **branch("B", 6, prefix="refB")}
    # one image made from two runs of this capture
    g["M"] = {"class_type": "ImageBatch", "inputs": {"image1": ["A7", 0], "image2": ["B7", 0]}}
    g["A8"]["inputs"]["image"] = ["M", 0]
    msg = _error(s.run(g, expect_error=True))
    assert "combines images of several sampling runs that used this capture" in msg
    assert "KSampler (node A6)" in msg and "KSampler (node B6)" in msg
    # an image from a sampler that did not use the capture
    g = {**base(ckpt), **branch("A", 5, prefix="refA2"), **branch("C", 7, prefix="refC", model=("1", 0))}
    g["C8"]["inputs"]["attention_maps"] = ["4", 1]
    msg = _error(s.run(g, expect_error=True))
    assert "'image' input was not made by a sampler that used this capture" in msg
    # a node that samples twice with the capture in one execution
    g = {**base(ckpt), **branch("A", 5, prefix="refT")}
    g["A6"] = {"class_type": "AFTestSampleTwice", "inputs": {
        "model": ["4", 0], "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["5", 0], "seed": 5}}
    msg = _error(s.run(g, expect_error=True))
    assert "ran 2 sampling runs with this capture in one execution" in msg
