"""Every capture, reweight and graph test runs under both ways ComfyUI has copied model options on clone.

ComfyUI ≤ 0.12 deep-copies ``model_options`` in ``ModelPatcher.clone()``; since PR #12382 (Feb 2026) it
copies dicts and lists only and shares every other object (``comfy.utils.deepcopy_list_dict``). The
``clone_copy`` parameter swaps the copy inside ``clone`` for either behaviour, whichever ComfyUI is under test.
"""

from __future__ import annotations

import copy

import pytest

# test modules whose tests run under both clone behaviours
BOTH_CLONES = {"test_capture_unet", "test_reweight_unet", "test_nodes_graph", "test_dit", "test_provenance",
               "test_conditioning", "test_evaluations"}


def dict_list_copy(obj, memo=None):
    """Copy dicts and lists recursively; share every other object (what ComfyUI ≥ 0.13 does)."""
    memo = {} if memo is None else memo
    if id(obj) in memo:
        return memo[id(obj)]
    if isinstance(obj, dict):
        out = {dict_list_copy(k, memo): dict_list_copy(v, memo) for k, v in obj.items()}
    elif isinstance(obj, list):
        out = [dict_list_copy(v, memo) for v in obj]
    else:
        out = obj
    memo[id(obj)] = out
    return out


COPIES = {"deepcopy": copy.deepcopy, "dict-list": dict_list_copy}


def pytest_generate_tests(metafunc):
    if metafunc.module.__name__.rpartition(".")[2] in BOTH_CLONES:
        metafunc.fixturenames.append("clone_copy")
        metafunc.parametrize("clone_copy", list(COPIES), scope="module")


@pytest.fixture(autouse=True)
def _clone_behaviour(request):
    """Make ``ModelPatcher.clone`` copy model_options the way the test's ``clone_copy`` parameter says."""
    params = getattr(request.node, "callspec", None)
    how = COPIES.get(params.params.get("clone_copy")) if params is not None else None
    if how is None:
        yield
        return
    import comfy.model_patcher as mp

    original = mp.ModelPatcher.clone

    def clone(self, *args, **kwargs):
        n = original(self, *args, **kwargs)
        n.model_options = how(self.model_options)
        return n

    mp.ModelPatcher.clone = clone
    try:
        yield
    finally:
        mp.ModelPatcher.clone = original
