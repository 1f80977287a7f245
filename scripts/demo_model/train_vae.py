"""Stage "vae": the latent space and the 16-channel TAESD that decodes (and encodes) it.

The latent space is fixed, not learned: each 8x8-pixel cell of the image, 2x2 average-pooled to 4x4x3 = 48
values, is projected onto the 16 principal components of such cells in training renders (``PcaLatent``). For
flat-coloured shapes this keeps colour and edge position, and it costs nothing to compute for the training
images (running a TAESD encoder over thousands of 128-px renders would take a large part of the CPU budget).
The TAESD encoder's weights are *set* so that it computes exactly this projection (``set_encoder``: its
stride-2 convolutions average-pool and then rearrange space into channels, its residual blocks pass their
non-negative input through, its last convolution applies the projection), so VAEEncode in ComfyUI gives the
same latent space. The TAESD decoder learns to turn these latents back into images, on small crops (TAESD is
fully convolutional, 8x up) and on slightly noised latents, so that it tolerates the sampler's imperfect ones.

In ComfyUI the MMDiT sees the encoder output divided by ``vae_scale / 1.5305`` (its SD3 latent format undoes
the SD3 values 1.5305 / 0.0609; the checkpoint's ``vae_scale`` is 1.5305 · ``model_std``), i.e. the projection
at unit variance, and the decoder gets the MMDiT's latent times ``model_std``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import scenes as S
from .dataset import random_crops, render_batch
from .loop import run_loop
from .model import build_taesd

N_LATENT = 16


class PcaLatent:
    """latent_i = w_i · (cells − mean) / scale_i, cells = 4x4 blocks of the 2x2-average-pooled image (48 values).

    ``scale_i`` puts the 99.9th percentile of |latent_i| at 3: TAESD's decoder squashes its input with
    ``3·tanh(x/3)``, so values beyond about ±3 would lose their information. These are the TAESD's units;
    the MMDiT sees the latent divided by its overall standard deviation ``model_std`` (unit variance, the
    scale the flow schedule assumes), which the checkpoint's ``vae_scale`` accounts for (see ``model.export``).
    """

    def __init__(self, mean: torch.Tensor, components: torch.Tensor, scale: torch.Tensor,
                 model_std: float = 1.0) -> None:
        self.mean, self.components, self.scale, self.model_std = mean, components, scale, float(model_std)

    @staticmethod
    def cells(images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) → (B, 48, H/8, W/8)."""
        return F.pixel_unshuffle(F.avg_pool2d(images, 2), 4)

    @classmethod
    def fit(cls, seed: int, n_images: int = 512) -> PcaLatent:
        rng = np.random.default_rng(seed)
        imgs, _ = render_batch([S.sample_scene(rng, "train") for _ in range(n_images)])
        x = cls.cells(imgs).permute(0, 2, 3, 1).reshape(-1, 48).double()
        mean = x.mean(0)
        evals, evecs = torch.linalg.eigh(torch.cov((x - mean).T))
        comps = evecs[:, evals.argsort(descending=True)[:N_LATENT]].T  # (16, 48)
        sign = torch.sign(comps.gather(1, comps.abs().argmax(1, keepdim=True)))  # deterministic signs
        comps = comps * sign
        z = ((x - mean) @ comps.T).float()
        pick = torch.randperm(len(z), generator=torch.Generator().manual_seed(seed))[:200_000]
        scale = torch.quantile(z.abs()[pick], 0.999, dim=0) / 3
        return cls(mean.float(), comps.float(), scale, float((z / scale).std()))

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        c = self.cells(images)
        w = (self.components / self.scale[:, None])[:, :, None, None]
        return F.conv2d(c, w, -(self.components @ self.mean) / self.scale)

    def state(self) -> dict:
        return {"mean": self.mean, "components": self.components, "scale": self.scale, "model_std": self.model_std}

    @classmethod
    def from_state(cls, st: dict) -> PcaLatent:
        return cls(st["mean"], st["components"], st["scale"], st["model_std"])


def set_encoder(taesd, pca: PcaLatent) -> None:
    """Make TAESD's encoder compute ``pca.encode`` exactly (for inputs >= 0, i.e. images)."""
    enc = list(taesd.taesd_encoder)
    with torch.no_grad():
        for mod in enc:
            for p in mod.parameters():
                p.zero_()
        for c in range(3):  # conv 0: copy RGB (centre tap)
            enc[0].weight[c, c, 1, 1] = 1.0
        for c in range(3):  # conv 2 (stride 2): 2x2 average pool
            enc[2].weight[c, c, 1:3, 1:3] = 0.25
        for c in range(3):  # conv 6: space to depth, channel (c, di, dj)
            for di in range(2):
                for dj in range(2):
                    enc[6].weight[c * 4 + di * 2 + dj, c, 1 + di, 1 + dj] = 1.0
        for ch in range(12):  # conv 10: space to depth again, channel (ch, ei, ej)
            for ei in range(2):
                for ej in range(2):
                    enc[10].weight[ch * 4 + ei * 2 + ej, ch, 1 + ei, 1 + ej] = 1.0
        # channel (c, di, dj, ei, ej) holds pooled pixel (4i + 2ei + di, 4j + 2ej + dj): pixel_unshuffle index
        w = pca.components / pca.scale[:, None]
        for c in range(3):
            for di in range(2):
                for dj in range(2):
                    for ei in range(2):
                        for ej in range(2):
                            src = ((c * 4 + di * 2 + dj) * 4) + ei * 2 + ej
                            enc[14].weight[:, src, 1, 1] = w[:, c * 16 + (2 * ei + di) * 4 + (2 * ej + dj)]
        enc[14].bias.copy_(-(pca.components @ pca.mean) / pca.scale)
    for p in taesd.taesd_encoder.parameters():
        p.requires_grad_(False)


def train_vae(work: Path, pca: PcaLatent, steps: int, crop: int, batch: int, lr: float, seed: int
              ) -> tuple[torch.nn.Module, float]:
    taesd = build_taesd(seed)
    set_encoder(taesd, pca)
    params = list(taesd.taesd_decoder.parameters())
    opt = torch.optim.Adam(params, lr=lr)
    rng = np.random.default_rng(seed + 101)
    gen = torch.Generator().manual_seed(seed + 102)

    def lr_at(step: int) -> float:
        warm = min(1.0, (step + 1) / 50)
        return lr * warm * (0.05 + 0.95 * 0.5 * (1 + np.cos(np.pi * step / steps)))

    def step_fn(step: int) -> dict[str, float]:
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        x = random_crops(rng, batch, crop)
        z = pca.encode(x)
        y = taesd.taesd_decoder(z + 0.03 * torch.randn(z.shape, generator=gen))
        rec = F.mse_loss(y, x) + 0.5 * F.l1_loss(y, x)
        opt.zero_grad(set_to_none=True)
        rec.backward()
        opt.step()
        return {"rec": rec.item()}

    def get_state():
        return {"taesd": taesd.state_dict(), "opt": opt.state_dict(), "rng": rng.bit_generator.state,
                "gen": gen.get_state()}

    def set_state(st):
        taesd.load_state_dict(st["taesd"])
        opt.load_state_dict(st["opt"])
        rng.bit_generator.state = st["rng"]
        gen.set_state(st["gen"])

    seconds = run_loop("vae", work, steps, step_fn, get_state, set_state, log_every=10, position=1)
    taesd.eval()
    return taesd, seconds


@torch.inference_mode()
def decode_latents(taesd, z: torch.Tensor, batch: int = 32) -> torch.Tensor:
    return torch.cat([taesd.taesd_decoder(z[i:i + batch]).clamp(0, 1) for i in range(0, len(z), batch)])
