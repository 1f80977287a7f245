"""Attention probabilities and reweighting maths against naive float64 references."""

from __future__ import annotations

import math

import pytest
import torch
from attention_focus.nodes import attention_math as am

B, H, LQ, LK, D = 2, 4, 37, 11, 8


def _gen(seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, LQ, D, generator=g) * 2
    k = torch.randn(B, H, LK, D, generator=g) * 2
    v = torch.randn(B, H, LK, D, generator=g)
    return q, k, v


def _blc(x):
    """(B, H, L, D) → (B, L, H*D), ComfyUI's layout."""
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d).contiguous()


def naive_probs(q, k, mask=None, bias=None):
    """(B, H, Lq, Lk) float64 softmax with explicit loops over batch and heads."""
    q, k = q.double(), k.double()
    out = torch.empty(q.shape[0], q.shape[1], q.shape[2], k.shape[2], dtype=torch.float64)
    for b in range(q.shape[0]):
        for h in range(q.shape[1]):
            logits = q[b, h] @ k[b, h].T / math.sqrt(q.shape[-1])
            if mask is not None:
                logits = logits + mask[b, h]
            if bias is not None:
                logits = logits + bias[b]
            out[b, h] = torch.softmax(logits, dim=-1)
    return out


def test_to_bhld_layout():
    q, _, _ = _gen()
    assert torch.equal(am.to_bhld(_blc(q), H, False), q)
    assert am.to_bhld(q, H, True) is q


@pytest.mark.parametrize("bhld", [False, True])
def test_probs_match_naive_mean_and_max(bhld):
    q, k, _ = _gen()
    ref = naive_probs(q, k)
    qq, kk = (q, k) if bhld else (_blc(q), _blc(k))
    mean = am.cross_attention_probs(qq, kk, H, bhld=bhld, reduce="mean")
    mx = am.cross_attention_probs(qq, kk, H, bhld=bhld, reduce="max")
    assert mean.shape == (B, LQ, LK) and mean.dtype == torch.float32
    torch.testing.assert_close(mean.double(), ref.mean(1), atol=1e-6, rtol=0)
    torch.testing.assert_close(mx.double(), ref.amax(1), atol=1e-6, rtol=0)
    torch.testing.assert_close(mean.sum(-1), torch.ones(B, LQ), atol=1e-5, rtol=0)


def test_probs_from_half_precision_inputs():
    q, k, _ = _gen(1)
    ref = naive_probs(q.half(), k.half()).mean(1)
    out = am.cross_attention_probs(_blc(q).half(), _blc(k).half(), H)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=0)


def test_additive_mask():
    q, k, _ = _gen(2)
    g = torch.Generator().manual_seed(5)
    mask4 = torch.randn(B, H, LQ, LK, generator=g)
    mask4[:, :, :, 3] = -10000.0
    ref = naive_probs(q, k, mask=mask4.double())
    out = am.cross_attention_probs(_blc(q), _blc(k), H, mask=mask4)
    torch.testing.assert_close(out.double(), ref.mean(1), atol=1e-6, rtol=0)
    assert out[..., 3].max() < 1e-3
    # 3-D (B, Lq, Lk) and 2-D (Lq, Lk) masks broadcast over heads / batch, as in ComfyUI
    mask3 = mask4[:, 0]
    ref3 = naive_probs(q, k, mask=mask3[:, None].expand(B, H, LQ, LK).double())
    torch.testing.assert_close(am.cross_attention_probs(q, k, H, bhld=True, mask=mask3).double(),
                               ref3.mean(1), atol=1e-6, rtol=0)
    mask2 = mask4[0, 0]
    ref2 = naive_probs(q, k, mask=mask2.expand(B, H, LQ, LK).double())
    torch.testing.assert_close(am.cross_attention_probs(q, k, H, bhld=True, mask=mask2).double(),
                               ref2.mean(1), atol=1e-6, rtol=0)
    # a key-only mask (B, 1, 1, Lk) broadcasts over queries
    keym = torch.zeros(B, 1, 1, LK)
    keym[..., :2] = -1e9
    refk = naive_probs(q, k, mask=keym.expand(B, H, LQ, LK).double())
    torch.testing.assert_close(am.cross_attention_probs(q, k, H, bhld=True, mask=keym).double(),
                               refk.mean(1), atol=1e-6, rtol=0)


def test_bool_keep_mask():
    q, k, _ = _gen(3)
    keep = torch.ones(B, 1, LQ, LK, dtype=torch.bool)
    keep[0, :, :, 4:7] = False
    keep[1, :, 5:, 0] = False
    add = torch.zeros(B, H, LQ, LK, dtype=torch.float64).masked_fill(~keep, float("-inf"))
    ref = naive_probs(q, k, mask=add)
    out = am.cross_attention_probs(_blc(q), _blc(k), H, mask=keep)
    torch.testing.assert_close(out.double(), ref.mean(1), atol=1e-6, rtol=0)
    assert out[0, :, 4:7].abs().max() == 0 and out[1, 5:, 0].abs().max() == 0


def test_key_bias_is_renormalised_reweighting():
    q, k, _ = _gen(4)
    w = torch.ones(B, LK)
    w[0, 2], w[0, 5], w[1, 7] = 3.0, 0.25, 1.7
    out = am.cross_attention_probs(_blc(q), _blc(k), H, key_bias=am.log_weight_bias(w), reduce="max")
    p = naive_probs(q, k)
    reweighted = p * w.double()[:, None, None, :]
    ref = reweighted / reweighted.sum(-1, keepdim=True)  # explicit renormalisation
    torch.testing.assert_close(out.double(), ref.amax(1), atol=1e-6, rtol=0)
    # ... which is the same as adding log(w) to the logits
    ref_bias = naive_probs(q, k, bias=torch.log(w.double())[:, None, :])
    torch.testing.assert_close(ref, ref_bias, atol=1e-12, rtol=0)


@pytest.mark.parametrize("max_logits", [1, 7, 3 * B * H * LK + 5, 10 ** 9])
@pytest.mark.parametrize("bhld", [False, True])
def test_chunking_matches_unchunked(monkeypatch, max_logits, bhld):
    q, k, _ = _gen(6)
    keep = torch.rand(B, 1, LQ, LK, generator=torch.Generator().manual_seed(1)) > 0.2
    keep[..., 0] = True
    add = torch.randn(B, LQ, LK, generator=torch.Generator().manual_seed(2))
    bias = torch.randn(B, LK, generator=torch.Generator().manual_seed(3))
    qq, kk = (q, k) if bhld else (_blc(q), _blc(k))
    full = {}
    for name, kw in (("plain", {}), ("bool", {"mask": keep}), ("add", {"mask": add}),
                     ("bias", {"key_bias": bias, "reduce": "max"})):
        full[name] = am.cross_attention_probs(qq, kk, H, bhld=bhld, **kw)
    calls = []
    real_matmul = torch.matmul

    def counting_matmul(a, b):
        calls.append(a.shape[2])
        return real_matmul(a, b)

    monkeypatch.setattr(am, "MAX_LOGITS", max_logits)
    monkeypatch.setattr(am.torch, "matmul", counting_matmul)
    for name, kw in (("plain", {}), ("bool", {"mask": keep}), ("add", {"mask": add}),
                     ("bias", {"key_bias": bias, "reduce": "max"})):
        calls.clear()
        chunked = am.cross_attention_probs(qq, kk, H, bhld=bhld, **kw)
        torch.testing.assert_close(chunked, full[name], atol=1e-6, rtol=0)
        step = max(1, max_logits // (B * H * LK))
        assert sum(calls) == LQ and len(calls) == math.ceil(LQ / step)
        assert max(calls) * B * H * LK <= max(max_logits, B * H * LK)  # at most MAX_LOGITS (or one row)
    monkeypatch.undo()
    ref = naive_probs(q, k, mask=add[:, None].expand(B, H, LQ, LK).double())
    torch.testing.assert_close(full["add"].double(), ref.mean(1), atol=1e-6, rtol=0)


def test_fold_repeated_keys():
    g = torch.Generator().manual_seed(7)
    p = torch.softmax(torch.randn(B, 50, 154, generator=g), -1)  # a 77-token context repeated twice
    folded = am.fold_repeated_keys(p, 77)
    assert folded.shape == (B, 50, 77)
    torch.testing.assert_close(folded, p[..., :77] + p[..., 77:])
    torch.testing.assert_close(folded.sum(-1), torch.ones(B, 50))
    assert am.fold_repeated_keys(p, 154) is p
    p3 = torch.softmax(torch.randn(3, 231, generator=g), -1)
    torch.testing.assert_close(am.fold_repeated_keys(p3, 77), p3[:, :77] + p3[:, 77:154] + p3[:, 154:])
    for bad in (100, 0, -77):
        with pytest.raises(ValueError, match="not a multiple of the prompt length"):
            am.fold_repeated_keys(p, bad)


def test_combine_reweights_multiplies_scales_and_adds_log_biases():
    w1 = torch.tensor([[1.0, 2.0, 0.5]])
    w2 = torch.tensor([[3.0, 1.0, 1.0]])
    assert am.combine_reweights([]) == (None, None)
    scale, bias = am.combine_reweights([("scale", w1), ("renormalize", w2), ("scale", w2), ("renormalize", w1)])
    torch.testing.assert_close(scale, w1 * w2)
    torch.testing.assert_close(bias, torch.log(w1 * w2))
    scale, bias = am.combine_reweights([("renormalize", w1)])
    assert scale is None and torch.allclose(bias, torch.log(w1))


@pytest.mark.parametrize("bhld", [False, True])
def test_scale_value_rows_is_p2p_column_scaling(bhld):
    q, k, v = _gen(8)
    w = torch.ones(B, LK)
    w[0, 1], w[0, 6], w[1, 3], w[1, 9] = 2.5, -1.0, 0.0, 0.4
    p = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(D), -1)  # (B, H, Lq, Lk) fp32
    ref = (p * w[:, None, None, :]) @ v  # Prompt-to-Prompt: scale probability columns, no renormalising
    if bhld:
        out = p @ am.scale_value_rows(v, w, bhld=True)
    else:
        vs = am.scale_value_rows(_blc(v), w)  # (B, Lk, H*D)
        assert vs.shape == (B, LK, H * D)
        out = p @ am.to_bhld(vs, H, False)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    # an explicit per-element check of the scaling itself
    vs = am.scale_value_rows(_blc(v), w)
    assert torch.equal(vs[1, 3], torch.zeros(H * D))
    torch.testing.assert_close(vs[0, 1], _blc(v)[0, 1] * 2.5)
    assert am.scale_value_rows(v.half(), w, bhld=True).dtype == torch.float16


def test_log_weight_bias():
    w = torch.tensor([[1.0, 2.0, 0.5]])
    torch.testing.assert_close(am.log_weight_bias(w), torch.log(w))
    assert am.log_weight_bias(w.half()).dtype == torch.float32
    for bad in ([[1.0, 0.0]], [[1.0, -2.0]]):
        with pytest.raises(ValueError, match="renormalize mode needs weights > 0"):
            am.log_weight_bias(torch.tensor(bad))
