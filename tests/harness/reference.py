"""Independent references for the capture tests: an attention override that records q/k of every UNet
cross-attention call (no Attention Focus code), and DAAM's aggregation computed from it in float64."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


class UnetRecorder:
    """An override that records q/k, layer, grid and batch layout of every UNet cross-attention call."""

    def __init__(self):
        self.calls = []

    def __deepcopy__(self, memo):  # model clones keep recording into this one list
        return self

    def __call__(self, func, *args, **kwargs):
        q, k = args[0], args[1]
        heads = args[3] if len(args) > 3 else kwargs["heads"]
        to = kwargs["transformer_options"]
        if k.shape[1] != q.shape[1]:  # cross-attention (sizes here never make h*w == 77)
            self.calls.append({
                "q": q.detach().double().clone(), "k": k.detach().double().clone(), "heads": heads,
                "block": (to["block"][0], to["block"][1], to["block_index"]),
                "hw": tuple(to["activations_shape"][-2:]), "cou": list(to["cond_or_uncond"]),
                "uuids": [str(u) for u in to.get("uuids", [])],
            })
        return func(*args, **kwargs)


def naive_unet_maps(calls, latent_hw, batch, chunk=None):
    """DAAM aggregation in float64 from recorded calls: per layer the sum over calls of the head-mean
    softmax, each layer bicubically upsampled by its power of two to ``latent_hw`` (cropped), clamped ≥ 0,
    mean over layers.

    ``chunk(call) -> index or None`` picks the batch chunk of a call (default: the positive one, cond_or_uncond
    0); calls where it gives None are skipped.
    """
    H, W = latent_hw
    per_layer = {}
    for c in calls:
        q, k, heads = c["q"], c["k"], c["heads"]
        n_chunks = len(c["cou"])
        i = c["cou"].index(0) if chunk is None else chunk(c)
        if i is None:
            continue
        b = q.shape[0] // n_chunks
        q, k = q[i * b:(i + 1) * b], k[i * b:(i + 1) * b]
        d = q.shape[-1] // heads
        qh = q.view(b, -1, heads, d).permute(0, 2, 1, 3)
        kh = k.view(b, -1, heads, d).permute(0, 2, 1, 3)
        p = torch.softmax(qh @ kh.transpose(-1, -2) / math.sqrt(d), -1).mean(1)  # b, hw, L
        h, w = c["hw"]
        grid = p.transpose(1, 2).reshape(b, -1, h, w)
        per_layer[c["block"]] = per_layer.get(c["block"], 0) + grid
    ups = []
    for grid in per_layer.values():
        h, w = grid.shape[-2:]
        f = 1
        while -(-H // f) != h or -(-W // f) != w:
            f *= 2
        up = F.interpolate(grid, size=(h * f, w * f), mode="bicubic", align_corners=False)[..., :H, :W]
        ups.append(up.clamp(min=0))
    return torch.stack(ups).mean(0)
