"""The capture effect: per-call attention probabilities into a run's store, and one immutable record per run.

What counts: every sampler model evaluation inside the step window (all evaluations of multi-evaluation
samplers such as heun or dpmpp_sde, and repeated sigmas); an extra model call for a prompt inside the same
evaluation (PAG, SAG, SLG guidance passes) does not. A prompt's maps are placed in its area and multiplied
by its mask (``capture_store``). At the end of each finished run the maps are aggregated into a
``MapsRecord`` kept by ``provenance.REGISTRY``; an interrupted run leaves nothing.
"""

from __future__ import annotations

import logging
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
from .history import History, plan_history
from .layer_spec import LayerKey, describe_layers
from .provenance import REGISTRY

log = logging.getLogger("attention_focus")


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
        if self.settings.history_mb > 0:
            _start_history(cap, self, sigmas)

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
        if info is not None and info.layer in self.layers:
            cap = st.run.data.get(id(self))
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
    maps.kind = st.spec.kind
    cp.install_override(m, cap.hook)
    return m, maps


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


def _start_history(cap: CaptureRun, capture: Capture, sigmas) -> None:
    """Plan the run's history within the budget (history.py); a budget too small for one frame: a warning."""
    settings = capture.settings
    sig = [float(x) for x in sigmas.reshape(-1)] if isinstance(sigmas, torch.Tensor) else list(sigmas or [])
    steps = sum(1 for x in sig[:-1] if cap.sigma_lo <= x <= cap.sigma_hi) or 1
    H, W = cap.latent_hw
    if capture.maps.kind == "dit":
        fine = (-(-H // capture.patch), -(-W // capture.patch))
    else:
        level = min(k.level for k in capture.order)
        fine = (H, W)
        for _ in range(level):
            fine = (-(-fine[0] // 2), -(-fine[1] // 2))
    offsets: dict[str, tuple[str, int, torch.Tensor]] = {}
    tokens: dict[str, int] = {}
    kept_positions: dict[str, list[int]] = {}
    for branch in sorted(settings.branches):
        start = 0
        for uid, p in sorted(((u, p) for u, p in cap.prompts.items() if p.branch == branch), key=lambda x: x[1].slot):
            keep = ([r.pos for r in p.tokens.rows if not r.special] if p.tokens is not None
                    and len(p.tokens) == p.length else list(range(p.length)))
            offsets[uid] = (branch, tokens.get(branch, 0), torch.tensor(keep, dtype=torch.long))
            tokens[branch] = tokens.get(branch, 0) + len(keep)
            kept_positions.setdefault(branch, []).extend(start + x for x in keep)
            start += p.length
    budget = int(settings.history_mb * 2**20)
    plan, why = plan_history(budget, steps, fine, capture.order, settings.history_groups, cap.batch, tokens,
                             settings.history_stride)
    if plan is None:
        log.warning("Attention Focus: no history for this run: %s", why)
        cap.history_meta = {"error": why}
        return
    log.info("Attention Focus %s", plan.describe())
    cap.history = History(plan, offsets)
    members: list[list[str]] = [[] for _ in plan.groups]
    for k in capture.order:
        members[plan.group_of[k]].append(k.name())
    cap.history_meta = {"grid": list(plan.grid), "groups": list(plan.groups), "group_layers": members,
                        "budget_bytes": budget, "schedule": sig, "planned_steps": steps,
                        "positions": kept_positions}


def _history_meta(cap: CaptureRun, branch: str) -> dict:
    """The history's metadata for one branch (frames, stride, sizes, what was left out)."""
    h = cap.history
    meta = {k: v for k, v in cap.history_meta.items() if k != "positions"}
    meta["tokens"] = cap.history_meta.get("positions", {}).get(branch, [])
    meta.update({"stride": h.stride, "frames": [list(f) for f in h.frame_labels()], "bytes": h.plan.nbytes(),
                 "peak_bytes": h.peak_bytes, "evaluations": len(h.sigmas),
                 "summary": h.plan.describe().replace(f"up to {h.plan.frames} frames",
                                                      f"{len(h.frame_labels())} frames")})
    if h.stride != h.plan.stride:
        meta["summary"] += f" (stride raised to {h.stride}: more evaluations than planned)"
    if h.skipped:
        meta["left_out"] = sorted(h.skipped)
    return meta


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
            p = _dit_probs(settings, info, q[rows], k[rows], heads, bhld, m, bias, scale)
            cap.store.add(uid, info.layer, p, info.hw, evaluation, merge_as=LayerKey("dit", 0, 0, info.layer.level),
                          region=region)
            _to_history(cap, uid, region, info, p, evaluation)
            continue
        p = cross_attention_probs(q[rows], k[rows], heads, bhld=bhld, reduce=settings.head_reduction, mask=m,
                                  key_bias=bias)
        if scale is not None:
            p = p * scale[:, None, :]
        length = prompt.length if prompt is not None else key_len
        p = fold_repeated_keys(p, length) if length and key_len % length == 0 else p
        cap.store.add(uid, info.layer, p, info.hw, evaluation, region=region)
        _to_history(cap, uid, region, info, p, evaluation)


def _to_history(cap: CaptureRun, uid: str, region: Region | None, info: CallInfo, p, evaluation: int) -> None:
    if cap.history is None:
        return
    if region is not None:
        cap.history.skipped.add("area prompts (evaluated on a crop of the latent)")
        return
    cap.history.add(uid, info.layer, p, info.hw, evaluation, info.sigma)


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
    _to_history(cap, uid, region, info, p.mean(1), evaluation)


def _dit_probs(settings: CaptureSettings, info: CallInfo, q, k, heads: int, bhld: bool, mask, bias, scale):
    """Image-query → prompt-token probabilities of one DiT call, folded onto prompt positions."""
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
    if geom.frames > 1:  # video: mean over frames of each patch
        p = p.reshape(p.shape[0], geom.frames, -1, p.shape[-1]).mean(1)
    return p


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
        if cap.history is not None and cap.history.result(branch) is not None:
            extra["history"] = cap.history.result(branch)
            meta["history"] = _history_meta(cap, branch)
        elif cap.history_meta.get("error"):
            meta["history"] = {"error": cap.history_meta["error"]}
        branches[branch] = MapSet(torch.cat(parts, 1) if len(parts) > 1 else parts[0], table, meta, extra)
    content = fingerprint(torch.cat([ms.maps.reshape(-1) for ms in branches.values()])) if branches else ""
    return MapsRecord(branches, tuple(cap.latent_hw), cap.batch, origin, content)
