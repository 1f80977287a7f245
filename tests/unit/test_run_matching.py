"""Which run made an image, on plain graphs and records (ComfyUI's DynamicPrompt is read through get_node)."""

from __future__ import annotations

import pytest
from attention_focus.nodes import provenance as pv
from attention_focus.nodes.errors import AttentionFocusError


class Graph:
    def __init__(self, nodes: dict):
        self.nodes = nodes

    def get_node(self, node_id):
        if node_id not in self.nodes:
            raise KeyError(node_id)
        return self.nodes[node_id]


class Rec:
    def __init__(self, origin, content="c", size=10):
        self.origin, self.content, self.size = origin, content, size

    def nbytes(self):
        return self.size


def _g(seed_a=5, seed_b=6):
    return Graph({
        "1": {"class_type": "Loader", "inputs": {"name": "m"}},
        "4": {"class_type": "Capture", "inputs": {"model": ["1", 0]}},
        "A": {"class_type": "KSampler", "inputs": {"model": ["4", 0], "seed": seed_a}},
        "B": {"class_type": "KSampler", "inputs": {"model": ["4", 0], "seed": seed_b}},
        "dA": {"class_type": "Decode", "inputs": {"samples": ["A", 0]}},
        "dB": {"class_type": "Decode", "inputs": {"samples": ["B", 0]}},
        "H": {"class_type": "Heatmap", "inputs": {"image": ["dA", 0], "attention_maps": ["4", 1], "words": "cat"}},
        "M": {"class_type": "Batch", "inputs": {"a": ["dA", 0], "b": ["dB", 0]}},
        "HM": {"class_type": "Heatmap", "inputs": {"image": ["M", 0], "attention_maps": ["4", 1]}},
    })


def test_signatures_follow_inputs_not_ids():
    g = _g()
    same = Graph({k.replace("A", "Z") if k in ("A",) else k: v for k, v in g.nodes.items()})
    assert pv.node_signature(g, "A") == pv.node_signature(same, "Z")  # another id, same graph above
    assert pv.node_signature(g, "A") != pv.node_signature(g, "B")  # another seed
    assert pv.node_signature(g, "A") != pv.node_signature(_g(seed_a=7), "A")
    assert pv.node_signature(g, "missing") == ""
    # downstream widgets never change an upstream signature
    g2 = _g()
    g2.nodes["H"]["inputs"]["words"] = "dog"
    assert pv.node_signature(g, "A") == pv.node_signature(g2, "A")


def test_upstream_distances_and_ancestors():
    g = _g()
    assert pv.upstream(g, "H", "image") == {"dA": 1, "A": 2, "4": 3, "1": 4}
    assert pv.upstream(g, "H", "words") == {}
    assert pv.ancestors(g, "dA") == {"A", "4", "1"}


def _origin(g, node, prompt="p1", list_index=None):
    return pv.Origin(prompt, node, node, list_index, pv.node_signature(g, node))


def test_the_run_of_the_sampler_upstream_of_the_image():
    g, reg = _g(), pv.RunRegistry(10**6)
    a, b = Rec(_origin(g, "A")), Rec(_origin(g, "B"))
    reg.add("cap", a)
    reg.add("cap", b)
    assert pv.record_for_image("cap", b, g, "H", "image", "p1", registry=reg) is a
    # a later prompt: A served from the cache → its earlier record, whatever ran since
    later = Rec(_origin(_g(seed_b=9), "B", "p2"))
    reg.add("cap", later)
    assert pv.record_for_image("cap", later, g, "H", "image", "p2", registry=reg) is a


def test_refusals():
    g, reg = _g(), pv.RunRegistry(10**6)
    with pytest.raises(AttentionFocusError, match="no generation has run with this capture yet"):
        pv.record_for_image("cap", None, g, "H", "image", "p1", registry=reg)
    reg.add("cap", Rec(_origin(g, "A")))
    reg.add("cap", Rec(_origin(g, "B")))
    with pytest.raises(AttentionFocusError, match=r"combines images of several sampling runs .*\(A, B\)"):
        pv.record_for_image("cap", None, g, "HM", "image", "p1", registry=reg)
    with pytest.raises(AttentionFocusError, match="was not made by a sampler that used this capture"):
        pv.record_for_image("other-capture", Rec(None), g, "H", "image", "p1", registry=reg)
    # two runs of one node in one execution (tiled / multi-pass)
    reg.add("cap", Rec(_origin(g, "A")))
    with pytest.raises(AttentionFocusError, match="ran 2 sampling runs with this capture in one execution"):
        pv.record_for_image("cap", None, g, "H", "image", "p1", registry=reg)


def test_served_from_cache_with_ambiguous_history_is_refused():
    g, reg = _g(), pv.RunRegistry(10**6)
    reg.add("cap", Rec(_origin(g, "A", "p1"), content="x"))
    reg.add("cap", Rec(_origin(g, "A", "p2"), content="y"))  # same inputs, other maps (a reloaded file)
    with pytest.raises(AttentionFocusError, match="cannot be told apart"):
        pv.record_for_image("cap", None, g, "H", "image", "p3", registry=reg)
    reg2 = pv.RunRegistry(10**6)
    r1, r2 = Rec(_origin(g, "A", "p1"), "x"), Rec(_origin(g, "A", "p2"), "x")  # same maps: either is right
    reg2.add("cap", r1)
    reg2.add("cap", r2)
    assert pv.record_for_image("cap", None, g, "H", "image", "p3", registry=reg2) is r2


def test_list_index_picks_the_matching_run():
    g, reg = _g(), pv.RunRegistry(10**6)
    r0, r1 = Rec(_origin(g, "A", list_index=0)), Rec(_origin(g, "A", list_index=1))
    reg.add("cap", r0)
    reg.add("cap", r1)
    assert pv.record_for_image("cap", None, g, "H", "image", "p1", 1, registry=reg) is r1


def test_registry_budget_evicts_the_oldest_and_outside_an_execution_the_latest_is_used():
    g = _g()
    reg = pv.RunRegistry(25)
    recs = [Rec(_origin(g, "A", f"p{i}"), size=10) for i in range(4)]
    for r in recs:
        reg.add("cap", r)
    assert reg.find(pv.node_signature(g, "A"), "cap") == recs[2:] and reg.evicted == 2
    reg.add("cap", Rec(None))  # no origin: not kept
    assert len(reg.find(pv.node_signature(g, "A"), "cap")) == 2
    assert pv.record_for_image("cap", recs[0], None, "H", "image", None, registry=reg) is recs[0]
