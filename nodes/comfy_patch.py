"""ComfyUI adapter — the hook mechanism shared by capture and reweighting.

Mechanism (see shared docs, comfyui-attention-hooks.md §1–2, §5):
- ``transformer_options["optimized_attention_override"]`` sees q/k/v of every attention call; ours is
  chained with whatever override was there (another pack's, or our other node's).
- an ``attn2_patch`` marks that the next attention call is a UNet cross-attention (attn2) and an
  ``attn2_output_patch`` clears the mark (so a foreign attn2 replacement cannot confuse us).
- wrappers around each sampling run (``sampling_run``): its start and end, the prompts' areas, the sampler's
  evaluations, and each model call's latent size and DiT token geometry.
- the override recognises image→text attention calls (UNet: the attn2 mark; DiT: their length) and names
  the layer from ComfyUI's block ids where the model sets them, else by counting the calls per forward.

State: one ``hook_state.SharedState`` per patched model, copied on write by ``add_effect``.
The real output always comes from the attention function ComfyUI chose (or the previous override).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch

from .dit_layout import located
from .families import model_layers, model_spec
from .hook_state import CALL_KEY, FWD_KEY, INFO_KEY, STATE_KEY, CallInfo, ForwardInfo, SharedState, state_of
from .sampling_run import apply_model_wrapper, outer_sample_wrapper, predict_noise_wrapper, sampler_sample_wrapper

log = logging.getLogger("attention_focus")


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
    m.add_wrapper_with_key("apply_model", "attention_focus_forward", apply_model_wrapper)
    m.add_wrapper_with_key("predict_noise", "attention_focus_evaluation", predict_noise_wrapper)
    m.add_wrapper_with_key("sampler_sample", "attention_focus_regions", sampler_sample_wrapper)
    m.add_wrapper_with_key("outer_sample", "attention_focus_run", outer_sample_wrapper)


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
