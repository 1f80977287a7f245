"""The row log-sum-exps of the exact joint softmax: which kernel gives them on which device, and that every path
(CPU flash attention, the CUDA memory-efficient kernel's contract, query-chunked logits) agrees.

The CUDA kernel cannot run here: its path is exercised on CPU with a stand-in that checks the inputs as that kernel
requires them (BHLD, last dimension contiguous, a 4-d bias with aligned rows) and answers in its layout (log-sum-exps
padded to a multiple of 32 queries), so the selection, the bias preparation and the trimming are what is tested.
"""

from __future__ import annotations

import math

import pytest
import torch

from attention_focus.nodes import attention_math as am


def _data(b=2, h=3, lq=45, lk=70, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, h, lq, d, generator=g) * 2, torch.randn(b, h, lk, d, generator=g) * 2, g)


def _reference(q, k, bias=None):
    logits = q.double() @ k.double().transpose(-1, -2) / math.sqrt(q.shape[-1])
    if bias is not None:
        logits = logits + bias.double()
    return torch.logsumexp(logits, -1)


def test_path_selection(monkeypatch):
    assert am.lse_path("cpu") == "cpu_flash"
    assert am.lse_path("cuda") == "cuda_efficient"
    assert am.lse_path("mps") == am.lse_path("xpu") == "chunked"
    monkeypatch.setattr(am, "FUSED_LSE", False)
    assert am.lse_path("cpu") == am.lse_path("cuda") == "chunked"


def _biases(b, h, lq, lk, g):
    key = torch.log(torch.rand(b, lk, generator=g) + 0.1)[:, None, None, :]  # a reweight's (B, 1, 1, Lk) log w
    full = -4 * torch.rand(b, h, lq, lk, generator=g)  # a regional mask over every row and head
    return [None, key, full, full[:1, :1], key[..., :1, :].expand(b, 1, 1, lk)]


@pytest.mark.parametrize("lk", [70, 64, 1])
def test_cpu_fused_kernel_and_the_chunked_fallback_agree(lk):
    q, k, g = _data(lk=lk)
    for bias in _biases(2, 3, 45, lk, g):
        want = _reference(q, k, bias)
        fused = am.row_logsumexp(q, k, bias, path="cpu_flash")
        chunked = am.row_logsumexp(q, k, bias, path="chunked")
        assert fused.shape == chunked.shape == (2, 3, 45) and fused.dtype == torch.float32
        torch.testing.assert_close(fused.double(), want, atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(chunked.double(), want, atol=1e-4, rtol=1e-5)
    assert am.row_logsumexp(q, k).equal(am.row_logsumexp(q, k, path="cpu_flash"))  # the CPU default


def test_chunked_path_holds_at_most_max_logits(monkeypatch):
    q, k, _ = _data(lq=100, lk=30)
    monkeypatch.setattr(am, "MAX_LOGITS", 2 * 3 * 30 * 7)  # seven query rows per chunk
    torch.testing.assert_close(am.row_logsumexp(q, k, path="chunked").double(), _reference(q, k), atol=1e-4,
                               rtol=1e-5)


class FakeEfficientKernel:
    """Stands in for aten._scaled_dot_product_efficient_attention(q, k, v, bias, compute_log_sumexp=True): checks
    the inputs as the CUDA kernel requires them and answers in its layout (log-sum-exps padded to ⌈Lq/32⌉·32)."""

    def __init__(self):
        self.biases = []

    def __call__(self, q, k, v, bias):
        b, h, lq, d = q.shape
        assert q.dtype == k.dtype == torch.float32 and q.stride(-1) == k.stride(-1) == v.stride(-1) == 1
        assert k.shape == (b, h, k.shape[2], d) and v.shape[:3] == k.shape[:3]
        if bias is not None:
            assert bias.shape == (b, h, lq, k.shape[2]) and bias.stride(-1) == 1
            assert all(st % 16 == 0 for st in bias.stride()[:-1]), bias.stride()
            self.biases.append(bias)
        lse = _reference(q, k, bias).float()
        padded = torch.full((b, h, -(-lq // 32) * 32), float("nan"))
        padded[:, :, :lq] = lse
        return torch.zeros(b, h, lq, v.shape[-1]), padded, torch.zeros(()), torch.zeros(())


def test_cuda_efficient_path_prepares_the_bias_and_trims_the_result(monkeypatch):
    fake = FakeEfficientKernel()
    monkeypatch.setattr(am, "_efficient_op", fake)
    q, k, g = _data(lk=70)
    q_rows = q[:, :, 5:40]  # a slice of the query rows, as the capture passes the image rows
    for bias in _biases(2, 3, 35, 70, g):
        got = am.row_logsumexp(q_rows, k, bias, path="cuda_efficient")
        assert got.shape == (2, 3, 35) and not torch.isnan(got).any()
        torch.testing.assert_close(got, am.row_logsumexp(q_rows, k, bias, path="chunked"), atol=1e-4, rtol=1e-5)
    key_bias = fake.biases[0]
    assert key_bias.stride()[1:3] == (0, 0)  # broadcast over heads and queries: no (B, H, Lq, Lk) copy


def test_efficient_bias_keeps_values_and_aligns_rows():
    g = torch.Generator().manual_seed(1)
    for lk in (1, 15, 16, 70):
        bias = torch.randn(2, 1, 1, lk, generator=g)
        m = am._efficient_bias(bias, 2, 4, 9, lk)
        assert m.shape == (2, 4, 9, lk) and m.stride(-1) == 1 and m.stride(0) % 16 == 0
        assert m.equal(bias.expand(2, 4, 9, lk))


def test_a_refusing_kernel_falls_back_to_chunked(monkeypatch):
    def refuse(*args):
        raise RuntimeError("no kernel for these inputs")

    monkeypatch.setattr(am, "_efficient_op", refuse)
    q, k, _ = _data()
    torch.testing.assert_close(am.row_logsumexp(q, k, path="cuda_efficient"), am.row_logsumexp(q, k, path="chunked"))

    def wrong_layout(q, k, v, bias):
        return None, torch.zeros(q.shape[0], q.shape[2], q.shape[1]), None, None

    monkeypatch.setattr(am, "_efficient_op", wrong_layout)
    torch.testing.assert_close(am.row_logsumexp(q, k, path="cuda_efficient"), am.row_logsumexp(q, k, path="chunked"))


def test_joint_probabilities_agree_on_every_path(monkeypatch):
    """attention_probs_at (what the capture calls) gives the same exact joint softmax on every log-sum-exp path,
    also with grouped-query keys (fewer key heads than query heads, as Omnigen2 passes them with enable_gqa)."""
    fake = FakeEfficientKernel()
    monkeypatch.setattr(am, "_efficient_op", fake)
    q, k, g = _data(b=2, h=4, lq=50, lk=50)
    cols = torch.arange(3, 20)
    bias = torch.log(torch.rand(2, 50, generator=g) + 0.5)
    results = []
    for path in ("cpu_flash", "cuda_efficient", "chunked"):
        monkeypatch.setattr(am, "lse_path", lambda device_type, p=path: p)
        results.append(am.attention_probs_at(q, k, 4, slice(20, 50), cols, bhld=True, key_bias=bias))
    for r in results[1:]:
        torch.testing.assert_close(r, results[0], atol=1e-5, rtol=1e-4)
    kv = k[:, :2]  # two key heads for four query heads
    gqa = am.attention_probs_at(q, kv, 4, slice(20, 50), cols, bhld=True)
    torch.testing.assert_close(gqa, am.attention_probs_at(q, kv.repeat_interleave(2, 1), 4, slice(20, 50), cols,
                                                          bhld=True))
