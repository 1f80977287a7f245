"""ComfyUI wrappers around a sampling run of a patched model (the run's lifecycle).

- ``OUTER_SAMPLE`` starts and ends each run: prompts with the token tables that fit them, latent size, where
  the run comes from (``provenance.Origin``); lets every effect start and finish the run; an interrupted run
  leaves nothing.
- ``SAMPLER_SAMPLE`` reads the areas and masks ComfyUI resolved for each prompt, and which prompt each
  opposite-area copy was made from.
- ``PREDICT_NOISE`` numbers the sampler's model evaluations, so extra guidance passes inside one evaluation
  (PAG, SAG, SLG) are told apart from the sampler's own.
- ``APPLY_MODEL`` records the latent size of each model call and, for Diffusion Transformers, its token
  geometry (``families.geometry``, which also refuses layouts the pack cannot label).
"""

from __future__ import annotations

import logging

import torch

from .capture_store import PromptInfo, Region, prompt_signature
from .cond_tokens import tokens_for_conditioning
from .errors import AttentionFocusError
from .families import FamilySpec, expected_context_dim, geometry, prompt_length, text_lead
from .hook_state import FWD_KEY, TOKENS_KEY, ForwardInfo, RunState, SharedState, state_of
from .provenance import Origin, node_signature
from .token_pieces import lead_padded

log = logging.getLogger("attention_focus")


def apply_model_wrapper(executor, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options=None,
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


def predict_noise_wrapper(executor, *args, **kwargs):
    """One sampler model evaluation: extra passes inside it (PAG, SAG, SLG) share its number."""
    st = state_of(executor.class_obj.model_options.get("transformer_options"))
    if st is not None:
        st.run.evaluation += 1
    return executor(*args, **kwargs)


def sampler_sample_wrapper(executor, *args, **kwargs):
    """After ComfyUI resolved the conditioning: record each prompt's areas and masks (latent cells)."""
    guider = args[0] if args else None
    st = state_of(getattr(guider, "model_options", {}).get("transformer_options"))
    if st is not None:
        run = st.run
        if _plain_cfg(guider):
            run.cou_branches.update({0: "positive", 1: "negative"})
        for branch, entries in (getattr(guider, "conds", None) or {}).items():
            for c in entries or []:
                uid = str(c.get("uuid"))
                p = run.prompts.get(uid)
                if p is None:
                    continue
                if p.branch != branch:  # an opposite-area copy: the content is another prompt's
                    uid = _copied_from(c, entries, run.prompts, branch)
                    run.aliases[(str(c.get("uuid")), branch)] = uid
                    run.copied.add(str(c.get("uuid")))
                    if uid is None:
                        continue
                run.prompts[uid].regions.append(_region(c, run.latent_hw))
    return executor(*args, **kwargs)


def _plain_cfg(guider) -> bool:
    """Whether the guider batches prompts as CFGGuider does ([positive, negative] → cond_or_uncond 0, 1)."""
    try:
        from comfy.samplers import CFGGuider
    except ImportError:
        return False
    return getattr(type(guider), "predict_noise", None) is CFGGuider.predict_noise


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


def outer_sample_wrapper(executor, *args, **kwargs):
    """A sampling run: record the prompts and latent size, let every effect start and finish the run."""
    guider = executor.class_obj
    to = guider.model_options.get("transformer_options", {})
    st = state_of(to)
    if st is None:
        return executor(*args, **kwargs)
    noise = args[0]
    _check_run(guider.model_options)
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
            lead = 0
            if st.spec.kind == "dit":
                _check_context(guider, st.spec, branch, ctx)
                length = prompt_length(st.spec, c)
                lead = text_lead(st.spec, c)  # Flux.2: the model pads the prompt on the left
            tokens, note = tokens_for_conditioning(ctx, c.get(TOKENS_KEY), length - lead)
            tokens = lead_padded(tokens, lead)
            if note:
                log.warning("Attention Focus (%s prompt): %s", branch, note)
            signature = prompt_signature(ctx) if isinstance(ctx, torch.Tensor) and ctx.ndim == 3 else None
            prompts[str(c["uuid"])] = PromptInfo(branch, slot, length, tokens, note, signature=signature)
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
    node = str(ctx.node_id)
    if graph is None or getattr(registry, "prompt_id", None) != ctx.prompt_id:
        return Origin(str(ctx.prompt_id), node, node, ctx.list_index, "")
    try:
        real = str(graph.get_real_node_id(node))
    except Exception:  # noqa: BLE001 - an unknown ephemeral id: use the node itself
        real = node
    memo: dict[str, str] = {}
    return Origin(str(ctx.prompt_id), node, real, ctx.list_index, node_signature(graph, real, memo),
                  node_signature(graph, node, memo) if node != real else "")


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


# sampling set-ups whose model calls the hooks cannot follow: model_options key → why
_UNSUPPORTED_RUNS = {
    "context_handler": "context windows (each window is a separate model call over a part of the video, "
                       "which the maps cannot place yet)",
    "torch_compile_kwargs": "Torch Compile Model (the compiled model would trace the attention hooks once and "
                            "freeze them)",
    "multigpu_clones": "the multi-GPU CFG split (model calls on several threads at once)",
}


def _check_run(model_options: dict) -> None:
    """Refuse, before the first step, sampling set-ups that would make the maps or the reweighting wrong."""
    for key, why in _UNSUPPORTED_RUNS.items():
        if model_options.get(key):
            raise AttentionFocusError(
                f"Attention Focus cannot capture or reweight with {why}: remove that node from this model's "
                "chain, or the Attention Focus nodes")
    compiled = (model_options.get("transformer_options", {}).get("wrappers", {}) or {}).get("apply_model", {})
    if "torch.compile" in (compiled or {}):
        raise AttentionFocusError(
            "Attention Focus cannot capture or reweight with " + _UNSUPPORTED_RUNS["torch_compile_kwargs"]
            + ": remove that node from this model's chain, or the Attention Focus nodes")


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
