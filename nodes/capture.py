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
from .hook_state import CallInfo, RunState, SharedState, chunk_prompt
from .attention_math import attention_probs_at, combine_reweights, cross_attention_probs, fold_repeated_keys
from .capture_store import (AttentionMaps, CaptureSettings, CaptureStore, MapSet, MapsRecord, PromptInfo, Region,
                            fingerprint, merge_prompts)
from .families import model_family, resolve_layers
from .layer_spec import LayerKey
from .provenance import REGISTRY


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


class Capture:
    """One Attention Focus Capture on a model: settings, layers, and the handle its records go to."""

    def __init__(self, settings: CaptureSettings, layers: set[LayerKey], maps: AttentionMaps) -> None:
        self.settings = settings
        self.layers = layers
        self.maps = maps

    def __deepcopy__(self, memo):
        return self

    def start_run(self, guider, run: RunState, noise, sigmas) -> None:
        hi, lo = cp.sigma_window(guider.model_patcher, self.settings.start, self.settings.end)
        run.data[id(self)] = CaptureRun(run.prompts, run.latent_hw, run.batch, hi, lo)

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
                head_reduction: str = "mean", softmax: str = "all", node_id: str = ""):
    """Clone ``model`` and install attention capture; returns (clone, AttentionMaps handle).

    ``softmax`` (DiTs): ``all`` = the model's own joint softmax over text and image keys (exact),
    ``text`` = renormalised over the prompt's text keys only (cheaper; what most DiT heat-map tools show).
    ``node_id`` names the capture node (ComfyUI's UNIQUE_ID) so records can be found again.
    """
    settings = CaptureSettings(layer_spec, branch, start, end, head_reduction, softmax)
    m = model.clone()
    layers = set(resolve_layers(m, layer_spec))
    maps = AttentionMaps(settings, family=model_family(m), node_id=node_id or f"capture-{uuid.uuid4().hex}")
    cap = Capture(settings, layers, maps)
    st = cp.add_effect(m, cap)
    maps.kind = st.spec.kind
    cp.install_override(m, cap.hook)
    return m, maps


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
        if info.geom is not None:
            p = _dit_probs(settings, info, q[rows], k[rows], heads, bhld, m, bias, scale)
            cap.store.add(uid, info.layer, p, info.hw, evaluation, merge_as=LayerKey("dit", 0, 0, info.layer.level),
                          region=region)
            continue
        p = cross_attention_probs(q[rows], k[rows], heads, bhld=bhld, reduce=settings.head_reduction, mask=m,
                                  key_bias=bias)
        if scale is not None:
            p = p * scale[:, None, :]
        length = prompt.length if prompt is not None else key_len
        p = fold_repeated_keys(p, length) if length and key_len % length == 0 else p
        cap.store.add(uid, info.layer, p, info.hw, evaluation, region=region)


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
        branches[branch] = MapSet(torch.cat(parts, 1) if len(parts) > 1 else parts[0], table, meta)
    content = fingerprint(torch.cat([ms.maps.reshape(-1) for ms in branches.values()])) if branches else ""
    return MapsRecord(branches, tuple(cap.latent_hw), cap.batch, origin, content)
