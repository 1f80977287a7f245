"""The demo model's text encoder: a random-weight CLIP-L, regenerated bit for bit from a seed, never stored.

CLIP-L has 123.65 M parameters (247 MB in fp16), too big to commit. Its weights follow the test harness's
CLIP rule (``tests/harness/fixtures.py``: per-key generator seeded by crc32 of the key; norms 1/0, biases 0,
token embeddings N(0, 1), position embeddings N(0, 0.1), other weights N(0, 0.02) with ``out_proj`` /
``fc2`` scaled down by sqrt(2 · 12), so the residual stream keeps each token's identity) with one difference:
the normal numbers are drawn in **float64** and then rounded to fp16. PyTorch's float32 ``randn`` has a
vectorised AVX2 path whose results differ in the last bits from its scalar path (measured: 712 of 10⁶ values
differ after rounding to fp16 between ATEN_CPU_CAPABILITY=default and avx2), so a float32 draw is not the
same on every machine; the float64 draw takes the same scalar path everywhere. The result is checked against
``CLIP_SHA256`` before it is used (``clip_state_dict``).

``encode`` runs captions through ComfyUI's own SD3 text-encoder object (``SD3ClipModel`` with CLIP-L alone,
what CheckpointLoaderSimple and CLIPLoader type "sd3" build), so training sees exactly the features that
sampling in ComfyUI sees: CLIP-L's penultimate hidden states, 77 tokens x 768 (the 4096-wide context ComfyUI
passes on is these 768 features followed by zeros).
"""

from __future__ import annotations

import hashlib
import json
import os
import zlib
from pathlib import Path

import torch

CLIP_SEED = 9
CLIP_SHA256 = "8dec687993cf89d68158b44cc09bfd33fe3bccfa7dc499e09eb2b6bbb81d65b6"
CLIP_LAYERS = 12


def _gen(seed: int, key: str) -> torch.Generator:
    # the harness's per-key seed rule (tests/harness/fixtures.py: _key_generator)
    return torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(key.encode())) & 0x7FFF_FFFF_FFFF)


def _value(key: str, shape: torch.Size, module, seed: int) -> torch.Tensor:
    name = key.rsplit(".", 1)[-1]
    if isinstance(module, torch.nn.LayerNorm):
        return torch.ones(shape) if name == "weight" else torch.zeros(shape)
    if name == "bias":
        return torch.zeros(shape)
    g = _gen(seed, key)
    if isinstance(module, torch.nn.Embedding):
        std = 1.0 if "token" in key else 0.1
    elif len(shape) >= 2:
        std = 0.02 / (2 * CLIP_LAYERS) ** 0.5 if key.endswith((".out_proj.weight", ".fc2.weight")) else 0.02
    else:
        std = 0.02
    return torch.randn(shape, generator=g, dtype=torch.float64) * std


def clip_config() -> dict:
    import comfy.sd1_clip

    with open(Path(comfy.sd1_clip.__file__).parent / "sd1_clip_config.json") as f:
        return json.load(f)


def state_dict_sha256(sd: dict[str, torch.Tensor]) -> str:
    """sha256 over the keys (sorted) and their fp16 bytes."""
    h = hashlib.sha256()
    for k in sorted(sd):
        h.update(k.encode())
        h.update(sd[k].to(torch.float16).contiguous().numpy().tobytes())
    return h.hexdigest()


def clip_state_dict(seed: int = CLIP_SEED, check: bool = True) -> dict[str, torch.Tensor]:
    """The CLIP-L text model (``text_model.*`` + ``text_projection.weight``), fp16, regenerated from ``seed``.

    With ``check`` (the default seed only) the result must match ``CLIP_SHA256``: a RuntimeError says so
    otherwise (a different PyTorch random-number algorithm would change it).
    """
    import comfy.clip_model
    import comfy.ops

    meta = comfy.clip_model.CLIPTextModel(clip_config(), torch.float16, "meta", comfy.ops.disable_weight_init)
    modules = dict(meta.named_modules())
    sd = {}
    for key, t in meta.state_dict(keep_vars=True).items():
        owner = modules.get(key.rsplit(".", 1)[0])
        sd[key] = _value(key, t.shape, owner, seed).to(torch.float16).contiguous()
    if check and seed == CLIP_SEED:
        got = state_dict_sha256(sd)
        if got != CLIP_SHA256:
            raise RuntimeError(f"the regenerated CLIP-L text encoder has sha256 {got}, expected {CLIP_SHA256}: this "
                               f"PyTorch ({torch.__version__}) draws different random numbers; the demo model's "
                               "text encoder cannot be reproduced here")
    return sd


def cache_dir() -> Path:
    d = Path(os.environ.get("ATTENTION_FOCUS_CACHE", Path.home() / ".cache" / "attention-focus")) / "demo-model"
    d.mkdir(parents=True, exist_ok=True)
    return d


def load_clip(sd: dict[str, torch.Tensor] | None = None):
    """ComfyUI's CLIP object for the SD3 family with this CLIP-L alone (what CLIPLoader type "sd3" gives)."""
    import comfy.sd

    sd = sd if sd is not None else clip_state_dict()
    return comfy.sd.load_text_encoder_state_dicts([sd], clip_type=comfy.sd.CLIPType.SD3)


def encode(clip, captions: list[str], batch: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """CLIP-L features of ``captions`` as ComfyUI's SD3 text encoder computes them: (N, 77, 768) penultimate
    hidden states (the context; ComfyUI pads them with zeros to 4096 features) and (N, 768) pooled outputs
    (ComfyUI's ``pooled_output`` is these followed by 1280 zeros for the missing CLIP-G), float32.

    Several captions go through CLIP-L as one batch, as ComfyUI encodes the 77-token chunks of one prompt
    (``SDClipModel.encode``); a caption must fit in one chunk.
    """
    ctx, pooled = [], []
    model = clip.cond_stage_model
    with torch.inference_mode():
        for i in range(0, len(captions), batch):
            part = captions[i:i + batch]
            toks = [clip.tokenize(c)["l"] for c in part]
            if any(len(t) != 1 for t in toks):
                raise ValueError("a caption is longer than one 77-token chunk")
            model.reset_clip_options()
            clip.load_model()
            z, p = model.clip_l.encode([[t for t, _ in tk[0]] for tk in toks])
            ctx.append(z.float())
            pooled.append(p.float())
    return torch.cat(ctx), torch.cat(pooled)


def tokenizer():
    """ComfyUI's SD3 tokenizer (what ``clip.tokenizer`` is for this text encoder)."""
    import comfy.text_encoders.sd3_clip

    return comfy.text_encoders.sd3_clip.SD3Tokenizer()


def token_positions(tokenizer, caption: str) -> list[int]:
    """Token position (in the 77-token context) of each word of ``caption`` (split at spaces and commas);
    ``tokenizer``: ``clip.tokenizer`` or ``tokenizer()``."""
    from .scenes import caption_words

    ids = [t for t, _ in tokenizer.tokenize_with_weights(caption)["l"][0]]
    tok = tokenizer.clip_l.tokenizer
    pos, out = 1, []
    for w in caption.replace(",", " , ").split():
        n = len(tok(w)["input_ids"]) - 2
        if w != ",":
            out.append(pos)
        pos += n
    if len(out) != len(caption_words(caption)) or pos >= len(ids) or ids[pos] != 49407:
        raise ValueError(f"could not place the words of {caption!r} on its tokens")
    return out
