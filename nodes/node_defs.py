"""ComfyUI node classes (placeholder while the pack is assembled)."""

NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}
