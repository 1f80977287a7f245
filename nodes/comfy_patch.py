"""ComfyUI adapter — the hook mechanism shared by capture and reweighting.

Mechanism (see shared docs, comfyui-attention-hooks.md §1–2, §5):
- ``transformer_options["optimized_attention_override"]`` sees q/k/v of every attention call; ours is
  chained with whatever override was there (another pack's, or our other node's).
- an ``attn2_patch`` marks that the next attention call is a UNet cross-attention (attn2) and an
  ``attn2_output_patch`` clears the mark (so a foreign attn2 replacement cannot confuse us).
- wrappers: ``OUTER_SAMPLE`` starts and ends each sampling run (prompts, token tables, latent size, where
  the run comes from) and lets every effect finish its run; ``SAMPLER_SAMPLE`` reads the areas and masks
  ComfyUI resolved for each prompt; ``PREDICT_NOISE`` numbers the sampler's model evaluations (so extra
  guidance passes inside one evaluation, PAG/SAG/SLG, are told apart from the sampler's own);
  ``APPLY_MODEL`` records the latent size of each model call and, for Diffusion Transformers, its token
  geometry (patch grid, text span; ``families.geometry``).
- the override recognises image→text attention calls (UNet: the attn2 mark; DiT: their length) and names
  the layer from ComfyUI's block ids where the model sets them, else by counting the calls per forward.

State: one ``SharedState`` per patched model in ``transformer_options[STATE_KEY]``, looked up at call time
(never through closures). Every node that adds an effect replaces it with a copy on its own clone
(copy-on-write), so isolation holds whether ``ModelPatcher.clone()`` deep-copies model_options (ComfyUI
≤ 0.12) or copies only dicts and lists (PR #12382, Feb 2026 on).
The real output always comes from the attention function ComfyUI chose (or the previous override).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from .capture_store import PromptInfo, Region
from .cond_tokens import tokens_for_conditioning
from .dit_layout import Geometry, located
from .errors import AttentionFocusError
from .families import FamilySpec, expected_context_dim, geometry, model_layers, model_spec, prompt_length
from .layer_spec import LayerKey
from .provenance import Origin, node_signature

TOKENS_KEY = "attention_focus_tokens"
STATE_KEY = "attention_focus"  # shared mutable state in transformer_options
FWD_KEY = "attention_focus_forward"  # per-model-call facts (latent size; DiT geometry)
INFO_KEY = "attention_focus_info"  # the CallInfo of the attention call in progress
CALL_KEY = "attention_focus_call"  # (call id, sigma) of a model call
log = logging.getLogger("attention_focus")


# ---------------------------------------------------------------------------------------------------
# Per-call and per-run facts


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


def add_effect(m, effect: Any) -> SharedState:
    """Install ``effect`` on the clone ``m`` (copy-on-write of its state); returns the clone's state."""
    to = m.model_options.setdefault("transformer_options", {})
    st = state_of(to)
    if st is None:
        st = SharedState(model_spec(m), {(k.block, k.index, k.depth): k for k in model_layers(m)})
        to[STATE_KEY] = st
        _install_wrappers(m, st)
    else:
        st = to[STATE_KEY] = st.copy()
    st.effects.append(effect)
    return st


def _install_wrappers(m, st: SharedState) -> None:
    if st.spec.kind == "unet":
        m.set_model_attn2_patch(_mark_cross)
        m.set_model_attn2_output_patch(_clear_cross)
    elif not st.spec.routed:
        from .hydit_route import route_cross_attention

        route_cross_attention(m, st.current, log)
    m.add_wrapper_with_key("apply_model", "attention_focus_forward", _apply_model)
    m.add_wrapper_with_key("predict_noise", "attention_focus_evaluation", _predict_noise)
    m.add_wrapper_with_key("sampler_sample", "attention_focus_regions", _sampler_sample)
    m.add_wrapper_with_key("outer_sample", "attention_focus_run", _outer_sample)


# ---------------------------------------------------------------------------------------------------
# Wrappers and attn2 patches


def _apply_model(executor, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options=None,
                 **kwargs):
    """Record the latent size (and, for DiTs, the token geometry) of this model call."""
    to = transformer_options if transformer_options is not None else {}
    st = state_of(to)
    if st is None:
        return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)
    geom = geometry(st.spec, x, c_crossattn, kwargs, to) if st.spec.kind == "dit" else None
    fwd = ForwardInfo((int(x.shape[-2]), int(x.shape[-1])), geom, cross_only=not st.spec.routed)
    to[FWD_KEY] = fwd
    previous, st.current.to = st.current.to, to
    try:
        return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)
    finally:
        st.current.to = previous
        if to.get(FWD_KEY) is fwd:
            del to[FWD_KEY]


def _predict_noise(executor, *args, **kwargs):
    """One sampler model evaluation: extra passes inside it (PAG, SAG, SLG) share its number."""
    st = state_of(executor.class_obj.model_options.get("transformer_options"))
    if st is not None:
        st.run.evaluation += 1
    return executor(*args, **kwargs)


def _sampler_sample(executor, *args, **kwargs):
    """After ComfyUI resolved the conditioning: record each prompt's areas and masks (latent cells)."""
    guider = args[0] if args else None
    st = state_of(getattr(guider, "model_options", {}).get("transformer_options"))
    if st is not None:
        run = st.run
        for branch, entries in (getattr(guider, "conds", None) or {}).items():
            for c in entries or []:
                uid = str(c.get("uuid"))
                p = run.prompts.get(uid)
                if p is None:
                    continue
                if p.branch != branch:  # an opposite-area copy: the content is another prompt's
                    uid = _copied_from(c, entries, run.prompts, branch)
                    run.aliases[(str(c.get("uuid")), branch)] = uid
                    if uid is None:
                        continue
                run.prompts[uid].regions.append(_region(c, run.latent_hw))
    return executor(*args, **kwargs)


def _copied_from(c: dict, entries: list, prompts: dict[str, PromptInfo], branch: str) -> str | None:
    """The uuid of the ``branch`` prompt whose encoded conditioning the copy ``c`` reuses (same objects)."""
    mine = (c.get("model_conds") or {}).get("c_crossattn")
    for o in entries:
        uid = str(o.get("uuid"))
        p = prompts.get(uid)
        if o is not c and p is not None and p.branch == branch and mine is not None \
                and (o.get("model_conds") or {}).get("c_crossattn") is mine:
            return uid
    return None


def _region(c: dict, latent_hw: tuple[int, int]) -> tuple[Region | None, torch.Tensor | None]:
    """(area, mask) of a resolved conditioning entry, as ``samplers.get_area_and_mult`` applies them."""
    H, W = latent_hw
    region = None
    area = c.get("area")
    if area is not None and len(area) >= 4 and not isinstance(area[0], str):
        n = len(area) // 2  # (sizes…, offsets…); the last two dims are the latent's H and W
        h, w, y, x = int(area[n - 2]), int(area[n - 1]), int(area[-2]), int(area[-1])
        h, w = min(H - y, h), min(W - x, w)
        if (h, w, y, x) != (H, W, 0, 0):
            region = Region(h, w, y, x)
    mask = c.get("mask")
    if isinstance(mask, torch.Tensor):
        mask = mask.detach().float().cpu()
        mask = mask.reshape(-1, *mask.shape[-2:]) * float(c.get("mask_strength", 1.0))
    else:
        mask = None
    return region, mask


def _outer_sample(executor, *args, **kwargs):
    """A sampling run: record the prompts and latent size, let every effect start and finish the run."""
    guider = executor.class_obj
    to = guider.model_options.get("transformer_options", {})
    st = state_of(to)
    if st is None:
        return executor(*args, **kwargs)
    noise = args[0]
    prompts = _prompts(guider, st)
    _check_hooks_reachable(to)
    st.run = RunState(prompts, (int(noise.shape[-2]), int(noise.shape[-1])), int(noise.shape[0]),
                      origin=execution_origin())
    run = st.run
    for effect in st.effects:
        if hasattr(effect, "start_run"):
            effect.start_run(guider, run, noise, args[3])
    try:
        out = executor(*args, **kwargs)
    finally:
        st.run = RunState()  # an interrupted run leaves nothing behind
    for effect in st.effects:
        if hasattr(effect, "end_run"):
            effect.end_run(run)
    return out


def _prompts(guider, st: SharedState) -> dict[str, PromptInfo]:
    """uuid → PromptInfo for every conditioning entry of the run, with the token table that fits it."""
    prompts: dict[str, PromptInfo] = {}
    for branch, entries in (getattr(guider, "conds", None) or {}).items():
        for slot, c in enumerate(entries or []):
            if "uuid" not in c:
                continue
            ctx = c.get("cross_attn")
            length = int(ctx.shape[1]) if isinstance(ctx, torch.Tensor) and ctx.ndim == 3 else 0
            if st.spec.kind == "dit":
                _check_context(guider, st.spec, branch, ctx)
                length = prompt_length(st.spec, c)
            tokens, note = tokens_for_conditioning(ctx, c.get(TOKENS_KEY), length)
            if note:
                log.warning("Attention Focus (%s prompt): %s", branch, note)
            prompts[str(c["uuid"])] = PromptInfo(branch, slot, length, tokens, note)
    return prompts


def execution_origin() -> Origin | None:
    """The ComfyUI node executing right now (prompt id, node id, list index, graph signature), if any."""
    try:
        from comfy_execution.progress import get_progress_state
        from comfy_execution.utils import get_executing_context
    except ImportError:  # ComfyUI without execution contexts (older than 0.3.4x)
        return None
    ctx = get_executing_context()
    if ctx is None:
        return None
    registry = get_progress_state()
    graph = getattr(registry, "dynprompt", None)
    if graph is None or getattr(registry, "prompt_id", None) != ctx.prompt_id:
        return Origin(str(ctx.prompt_id), str(ctx.node_id), str(ctx.node_id), ctx.list_index, "")
    try:
        real = str(graph.get_real_node_id(ctx.node_id))
    except Exception:  # noqa: BLE001 - an unknown ephemeral id: use the node itself
        real = str(ctx.node_id)
    return Origin(str(ctx.prompt_id), str(ctx.node_id), real, ctx.list_index, node_signature(graph, real))


def executing_prompt() -> tuple[str | None, int | None]:
    """(prompt id, list index) of the node executing right now; (None, None) outside a prompt execution."""
    try:
        from comfy_execution.utils import get_executing_context
    except ImportError:
        return None, None
    ctx = get_executing_context()
    return (str(ctx.prompt_id), ctx.list_index) if ctx is not None else (None, None)


def _check_context(guider, spec: FamilySpec, branch: str, ctx) -> None:
    """A conditioning made by another model's text encoder fails deep inside the model: say so first."""
    try:
        dm = guider.model_patcher.model.diffusion_model
    except AttributeError:
        return
    want = expected_context_dim(dm, spec)
    if want is None or not isinstance(ctx, torch.Tensor) or ctx.ndim != 3 or int(ctx.shape[-1]) == want:
        return
    raise AttentionFocusError(
        f"the {branch} conditioning has {int(ctx.shape[-1])} features per token but this {spec.name} model "
        f"expects {want}: encode the prompt with the text encoder made for {spec.name} (load it with the "
        "matching CLIP loader type)")


def _check_hooks_reachable(to: dict) -> None:
    """Warn when another node took the attention hooks away from us (their layers go unseen)."""
    override = to.get("optimized_attention_override")
    if not getattr(override, "_attention_focus", False):
        log.warning("Attention Focus: another node replaced the attention override after ours; capture and "
                    "reweighting see nothing. Put the Attention Focus nodes after that node in the model chain.")
    replaced = sorted(map(str, (to.get("patches_replace", {}) or {}).get("attn2", {})))
    if replaced:
        log.warning("Attention Focus: cross-attention of %s is replaced by another node (e.g. IPAdapter); these "
                    "layers are neither captured nor reweighted", ", ".join(replaced))


def _mark_cross(n, context, value, extra_options):
    st = state_of(extra_options)
    if st is not None:
        st.cross_pending = True
    return n, context, value


def _clear_cross(n, extra_options):
    st = state_of(extra_options)
    if st is not None:
        st.cross_pending = False
    return n


# ---------------------------------------------------------------------------------------------------
# Which attention call is which


def _call_id(st: SharedState, to: dict) -> tuple[int, float]:
    """(call id, sigma) of the model call this attention belongs to (one id per transformer_options)."""
    call = to.get(CALL_KEY)
    if call is None:
        st.run.calls += 1
        sig = to.get("sigmas")
        sigma = float(sig.reshape(-1)[0]) if isinstance(sig, torch.Tensor) and sig.numel() else 0.0
        call = to[CALL_KEY] = (st.run.calls, sigma)
    return call


def _dit_call_info(st: SharedState, to: dict, fwd: ForwardInfo, q, k, bhld: bool) -> CallInfo | None:
    geom = fwd.geom
    lq, lk = (q.shape[2], k.shape[2]) if bhld else (q.shape[1], k.shape[1])
    second = True
    if geom.order == "cross" and not fwd.cross_only and lq == lk == geom.n_img == geom.n_text:
        fwd.ambiguous += 1  # self-attention comes first in each block, then cross-attention
        second = fwd.ambiguous % 2 == 0
    loc = located(geom, lq, lk, second)
    if loc is None:
        return None
    block_type, block_index = to.get("block_type"), to.get("block_index")
    if st.spec.block_ids and block_type in ("double", "single") and isinstance(block_index, int):
        layer = st.layer_table.get((block_type, block_index, 0))
    else:
        layers = st.spec.layers
        layer = layers[fwd.count] if fwd.count < len(layers) else None
    fwd.count += 1
    if layer is None:
        return None
    if fwd.call is None:
        fwd.call = _call_id(st, to)
    call_id, sigma = fwd.call
    return CallInfo(layer, [str(u) for u in to.get("uuids", [])], list(to.get("cond_or_uncond", [])), sigma,
                    call_id, st.run.evaluation, geom.grid, fwd.latent_hw, geom, loc.rows, loc.key_base, loc.joint)


def call_info(st: SharedState, to: dict, q: torch.Tensor, k: torch.Tensor, bhld: bool) -> CallInfo | None:
    """Describe an image→text attention call, or None if this call is not one."""
    fwd = to.get(FWD_KEY)
    if st.spec.kind == "dit":
        return _dit_call_info(st, to, fwd, q, k, bhld) if isinstance(fwd, ForwardInfo) else None
    if not st.cross_pending:
        return None
    st.cross_pending = False
    block = to.get("block")
    if block is None:
        return None
    layer = st.layer_table.get((block[0], int(block[1]), int(to.get("block_index", 0))))
    if layer is None:
        return None
    shape = to.get("activations_shape")
    n = q.shape[2] if bhld else q.shape[1]
    if shape is None or int(shape[-2]) * int(shape[-1]) != n:
        return None
    call_id, sigma = _call_id(st, to)
    latent_hw = fwd.latent_hw if isinstance(fwd, ForwardInfo) else st.run.latent_hw
    return CallInfo(layer, [str(u) for u in to.get("uuids", [])], list(to.get("cond_or_uncond", [])), sigma,
                    call_id, st.run.evaluation, (int(shape[-2]), int(shape[-1])), latent_hw)


def chunk_prompt(st: SharedState, info: CallInfo, i: int) -> tuple[str | None, str]:
    """(prompt uuid, branch) of the i-th batch chunk of a call; uuid None for a chunk that belongs to no
    known prompt. An opposite-area copy (same uuid, other branch) resolves to the prompt it was made from."""
    uid = info.uids[i] if i < len(info.uids) else None
    c = info.cond_or_uncond[i] if i < len(info.cond_or_uncond) else -1
    branch = {0: "positive", 1: "negative"}.get(c)
    p = st.run.prompts.get(uid) if uid is not None else None
    if p is None:
        return None, branch or "other"
    if branch is not None and branch != p.branch:
        uid = st.run.aliases.get((uid, branch))
        return uid, branch
    return uid, p.branch


def sigma_window(model_patcher, start: float, end: float) -> tuple[float, float]:
    """(σ_hi, σ_lo) of a step window given as fractions of the schedule."""
    ms = model_patcher.get_model_object("model_sampling")
    return float(ms.percent_to_sigma(start)), float(ms.percent_to_sigma(end))


def split_args(args: tuple, kwargs: dict):
    """(q, k, v, heads, bhld, mask) of an attention call as ``optimized_attention`` receives it."""
    q, k, v = args[:3]
    heads = args[3] if len(args) > 3 else kwargs.get("heads")
    bhld = bool(kwargs.get("skip_reshape", False))
    mask = args[4] if len(args) > 4 else kwargs.get("mask")
    return q, k, v, heads, bhld, mask


def call_next(prev, func, args, kwargs):
    return prev(func, *args, **kwargs) if prev is not None else func(*args, **kwargs)


def install_override(m, hook: Callable) -> None:
    """Install ``hook(st, info, prev, func, *args, **kwargs)`` as a chained attention override.

    Our hooks may be stacked (capture over reweight or the reverse). The first of ours to see a call
    describes it and stores the CallInfo in transformer_options for the others.
    """
    to = m.model_options.setdefault("transformer_options", {})
    prev = to.get("optimized_attention_override")

    def override(func, *args, **kwargs):
        to = kwargs.get("transformer_options")
        st = state_of(to)
        if st is None:
            return call_next(prev, func, args, kwargs)
        owner = INFO_KEY not in to
        if owner:
            q, k, v, heads, bhld, mask = split_args(args, kwargs)
            to[INFO_KEY] = call_info(st, to, q, k, bhld)
        try:
            return hook(st, to[INFO_KEY], prev, func, *args, **kwargs)
        finally:
            if owner:
                to.pop(INFO_KEY, None)

    override._attention_focus = True
    to["optimized_attention_override"] = override
