"""The capture effect: per-call attention probabilities into a run's store, and one immutable record per run.

What counts: every sampler model evaluation inside the step window (all evaluations of multi-evaluation
samplers such as heun or dpmpp_sde, and repeated sigmas); an extra model call for a prompt inside the same
evaluation (PAG, SAG, SLG guidance passes) does not. A prompt's maps are placed in its area and multiplied
by its mask (``capture_store``). At the end of each finished run the maps are aggregated into a
``MapsRecord`` kept by ``provenance.REGISTRY``; an interrupted run leaves nothing.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

import torch

from . import comfy_patch as cp
from . import daam
from .hook_state import CallInfo, RunState, SharedState, chunk_prompt
from .attention_math import attention_probs_at, combine_reweights, cross_attention_probs, fold_repeated_keys
from .capture_store import (AttentionMaps, CaptureSettings, CaptureStore, MapSet, MapsRecord, PromptInfo, Region,
                            fingerprint, merge_prompts)
from .errors import AttentionFocusError
from .families import model_family, resolve_layers
from .capture_history import history_meta, start_history, to_history
from .history import History
from .hook_state import state_of
from .influence import InfluenceRun, ablation_weights, influence_meta, plan_influence, run_passes
from .layer_spec import LayerKey, describe_layers
from .provenance import REGISTRY
from .reweight import apply_weights


@dataclass
class CaptureRun:
    """One run's working state: the store, the sigma window, the canonical model call per evaluation."""

    prompts: dict[str, PromptInfo]
    latent_hw: tuple[int, int]
    batch: int
    sigma_hi: float
    sigma_lo: float
    store: CaptureStore = field(default_factory=CaptureStore)
    canonical: dict[tuple[str, int], int] = field(default_factory=dict)  # (uid, evaluation) → call id
    ambiguous: set[str] = field(default_factory=set)  # prompts whose region could not be told
    daam_side: int = 64  # method DAAM: side of the reference grid
    history: History | None = None
    history_meta: dict = field(default_factory=dict)
    influence: InfluenceRun | None = None
    schedule_steps: int = 0


class Capture:
    """One Attention Focus Capture on a model: settings, layers, and the handle its records go to."""

    def __init__(self, settings: CaptureSettings, layers: list[LayerKey], maps: AttentionMaps,
                 daam_side: int = 64, patch: int = 1) -> None:
        self.settings = settings
        self.order = list(layers)  # in the model's order
        self.layers = set(layers)
        self.maps = maps
        self.daam_side = daam_side  # method DAAM: the reference grid side
        self.patch = patch  # DiTs: latent cells per patch side (the finest layer grid)

    def __deepcopy__(self, memo):
        return self

    def start_run(self, guider, run: RunState, noise, sigmas) -> None:
        hi, lo = cp.sigma_window(guider.model_patcher, self.settings.start, self.settings.end)
        cap = run.data[id(self)] = CaptureRun(run.prompts, run.latent_hw, run.batch, hi, lo, daam_side=self.daam_side)
        sig = [float(x) for x in sigmas.reshape(-1)] if isinstance(sigmas, torch.Tensor) else list(sigmas or [])
        cap.schedule_steps = max(0, len(sig) - 1)
        if self.settings.influence_words.strip() and self.settings.influence_steps > 0:
            cap.influence = plan_influence(self.settings.influence_words, self.settings.influence_steps, run, sig,
                                           lo, hi)
        if self.settings.history_mb > 0:
            start_history(cap, self, sig)

    def after_evaluation(self, st: SharedState, guider, x, timestep, model_options) -> None:
        """After a sampler evaluation: the influence passes, when this is a chosen step."""
        cap = st.run.data.get(id(self))
        if cap is not None and cap.influence is not None:
            run_passes(cap.influence, guider, x, timestep, model_options)

    def end_run(self, run: RunState) -> None:
        cap = run.data.get(id(self))
        if cap is None:
            return
        record = finalize(cap, self.maps, run.origin)
        self.maps.latest = record
        self.maps.last_run = cap
        self.maps.runs += 1
        REGISTRY.add(self.maps.node_id, record)

    def hook(self, st: SharedState, info: CallInfo | None, prev, func, *args, **kwargs):
        cap = st.run.data.get(id(self)) if info is not None else None
        if cap is not None and cap.influence is not None and cap.influence.active:  # an influence pass
            if cap.influence.ablate:
                q, k, v, heads, bhld, mask = cp.split_args(args, kwargs)
                w = ablation_weights(st, info, q.shape[0], k.shape[2] if bhld else k.shape[1], cap.influence.ablate,
                                     q.device)
                if w is not None:
                    args, kwargs = apply_weights(args, kwargs, w, "scale", bhld, q)
            return cp.call_next(prev, func, args, kwargs)
        if info is not None and info.layer in self.layers:
            if cap is not None and cap.sigma_lo <= info.sigma <= cap.sigma_hi:
                with torch.no_grad():
                    _capture(st, cap, self.settings, info, args, kwargs)
        return cp.call_next(prev, func, args, kwargs)


def add_capture(model, layer_spec: str = "all", branch: str = "positive", start: float = 0.0, end: float = 1.0,
                head_reduction: str = "mean", softmax: str = "all", node_id: str = "", **options):
    """Clone ``model`` and install attention capture; returns (clone, AttentionMaps handle).

    ``softmax`` (DiTs): ``all`` = the model's own joint softmax over text and image keys (exact),
    ``text`` = renormalised over the prompt's text keys only (cheaper; what most DiT heat-map tools show).
    ``node_id`` names the capture node (ComfyUI's UNIQUE_ID) so records can be found again. ``options``: the
    other ``CaptureSettings`` fields (``method``, ``history_mb``, ``history_stride``, ``history_groups``,
    ``influence_words``, ``influence_steps``).
    """
    settings = CaptureSettings(layer_spec, branch, start, end, head_reduction, softmax, **options)
    m = model.clone()
    layers = resolve_layers(m, layer_spec)
    family = model_family(m)
    side = 64
    if settings.method == "daam":
        layers, side = _daam_layers(m, family, layers, layer_spec)
    maps = AttentionMaps(settings, family=family, node_id=node_id or f"capture-{uuid.uuid4().hex}")
    cap = Capture(settings, layers, maps, side)
    st = cp.add_effect(m, cap)
    cap.patch = st.spec.patch if st.spec.kind == "dit" else 1
    if settings.influence_words.strip() and settings.influence_steps > 0:
        wrappers = m.model_options.get("transformer_options", {}).get("wrappers", {}).get("predict_noise", {})
        if INFLUENCE_KEY not in wrappers:
            m.add_wrapper_with_key("predict_noise", INFLUENCE_KEY, _influence_wrapper)
    maps.kind = st.spec.kind
    cp.install_override(m, cap.hook)
    return m, maps


INFLUENCE_KEY = "attention_focus_influence"


def _influence_wrapper(executor, *args, **kwargs):
    """PREDICT_NOISE: the sampler's evaluation as it is; then each capture's influence passes (never returned)."""
    out = executor(*args, **kwargs)
    guider = executor.class_obj
    st = state_of(guider.model_options.get("transformer_options"))
    if st is not None:
        x, timestep = args[0], args[1]
        model_options = args[2] if len(args) > 2 else kwargs.get("model_options", {})
        for effect in st.effects:
            if isinstance(effect, Capture):
                effect.after_evaluation(st, guider, x, timestep, model_options)
    return out


def _daam_layers(m, family: str, layers: list[LayerKey], layer_spec: str) -> tuple[list[LayerKey], int]:
    """Method DAAM: the selected layers DAAM hooks (down and up blocks) and the reference grid side."""
    if family not in ("sd1", "sd2", "sdxl"):
        raise AttentionFocusError(f"method DAAM is defined for the SD1.x, SD2.x and SDXL UNets, not for {family}: "
                                  "use method fast")
    kept = [k for k in layers if k.block in daam.DAAM_BLOCKS]
    if not kept:
        raise AttentionFocusError(f"method DAAM uses the input and output blocks only, and the layer spec "
                                  f"{layer_spec!r} selects none of them ({describe_layers(sorted(layers))})")
    v_pred = "V_PREDICTION" in str(getattr(m.model, "model_type", ""))
    return kept, daam.reference_side(family, v_pred)


def _region_of(cap: CaptureRun, uid: str, call_hw: tuple[int, int]) -> tuple[bool, Region | None]:
    """(known, region) of a prompt in a model call of latent size ``call_hw``."""
    p = cap.prompts.get(uid)
    regions = {r for r, _ in (p.regions if p is not None else [])}
    full = call_hw == tuple(cap.latent_hw)
    fits = [r for r in regions if (r is None and full) or (r is not None and (r.h, r.w) == call_hw)]
    if len(fits) == 1:
        return True, fits[0]
    if not fits and full:
        return True, None
    return False, None


def _capture(st: SharedState, cap: CaptureRun, settings: CaptureSettings, info: CallInfo, args, kwargs
             ) -> None:
    q, k, v, heads, bhld, mask = cp.split_args(args, kwargs)
    n = max(1, len(info.uids))
    per = q.shape[0] // n
    key_len = k.shape[2] if bhld else k.shape[1]
    weights = [(rw.mode, rw.row_weights(st, info, q.shape[0], key_len, q.device)) for rw in st.reweighters()]
    for i in range(len(info.uids)):
        uid, branch = chunk_prompt(st, info, i)
        if uid is None and info.uids[i] in cap.prompts and branch in settings.branches:
            cap.ambiguous.add(info.uids[i])  # cannot tell an area prompt from its opposite copy here
        if uid is None or branch not in settings.branches:
            continue
        if info.evaluation > 0 and cap.canonical.setdefault((uid, info.evaluation), info.call_id) != info.call_id:
            continue  # a second model call for this prompt in one evaluation: a guidance pass (PAG/SAG/SLG)
        known, region = _region_of(cap, uid, info.latent_hw)
        if not known:
            cap.ambiguous.add(uid)
            continue
        prompt = cap.prompts.get(uid)
        rows = slice(i * per, (i + 1) * per)
        scale, bias = combine_reweights([(mode, w[rows]) for mode, w in weights if w is not None])
        m = None
        if isinstance(mask, torch.Tensor):
            m = mask[rows] if mask.ndim >= 3 and mask.shape[0] == q.shape[0] else mask
        evaluation = info.evaluation if info.evaluation > 0 else info.call_id
        if settings.method == "daam":
            _daam_capture(cap, uid, prompt, region, info, q[rows], k[rows], heads, bhld, m, bias, scale, evaluation,
                          key_len)
            continue
        if info.geom is not None:
            p, per_frame = _dit_probs(settings, info, q[rows], k[rows], heads, bhld, m, bias, scale)
            cap.store.add(uid, info.layer, p, info.hw, evaluation, merge_as=LayerKey("dit", 0, 0, info.layer.level),
                          region=region)
            if per_frame is not None and region is None:
                cap.store.add_frames(uid, per_frame, info.hw)
            to_history(cap, uid, region, info, p, evaluation)
            continue
        p = cross_attention_probs(q[rows], k[rows], heads, bhld=bhld, reduce=settings.head_reduction, mask=m,
                                  key_bias=bias)
        if scale is not None:
            p = p * scale[:, None, :]
        length = prompt.length if prompt is not None else key_len
        p = fold_repeated_keys(p, length) if length and key_len % length == 0 else p
        cap.store.add(uid, info.layer, p, info.hw, evaluation, region=region)
        to_history(cap, uid, region, info, p, evaluation)


def _daam_capture(cap: CaptureRun, uid: str, prompt: PromptInfo | None, region: Region | None, info: CallInfo, q, k,
                  heads: int, bhld: bool, mask, bias, scale, evaluation: int, key_len: int) -> None:
    """Method DAAM: per-head probabilities of a kept layer into the per-head running sums."""
    if region is not None or any(r is not None or msk is not None for r, msk in (prompt.regions if prompt else [])):
        raise AttentionFocusError(
            "method DAAM is defined for prompts over the whole image; this prompt has an area or a mask "
            "(ConditioningSetArea / ConditioningSetMask): use method fast, which places such maps")
    if not daam.keeps(info.layer, info.hw, cap.daam_side):
        return
    p = daam.head_probs(q, k, heads, bhld=bhld, mask=mask, key_bias=bias)  # (b, H, n, Lk)
    if scale is not None:
        p = p * scale[:, None, None, :]
    length = prompt.length if prompt is not None else key_len
    p = fold_repeated_keys(p, length) if length and key_len % length == 0 else p
    b, h = p.shape[:2]
    cap.store.add(uid, info.layer, p.reshape(b * h, *p.shape[2:]), info.hw, evaluation, heads=h)
    to_history(cap, uid, region, info, p.mean(1), evaluation)


def _dit_probs(settings: CaptureSettings, info: CallInfo, q, k, heads: int, bhld: bool, mask, bias, scale):
    """Image-query → prompt-token probabilities of one DiT call, folded onto prompt positions: (B, n, T) — for a
    video the mean over its frames — and, for a video, the (B, frames, n, T) probabilities of each frame."""
    geom = info.geom
    key_rel, pos = geom.key_map()
    cols = key_rel.to(q.device) + info.key_base
    normalize = "all" if settings.softmax == "all" and info.joint else "text"
    p = attention_probs_at(q, k, heads, info.rows, cols, bhld=bhld, normalize=normalize,
                           reduce=settings.head_reduction, mask=mask, key_bias=bias)
    if scale is not None:
        p = p * scale[:, cols][:, None, :]
    if geom.folds:  # repeated streams (HiDream)
        folded = p.new_zeros(p.shape[0], p.shape[1], geom.prompt_len)
        p = folded.index_add_(2, pos.to(p.device), p)
    if geom.frames > 1:  # video: mean over frames of each patch, and each frame
        frames = p.reshape(p.shape[0], geom.frames, -1, p.shape[-1])
        return frames.mean(1), frames
    return p, None


def finalize(cap: CaptureRun, maps: AttentionMaps, origin) -> MapsRecord:
    """Aggregate a finished run into per-branch MapSets (prompts of a branch laid end to end)."""
    store = cap.store
    captured = set(store.uids())
    branches: dict[str, MapSet] = {}
    for branch in ("positive", "negative"):
        prompts = sorted(((p.slot, u) for u, p in cap.prompts.items() if p.branch == branch and u in captured))
        if not prompts:
            continue
        infos = [cap.prompts[u] for _, u in prompts]
        parts = []
        for (_, uid), info in zip(prompts, infos, strict=True):
            if maps.settings.method == "daam":
                parts.append(store.aggregate_daam(uid, cap.daam_side))
                continue
            masks = {r: m for r, m in info.regions}
            parts.append(store.aggregate(uid, cap.latent_hw, masks))
        table, prompt_meta = merge_prompts(infos)
        uids = [u for _, u in prompts]
        layers = sorted({k for u in uids for k in store.layers(u)})
        evals = [store.steps(u) for u in uids]
        meta = {
            "model_family": maps.family,
            "latent_size": list(cap.latent_hw),
            "steps": evals[0],
            "evaluations": evals[0] if len(evals) == 1 else evals,
            "layers": [k.name() for k in layers],
            "levels": [k.level for k in layers],
            "branch": branch,
            **maps.settings.meta(maps.kind),
            "store_bytes": store.nbytes(),
            **({"daam_grid": [cap.daam_side, cap.daam_side]} if maps.settings.method == "daam" else {}),
            "prompts": prompt_meta,
        }
        ambiguous = [u for u in uids if u in cap.ambiguous]
        if ambiguous:
            meta["incomplete"] = ("some evaluations of this branch could not be attributed with certainty (two "
                                  "areas of the same size for one prompt, or area prompts under a guider other "
                                  "than CFG); they are left out")
        if origin is not None:
            meta["sampler_node"] = origin.real_node_id
            meta["prompt_id"] = origin.prompt_id
        extra = {}
        frames = [store.frame_maps(u) for u in uids]
        if frames and all(f is not None for f in frames):
            extra["frames"] = torch.cat(frames, 2) if len(frames) > 1 else frames[0]
            meta["frames"] = {"count": int(extra["frames"].shape[1]), "grid": list(extra["frames"].shape[-2:]),
                              "definition": "per frame: the mean over layers of the summed probabilities, on the "
                                            "patch grid (not resized, not clamped)"}
        if cap.history is not None and cap.history.result(branch) is not None:
            extra["history"] = cap.history.result(branch)
            meta["history"] = history_meta(cap, branch)
        elif cap.history_meta.get("error"):
            meta["history"] = {"error": cap.history_meta["error"]}
        if branch == "positive" and cap.influence is not None and cap.influence.maps is not None:
            extra["influence"] = cap.influence.maps
            meta["influence"] = influence_meta(cap.influence, cap.schedule_steps)
        branches[branch] = MapSet(torch.cat(parts, 1) if len(parts) > 1 else parts[0], table, meta, extra)
    content = fingerprint(torch.cat([ms.maps.reshape(-1) for ms in branches.values()])) if branches else ""
    return MapsRecord(branches, tuple(cap.latent_hw), cap.batch, origin, content)
