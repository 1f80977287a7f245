"""Attention Focus modules: pure tensor logic (no ComfyUI imports) plus thin ComfyUI adapters."""
