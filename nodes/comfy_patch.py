"""ComfyUI adapter: installs capture and reweighting on a ModelPatcher clone.

Mechanism (see shared docs, comfyui-attention-hooks.md §1–2, §5):
- ``transformer_options["optimized_attention_override"]`` sees q/k/v of every attention call; ours is
  chained with whatever override was there (another pack's, or our other node's).
- an ``attn2_patch`` marks that the next attention call is a UNet cross-attention (attn2) and an
  ``attn2_output_patch`` clears the mark (so a foreign attn2 replacement cannot confuse us).
- an ``OUTER_SAMPLE`` wrapper starts each sampling run: maps conditioning uuids to prompts and their
  token tables, converts the step window to sigmas, resets the store.
- Diffusion Transformers: an ``APPLY_MODEL`` wrapper stores the token geometry of each model call
  (patch grid, text span; ``families.geometry``) in transformer_options; the override recognises the
  image→text attention calls by their length and names the layer from ComfyUI's block ids where the
  model sets them, else by counting those calls per forward. HunyuanDiT's cross-attention does not
  reach the override by itself: an object patch on each ``attn2.forward`` (an exact re-implementation
  that passes transformer_options) routes it there.
The real output always comes from the attention function ComfyUI chose (or the previous override).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from collections.abc import Callable

import torch

from .attention_math import (attention_probs_at, cross_attention_probs, fold_repeated_keys, log_weight_bias,
                             scale_value_rows)
from .capture_store import AttentionMaps, PromptInfo
from .dit_layout import Geometry, located
from .families import DIT_FAMILIES, FamilySpec, expected_context_dim, family_spec, geometry, prompt_length
from .layer_spec import LayerKey, check_step_window, describe_layers, select_layers
from .token_table import TokenTable, positional_table, resolve

TOKENS_KEY = "attention_focus_tokens"
STATE_KEY = "attention_focus"  # shared mutable state in transformer_options
FWD_KEY = "attention_focus_forward"  # per-model-call geometry (DiTs)
UNSUPPORTED_BASES = ("Flux2",)  # Flux.2: Mistral text left-padded to 512 inside the model
SUPPORTED = "SD1.x, SD2.x, SDXL (UNet) and the DiTs " + ", ".join(DIT_FAMILIES)
log = logging.getLogger("attention_focus")


class AttentionFocusError(ValueError):
    """A user-facing problem with a clear fix."""


# ---------------------------------------------------------------------------------------------------
# Model inspection


def model_family(model) -> str:
    """A short family name for a ModelPatcher's model (``sd1``, ``sd2``, ``sdxl``, ``Flux``, ...)."""
    cfg = getattr(model.model, "model_config", None)
    name = type(cfg).__name__ if cfg is not None else type(model.model).__name__
    dm = getattr(model.model, "diffusion_model", None)
    if type(dm).__name__ != "UNetModel":
        spec = family_spec(dm)
        return spec.name if spec is not None else f"{name} ({type(dm).__name__})"
    if name.startswith("SDXL") or name in ("SSD1B", "Segmind_Vega", "KOALA_700M", "KOALA_1B"):
        return "sdxl"
    if name.startswith("SD2") or name.startswith("SD20") or name.startswith("SD21"):
        return "sd2"
    return "sd1" if name.startswith("SD1") else name.lower()


def model_spec(model) -> FamilySpec:
    """The family spec of a ModelPatcher's model; a clear error naming the family if unsupported."""
    dm = getattr(model.model, "diffusion_model", None)
    spec = family_spec(dm)
    if type(model.model).__name__ in UNSUPPORTED_BASES:  # same module class, different text layout
        spec = None
    if spec is None:
        cfg = getattr(model.model, "model_config", None)
        name = type(cfg).__name__ if cfg is not None else type(model.model).__name__
        raise AttentionFocusError(f"Attention Focus does not support the {name} model family "
                                  f"({type(dm).__name__}) yet. Supported: {SUPPORTED}.")
    return spec


def model_layers(model) -> list[LayerKey]:
    """Every image→text attention layer of the model, in execution order."""
    spec = model_spec(model)
    return unet_layers(model) if spec.kind == "unet" else list(spec.layers)


def unet_layers(model) -> list[LayerKey]:
    """Every cross-attention layer of a UNet, with its resolution level, in execution order."""
    dm = model.model.diffusion_model

    def depth(block) -> int:
        return sum(len(m.transformer_blocks) for m in block if type(m).__name__ in
                   ("SpatialTransformer", "SpatialVideoTransformer") and hasattr(m, "transformer_blocks")
                   and any(getattr(tb, "attn2", None) is not None for tb in m.transformer_blocks))

    layers: list[LayerKey] = []
    level = 0
    for i, block in enumerate(dm.input_blocks):
        if any(type(m).__name__ == "Downsample" for m in block):
            level += 1
        layers += [LayerKey("input", i, d, level) for d in range(depth(block))]
    mid = dm.middle_block
    layers += [LayerKey("middle", 0, d, level) for d in range(depth(mid) if mid is not None else 0)]
    for i, block in enumerate(dm.output_blocks):
        layers += [LayerKey("output", i, d, level) for d in range(depth(block))]
        if any(type(m).__name__ == "Upsample" for m in block):
            level -= 1
    return layers


def resolve_layers(model, spec: str) -> list[LayerKey]:
    """Layers of ``model`` selected by ``spec``; errors name the available layers."""
    available = model_layers(model)
    chosen = select_layers(spec, available)
    if not chosen:
        raise AttentionFocusError(f"the layer spec {spec!r} selects no cross-attention layer of this model. "
                                  f"Available: {describe_layers(available)}")
    return chosen


def branch_of(spec: str) -> set[str]:
    return {"positive": {"positive"}, "negative": {"negative"}, "both": {"positive", "negative"}}[spec]


# ---------------------------------------------------------------------------------------------------
# Per-call context


@dataclass
class CallInfo:
    """What one attention call is: layer, chunks (prompt uuids), sigma, grid."""

    layer: LayerKey
    uids: list[str]
    cond_or_uncond: list[int]
    sigma: float
    call_id: int
    hw: tuple[int, int]
    geom: Geometry | None = None  # DiTs: token layout of this model call
    rows: slice | None = None  # DiTs: image query rows
    key_base: int = 0  # DiTs: where the text span starts among the keys
    joint: bool = False  # DiTs: keys include image tokens


@dataclass
class ForwardInfo:
    """Per-model-call facts of a DiT forward, stored in transformer_options by the APPLY_MODEL wrapper."""

    geom: Geometry
    count: int = 0  # image→text calls seen so far in this forward (layer = n-th call)
    ambiguous: int = 0  # cross-attention calls indistinguishable from self-attention by length
    cross_only: bool = False  # every routed call is a cross-attention (HunyuanDiT)
    call: tuple[int, float] | None = None  # (call id, sigma), set by the first image→text call


@dataclass
class RunState:
    """Per-sampling-run facts shared by the patches of one model."""

    prompts: dict[str, PromptInfo] = field(default_factory=dict)
    latent_hw: tuple[int, int] = (0, 0)
    calls: int = 0


class SharedState:
    """Mutable state of one patched model, reachable from every hook via transformer_options[STATE_KEY].

    ``ModelPatcher.clone()`` deep-copies model_options: each clone gets its own state with copies of
    the hook lists, so a reweight added downstream never leaks into the model it was cloned from.
    Hooks therefore look the state up in transformer_options at call time, never through closures.
    """

    def __init__(self) -> None:
        self.cross_pending = False
        self.spec: FamilySpec = FamilySpec("UNet", "unet")
        self.layer_table: dict[tuple[str, int, int], LayerKey] = {}
        self.run = RunState()
        self.run_hooks: list[Callable] = []
        self.reweighters: list[Reweighter] = []
        self.current = CurrentCall()  # HunyuanDiT: transformer_options of the running model call

    def __deepcopy__(self, memo):
        new = SharedState()
        new.spec = self.spec
        new.layer_table = self.layer_table
        new.run_hooks = list(self.run_hooks)
        new.reweighters = list(self.reweighters)
        new.current = self.current
        return new


class CurrentCall:
    """Holds the running model call's transformer_options; one object shared by all clones."""

    def __init__(self) -> None:
        self.to: dict | None = None

    def __deepcopy__(self, memo):
        return self


def _shared(m) -> SharedState:
    to = m.model_options.setdefault("transformer_options", {})
    st = to.get(STATE_KEY)
    if not isinstance(st, SharedState):
        st = SharedState()
        st.spec = model_spec(m)
        st.layer_table = {(k.block, k.index, k.depth): k for k in model_layers(m)}
        to[STATE_KEY] = st
        if st.spec.kind == "unet":
            m.set_model_attn2_patch(_mark_cross)
            m.set_model_attn2_output_patch(_clear_cross)
        else:
            m.add_wrapper_with_key("apply_model", "attention_focus_geometry", _apply_model)
            if not st.spec.routed:
                _route_hydit_cross_attention(m)
        m.add_wrapper_with_key("outer_sample", "attention_focus_run", _outer_sample)
    return st


def _apply_model(executor, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options=None,
                 **kwargs):
    """DiTs: record the token geometry of this model call for the attention override."""
    to = transformer_options if transformer_options is not None else {}
    st = to.get(STATE_KEY)
    if not isinstance(st, SharedState) or st.spec.kind != "dit":
        return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)
    fwd = ForwardInfo(geometry(st.spec, x, c_crossattn, kwargs), cross_only=not st.spec.routed)
    to[FWD_KEY] = fwd
    previous, st.current.to = st.current.to, to
    try:
        return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)
    finally:
        st.current.to = previous
        if to.get(FWD_KEY) is fwd:
            del to[FWD_KEY]


def _mark_cross(n, context, value, extra_options):
    st = extra_options.get(STATE_KEY)
    if isinstance(st, SharedState):
        st.cross_pending = True
    return n, context, value


def _clear_cross(n, extra_options):
    st = extra_options.get(STATE_KEY)
    if isinstance(st, SharedState):
        st.cross_pending = False
    return n


def _outer_sample(executor, *args, **kwargs):
    """Start of a sampling run: record the prompts (uuid → branch, length, tokens) and the latent size."""
    guider = executor.class_obj
    st = guider.model_options.get("transformer_options", {}).get(STATE_KEY)
    if isinstance(st, SharedState):
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
                tokens = c.get(TOKENS_KEY)
                if isinstance(tokens, TokenTable) and len(tokens) != length:
                    log.warning("Attention Focus: the token table (%d positions) does not match the "
                                "conditioning (%d); labelling by position", len(tokens), length)
                    tokens = None
                prompts[str(c["uuid"])] = PromptInfo(branch, slot, length,
                                                     tokens if isinstance(tokens, TokenTable) else None)
        _check_hooks_reachable(guider.model_options.get("transformer_options", {}))
        noise = args[0]
        st.run = RunState(prompts, (int(noise.shape[-2]), int(noise.shape[-1])), 0)
        for hook in st.run_hooks:
            hook(guider, st.run, noise, args[3])
    return executor(*args, **kwargs)


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


def _call_id(st: SharedState, to: dict) -> tuple[int, float]:
    """(call id, sigma) of the model call this attention belongs to (one id per transformer_options)."""
    key = "attention_focus_call"
    call = to.get(key)
    if call is None:
        st.run.calls += 1
        sig = to.get("sigmas")
        sigma = float(sig.reshape(-1)[0]) if isinstance(sig, torch.Tensor) and sig.numel() else 0.0
        call = to[key] = (st.run.calls, sigma)
    return call


def _dit_call_info(st: SharedState, to: dict, q: torch.Tensor, k: torch.Tensor, bhld: bool) -> CallInfo | None:
    """Describe a DiT image→text attention call, or None if this call is not one."""
    fwd = to.get(FWD_KEY)
    if not isinstance(fwd, ForwardInfo):
        return None
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
    uids = [str(u) for u in to.get("uuids", [])]
    cou = list(to.get("cond_or_uncond", []))
    return CallInfo(layer, uids, cou, sigma, call_id, geom.grid, geom, loc.rows, loc.key_base, loc.joint)


def _call_info(st: SharedState, to: dict, q: torch.Tensor, k: torch.Tensor, bhld: bool) -> CallInfo | None:
    """Describe an image→text attention call, or None if this call is not one."""
    if st.spec.kind == "dit":
        return _dit_call_info(st, to, q, k, bhld)
    if not st.cross_pending:
        return None
    st.cross_pending = False
    block = to.get("block")
    if block is None:
        return None
    layer = st.layer_table.get((block[0], int(block[1]), int(to.get("block_index", 0))))
    if layer is None:
        return None
    call = _call_id(st, to)
    shape = to.get("activations_shape")
    n = q.shape[2] if bhld else q.shape[1]
    if shape is not None and int(shape[-2]) * int(shape[-1]) == n:
        hw = (int(shape[-2]), int(shape[-1]))
    else:
        return None
    uids = [str(u) for u in to.get("uuids", [])]
    cou = list(to.get("cond_or_uncond", []))
    return CallInfo(layer, uids, cou, call[1], call[0], hw)


def _branch(st: SharedState, info: CallInfo, i: int) -> str:
    p = st.run.prompts.get(info.uids[i]) if i < len(info.uids) else None
    if p is not None:
        return p.branch
    c = info.cond_or_uncond[i] if i < len(info.cond_or_uncond) else -1
    return {0: "positive", 1: "negative"}.get(c, "other")


def _sigma_window(model_patcher, start: float, end: float) -> tuple[float, float]:
    ms = model_patcher.get_model_object("model_sampling")
    return float(ms.percent_to_sigma(start)), float(ms.percent_to_sigma(end))


def _split_args(args: tuple, kwargs: dict):
    q, k, v = args[:3]
    heads = args[3] if len(args) > 3 else kwargs.get("heads")
    bhld = bool(kwargs.get("skip_reshape", False))
    if len(args) > 4:
        mask = args[4]
    else:
        mask = kwargs.get("mask")
    return q, k, v, heads, bhld, mask


def _call_next(prev, func, args, kwargs):
    return prev(func, *args, **kwargs) if prev is not None else func(*args, **kwargs)


# ---------------------------------------------------------------------------------------------------
# Reweighting


@dataclass
class Reweighter:
    """Per-word attention weights applied inside cross-attention (one reweight node)."""

    spec: list[tuple[str, float]]
    mode: str  # "scale" | "renormalize"
    layers: set[LayerKey]
    branches: set[str]
    start: float
    end: float
    sigma_hi: float = 0.0
    sigma_lo: float = 0.0
    per_uid: dict[str, dict[int, float]] = field(default_factory=dict)

    def __deepcopy__(self, memo):
        return self

    def start_run(self, guider, run: RunState, noise, sigmas) -> None:
        self.sigma_hi, self.sigma_lo = _sigma_window(guider.model_patcher, self.start, self.end)
        self.per_uid = {}
        for uid, p in run.prompts.items():
            if p.branch not in self.branches:
                continue
            weights: dict[int, float] = {}
            for target, w in self.spec:
                if p.tokens is None and not target.startswith("#"):
                    raise AttentionFocusError(
                        f"cannot find {target!r}: the {p.branch} prompt carries no token table. Encode it "
                        "with 'Attention Focus Text Encode' or address tokens by position (#N)")
                table = p.tokens
                if table is None:
                    table = positional_table(p.length)
                try:
                    for pos in resolve(table, target):
                        weights[pos] = weights.get(pos, 1.0) * w
                except ValueError as e:
                    raise AttentionFocusError(f"reweight ({p.branch} prompt): {e}") from None
            if any(v != 1.0 for v in weights.values()):
                self.per_uid[uid] = weights

    def row_weights(self, st: SharedState, info: CallInfo, batch: int, key_len: int,
                    device) -> torch.Tensor | None:
        """(batch, key_len) weights for this call, or None when nothing applies."""
        if not self.per_uid or info.layer not in self.layers:
            return None
        if not (self.sigma_lo <= info.sigma <= self.sigma_hi):
            return None
        n = max(1, len(info.uids))
        per = batch // n
        w = None
        for i, uid in enumerate(info.uids):
            weights = self.per_uid.get(uid)
            if weights is None or _branch(st, info, i) not in self.branches:
                continue
            if w is None:
                w = torch.ones(batch, key_len, dtype=torch.float32, device=device)
            rows = slice(i * per, (i + 1) * per)
            if info.geom is not None:  # DiT: every key column that carries the prompt position
                key_rel, pos = info.geom.key_map()
                for p, val in weights.items():
                    cols = key_rel[pos == p] + info.key_base
                    w[rows, cols.to(device)] = val
                continue
            length = st.run.prompts[uid].length
            if length <= 0 or key_len % length:
                continue
            for p, val in weights.items():
                w[rows, p:key_len:length] = val
        return w


def add_reweight(model, spec: list[tuple[str, float]], mode: str, layer_spec: str, branch: str,
                 start: float, end: float):
    """Clone ``model`` and install a reweight; returns the clone."""
    check_step_window(start, end)
    m = model.clone()
    layers = set(resolve_layers(m, layer_spec))
    st = _shared(m)
    rw = Reweighter(spec, mode, layers, branch_of(branch), start, end)
    st.run_hooks.append(rw.start_run)
    st.reweighters.append(rw)

    def hook(st: SharedState, info: CallInfo | None, prev, func, *args, **kwargs):
        if info is not None:
            q, k, v, heads, bhld, mask = _split_args(args, kwargs)
            w = rw.row_weights(st, info, q.shape[0], k.shape[2] if bhld else k.shape[1], q.device)
            if w is not None:
                if info.joint and info.rows is not None:
                    return _call_rows_weighted(prev, func, args, kwargs, w, mode, bhld, info.rows)
                args, kwargs = _apply_weights(args, kwargs, w, mode, bhld, q)
        return _call_next(prev, func, args, kwargs)

    _install_shared_override(m, hook)
    return m


def _apply_weights(args, kwargs, w: torch.Tensor, mode: str, bhld: bool, q: torch.Tensor):
    args = list(args)
    if mode == "scale":
        args[2] = scale_value_rows(args[2], w, bhld)
        return tuple(args), kwargs
    # (B, 1, 1, Lk): every backend broadcasts it over heads and queries, none has to materialise Lq × Lk
    bias = log_weight_bias(w).to(q.dtype)[:, None, None, :]
    if len(args) > 4:
        old = args[4]
        args[4] = bias if old is None else old + bias
    else:
        old = kwargs.get("mask")
        kwargs = dict(kwargs)
        kwargs["mask"] = bias if old is None else old + bias
    return tuple(args), kwargs


def _rows_of(args, kwargs, bhld: bool, start: int, stop: int):
    """The same attention call restricted to query rows [start, stop) (mask rows too)."""
    dim = 2 if bhld else 1
    args = list(args)
    lq = args[0].shape[dim]
    args[0] = args[0].narrow(dim, start, stop - start)

    def cut(m):
        if isinstance(m, torch.Tensor) and m.ndim >= 2 and m.shape[-2] == lq:
            return m.narrow(-2, start, stop - start)
        return m

    if len(args) > 4:
        args[4] = cut(args[4])
    elif kwargs.get("mask") is not None:
        kwargs = dict(kwargs)
        kwargs["mask"] = cut(kwargs["mask"])
    return tuple(args), kwargs


def _call_rows_weighted(prev, func, args, kwargs, w: torch.Tensor, mode: str, bhld: bool, rows: slice):
    """Joint attention: weights act on the image queries only (as in cross-attention); the text (and
    reference-image) queries are computed by a separate call with the original keys and values.
    Attention is row-independent, so splitting the queries leaves every other row unchanged."""
    q = args[0]
    lq = q.shape[2] if bhld else q.shape[1]
    r0, r1, _ = rows.indices(lq)
    out_dim = 2 if kwargs.get("skip_output_reshape", False) else 1
    outs = []
    for s, e, weighted in ((0, r0, False), (r0, r1, True), (r1, lq, False)):
        if e <= s:
            continue
        a, kw = _rows_of(args, kwargs, bhld, s, e)
        if weighted:
            a, kw = _apply_weights(a, kw, w, mode, bhld, a[0])
        outs.append(_call_next(prev, func, a, kw))
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=out_dim)


def _install_shared_override(m, hook: Callable) -> None:
    """Install ``hook(st, info, prev, func, *args, **kwargs)`` as a chained attention override.

    Our hooks may be stacked (capture over reweight or the reverse). The first of ours to see a call
    consumes the cross-attention mark and stores the CallInfo in transformer_options for the others.
    """
    to = m.model_options.setdefault("transformer_options", {})
    prev = to.get("optimized_attention_override")

    def override(func, *args, **kwargs):
        to = kwargs.get("transformer_options")
        st = to.get(STATE_KEY) if to is not None else None
        if not isinstance(st, SharedState):
            return _call_next(prev, func, args, kwargs)
        owner = "attention_focus_info" not in to
        if owner:
            q, k, v, heads, bhld, mask = _split_args(args, kwargs)
            to["attention_focus_info"] = _call_info(st, to, q, k, bhld)
        try:
            return hook(st, to["attention_focus_info"], prev, func, *args, **kwargs)
        finally:
            if owner:
                to.pop("attention_focus_info", None)

    override._attention_focus = True
    to["optimized_attention_override"] = override


# ---------------------------------------------------------------------------------------------------
# Capture


def add_capture(model, layer_spec: str, branch: str, start: float, end: float, head_reduction: str,
                softmax: str = "all"):
    """Clone ``model`` and install attention capture; returns (clone, AttentionMaps).

    ``softmax`` (DiTs): ``all`` = the model's own joint softmax over text and image keys (exact),
    ``text`` = renormalised over the prompt's text keys only (cheaper; what most DiT heat-map tools show).
    """
    check_step_window(start, end)
    if head_reduction not in ("mean", "max"):
        raise AttentionFocusError(f"head_reduction must be mean or max, not {head_reduction!r}")
    if softmax not in ("all", "text"):
        raise AttentionFocusError(f"softmax must be 'all' or 'text', not {softmax!r}")
    m = model.clone()
    layers = set(resolve_layers(m, layer_spec))
    st = _shared(m)
    family = model_family(m)
    maps = AttentionMaps({"family": family, "layers": layer_spec, "branch": branch,
                          "head_reduction": head_reduction, "start": start, "end": end,
                          "softmax": softmax if st.spec.kind == "dit" else "cross"})
    maps.family = family
    branches = branch_of(branch)
    window = {"hi": 0.0, "lo": 0.0}
    seen: dict[tuple[str, float], int] = {}

    def start_run(guider, run: RunState, noise, sigmas) -> None:
        window["hi"], window["lo"] = _sigma_window(guider.model_patcher, start, end)
        seen.clear()
        maps.start_run(run.prompts, run.latent_hw, int(noise.shape[0]))

    st.run_hooks.append(start_run)

    def hook(st: SharedState, info: CallInfo | None, prev, func, *args, **kwargs):
        if info is not None and info.layer in layers and window["lo"] <= info.sigma <= window["hi"]:
            with torch.no_grad():
                _capture(st, maps, info, args, kwargs, branches, seen)
        return _call_next(prev, func, args, kwargs)

    _install_shared_override(m, hook)
    return m, maps


def _capture(st: SharedState, maps: AttentionMaps, info: CallInfo, args, kwargs, branches, seen) -> None:
    q, k, v, heads, bhld, mask = _split_args(args, kwargs)
    n = max(1, len(info.uids))
    per = q.shape[0] // n
    key_len = k.shape[2] if bhld else k.shape[1]
    weights = [rw.row_weights(st, info, q.shape[0], key_len, q.device)
               for rw in st.reweighters]
    for i, uid in enumerate(info.uids):
        if _branch(st, info, i) not in branches:
            continue
        prompt = st.run.prompts.get(uid)
        length = prompt.length if prompt is not None else key_len
        first = seen.setdefault((uid, round(info.sigma, 6)), info.call_id)
        if first != info.call_id:  # an extra pass at a sigma already seen (PAG/SAG/SLG): not canonical
            continue
        rows = slice(i * per, (i + 1) * per)
        bias = None
        scale = None
        for rw, w in zip(st.reweighters, weights, strict=True):
            if w is None:
                continue
            if rw.mode == "scale":
                scale = w[rows] if scale is None else scale * w[rows]
            else:
                b = log_weight_bias(w[rows])
                bias = b if bias is None else bias + b
        m = None
        if mask is not None and isinstance(mask, torch.Tensor):
            m = mask[rows] if mask.ndim >= 3 and mask.shape[0] == q.shape[0] else mask
        if info.geom is not None:
            _capture_dit(maps, info, uid, q[rows], k[rows], heads, bhld, m, bias, scale)
            continue
        p = cross_attention_probs(q[rows], k[rows], heads, bhld=bhld,
                                  reduce=maps.settings.get("head_reduction", "mean"), mask=m, key_bias=bias)
        if scale is not None:
            p = p * scale[:, None, :]
        p = fold_repeated_keys(p, length) if length and key_len % length == 0 else p
        maps.store.add(uid, info.layer, p, info.hw, info.call_id)


def _capture_dit(maps: AttentionMaps, info: CallInfo, uid: str, q, k, heads: int, bhld: bool, mask, bias, scale):
    """Image-query → prompt-token probabilities of one DiT call, folded onto prompt positions."""
    geom = info.geom
    key_rel, pos = geom.key_map()
    cols = key_rel.to(q.device) + info.key_base
    normalize = "all" if maps.settings.get("softmax", "all") == "all" and info.joint else "text"
    p = attention_probs_at(q, k, heads, info.rows, cols, bhld=bhld, normalize=normalize,
                           reduce=maps.settings.get("head_reduction", "mean"), mask=mask, key_bias=bias)
    if scale is not None:
        p = p * scale[:, cols][:, None, :]
    if geom.folds:  # repeated streams (HiDream)
        folded = p.new_zeros(p.shape[0], p.shape[1], geom.prompt_len)
        p = folded.index_add_(2, pos.to(p.device), p)
    if geom.frames > 1:  # video: mean over frames of each patch
        p = p.reshape(p.shape[0], geom.frames, -1, p.shape[-1]).mean(1)
    maps.store.add(uid, info.layer, p, info.hw, info.call_id,
                   merge_as=LayerKey("dit", 0, 0, info.layer.level))


# ---------------------------------------------------------------------------------------------------
# HunyuanDiT: its cross-attention passes no transformer_options, so the override never sees it


def _route_hydit_cross_attention(m) -> None:
    """Object-patch every ``attn2.forward`` of a HunyuanDiT with a copy that reaches the override."""
    for i, block in enumerate(m.model.diffusion_model.blocks):
        attn = getattr(block, "attn2", None)
        if attn is None:
            continue
        key = f"diffusion_model.blocks.{i}.attn2.forward"
        if key in m.object_patches:  # another node patched it: leave theirs, and say so
            log.warning("Attention Focus: %s is patched by another node; that layer is not captured", key)
            continue
        m.add_object_patch(key, _HyDiTCrossForward(attn, m.model_options["transformer_options"][STATE_KEY].current))


class _HyDiTCrossForward:
    """``CrossAttention.forward`` of comfy/ldm/hydit/attn_layers.py, with transformer_options passed on.

    Same operations in the same order as ComfyUI's method, so the output is unchanged; the only
    difference is that ``optimized_attention`` receives the running call's transformer_options.
    """

    def __init__(self, module, current: CurrentCall) -> None:
        self.module = module
        self.current = current

    def __deepcopy__(self, memo):
        return self

    def __call__(self, x, y, freqs_cis_img=None):
        from comfy.ldm.hydit.attn_layers import apply_rotary_emb  # ComfyUI is importable at run time
        from comfy.ldm.modules.attention import optimized_attention

        a = self.module
        b, s1, _ = x.shape
        s2 = y.shape[1]
        q = a.q_proj(x).view(b, s1, a.num_heads, a.head_dim)
        kv = a.kv_proj(y).view(b, s2, 2, a.num_heads, a.head_dim)
        k, v = kv.unbind(dim=2)
        q = a.q_norm(q)
        k = a.k_norm(k)
        if freqs_cis_img is not None:
            q, _ = apply_rotary_emb(q, None, freqs_cis_img)
        q = q.transpose(-2, -3).contiguous()
        k = k.transpose(-2, -3).contiguous()
        v = v.transpose(-2, -3).contiguous()
        kwargs = {"skip_reshape": True, "attn_precision": a.attn_precision}
        to = self.current.to
        if to is not None:
            kwargs["transformer_options"] = to
        context = optimized_attention(q, k, v, a.num_heads, **kwargs)
        out = a.proj_drop(a.out_proj(context))
        return (out,)
