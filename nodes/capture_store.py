"""The capture store (running sums per prompt and layer) and the ATTENTION_MAPS handle.

Memory does not grow with steps: for each captured prompt (conditioning uuid) and layer the store keeps
one fp32 running sum of shape (batch, prompt_tokens, h, w) — the layer's grid. Total bytes::

    4 · batch · prompt_tokens · Σ_layers h_l · w_l      (per captured prompt; × 2 with branch "both")

e.g. SD1.5 at 512², 16 layers, 77 tokens: 4·77·(5·64² + 5·32² + 5·16² + 8²) = 8.3 MB per image.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from .layer_spec import LayerKey
from .token_table import TokenTable


@dataclass
class PromptInfo:
    """What the capture knows of one conditioning entry of a sampling run."""

    branch: str  # "positive" | "negative" | other guider key
    slot: int  # index within its branch
    length: int  # true context length (tokens)
    tokens: TokenTable | None


@dataclass
class MapSet:
    """Aggregated maps of one prompt: (batch, tokens, H_lat, W_lat) float32, plus labels and metadata."""

    maps: torch.Tensor
    tokens: TokenTable | None
    meta: dict[str, Any] = field(default_factory=dict)


class CaptureStore:
    """Running sums of attention probabilities per (prompt uuid, layer)."""

    def __init__(self) -> None:
        self.sums: dict[tuple[str, LayerKey], torch.Tensor] = {}
        self.members: dict[tuple[str, LayerKey], set[LayerKey]] = {}
        self.calls: dict[str, set[int]] = {}
        self.peak_bytes = 0

    def clear(self) -> None:
        self.sums.clear()
        self.members.clear()
        self.calls.clear()
        self.peak_bytes = 0

    def add(self, uid: str, layer: LayerKey, probs: torch.Tensor, hw: tuple[int, int], call_id: int,
            merge_as: LayerKey | None = None) -> None:
        """Add (batch, h·w, tokens) probabilities of one layer call to the running sum.

        ``merge_as`` sums layers that share one grid (all blocks of a DiT) into a single accumulator,
        so the store does not grow with the number of layers either.
        """
        h, w = hw
        b, n, t = probs.shape
        if n != h * w:
            raise ValueError(f"{n} image tokens do not form the {h}x{w} grid of layer {layer.name()}")
        grid = probs.transpose(1, 2).reshape(b, t, h, w)
        key = (uid, merge_as if merge_as is not None else layer)
        cur = self.sums.get(key)
        if cur is None or cur.shape != grid.shape:
            self.sums[key] = grid.clone()
            self.members[key] = set()
            self.peak_bytes = max(self.peak_bytes, self.nbytes())
        else:
            cur.add_(grid)
        self.members[key].add(layer)
        self.calls.setdefault(uid, set()).add(call_id)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.sums.values())

    def layers(self, uid: str) -> list[LayerKey]:
        """The captured layers of a prompt (members of merged accumulators included)."""
        return sorted({m for k, ms in self.members.items() if k[0] == uid for m in ms})

    def steps(self, uid: str) -> int:
        return len(self.calls.get(uid, ()))

    def aggregate(self, uid: str, latent_hw: tuple[int, int]) -> torch.Tensor:
        """Per-token maps of one prompt on the latent grid: mean over layers of each layer's sum."""
        parts = {k[1]: v for k, v in self.sums.items() if k[0] == uid}
        if not parts:
            raise ValueError("nothing was captured for this prompt")
        counts = {k[1]: max(1, len(self.members.get(k, ()))) for k in self.sums if k[0] == uid}
        return aggregate_layers(parts, latent_hw, counts)


def upsample_to_latent(grid: torch.Tensor, level: int, latent_hw: tuple[int, int]) -> torch.Tensor:
    """Bicubic-upsample a (B, T, h, w) level grid to the latent grid, clamped ≥ 0.

    A level-ℓ grid covers (h·2^ℓ, w·2^ℓ) latent cells (sizes were ceil-halved), so it is upsampled by
    exactly 2^ℓ and cropped top-left to the latent size: odd and non-square sizes stay aligned.
    """
    H, W = latent_hw
    h, w = grid.shape[-2:]
    if (h, w) == (H, W):
        return grid.clamp(min=0)
    f = 2 ** level
    th, tw = h * f, w * f
    if th < H or tw < W:  # unknown geometry (e.g. Deep Shrink): stretch to the latent
        th, tw = H, W
    up = F.interpolate(grid.float(), size=(th, tw), mode="bicubic", align_corners=False)
    return up[..., :H, :W].clamp(min=0)


def aggregate_layers(parts: dict[LayerKey, torch.Tensor], latent_hw: tuple[int, int],
                     counts: dict[LayerKey, int] | None = None) -> torch.Tensor:
    """Mean over layers of the upsampled, clamped per-layer sums → (B, T, H, W).

    ``counts`` gives how many layers a merged accumulator holds (1 when absent).
    """
    acc = None
    total = 0
    for layer, grid in parts.items():
        up = upsample_to_latent(grid, layer.level, latent_hw)
        acc = up if acc is None else acc + up
        total += (counts or {}).get(layer, 1)
    return acc / total


def word_maps(token_maps: torch.Tensor, groups: list[tuple[int, ...]]) -> torch.Tensor:
    """(B, T, H, W) → (B, len(groups), H, W): a word's map is the mean of its tokens' maps."""
    out = []
    for g in groups:
        idx = torch.tensor([p for p in g if p < token_maps.shape[1]], dtype=torch.long)
        if idx.numel() == 0:
            raise ValueError(f"positions {g} are outside the {token_maps.shape[1]} captured tokens")
        out.append(token_maps.index_select(1, idx.to(token_maps.device)).mean(1))
    return torch.stack(out, 1)


class AttentionMaps:
    """The ATTENTION_MAPS value passed between nodes.

    Live handles come from the capture node and are filled during sampling; loaded handles wrap a
    MapSet read from a file. ``result()`` gives the aggregated maps of a branch.
    """

    def __init__(self, settings: dict[str, Any] | None = None, mapset: MapSet | None = None) -> None:
        self.settings = dict(settings or {})
        self.store = CaptureStore()
        self.prompts: dict[str, PromptInfo] = {}
        self.latent_hw: tuple[int, int] | None = None
        self.batch = 0
        self.family = self.settings.get("family", "")
        self.runs = 0
        self.layer_names: list[str] = []
        self._loaded = mapset

    def __deepcopy__(self, memo):  # model_options are deep-copied by ModelPatcher.clone(): share us
        return self

    def start_run(self, prompts: dict[str, PromptInfo], latent_hw: tuple[int, int], batch: int) -> None:
        self.store.clear()
        self.prompts = prompts
        self.latent_hw = latent_hw
        self.batch = batch
        self.runs += 1

    def uid_for(self, branch: str) -> str | None:
        """The first captured prompt of a branch (``positive``/``negative``)."""
        cands = sorted((p.slot, u) for u, p in self.prompts.items() if p.branch == branch
                       and any(k[0] == u for k in self.store.sums))
        return cands[0][1] if cands else None

    def result(self, branch: str = "positive") -> MapSet:
        """Aggregated maps of ``branch``; ValueError with a clear reason if there are none."""
        if self._loaded is not None:
            return self._loaded
        if self.runs == 0:
            raise ValueError("no generation has run with this capture yet: connect the capture node's MODEL "
                             "output to the sampler and the decoded IMAGE of that sampler to this node")
        uid = self.uid_for(branch)
        if uid is None:
            have = sorted({p.branch for u, p in self.prompts.items() if any(k[0] == u for k in self.store.sums)})
            raise ValueError(f"no attention was captured for the {branch} prompt (captured: "
                             f"{', '.join(have) or 'nothing'}). Check the capture node's branch and step "
                             "window, and that its layers exist in this model")
        info = self.prompts[uid]
        maps = self.store.aggregate(uid, self.latent_hw)
        layers = self.store.layers(uid)
        meta = {
            "model_family": self.family,
            "latent_size": list(self.latent_hw),
            "steps": self.store.steps(uid),
            "layers": [k.name() for k in layers],
            "levels": [k.level for k in layers],
            "branch": branch,
            "head_reduction": self.settings.get("head_reduction", "mean"),
            "softmax": self.settings.get("softmax", "cross"),
            "store_bytes": self.store.nbytes(),
        }
        return MapSet(maps, info.tokens, meta)
