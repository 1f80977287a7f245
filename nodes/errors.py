"""The one error type of Attention Focus for problems the user can fix (shown by ComfyUI's error dialog).

Every message names the input at fault and says what to do. Modules with their own grammar keep a
subclass (``LayerSpecError``, ``WeightSpecError``, ``MapsFileError``, ``WordNotFound``), all ``ValueError``.
"""

from __future__ import annotations


class AttentionFocusError(ValueError):
    """A user-facing problem with a clear fix."""
