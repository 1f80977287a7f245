"""Attention Focus: capture, visualise and reweight cross-attention per prompt token in ComfyUI."""

WEB_DIRECTORY = "./web"

if __package__:  # loaded as a package, as ComfyUI loads custom nodes
    from .nodes import compare_node
    from .nodes.node_defs import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
    from .nodes.viewer_routes import register as _register_routes

    NODE_CLASS_MAPPINGS = {**NODE_CLASS_MAPPINGS, **compare_node.NODE_CLASS_MAPPINGS}
    NODE_DISPLAY_NAME_MAPPINGS = {**NODE_DISPLAY_NAME_MAPPINGS, **compare_node.NODE_DISPLAY_NAME_MAPPINGS}

    _register_routes()  # the editor viewer's files; only when ComfyUI runs as a server
else:  # imported as a plain file (e.g. pytest probing a checkout folder whose name is no identifier)
    NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = {}, {}

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
