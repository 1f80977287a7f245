"""What every model-family module shares: ``FamilySpec`` (what the hooks know of one diffusion-model class)
and small helpers on module structure and input shapes.

The family modules (``families_image``, ``families_video``) each hold detectors (module → spec, by
structure: attributes and submodules, so subclasses that keep a family's layout are found too), one
geometry function per family (the inputs of one model call → ``dit_layout.Geometry``, exact lengths) and,
where a second text input joins the prompt, its prompt length. ``families`` puts them together.
Imports nothing from ComfyUI.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .errors import AttentionFocusError
from .layer_spec import LayerKey


@dataclass(frozen=True)
class FamilySpec:
    """What the hooks need to know of one diffusion-model class."""

    name: str  # human name, e.g. "Flux"
    kind: str  # unet | dit
    layers: tuple[LayerKey, ...] = ()
    order: str = "txt_first"
    patch: int = 2
    registers: int = 0
    pad_multiple: int | None = None
    routed: bool = True  # its attention reaches optimized_attention_override by itself
    block_ids: bool = False  # ComfyUI (0.3.75+) puts block_type/block_index in transformer_options
    context_attr: str = ""  # module whose in_features is the expected text feature size
    options: frozenset[str] = frozenset()  # family-specific layout switches (see the family modules)
    text_pad_to: int = 0  # the model pads the prompt on the left to this many tokens (Flux.2)
    route: str = ""  # unrouted families: which object patch reaches the override ("hydit", "pixart")
    patch_t: int = 1  # temporal patch size (video models)

    def has(self, option: str) -> bool:
        return option in self.options


def count(mod, attr: str) -> int:
    """Length of a module list attribute (0 when absent)."""
    seq = getattr(mod, attr, None)
    return len(seq) if seq is not None else 0


def keys(kind: str, n: int, level: int, skip=()) -> list[LayerKey]:
    return [LayerKey(kind, i, 0, level) for i in range(n) if i not in skip]


def patch_of(dm, default: int = 2) -> tuple[int, int]:
    """(temporal, spatial) patch size of a diffusion model's ``patch_size`` attribute."""
    p = getattr(dm, "patch_size", default)
    if isinstance(p, (tuple, list)):
        return (int(p[0]) if len(p) == 3 else 1), int(p[-1])
    return 1, int(p)


def level_of(patch: int) -> int:
    """Resolution level of a patch size (2 → 1, 1 → 0, 16 → 4): the maps' upsampling is 2**level."""
    return max(0, int(patch).bit_length() - 1)


def length(t, dim: int = 1) -> int:
    return int(t.shape[dim]) if isinstance(t, torch.Tensor) and t.ndim > dim else 0


def ref_tokens(refs, patch: int, patch_t: int = 1) -> int:
    """Tokens of reference latents (Flux Kontext / Flux.2, Qwen-Image-Edit, Omnigen2): patch grids, padded."""
    total = 0
    for r in refs or []:
        if isinstance(r, torch.Tensor) and r.ndim >= 4:
            frames = math.ceil(int(r.shape[2]) / patch_t) if r.ndim == 5 else 1
            total += frames * math.ceil(int(r.shape[-2]) / patch) * math.ceil(int(r.shape[-1]) / patch)
    return total


def refuse(spec: FamilySpec, what: str) -> None:
    raise AttentionFocusError(
        f"Attention Focus does not support {what} on {spec.name} yet: its image tokens are not laid out as the "
        "pack knows (maps and reweighting would be wrong). Remove the Attention Focus nodes from this model's "
        "chain for this workflow")


def mro_names(obj) -> set[str]:
    """Class names of ``obj``'s type and its bases."""
    return {c.__name__ for c in type(obj).__mro__}
