"""Test harness: in-process ComfyUI, random-weight model fixtures, server subprocess."""
