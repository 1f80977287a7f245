"""The state the hooks share: per-call and per-run facts, and one ``SharedState`` per patched model.

State lives in ``transformer_options[STATE_KEY]`` and is looked up at call time (never through closures).
Every node that adds an effect replaces it with a copy on its own clone (copy-on-write, ``comfy_patch.add_effect``),
so isolation holds whether ``ModelPatcher.clone()`` deep-copies model_options (ComfyUI ≤ 0.12) or copies only
dicts and lists (PR #12382, Feb 2026 on). Imports nothing from ComfyUI.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .capture_store import PromptInfo
from .dit_layout import Geometry
from .families import FamilySpec
from .layer_spec import LayerKey
from .provenance import Origin

TOKENS_KEY = "attention_focus_tokens"
STATE_KEY = "attention_focus"  # shared mutable state in transformer_options
FWD_KEY = "attention_focus_forward"  # per-model-call facts (latent size; DiT geometry)
INFO_KEY = "attention_focus_info"  # the CallInfo of the attention call in progress
CALL_KEY = "attention_focus_call"  # (call id, sigma) of a model call


@dataclass
class CallInfo:
    """What one image→text attention call is: layer, chunks (prompt uuids), sigma, grid."""

    layer: LayerKey
    uids: list[str]
    cond_or_uncond: list[int]
    sigma: float
    call_id: int  # one id per model call (all layers of one forward share it)
    evaluation: int  # the sampler's model evaluation (0: unknown)
    hw: tuple[int, int]  # this layer's query grid
    latent_hw: tuple[int, int]  # the latent size of this model call (an area crop, or the whole latent)
    geom: Geometry | None = None  # DiTs: token layout of this model call
    rows: slice | None = None  # DiTs: image query rows
    key_base: int = 0  # DiTs: where the text span starts among the keys
    joint: bool = False  # DiTs: keys include image tokens


@dataclass
class ForwardInfo:
    """Per-model-call facts stored in transformer_options by the APPLY_MODEL wrapper."""

    latent_hw: tuple[int, int]
    geom: Geometry | None = None
    count: int = 0  # image→text calls seen so far in this forward (layer = n-th call)
    ambiguous: int = 0  # cross-attention calls indistinguishable from self-attention by length
    cross_only: bool = False  # every routed call is a cross-attention (HunyuanDiT)
    call: tuple[int, float] | None = None  # (call id, sigma), set by the first image→text call


@dataclass
class RunState:
    """Per-sampling-run facts shared by the patches of one model."""

    prompts: dict[str, PromptInfo] = field(default_factory=dict)
    latent_hw: tuple[int, int] = (0, 0)
    batch: int = 0
    calls: int = 0
    evaluation: int = 0  # sampler model evaluations so far (PREDICT_NOISE wrapper)
    origin: Origin | None = None
    data: dict[int, Any] = field(default_factory=dict)  # per-effect working state, by id(effect)
    # (uuid, branch) → the prompt whose content that chunk carries: ComfyUI gives every area prompt an
    # opposite-branch copy with the same area, made from the other branch's prompt but keeping the area
    # prompt's uuid (samplers.create_cond_with_same_area_if_none); None = cannot be attributed
    aliases: dict[tuple[str, str], str | None] = field(default_factory=dict)
    copied: set[str] = field(default_factory=set)  # uuids that have such copies
    # the guider's cond_or_uncond index → branch (CFGGuider: 0 positive, 1 negative; other guiders, such as
    # DualCFG's [negative, middle, positive], are learned from the chunks of prompts without copies)
    cou_branches: dict[int, str] = field(default_factory=dict)


class CurrentCall:
    """Holds the running model call's transformer_options (HunyuanDiT route); one object per model chain."""

    def __init__(self) -> None:
        self.to: dict | None = None

    def __deepcopy__(self, memo):
        return self


class SharedState:
    """Mutable state of one patched model, reachable from every hook via transformer_options[STATE_KEY].

    ``effects`` are the capture and reweight objects installed on this model, in order. An effect may
    implement ``start_run(guider, run, noise, sigmas)``, ``end_run(run)`` and, for reweights,
    ``row_weights(st, info, batch, key_len, device)``.
    """

    def __init__(self, spec: FamilySpec, layer_table: dict[tuple[str, int, int], LayerKey]) -> None:
        self.spec = spec
        self.layer_table = layer_table
        self.cross_pending = False
        self.run = RunState()
        self.effects: list[Any] = []
        self.current = CurrentCall()

    def copy(self) -> SharedState:
        """A state for a clone: the same model facts, its own effect list and run."""
        new = SharedState(self.spec, self.layer_table)
        new.effects = list(self.effects)
        new.current = self.current
        return new

    def __deepcopy__(self, memo):  # ComfyUI ≤ 0.12 deep-copies model_options on clone
        return self.copy()

    def reweighters(self) -> list[Any]:
        return [e for e in self.effects if hasattr(e, "row_weights")]


def state_of(to: dict | None) -> SharedState | None:
    st = to.get(STATE_KEY) if isinstance(to, dict) else None
    return st if isinstance(st, SharedState) else None


def chunk_prompt(st: SharedState, info: CallInfo, i: int) -> tuple[str | None, str]:
    """(prompt uuid, branch) of the i-th batch chunk of a call; uuid None for a chunk that belongs to no
    known prompt, or a chunk of a prompt with opposite-area copies when the guider's batch index cannot tell
    the original from the copy. A copy resolves to the prompt it was made from."""
    run = st.run
    uid = info.uids[i] if i < len(info.uids) else None
    c = info.cond_or_uncond[i] if i < len(info.cond_or_uncond) else -1
    p = run.prompts.get(uid) if uid is not None else None
    if p is None:
        return None, run.cou_branches.get(c, "other")
    if uid not in run.copied:
        run.cou_branches.setdefault(c, p.branch)
        return uid, p.branch
    branch = run.cou_branches.get(c)
    if branch is None:
        return None, p.branch
    if branch == p.branch:
        return uid, branch
    return run.aliases.get((uid, branch)), branch
