"""PixArt α/Σ: its cross-attention passes no transformer_options (nor does ``PixArtMS.forward`` hand them to
its blocks), so the attention override never sees it.

As for HunyuanDiT (``hydit_route``), an object patch on each ``blocks.{i}.cross_attn.forward`` — an exact
re-implementation of ComfyUI's ``MultiHeadCrossAttention.forward`` that passes the running model call's
transformer_options on — routes the call through the override. Same operations in the same order as
``comfy/ldm/pixart/blocks.py`` (0.3.75; identical in 0.8.0 and 0.33.0), so the output is bit-identical (tested).
The self-attention (``AttentionKVCompress``) stays unrouted: it is image-only.
"""

from __future__ import annotations


def route_cross_attention(m, current, log) -> None:
    """Object-patch every ``cross_attn.forward`` of a PixArt clone ``m`` with a copy that reaches the override;
    ``current`` holds the running call's transformer_options (set by the APPLY_MODEL wrapper)."""
    for i, block in enumerate(m.model.diffusion_model.blocks):
        attn = getattr(block, "cross_attn", None)
        if attn is None:
            continue
        key = f"diffusion_model.blocks.{i}.cross_attn.forward"
        if key in m.object_patches:  # another node patched it: leave theirs, and say so
            log.warning("Attention Focus: %s is patched by another node; that layer is not captured", key)
            continue
        m.add_object_patch(key, PixArtCrossForward(attn, current))


class PixArtCrossForward:
    """``MultiHeadCrossAttention.forward`` of PixArt with transformer_options passed to ``optimized_attention``."""

    def __init__(self, module, current) -> None:
        self.module = module
        self.current = current

    def __deepcopy__(self, memo):
        return self

    def __call__(self, x, cond, mask=None):
        from comfy.ldm.modules.attention import optimized_attention  # ComfyUI is importable at run time

        a = self.module
        B, N, C = x.shape
        q = a.q_linear(x).view(1, -1, a.num_heads, a.head_dim)
        kv = a.kv_linear(cond).view(1, -1, 2, a.num_heads, a.head_dim)
        k, v = kv.unbind(2)
        assert mask is None  # as ComfyUI's own method: PixArtMS never passes one
        kwargs = {"mask": None}
        to = self.current.to
        if to is not None:
            kwargs["transformer_options"] = to
        x = optimized_attention(q.view(B, -1, C), k.view(B, -1, C), v.view(B, -1, C), a.num_heads, **kwargs)
        x = a.proj(x)
        x = a.proj_drop(x)
        return x
