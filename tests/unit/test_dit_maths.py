"""Joint-attention probabilities (exact over all keys, and text-only) and the DiT token layout."""

from __future__ import annotations

import math

import pytest
import torch
from attention_focus.nodes import attention_math as am
from attention_focus.nodes import dit_layout as dl

from test_attention_math import _blc, naive_probs


def _joint(seed=0, b=2, h=3, n_txt=7, n_img=12, d=8):
    g = torch.Generator().manual_seed(seed)
    lq = n_txt + n_img
    q = torch.randn(b, h, lq, d, generator=g) * 2
    k = torch.randn(b, h, lq, d, generator=g) * 2
    return q, k


@pytest.mark.parametrize("bhld", [True, False])
@pytest.mark.parametrize("reduce", ["mean", "max"])
def test_probs_over_all_keys_equal_the_full_softmax_slice(bhld, reduce):
    q, k = _joint()
    ref = naive_probs(q, k)[:, :, 7:19, 2:6]  # image rows, four text columns, denominators over all keys
    ref = ref.mean(1) if reduce == "mean" else ref.amax(1)
    qq, kk = (q, k) if bhld else (_blc(q), _blc(k))
    got = am.attention_probs_at(qq, kk, 3, slice(7, 19), torch.arange(2, 6), bhld=bhld, reduce=reduce)
    assert got.dtype == torch.float32 and got.shape == (2, 12, 4)
    torch.testing.assert_close(got.double(), ref, atol=1e-6, rtol=1e-5)


def test_text_only_softmax_renormalises_over_the_chosen_columns():
    q, k = _joint(1)
    cols = torch.tensor([0, 1, 2, 3, 4, 5, 6])
    logits = (q.double() @ k.double().transpose(-1, -2)) / math.sqrt(8)
    ref = torch.softmax(logits[:, :, 7:, :7], -1).mean(1)
    got = am.attention_probs_at(q, k, 3, slice(7, 19), cols, bhld=True, normalize="text")
    torch.testing.assert_close(got.double(), ref, atol=1e-6, rtol=1e-5)
    assert torch.allclose(got.sum(-1), torch.ones(2, 12))
    full = am.attention_probs_at(q, k, 3, slice(7, 19), cols, bhld=True)
    assert (full.sum(-1) < 1).all()  # the image keys take the rest


@pytest.mark.parametrize("fused", [True, False])
def test_row_logsumexp_fused_and_chunked(monkeypatch, fused):
    q, k = _joint(4)
    g = torch.Generator().manual_seed(6)
    bias = torch.randn(2, 1, 19, 19, generator=g)
    monkeypatch.setattr(am, "FUSED_LSE", fused)
    monkeypatch.setattr(am, "MAX_LOGITS", 3 * 19 * 2 * 3)
    ref = torch.logsumexp(q.double() @ k.double().transpose(-1, -2) / math.sqrt(8) + bias.double(), -1)
    torch.testing.assert_close(am.row_logsumexp(q, k, bias).double(), ref, atol=1e-5, rtol=1e-5)
    broadcast = bias[:, :, :1]  # one bias row for every query (a per-key weight)
    ref = torch.logsumexp(q.double() @ k.double().transpose(-1, -2) / math.sqrt(8) + broadcast.double(), -1)
    torch.testing.assert_close(am.row_logsumexp(q, k, broadcast).double(), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("fused", [True, False])
def test_chunking_mask_and_bias_enter_the_log_sum_exp(monkeypatch, fused):
    monkeypatch.setattr(am, "FUSED_LSE", fused)
    q, k = _joint(2)
    g = torch.Generator().manual_seed(5)
    mask = torch.randn(2, 3, 19, 19, generator=g)
    bias = torch.zeros(2, 19)
    bias[:, 3] = math.log(2.5)
    ref = naive_probs(q, k, mask=mask, bias=bias)[:, :, 7:, [1, 3]].mean(1)
    monkeypatch.setattr(am, "MAX_LOGITS", 2 * 3 * 19)  # one query row per chunk
    got = am.attention_probs_at(q, k, 3, slice(7, 19), torch.tensor([1, 3]), bhld=True, mask=mask, key_bias=bias)
    torch.testing.assert_close(got.double(), ref, atol=1e-6, rtol=1e-5)


def test_boolean_keep_mask():
    q, k = _joint(3)
    keep = torch.ones(19, 19, dtype=torch.bool)
    keep[:, 10:] = False
    add = torch.zeros(2, 3, 19, 19)
    add[..., 10:] = float("-inf")
    ref = naive_probs(q, k, mask=add)[:, :, 7:, :4].mean(1)
    got = am.attention_probs_at(q, k, 3, slice(7, 19), torch.arange(4), bhld=True, mask=keep)
    torch.testing.assert_close(got.double(), ref, atol=1e-6, rtol=1e-5)


def test_bad_options_are_refused():
    q, k = _joint()
    with pytest.raises(ValueError, match="normalize"):
        am.attention_probs_at(q, k, 3, slice(0, 1), torch.arange(2), bhld=True, normalize="image")
    with pytest.raises(ValueError, match="head reduction"):
        am.attention_probs_at(q, k, 3, slice(0, 1), torch.arange(2), bhld=True, reduce="median")


def test_patch_grid_pads_odd_sizes_up():
    assert dl.patch_grid(9, 7, 2) == (5, 4)
    assert dl.patch_grid(64, 64, 2) == (32, 32)


def test_text_first_layout_with_registers_and_padding():
    g = dl.text_first(8 + 20, 20, (5, 4), registers=8)
    assert g.n_text == 28 and g.n_img == 20
    keys, pos = g.key_map()
    assert keys.tolist() == list(range(8, 28)) and pos.tolist() == list(range(20))
    # Lumina / Z-Image: caption padded to a multiple of 32 before the image tokens
    gl = dl.text_first(20, 20, (5, 4), pad_multiple=32)
    assert gl.n_text == 32
    assert dl.located(gl, 32 + 32, 32 + 32).rows == slice(32, 52)  # image tokens padded too


def test_located_tells_joint_calls_from_image_or_text_only_calls():
    g = dl.text_first(20, 20, (5, 4))
    assert dl.located(g, 40, 40) == dl.Located(slice(20, 40), 0, True)
    kontext = dl.text_first(20, 20, (5, 4), extra=20)
    assert dl.located(kontext, 40 + 20, 60).rows == slice(20, 40)  # reference-image tokens after the target
    assert dl.located(g, 20, 20) is None  # image-only (MMDiT-X second attention, Lumina noise refiner)
    assert dl.located(g, 40, 20) is None
    # a joint call longer than the family's exact layout is refused, never guessed
    with pytest.raises(dl.LayoutError, match="a joint attention call has 60 tokens where 40 were expected"):
        dl.located(g, 60, 60)
    with pytest.raises(dl.LayoutError, match=r"60 tokens where 80 were expected \(20 text \+ 20 image \+ 40 refer"):
        dl.located(dl.text_first(20, 20, (5, 4), extra=40), 60, 60)
    # Lumina 2 / Z-Image: caption and image both padded to 32
    z = dl.text_first(20, 20, (5, 4), pad_multiple=32)
    assert z.n_text == 32 and z.n_total == 64 and dl.located(z, 64, 64).rows == slice(32, 52)
    hi = dl.Geometry("img_first", 30, (dl.TextPart(0, 10, 0), dl.TextPart(10, 10, 10), dl.TextPart(20, 10, 10)),
                     (5, 4), 1, 20, 50)
    assert dl.located(hi, 50, 50) == dl.Located(slice(0, 20), 20, True)
    assert hi.key_map()[1].tolist() == list(range(10)) + list(range(10, 20)) * 2


def test_cross_layout_and_the_ambiguous_case():
    g = dl.Geometry("cross", 16, (dl.TextPart(0, 16, 0),), (5, 4), 1, 16)
    assert dl.located(g, 20, 16) == dl.Located(slice(0, 20), 0, False)
    assert dl.located(g, 20, 20) is None  # self-attention
    video = dl.Geometry("cross", 16, (dl.TextPart(0, 16, 0),), (5, 4), 3, 16)
    assert dl.located(video, 60, 16).rows == slice(0, 60)
    square = dl.Geometry("cross", 20, (dl.TextPart(0, 20, 0),), (5, 4), 1, 20)
    assert dl.located(square, 20, 20, ambiguous_odd=False) is None
    assert dl.located(square, 20, 20, ambiguous_odd=True) is not None
    # a cross-attention over the text whose queries are not the image grid: an unknown variant
    with pytest.raises(dl.LayoutError, match="has 24 queries where the 20 image tokens were expected"):
        dl.located(g, 24, 16)
