"""ComfyUI adapter: installs capture and reweighting on a ModelPatcher clone.

Mechanism (see shared docs, comfyui-attention-hooks.md §1–2, §5):
- ``transformer_options["optimized_attention_override"]`` sees q/k/v of every attention call; ours is
  chained with whatever override was there (another pack's, or our other node's).
- an ``attn2_patch`` marks that the next attention call is a UNet cross-attention (attn2) and an
  ``attn2_output_patch`` clears the mark (so a foreign attn2 replacement cannot confuse us).
- an ``OUTER_SAMPLE`` wrapper starts each sampling run: maps conditioning uuids to prompts and their
  token tables, converts the step window to sigmas, resets the store.
The real output always comes from the attention function ComfyUI chose (or the previous override).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from collections.abc import Callable

import torch

from .attention_math import cross_attention_probs, fold_repeated_keys, log_weight_bias, scale_value_rows
from .capture_store import AttentionMaps, PromptInfo
from .layer_spec import LayerKey, check_step_window, describe_layers, select_layers
from .token_table import TokenTable, positional_table, resolve

TOKENS_KEY = "attention_focus_tokens"
STATE_KEY = "attention_focus"  # shared mutable state in transformer_options
SUPPORTED = "SD1.x, SD2.x, SDXL (UNet models)"
log = logging.getLogger("attention_focus")


class AttentionFocusError(ValueError):
    """A user-facing problem with a clear fix."""


# ---------------------------------------------------------------------------------------------------
# Model inspection


def model_family(model) -> str:
    """A short family name for a ModelPatcher's model (``sd1``, ``sd2``, ``sdxl``, ``flux``, ...)."""
    cfg = getattr(model.model, "model_config", None)
    name = type(cfg).__name__ if cfg is not None else type(model.model).__name__
    dm = type(getattr(model.model, "diffusion_model", None)).__name__
    if dm != "UNetModel":
        return f"{name} ({dm})"
    if name.startswith("SDXL") or name in ("SSD1B", "Segmind_Vega", "KOALA_700M", "KOALA_1B"):
        return "sdxl"
    if name.startswith("SD2") or name.startswith("SD20") or name.startswith("SD21"):
        return "sd2"
    return "sd1" if name.startswith("SD1") else name.lower()


def unet_layers(model) -> list[LayerKey]:
    """Every cross-attention layer of a UNet, with its resolution level, in execution order."""
    dm = model.model.diffusion_model
    if type(dm).__name__ != "UNetModel":
        raise AttentionFocusError(f"Attention Focus supports {SUPPORTED} so far; this model is "
                                  f"{model_family(model)}. Diffusion Transformers are planned.")

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
    available = unet_layers(model)
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
        self.layer_table: dict[tuple[str, int, int], LayerKey] = {}
        self.run = RunState()
        self.run_hooks: list[Callable] = []
        self.reweighters: list[Reweighter] = []

    def __deepcopy__(self, memo):
        new = SharedState()
        new.layer_table = self.layer_table
        new.run_hooks = list(self.run_hooks)
        new.reweighters = list(self.reweighters)
        return new


def _shared(m) -> SharedState:
    to = m.model_options.setdefault("transformer_options", {})
    st = to.get(STATE_KEY)
    if not isinstance(st, SharedState):
        st = SharedState()
        st.layer_table = {(k.block, k.index, k.depth): k for k in unet_layers(m)}
        to[STATE_KEY] = st
        m.set_model_attn2_patch(_mark_cross)
        m.set_model_attn2_output_patch(_clear_cross)
        m.add_wrapper_with_key("outer_sample", "attention_focus_run", _outer_sample)
    return st


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


def _call_info(st: SharedState, to: dict, q: torch.Tensor, heads: int, bhld: bool) -> CallInfo | None:
    """Describe a UNet cross-attention call, or None if this call is not one."""
    if not st.cross_pending:
        return None
    st.cross_pending = False
    block = to.get("block")
    if block is None:
        return None
    layer = st.layer_table.get((block[0], int(block[1]), int(to.get("block_index", 0))))
    if layer is None:
        return None
    key = "attention_focus_call"
    call = to.get(key)
    if call is None:
        st.run.calls += 1
        sig = to.get("sigmas")
        sigma = float(sig.reshape(-1)[0]) if isinstance(sig, torch.Tensor) and sig.numel() else 0.0
        call = to[key] = (st.run.calls, sigma)
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
            length = st.run.prompts[uid].length
            if length <= 0 or key_len % length:
                continue
            if w is None:
                w = torch.ones(batch, key_len, dtype=torch.float32, device=device)
            for pos, val in weights.items():
                w[i * per:(i + 1) * per, pos:key_len:length] = val
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
                args, kwargs = _apply_weights(args, kwargs, w, mode, bhld, q)
        return _call_next(prev, func, args, kwargs)

    _install_shared_override(m, hook)
    return m


def _apply_weights(args, kwargs, w: torch.Tensor, mode: str, bhld: bool, q: torch.Tensor):
    args = list(args)
    if mode == "scale":
        args[2] = scale_value_rows(args[2], w, bhld)
        return tuple(args), kwargs
    bias = log_weight_bias(w).to(q.dtype)
    lq = q.shape[2] if bhld else q.shape[1]
    bias = bias[:, None, None, :].expand(-1, 1, lq, -1)
    if len(args) > 4:
        old = args[4]
        args[4] = bias if old is None else old + bias
    else:
        old = kwargs.get("mask")
        kwargs = dict(kwargs)
        kwargs["mask"] = bias if old is None else old + bias
    return tuple(args), kwargs


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
            to["attention_focus_info"] = _call_info(st, to, q, heads, bhld)
        try:
            return hook(st, to["attention_focus_info"], prev, func, *args, **kwargs)
        finally:
            if owner:
                to.pop("attention_focus_info", None)

    override._attention_focus = True
    to["optimized_attention_override"] = override


# ---------------------------------------------------------------------------------------------------
# Capture


def add_capture(model, layer_spec: str, branch: str, start: float, end: float, head_reduction: str):
    """Clone ``model`` and install attention capture; returns (clone, AttentionMaps)."""
    check_step_window(start, end)
    if head_reduction not in ("mean", "max"):
        raise AttentionFocusError(f"head_reduction must be mean or max, not {head_reduction!r}")
    m = model.clone()
    layers = set(resolve_layers(m, layer_spec))
    st = _shared(m)
    family = model_family(m)
    maps = AttentionMaps({"family": family, "layers": layer_spec, "branch": branch,
                          "head_reduction": head_reduction, "start": start, "end": end})
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
        p = cross_attention_probs(q[rows], k[rows], heads, bhld=bhld,
                                  reduce=maps.settings.get("head_reduction", "mean"), mask=m, key_bias=bias)
        if scale is not None:
            p = p * scale[:, None, :]
        p = fold_repeated_keys(p, length) if length and key_len % length == 0 else p
        maps.store.add(uid, info.layer, p, info.hw, info.call_id)
