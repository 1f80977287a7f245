"""Stage "dit": train the MMDiT by rectified flow on the cached latents and CLIP-L features.

Exactly what ComfyUI's SD3 sampling computes (``model_type`` FLOW, ``ModelSamplingDiscreteFlow`` shift 3):
the model gets ``x_σ = σ·ε + (1 − σ)·x0`` and timestep ``σ·1000`` and is trained to output ``ε − x0`` (ComfyUI
then takes ``x0 = x_σ − σ·out``). σ is drawn as SD3 trains it, a logit-normal time shifted by 3 (so training
covers the σ range the sampler visits). 10 % of the captions are replaced by the empty prompt for
classifier-free guidance.

Optional attention grounding (``ground > 0``, a TokenCompose-style token loss, Wang et al. CVPR 2024): in every
joint block, for the caption tokens of the chosen word classes, the image queries' attention to that token
(the model's own softmax over all keys, averaged over heads) should fall inside the object the word names:
``(1 − Σ_in A / Σ A)²``, averaged over those tokens and the blocks. It only asks where a word's attention
goes, not how much there is; the model's attention stays ComfyUI's ordinary joint attention. That term is
met by a single peak inside the object; the pixel term (``ground_pixel`` > 0, after TokenCompose's pixel
loss) also asks the map to cover it: the map divided by its maximum should equal the object's patch
coverage, ``mean((A / max A − coverage)²)`` — what a thresholded heat map (DAAM) is judged by.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .loop import run_loop
from .model import POOLED_WIDTH, build_mmdit

SHIFT = 3.0


class AttentionProbe:
    """``optimized_attention_override`` for training: plain softmax attention that also keeps, per joint
    block, the image queries' head-mean probabilities over the first ``n_txt`` (text) keys."""

    def __init__(self, n_txt: int = 77) -> None:
        self.n_txt = n_txt
        self.maps: list[torch.Tensor] = []

    def __call__(self, func, q, k, v, heads, *args, **kwargs):
        b, n, dim = q.shape
        d = dim // heads
        qh, kh, vh = (t.view(b, n, heads, d).transpose(1, 2) for t in (q, k, v))
        p = (qh @ kh.transpose(-1, -2) * d ** -0.5).softmax(-1)
        self.maps.append(p[:, :, self.n_txt:, :self.n_txt].mean(1))
        return (p @ vh).transpose(1, 2).reshape(b, n, dim)


def ground_loss(maps: list[torch.Tensor], target: torch.Tensor, sup: torch.Tensor, pixel: float = 0.0
                ) -> torch.Tensor:
    """TokenCompose token loss (+ ``pixel`` × the coverage term): maps (B, n_img, T) per block, target
    (B, n_img, T) coverage, sup (B, T)."""
    n = sup.sum().clamp(min=1)
    total = 0.0
    for a in maps:
        ratio = (a * target).sum(1) / (a.sum(1) + 1e-8)
        total = total + (((1 - ratio) ** 2) * sup).sum() / n
        if pixel > 0:
            err = ((a / (a.amax(1, keepdim=True) + 1e-8) - target) ** 2).mean(1)
            total = total + pixel * (err * sup).sum() / n
    return total / len(maps)


def sample_sigmas(n: int, gen: torch.Generator) -> torch.Tensor:
    t = torch.sigmoid(torch.randn(n, generator=gen))
    return SHIFT * t / (1 + (SHIFT - 1) * t)


def train_dit(work: Path, data: dict, depth: int, steps: int, batch: int, lr: float, ground: float, seed: int,
              ema_decay: float = 0.999, p_uncond: float = 0.1, pooled: bool = True,
              ground_pixel: float = 0.0) -> tuple[torch.nn.Module, float]:
    """``data``: latents (N, 16, h, w), image_caption (N,) caption index, context (C + 1, 77, 768) and pooled
    (C + 1, 768) with the empty prompt last, target (N, n_img, 77), sup (N, 77). Returns (EMA model, seconds)."""
    model = build_mmdit(depth, data["context"].shape[-1], seed, adm=POOLED_WIDTH if pooled else None)
    model.train()
    ema = copy.deepcopy(model).eval()
    for p in ema.parameters():
        p.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.99), weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed + 201)
    probe = AttentionProbe(data["context"].shape[1])
    lat, cap, ctx = data["latents"], data["image_caption"], data["context"]
    target, sup = data["target"], data["sup"]
    n_img, empty = len(lat), len(ctx) - 1

    def lr_at(step: int) -> float:
        warm = min(1.0, (step + 1) / 300)
        decay_from = int(steps * 0.6)
        frac = max(0.0, (step - decay_from) / max(1, steps - decay_from))
        return lr * warm * (0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * frac)))

    def step_fn(step: int) -> dict[str, float]:
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        idx = torch.randint(n_img, (batch,), generator=gen)
        x0 = lat[idx].float()
        drop = torch.rand(batch, generator=gen) < p_uncond
        ci = torch.where(drop, torch.full_like(cap[idx], empty), cap[idx])
        context = ctx[ci].float()
        y = F.pad(data["pooled"][ci].float(), (0, POOLED_WIDTH - data["pooled"].shape[-1])) if pooled else None
        s = sample_sigmas(batch, gen)
        eps = torch.randn(x0.shape, generator=gen)
        xt = s[:, None, None, None] * eps + (1 - s[:, None, None, None]) * x0
        probe.maps = []
        out = model(xt, s * 1000, context=context, y=y,
                    transformer_options={"optimized_attention_override": probe})
        mse = F.mse_loss(out, eps - x0)
        loss = mse
        vals = {"mse": mse.item()}
        if ground > 0:
            sp = sup[idx] & ~drop[:, None]
            g = ground_loss(probe.maps, target[idx].float(), sp.float(), ground_pixel)
            loss = loss + ground * g
            vals["ground"] = g.item()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        d = min(ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), model.parameters(), strict=True):
                pe.lerp_(pm, 1 - d)
        vals["lr"] = lr_at(step)
        return vals

    def get_state():
        return {"model": model.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(),
                "gen": gen.get_state()}

    def set_state(st):
        model.load_state_dict(st["model"])
        ema.load_state_dict(st["ema"])
        opt.load_state_dict(st["opt"])
        gen.set_state(st["gen"])

    seconds = run_loop("dit", work, steps, step_fn, get_state, set_state)
    return ema, seconds
