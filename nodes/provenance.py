"""Which sampling run made an image: the rule that keeps every map with the image it belongs to.

ComfyUI caches node outputs and re-runs only what changed, so one capture's MODEL may feed several
samplers, and a sampler's output may come from any earlier execution kept by the cache (classic, LRU,
RAM-pressure). Every finished run therefore leaves an immutable ``MapsRecord`` tagged with its ``Origin``:
the executing sampler node, the prompt id, and a *graph signature* of that node — a hash of its class and
literal inputs and, recursively, of every node upstream of it (what ComfyUI's own cache keys are made of,
minus IS_CHANGED). A node that shows maps (Heatmap, Save Maps) follows its ``image`` input upstream in the
running graph and takes the record of the nearest sampler there that used its capture:

1. the sampler ran in this prompt → the record of this prompt (its output is the one flowing downstream);
2. it was served from the cache → a record with the same graph signature made earlier (same inputs, same
   output); several such records with different maps (an input whose content changed under an unchanged
   name, e.g. a reloaded image file) → refused, the run cannot be told apart;
3. no such record (never run with this capture, evicted from memory, image from elsewhere) → refused.

Refusals are ``AttentionFocusError`` messages that say what to re-run. The graph is read through
``get_node(id) -> {"class_type", "inputs"}`` (ComfyUI's DynamicPrompt, or a plain dict wrapper), so this
module imports nothing from ComfyUI.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .errors import AttentionFocusError

# records kept for cached outputs, in MiB of maps (override with ATTENTION_FOCUS_MAPS_MEMORY_MB)
DEFAULT_BUDGET_MB = 1024


@dataclass(frozen=True)
class Origin:
    """Where a sampling run happened: ComfyUI's prompt id, the executing node (and, for nodes created by
    an expansion, the graph node it belongs to), the list index, and the signatures of both: an image may be
    linked to the expanding node (a group node) or to the expanded copy itself (a loop body)."""

    prompt_id: str
    node_id: str
    real_node_id: str
    list_index: int | None
    signature: str  # of the real (graph) node
    node_signature: str = ""  # of the executing node, when it differs (an expanded copy)

    def signatures(self) -> set[str]:
        return {s for s in (self.signature, self.node_signature) if s}


def _is_link(v: Any) -> bool:
    return isinstance(v, (list, tuple)) and len(v) == 2 and isinstance(v[0], str) and isinstance(v[1], int)


def _node(graph, node_id: str) -> dict | None:
    try:
        node = graph.get_node(node_id)
    except Exception:  # noqa: BLE001 - DynamicPrompt raises NodeNotFoundError for unknown ids
        return None
    return node if isinstance(node, dict) else None


def node_signature(graph, node_id: str, memo: dict[str, str] | None = None) -> str:
    """Hash of a node's class, literal inputs and, through its links, every upstream node's signature.

    Equal signatures mean equal graphs above the node, whatever the node ids; '' for an unknown node.
    """
    memo = {} if memo is None else memo
    if node_id in memo:
        return memo[node_id]
    memo[node_id] = "cycle"
    node = _node(graph, node_id)
    if node is None:
        memo[node_id] = ""
        return ""
    parts = []
    for name in sorted(node.get("inputs", {})):
        v = node["inputs"][name]
        if _is_link(v):
            parts.append([name, "link", node_signature(graph, v[0], memo), v[1]])
        else:
            parts.append([name, "value", json.dumps(v, sort_keys=True, default=repr)])
    raw = json.dumps([node.get("class_type"), parts], sort_keys=True)
    memo[node_id] = hashlib.blake2b(raw.encode(), digest_size=16).hexdigest()
    return memo[node_id]


def upstream(graph, node_id: str, input_name: str) -> dict[str, int]:
    """Every node upstream of one input of ``node_id``, with its distance in links (1 = directly linked)."""
    node = _node(graph, node_id)
    link = (node or {}).get("inputs", {}).get(input_name)
    if not _is_link(link):
        return {}
    dist = {link[0]: 1}
    queue = [link[0]]
    while queue:
        cur = queue.pop(0)
        for v in (_node(graph, cur) or {}).get("inputs", {}).values():
            if _is_link(v) and v[0] not in dist:
                dist[v[0]] = dist[cur] + 1
                queue.append(v[0])
    return dist


def ancestors(graph, node_id: str) -> set[str]:
    """Every node any input of ``node_id`` depends on."""
    out: set[str] = set()
    for name in (_node(graph, node_id) or {}).get("inputs", {}):
        out.update(upstream(graph, node_id, name))
    return out


class RunRegistry:
    """The records of finished runs, by (sampler signature, capture id), newest last, within a memory budget.

    Records without a signature (runs outside a ComfyUI prompt execution) are not kept here.
    """

    def __init__(self, budget_bytes: int | None = None) -> None:
        mb = float(os.environ.get("ATTENTION_FOCUS_MAPS_MEMORY_MB", DEFAULT_BUDGET_MB))
        self.budget = int(budget_bytes if budget_bytes is not None else mb * 2**20)
        self._records: OrderedDict[int, tuple[tuple[str, str], Any]] = OrderedDict()
        self.evicted = 0

    def add(self, capture_id: str, record) -> None:
        origin = record.origin
        if origin is None or not origin.signatures():
            return
        self._records[id(record)] = ((frozenset(origin.signatures()), capture_id), record)
        total = sum(r.nbytes() for _, r in self._records.values())
        while total > self.budget and len(self._records) > 1:
            _, (_, old) = self._records.popitem(last=False)
            total -= old.nbytes()
            self.evicted += 1

    def find(self, signature: str, capture_id: str) -> list:
        return [r for (sigs, cap), r in self._records.values() if cap == capture_id and signature in sigs]

    def captures_of(self, capture_id: str) -> list:
        return [r for k, r in self._records.values() if k[1] == capture_id]

    def clear(self) -> None:
        self._records.clear()


REGISTRY = RunRegistry()

RERUN = ("queue the prompt again with that sampler re-run (change one of its inputs, e.g. the seed, or free "
         "ComfyUI's node cache first)")


def record_for_image(capture_id: str, latest, graph, node_id: str, input_name: str, prompt_id: str | None,
                     list_index: int | None = None, registry: RunRegistry = REGISTRY,
                     describe: Callable[[str], str] = str):
    """The record of the run that made the image at ``input_name`` of node ``node_id``.

    ``latest``: the capture's newest record, used only outside a prompt execution (``graph`` None).
    ``describe(node_id)`` names a node in messages. Raises AttentionFocusError (see the module docstring).
    """
    if graph is None or prompt_id is None:
        if latest is None:
            raise AttentionFocusError(
                "no generation has run with this capture yet: connect the capture node's MODEL output to the "
                "sampler and the decoded IMAGE of that sampler to this node")
        return latest
    dist = upstream(graph, node_id, input_name)
    memo: dict[str, str] = {}
    found = {n: registry.find(node_signature(graph, n, memo), capture_id) for n in dist}
    found = {n: recs for n, recs in found.items() if recs}
    if not found:
        if latest is None and not registry.captures_of(capture_id):
            raise AttentionFocusError(
                "no generation has run with this capture yet: connect the capture node's MODEL output to the "
                f"sampler and the IMAGE decoded from that sampler to '{input_name}'")
        raise AttentionFocusError(
            f"the '{input_name}' input was not made by a sampler that used this capture (or its maps are no "
            f"longer kept): connect the IMAGE decoded from the sampler that received the capture node's MODEL, "
            f"or {RERUN}")
    # the nearest samplers: those no other candidate depends on
    nearest = [n for n in found if not any(n in ancestors(graph, o) for o in found if o != n)]
    if len(nearest) > 1:
        names = ", ".join(describe(n) for n in sorted(nearest, key=dist.get))
        raise AttentionFocusError(
            f"the '{input_name}' input combines images of several sampling runs that used this capture ({names}); "
            "the maps belong to one run: connect the IMAGE decoded from one sampler")
    sampler = nearest[0]
    records = found[sampler]
    here = [r for r in records if r.origin.prompt_id == prompt_id]
    if here:
        per_exec: dict[tuple, list] = {}
        for r in here:
            per_exec.setdefault((r.origin.node_id, r.origin.list_index), []).append(r)
        if list_index is not None and len(per_exec) > 1:
            here = [r for r in here if r.origin.list_index == list_index] or here
            per_exec = {k: v for k, v in per_exec.items() if k[1] == list_index} or per_exec
        if len(per_exec) > 1 or any(len(v) > 1 for v in per_exec.values()):
            raise AttentionFocusError(
                f"{describe(sampler)} ran {len(here)} sampling runs with this capture in one execution (a tiled or "
                "multi-pass sampler, or a list of inputs); the maps cannot be matched to one image: capture a "
                "sampler that samples once, or split the passes into separate sampler nodes")
        return here[0]
    contents = {r.content for r in records}
    if len(contents) > 1:
        raise AttentionFocusError(
            f"{describe(sampler)} was served from ComfyUI's cache, and {len(records)} earlier runs with these same "
            "inputs left different maps (an input changed its content under the same name, e.g. a reloaded "
            f"image file), so the run that made this image cannot be told apart: {RERUN}")
    return records[-1]
