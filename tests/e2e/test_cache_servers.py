"""End to end over HTTP, ComfyUI's real main.py with the caches that keep several results per node
(``--cache-lru N``, ``--cache-ram``; RAM pressure is the default from ComfyUI 0.2x on): a sampler served
from the cache must show the maps of the run that made its output, never those of the last run.
"""

from __future__ import annotations

import pytest
import torch

CACHES = {"lru": ["--cache-lru", "16"], "ram": ["--cache-ram"]}


@pytest.fixture(scope="module", params=list(CACHES))
def server(request):
    from harness.server import running_server

    with running_server(f"af-cache-{request.param}-", extra_args=CACHES[request.param]) as srv:
        srv.cache = request.param
        yield srv


def _maps(server, hist, node: str) -> torch.Tensor:
    from attention_focus.nodes.maps_file import load_maps

    f = hist["outputs"][node]["attention_maps"][0]
    return load_maps(server.base / "output" / f["subfolder"] / f["filename"])[0]


def _run(server, prompt) -> dict:
    hist = server.wait(server.queue(prompt))
    assert hist["status"]["status_str"] == "success", hist["status"]
    return hist


def _cached(hist) -> set[str]:
    return {n for e, d in hist["status"]["messages"] if e == "execution_cached" for n in d.get("nodes", [])}


def test_going_back_to_a_cached_result_keeps_its_maps(server):
    from harness.graphs import base, branch

    tag = server.cache
    first = _run(server, {**base(server.ckpt), **branch("A", 5, prefix=f"{tag}5")})
    second = _run(server, {**base(server.ckpt), **branch("A", 6, prefix=f"{tag}6")})
    assert not torch.equal(_maps(server, first, "A10"), _maps(server, second, "A10"))
    again = _run(server, {**base(server.ckpt), **branch("A", 5, words="hat", prefix=f"{tag}5b")})
    assert "A6" in _cached(again), "seed 5's sampler output must come from the cache"
    assert torch.equal(_maps(server, again, "A10"), _maps(server, first, "A10"))


def test_two_samplers_then_a_heatmap_change(server):
    from harness.graphs import base, branch

    tag = server.cache
    g = {**base(server.ckpt), **branch("A", 15, prefix=f"{tag}tA"), **branch("B", 16, prefix=f"{tag}tB")}
    first = _run(server, g)
    g["A8"]["inputs"]["words"] = "hat"
    g["A10"]["inputs"]["filename_prefix"] = f"prov/{tag}tA2"
    again = _run(server, g)
    assert {"A6", "B6"} <= _cached(again)
    assert torch.equal(_maps(server, again, "A10"), _maps(server, first, "A10"))
    assert not torch.equal(_maps(server, again, "A10"), _maps(server, first, "B10"))
