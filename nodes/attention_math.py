"""Attention probabilities for capture and the reweighting maths, on plain tensors.

Layouts: ``BLC`` = (batch, tokens, heads*dim), as ComfyUI's UNet attention passes q/k/v;
``BHLD`` = (batch, heads, tokens, dim) when the caller set ``skip_reshape``.
Everything here is computed in fp32 and chunked over queries so peak memory stays bounded; the exact joint
softmax's row normalisers come from a fused attention kernel where the device has one (``lse_path``).
"""

from __future__ import annotations

import math

import torch

# at most this many fp32 logits are held at once per capture call (64 MiB)
MAX_LOGITS = 16 * 1024 * 1024
# use a fused attention kernel for row log-sum-exps where one exists (False: query-chunked logits everywhere)
FUSED_LSE = True
# the memory-efficient CUDA kernel wants each bias row to start on an aligned address: SDPA pads the bias's last
# dimension to a multiple of 16 and slices it back (PyTorch's preprocess_mask); so does ``_efficient_bias``
_BIAS_ALIGN = 16


def to_bhld(x: torch.Tensor, heads: int, bhld: bool) -> torch.Tensor:
    """(B, L, H*D) → (B, H, L, D); a BHLD tensor is returned unchanged."""
    if bhld:
        return x
    b, n, c = x.shape
    return x.view(b, n, heads, c // heads).transpose(1, 2)


def cross_attention_probs(
    q: torch.Tensor,
    k: torch.Tensor,
    heads: int,
    *,
    bhld: bool = False,
    reduce: str = "mean",
    mask: torch.Tensor | None = None,
    key_bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """softmax(q kᵀ/√d) over the keys, reduced over heads: returns (B, Lq, Lk) float32.

    ``reduce`` is ``mean`` or ``max`` over heads. ``mask`` is an additive (or boolean keep-) mask
    broadcastable to (B, H, Lq, Lk); ``key_bias`` an additive (B, Lk) logit bias (used to mirror a
    renormalising reweight). Computed in query chunks so at most ``MAX_LOGITS`` logits exist at once
    (``attention_probs_at`` over every row and key, softmax over the keys).
    """
    lk = k.shape[2] if bhld else k.shape[1]
    return attention_probs_at(q, k, heads, slice(None), torch.arange(lk), bhld=bhld, normalize="text",
                              reduce=reduce, mask=mask, key_bias=key_bias)


def fold_repeated_keys(p: torch.Tensor, true_len: int) -> torch.Tensor:
    """Fold (..., Lk) probabilities whose keys are a context repeated to Lk = n·true_len.

    ComfyUI repeats shorter contexts to a common length when it batches prompts of different length;
    each copy then receives part of the probability. Summing the copies gives each real token's share.
    """
    lk = p.shape[-1]
    if lk == true_len:
        return p
    if true_len <= 0 or lk % true_len:
        raise ValueError(f"key length {lk} is not a multiple of the prompt length {true_len}")
    return p.reshape(*p.shape[:-1], lk // true_len, true_len).sum(-2)


def scale_value_rows(v: torch.Tensor, row_weights: torch.Tensor, bhld: bool = False) -> torch.Tensor:
    """Multiply value rows (keys) by per-row weights: (B, Lk, C) or (B, Lk, H, D) or BHLD × (B, Lk).

    Scaling a key's value row by w equals scaling its post-softmax probability column by w without
    renormalising (out_i = Σ_j p_ij v_j), which is Prompt-to-Prompt's reweighting.
    """
    w = row_weights.to(v.dtype)
    if bhld:
        return v * w[:, None, :, None]
    return v * w.reshape(*w.shape, *([1] * (v.ndim - 2)))  # (B, Lk, C) or SD3's (B, Lk, H, D)


def log_weight_bias(row_weights: torch.Tensor) -> torch.Tensor:
    """Additive logit bias log(w) for the renormalising reweight; w must be > 0."""
    if (row_weights <= 0).any():
        raise ValueError("renormalize mode needs weights > 0")
    return torch.log(row_weights.float())


def combine_reweights(weights: list[tuple[str, torch.Tensor]]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The reweights in force on some rows as one (scale, bias) pair of (B, Lk) tensors (None when absent).

    ``weights``: (mode, w) per reweight, mode ``scale`` (value rows × w: the factors multiply) or
    ``renormalize`` (logits + log w: the biases add). The capture applies the same pair to the probabilities
    it records, so the maps show the attention the model really used.
    """
    scale = bias = None
    for mode, w in weights:
        if mode == "scale":
            scale = w if scale is None else scale * w
        else:
            b = log_weight_bias(w)
            bias = b if bias is None else bias + b
    return scale, bias


def additive_mask(mask: torch.Tensor | None, lq: int, s: int, e: int) -> torch.Tensor | None:
    """The rows [s, e) of a mask as an additive fp32 (B|1, H|1, rows, Lk) tensor."""
    if mask is None:
        return None
    m = mask
    if m.ndim == 2:
        m = m[None, None]
    elif m.ndim == 3:
        m = m[:, None]
    m = m[..., s:e, :] if m.shape[-2] == lq else m
    if m.dtype == torch.bool:
        return torch.zeros(m.shape, dtype=torch.float32, device=m.device).masked_fill(~m, float("-inf"))
    return m.float()


def lse_path(device_type: str) -> str:
    """Which kernel gives the row log-sum-exps of the exact joint softmax on a device:

    - ``cpu_flash``: PyTorch's fused CPU flash attention (``_scaled_dot_product_flash_attention_for_cpu``), which
      returns ``(output, logsumexp)`` with logsumexp (B, H, Lq) fp32 and takes an additive ``attn_mask``;
    - ``cuda_efficient``: the memory-efficient CUDA kernel (``_scaled_dot_product_efficient_attention`` with
      ``compute_log_sumexp=True``): BHLD inputs (fp32 here, so the normaliser is the fp32 one), an additive bias
      that may broadcast (stride 0) over batch, heads and queries but whose rows must be aligned
      (``_efficient_bias``), and logsumexp (B, H, ⌈Lq/32⌉·32) fp32 on CUDA (Lq on ROCm): trimmed to Lq. (The flash
      CUDA kernel is not used: it takes no bias and only fp16/bf16 inputs.)
    - ``chunked``: the logits in query chunks of at most ``MAX_LOGITS`` (any device; the fallback when a fused
      kernel is missing or refuses its inputs).
    """
    aten = torch.ops.aten
    if not FUSED_LSE:
        return "chunked"
    if device_type == "cpu" and hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        return "cpu_flash"
    if device_type == "cuda" and hasattr(aten, "_scaled_dot_product_efficient_attention"):
        return "cuda_efficient"
    return "chunked"


def _full_bias(bias: torch.Tensor | None, b: int, h: int, lq: int, lk: int) -> torch.Tensor | None:
    """An additive bias as a (B, H|1, Lq, Lk) view (no copy: broadcast dimensions keep stride 0)."""
    if bias is None:
        return None
    return bias.expand(b, h if bias.shape[1] != 1 else 1, lq, lk)


def _efficient_bias(bias: torch.Tensor | None, b: int, h: int, lq: int, lk: int) -> torch.Tensor | None:
    """An additive bias as the memory-efficient kernel takes it: a (B, H, Lq, Lk) fp32 view whose last dimension is
    contiguous and whose other strides are multiples of ``_BIAS_ALIGN`` (broadcast ones stay 0): the rows are
    padded to a multiple of ``_BIAS_ALIGN`` and sliced back, as SDPA does before calling that kernel."""
    if bias is None:
        return None
    m = bias.float()
    if m.stride(-1) != 1 or any(st % _BIAS_ALIGN for st, n in zip(m.stride()[:-1], m.shape[:-1], strict=True)
                                if n > 1):
        pad = (-lk) % _BIAS_ALIGN
        m = torch.nn.functional.pad(m, (0, pad))[..., :lk] if pad else m.contiguous()
    return m.expand(b, h, lq, lk)


def _efficient_op(q, k, v, bias):
    """``aten._scaled_dot_product_efficient_attention(q, k, v, bias, compute_log_sumexp=True)``."""
    return torch.ops.aten._scaled_dot_product_efficient_attention(q, k, v, bias, True)


def _lse_fused(path: str, qf: torch.Tensor, kf: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Row log-sum-exps (B, H, Lq) from the fused kernel ``path`` (see ``lse_path``); raises if it refuses."""
    b, h, lq, _ = qf.shape
    lk = kf.shape[2]
    if path == "cpu_flash":
        return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            qf, kf, kf, attn_mask=_full_bias(bias, b, h, lq, lk))[1]
    if path == "cuda_efficient":
        q, k = qf.contiguous(), kf.contiguous()
        lse = _efficient_op(q, k, k, _efficient_bias(bias, b, h, lq, lk))[1]
        if lse.ndim != 3 or lse.shape[:2] != (b, h) or lse.shape[2] < lq:
            raise RuntimeError(f"unexpected log-sum-exp layout {tuple(lse.shape)}")
        return lse[:, :, :lq]
    raise ValueError(f"no fused log-sum-exp kernel {path!r}")


def row_logsumexp(q: torch.Tensor, k: torch.Tensor, bias: torch.Tensor | None = None,
                  path: str | None = None) -> torch.Tensor:
    """log Σ_j exp(q·k_j/√d + bias_j) for every query row: (B, H, Lq) fp32 from BHLD q/k.

    A fused attention kernel returns this normaliser with its (discarded) output, in tiles and without
    materialising the logits (``lse_path`` chooses it by device: CPU flash attention, CUDA memory-efficient
    attention); without one, or if it refuses the inputs, the logits are computed in query chunks of at most
    ``MAX_LOGITS``. ``path`` forces a choice (tests). ``bias`` broadcasts to (B, H, Lq, Lk).
    """
    qf, kf = q.float(), k.float()
    b, h, lq, d = qf.shape
    lk = kf.shape[2]
    path = path or lse_path(qf.device.type)
    if path != "chunked":
        try:
            return _lse_fused(path, qf, kf, bias)
        except (RuntimeError, TypeError, NotImplementedError):
            pass
    out = torch.empty(b, h, lq, dtype=torch.float32, device=q.device)
    step = max(1, MAX_LOGITS // max(1, b * h * lk))
    kt = kf.transpose(-1, -2)
    for s in range(0, lq, step):
        e = min(lq, s + step)
        logits = torch.matmul(qf[:, :, s:e], kt) / math.sqrt(d)
        if bias is not None:
            logits = logits + (bias[..., s:e, :] if bias.shape[-2] == lq else bias)
        out[:, :, s:e] = torch.logsumexp(logits, dim=-1)
    return out


def attention_probs_at(
    q: torch.Tensor,
    k: torch.Tensor,
    heads: int,
    rows: slice,
    cols: torch.Tensor,
    *,
    bhld: bool = False,
    normalize: str = "all",
    reduce: str = "mean",
    mask: torch.Tensor | None = None,
    key_bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Probabilities that query ``rows`` put on key ``cols``, reduced over heads: (B, n_rows, n_cols) fp32.

    ``normalize="all"`` gives the exact softmax of the joint attention (denominator over every key,
    as the model computes it): p = exp(q·k_j/√d − LSE) with the row's log-sum-exp over all keys
    (``row_logsumexp``), so only the chosen columns' logits are ever formed and the full
    (rows × keys) matrix never exists. ``normalize="text"`` renormalises over ``cols`` only.
    ``mask`` (additive or boolean keep) broadcasts to (B, H, Lq, Lk) in full-query coordinates;
    ``key_bias`` is an additive (B, Lk) bias.
    """
    if reduce not in ("mean", "max"):
        raise ValueError(f"head reduction must be 'mean' or 'max', not {reduce!r}")
    if normalize not in ("all", "text"):
        raise ValueError(f"normalize must be 'all' or 'text', not {normalize!r}")
    qh = to_bhld(q, heads, bhld)
    kh = to_bhld(k, heads, bhld)
    if kh.shape[1] != qh.shape[1]:  # grouped-query attention (enable_gqa): each key head serves several query heads
        kh = kh.repeat_interleave(qh.shape[1] // kh.shape[1], dim=1)
    b, h, lq, d = qh.shape
    lk = kh.shape[2]
    r0, r1, _ = rows.indices(lq)
    cols = cols.to(device=q.device, dtype=torch.long)
    n_cols = int(cols.numel())
    scale = 1.0 / math.sqrt(d)
    q_rows = qh[:, :, r0:r1]
    kb = None if key_bias is None else key_bias.float()[:, None, None, :]

    def bias_of(s: int, e: int, at_cols: bool) -> torch.Tensor | None:
        """Mask + key bias of query rows [r0+s, r0+e), optionally only at ``cols``."""
        m = additive_mask(mask, lq, r0 + s, r0 + e)
        if kb is not None:
            m = kb if m is None else m + kb
        if m is not None and at_cols and m.shape[-1] == lk:
            m = m.index_select(3, cols)
        return m

    lse = row_logsumexp(q_rows, kh, bias_of(0, r1 - r0, False)) if normalize == "all" else None
    kt = kh.index_select(2, cols).float().transpose(-1, -2)
    out = torch.empty(b, r1 - r0, n_cols, dtype=torch.float32, device=q.device)
    step = max(1, MAX_LOGITS // max(1, b * h * n_cols))
    for s in range(0, r1 - r0, step):
        e = min(r1 - r0, s + step)
        logits = torch.matmul(q_rows[:, :, s:e].float(), kt) * scale
        bias = bias_of(s, e, True)
        if bias is not None:
            logits = logits + bias
        if lse is not None:
            p = torch.exp(logits - lse[:, :, s:e, None])
        else:
            p = torch.softmax(logits, dim=-1)
        out[:, s:e] = p.mean(1) if reduce == "mean" else p.amax(1)
    return out
