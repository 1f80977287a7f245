"""The pack's Python entry points that tests drive directly (the node classes call the same functions)."""

from attention_focus.nodes.capture import add_capture  # noqa: F401
from attention_focus.nodes.hook_state import STATE_KEY, TOKENS_KEY  # noqa: F401
from attention_focus.nodes.families import (expected_context_dim, model_family, model_layers,  # noqa: F401
                                            model_spec, unet_layers)
from attention_focus.nodes.reweight import add_reweight  # noqa: F401
