"""HunyuanDiT: its cross-attention passes no transformer_options, so the attention override never sees it.

An object patch on each ``attn2.forward`` (an exact re-implementation of ComfyUI's method that passes the
running model call's transformer_options on) routes the call through the override. Same operations in the
same order as ``comfy/ldm/hydit/attn_layers.py`` ``CrossAttention.forward`` (0.3.75; unchanged through
0.33.0), so the output is bit-identical (tested).
"""

from __future__ import annotations


def route_cross_attention(m, current, log) -> None:
    """Object-patch every ``attn2.forward`` of a HunyuanDiT clone ``m`` with a copy that reaches the override;
    ``current`` holds the running call's transformer_options (set by the APPLY_MODEL wrapper). Other unrouted
    families have their own route module (PixArt: ``pixart_route``)."""
    from .families import family_spec

    spec = family_spec(m.model.diffusion_model, m.model)
    if spec is not None and spec.route == "pixart":
        from .pixart_route import route_cross_attention as route_pixart

        route_pixart(m, current, log)
        return
    for i, block in enumerate(m.model.diffusion_model.blocks):
        attn = getattr(block, "attn2", None)
        if attn is None:
            continue
        key = f"diffusion_model.blocks.{i}.attn2.forward"
        if key in m.object_patches:  # another node patched it: leave theirs, and say so
            log.warning("Attention Focus: %s is patched by another node; that layer is not captured", key)
            continue
        m.add_object_patch(key, HyDiTCrossForward(attn, current))


class HyDiTCrossForward:
    """``CrossAttention.forward`` of HunyuanDiT with transformer_options passed to ``optimized_attention``."""

    def __init__(self, module, current) -> None:
        self.module = module
        self.current = current

    def __deepcopy__(self, memo):
        return self

    def __call__(self, x, y, freqs_cis_img=None):
        from comfy.ldm.hydit.attn_layers import apply_rotary_emb  # ComfyUI is importable at run time
        from comfy.ldm.modules.attention import optimized_attention

        a = self.module
        b, s1, _ = x.shape
        s2 = y.shape[1]
        q = a.q_proj(x).view(b, s1, a.num_heads, a.head_dim)
        kv = a.kv_proj(y).view(b, s2, 2, a.num_heads, a.head_dim)
        k, v = kv.unbind(dim=2)
        q = a.q_norm(q)
        k = a.k_norm(k)
        if freqs_cis_img is not None:
            q, _ = apply_rotary_emb(q, None, freqs_cis_img)
        q = q.transpose(-2, -3).contiguous()
        k = k.transpose(-2, -3).contiguous()
        v = v.transpose(-2, -3).contiguous()
        kwargs = {"skip_reshape": True, "attn_precision": a.attn_precision}
        to = self.current.to
        if to is not None:
            kwargs["transformer_options"] = to
        context = optimized_attention(q, k, v, a.num_heads, **kwargs)
        out = a.proj_drop(a.out_proj(context))
        return (out,)
