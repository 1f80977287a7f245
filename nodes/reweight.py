"""The reweight effect: per-word attention weights applied inside cross-attention (Prompt-to-Prompt style).

``scale``: the chosen tokens' value rows × w, which equals scaling their post-softmax probabilities by w
without renormalising (P2P's reweighting; w may be 0 or negative). ``renormalize``: log w added to their
logits, so each query's attention still sums to 1. On joint attention (DiTs) only the image queries are
reweighted, as in UNet cross-attention; text and reference-image queries keep their original call.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import comfy_patch as cp
from .hook_state import CallInfo, RunState, SharedState, chunk_prompt
from .attention_math import log_weight_bias, scale_value_rows
from .errors import AttentionFocusError
from .families import resolve_layers
from .layer_spec import LayerKey, check_step_window
from .token_table import positional_table, resolve
from .word_syntax import WeightSpecError, check_weight


@dataclass
class RunWeights:
    per_uid: dict[str, dict[int, float]]  # prompt uuid → {position: weight}
    sigma_hi: float
    sigma_lo: float


@dataclass
class Reweighter:
    """One reweight node: its weights, mode, layers, branches and step window; per run, the weights per
    prompt position."""

    spec: list[tuple[str, float]]
    mode: str  # "scale" | "renormalize"
    layers: set[LayerKey]
    branches: set[str]
    start: float
    end: float

    def __deepcopy__(self, memo):
        return self

    def start_run(self, guider, run: RunState, noise, sigmas) -> None:
        """Resolve the words of every prompt of the run to weights per token position (kept in the run)."""
        hi, lo = cp.sigma_window(guider.model_patcher, self.start, self.end)
        per_uid: dict[str, dict[int, float]] = {}
        for uid, p in run.prompts.items():
            if p.branch not in self.branches:
                continue
            weights: dict[int, float] = {}
            culprits: dict[int, list[str]] = {}
            for target, w in self.spec:
                if p.tokens is None and not target.startswith("#"):
                    why = p.note or ("the prompt carries no token table. Encode it with 'Attention Focus Text "
                                     "Encode' or address tokens by position (#N)")
                    raise AttentionFocusError(f"reweight: cannot find {target!r} in the {p.branch} prompt: {why}")
                table = p.tokens if p.tokens is not None else positional_table(p.length)
                try:
                    positions = resolve(table, target)
                except ValueError as e:
                    raise AttentionFocusError(f"reweight ({p.branch} prompt): {e}") from None
                for pos in positions:
                    weights[pos] = weights.get(pos, 1.0) * w
                    culprits.setdefault(pos, []).append(target)
            for pos, val in weights.items():
                if len(culprits[pos]) > 1:
                    try:
                        check_weight(val, f"the product {val:g} of the weights of "
                                          f"{', '.join(map(repr, culprits[pos]))} on one token", self.mode)
                    except WeightSpecError as e:
                        raise AttentionFocusError(str(e)) from None
            if any(v != 1.0 for v in weights.values()):
                per_uid[uid] = weights
        run.data[id(self)] = RunWeights(per_uid, hi, lo)

    def row_weights(self, st: SharedState, info: CallInfo, batch: int, key_len: int,
                    device) -> torch.Tensor | None:
        """(batch, key_len) weights for this call, or None when nothing applies."""
        run = st.run.data.get(id(self))
        if run is None or not run.per_uid or info.layer not in self.layers:
            return None
        if not (run.sigma_lo <= info.sigma <= run.sigma_hi):
            return None
        n = max(1, len(info.uids))
        per = batch // n
        w = None
        for i in range(len(info.uids)):
            uid, branch = chunk_prompt(st, info, i)
            weights = run.per_uid.get(uid) if uid is not None else None
            if weights is None or branch not in self.branches:
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

    def hook(self, st: SharedState, info: CallInfo | None, prev, func, *args, **kwargs):
        if info is not None:
            q, k, v, heads, bhld, mask = cp.split_args(args, kwargs)
            w = self.row_weights(st, info, q.shape[0], k.shape[2] if bhld else k.shape[1], q.device)
            if w is not None:
                if info.joint and info.rows is not None:
                    return _call_rows_weighted(prev, func, args, kwargs, w, self.mode, bhld, info.rows)
                args, kwargs = apply_weights(args, kwargs, w, self.mode, bhld, q)
        return cp.call_next(prev, func, args, kwargs)


def add_reweight(model, spec: list[tuple[str, float]], mode: str, layer_spec: str, branch: str,
                 start: float, end: float):
    """Clone ``model`` and install a reweight; returns the clone."""
    check_step_window(start, end)
    m = model.clone()
    layers = set(resolve_layers(m, layer_spec))
    branches = {"positive", "negative"} if branch == "both" else {branch}
    rw = Reweighter(spec, mode, layers, branches, start, end)
    cp.add_effect(m, rw)
    cp.install_override(m, rw.hook)
    return m


def apply_weights(args, kwargs, w: torch.Tensor, mode: str, bhld: bool, q: torch.Tensor):
    """The attention call's arguments with (B, Lk) weights applied (scaled values, or a log-w mask)."""
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
            a, kw = apply_weights(a, kw, w, mode, bhld, a[0])
        outs.append(cp.call_next(prev, func, a, kw))
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=out_dim)
