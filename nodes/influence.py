"""What a word does, next to where it is attended: per-word influence maps, measured in the same run.

At each chosen step (``influence_steps`` of them, evenly spread over the capture's step window) the positive
prompt is evaluated again — once as it is, once per word with that word neutralised — and the influence of a
word is, per latent cell, the size of the change it makes to the model's prediction::

    influence_w(y, x) = Σ_chosen steps ‖ D(x_t, σ_t; prompt) − D(x_t, σ_t; prompt without w) ‖₂ over channels

D is ComfyUI's denoised prediction of the positive prompt alone (the guided prediction changes by cfg times
as much). Neutralising a word = zeroing its tokens' **value rows** in every attention call that reads the prompt
(cross-attention; joint attention for all queries, so the word cannot reach the image through other text tokens
either), in every layer. The keys are left alone, so every softmax — and the share each other token gets — stays
exactly as in the real run: the map measures what the image reads from the word, not a redistribution of
attention. (Replacing the tokens by padding instead would change the text encoder's output for the other tokens
too — CLIP is causal, T5 bidirectional — and needs the text encoder during sampling.)

Cost: (1 + words) extra model calls with the positive prompt only (half a CFG evaluation each) per chosen step.
The sampler's own prediction is returned untouched and the extra calls are not counted as evaluations nor
captured (they share the evaluation's number, as guidance passes do), so the image and the maps are unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .errors import AttentionFocusError
from .hook_state import CallInfo, RunState, SharedState, chunk_prompt
from .token_table import positional_table, resolve
from .word_syntax import parse_targets


@dataclass
class InfluenceRun:
    words: list[str]
    targets: list[dict[str, tuple[int, ...]]]  # per word: prompt uuid → positions
    steps: list[int]  # chosen step indices (0-based)
    sigmas: list[float]  # their sigmas
    done: set[int] = field(default_factory=set)
    maps: torch.Tensor | None = None  # (B, words, H, W)
    calls: int = 0  # extra model calls made
    ablate: dict[str, tuple[int, ...]] | None = None  # during a neutralised pass
    active: bool = False  # inside an extra pass


def choose_steps(n_steps: int, k: int) -> list[int]:
    """``k`` step indices evenly spread over ``n_steps`` (first and last included), each once."""
    if k <= 0 or n_steps <= 0:
        return []
    if k == 1:
        return [n_steps // 2]
    return sorted({round(i * (n_steps - 1) / (k - 1)) for i in range(k)})


def plan_influence(words: str, k: int, run: RunState, sigmas: list[float], lo: float, hi: float) -> InfluenceRun:
    """Resolve the words in the positive prompts and choose the steps; AttentionFocusError when a word is in none."""
    try:
        targets = parse_targets(words)
    except ValueError as e:
        raise AttentionFocusError(f"influence_words: {e}") from None
    per_word: list[dict[str, tuple[int, ...]]] = []
    for t in targets:
        found: dict[str, tuple[int, ...]] = {}
        for uid, p in run.prompts.items():
            if p.branch != "positive":
                continue
            if p.tokens is None and not t.startswith("#"):
                continue
            try:
                found[uid] = tuple(resolve(p.tokens if p.tokens is not None else positional_table(p.length), t))
            except ValueError:
                continue
        if not found:
            words = sorted({w for p in run.prompts.values() if p.branch == "positive" and p.tokens is not None
                            for w in p.tokens.word_texts()})
            known = f"; the prompt's words are: {', '.join(words[:40])}" if words else (
                " (the prompt carries no token table: encode it with Attention Focus Text Encode, or use #N)")
            raise AttentionFocusError(f"influence_words: {t!r} is not in the positive prompt{known}")
        per_word.append(found)
    in_window = [i for i, s in enumerate(sigmas[:-1]) if lo <= s <= hi]
    chosen = [in_window[i] for i in choose_steps(len(in_window), k)]
    return InfluenceRun(targets, per_word, chosen, [sigmas[i] for i in chosen])


def ablation_weights(st: SharedState, info: CallInfo, batch: int, key_len: int, ablate: dict[str, tuple[int, ...]],
                     device) -> torch.Tensor | None:
    """(batch, key_len) value-row weights: 0 at the neutralised word's key columns of its prompt's chunks."""
    n = max(1, len(info.uids))
    per = batch // n
    w = None
    for i in range(len(info.uids)):
        uid, _ = chunk_prompt(st, info, i)
        positions = ablate.get(uid) if uid is not None else None
        if not positions:
            continue
        if w is None:
            w = torch.ones(batch, key_len, dtype=torch.float32, device=device)
        rows = slice(i * per, (i + 1) * per)
        if info.geom is not None:
            key_rel, pos = info.geom.key_map()
            for p in positions:
                w[rows, (key_rel[pos == p] + info.key_base).to(device)] = 0.0
            continue
        length = st.run.prompts[uid].length
        if length > 0 and key_len % length == 0:
            for p in positions:
                w[rows, p:key_len:length] = 0.0
    return w


def change_map(pred: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    """‖pred − base‖₂ over the channels (and a video's frames): (B, H, W) float32."""
    d = (pred.float() - base.float()) ** 2
    return d.sum(dim=tuple(range(1, d.ndim - 2))).sqrt()


def run_passes(inf: InfluenceRun, guider, x: torch.Tensor, timestep: torch.Tensor, model_options: dict) -> None:
    """At a chosen step (first evaluation at its sigma): the positive prompt as is and once per word neutralised."""
    import comfy.samplers

    sigma = float(timestep.reshape(-1)[0])
    step = next((s for s, sg in zip(inf.steps, inf.sigmas, strict=True)
                 if s not in inf.done and abs(sg - sigma) <= 1e-5 * max(1.0, abs(sg))), None)
    conds = (getattr(guider, "conds", None) or {}).get("positive")
    if step is None or not conds:
        return
    inf.done.add(step)
    inf.active = True
    try:
        with torch.no_grad():
            base = comfy.samplers.calc_cond_batch(guider.inner_model, [conds], x, timestep, model_options)[0]
            inf.calls += 1
            changes = []
            for targets in inf.targets:
                inf.ablate = targets
                pred = comfy.samplers.calc_cond_batch(guider.inner_model, [conds], x, timestep, model_options)[0]
                inf.calls += 1
                changes.append(change_map(pred, base))
    finally:
        inf.ablate = None
        inf.active = False
    step_maps = torch.stack(changes, 1)
    inf.maps = step_maps if inf.maps is None else inf.maps + step_maps


def influence_meta(inf: InfluenceRun, schedule_steps: int) -> dict:
    return {"words": inf.words, "steps": [s + 1 for s in sorted(inf.done)], "of_steps": schedule_steps,
            "sigmas": [sg for s, sg in zip(inf.steps, inf.sigmas, strict=True) if s in inf.done],
            "extra_model_calls": inf.calls,
            "measure": "per latent cell, the L2 norm over channels of the change in the positive prompt's denoised "
                       "prediction when the word's value rows are zeroed, summed over the chosen steps"}
