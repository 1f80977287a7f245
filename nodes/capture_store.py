"""The capture store (running sums per prompt, region and layer), the immutable result of one sampling run
(``MapsRecord``) and the ATTENTION_MAPS handle.

Memory does not grow with steps: for each captured prompt (conditioning uuid), region and layer the store
keeps one fp32 running sum of shape (batch, prompt_tokens, h, w) — the layer's grid. Total bytes::

    4 · batch · prompt_tokens · Σ_layers h_l · w_l      (per captured prompt; × 2 with branch "both")

e.g. SD1.5 at 512², 16 layers, 77 tokens: 4·77·(5·64² + 5·32² + 5·16² + 8²) = 8.3 MB per image. A video
(frames F > 1) also keeps each frame: + 4 · batch · prompt_tokens · F · h · w (h × w: the patch grid).

Regions: a prompt with an area (ConditioningSetArea…) is evaluated on a crop of the latent; its maps are
aggregated on that crop and placed at its offset, zero elsewhere, and multiplied by the conditioning's mask
(ConditioningSetMask) where it has one. A prompt evaluated on several regions gets, at each latent cell, the
mean over the regions that cover it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

from .errors import AttentionFocusError
from .layer_spec import LayerKey, check_step_window
from .maps_words import merge_prompts, positional_segment, select_words, word_maps  # noqa: F401 (re-exported)
from .token_table import TokenTable

METHODS = ("fast", "daam")
HISTORY_GROUPS = ("layer", "block", "level")

HEAD_REDUCTIONS = ("mean", "max")
SOFTMAXES = ("all", "text")


@dataclass(frozen=True)
class CaptureSettings:
    """What one capture node records; validated once, written into every maps file.

    ``softmax`` (DiTs): ``all`` = the model's own joint softmax over text and image keys (exact), ``text`` =
    renormalised over the prompt's text keys; UNet captures report ``cross`` (their softmax is over text).
    """

    layers: str = "all"
    branch: str = "positive"  # positive | negative | both
    start: float = 0.0
    end: float = 1.0
    head_reduction: str = "mean"
    softmax: str = "all"
    method: str = "fast"  # fast | daam (see daam.py)
    history_mb: float = 0.0  # > 0: keep a history of the maps per step and layer group within this budget
    history_stride: int = 1  # evaluations per history frame (at least; the budget may ask for more)
    history_groups: str = "layer"  # layer | block | level
    influence_words: str = ""  # words whose influence is measured (empty: none)
    influence_steps: int = 0  # at how many steps (evenly spread over the schedule)

    def __post_init__(self) -> None:
        check_step_window(self.start, self.end)
        if self.method not in METHODS:
            raise AttentionFocusError(f"method must be fast or DAAM, not {self.method!r}")
        if self.method == "daam" and self.head_reduction != "mean":
            raise AttentionFocusError("method DAAM averages the heads' maps after resizing them: use head_reduction "
                                      "mean (or method fast for max)")
        if not (self.history_mb >= 0) or self.history_mb > 1e6:
            raise AttentionFocusError(f"history_mb must be from 0 (off) to 1000000, not {self.history_mb!r}")
        if not isinstance(self.history_stride, int) or self.history_stride < 1:
            raise AttentionFocusError(f"history_stride must be a whole number ≥ 1, not {self.history_stride!r}")
        if self.history_groups not in HISTORY_GROUPS:
            raise AttentionFocusError(f"history_layers must be one of {', '.join(HISTORY_GROUPS)}, not "
                                      f"{self.history_groups!r}")
        if not isinstance(self.influence_steps, int) or not 0 <= self.influence_steps <= 1000:
            raise AttentionFocusError(f"influence_steps must be a whole number from 0 to 1000, not "
                                      f"{self.influence_steps!r}")
        if self.branch not in ("positive", "negative", "both"):
            raise AttentionFocusError(f"branch must be positive, negative or both, not {self.branch!r}")
        if self.head_reduction not in HEAD_REDUCTIONS:
            raise AttentionFocusError(f"head_reduction must be mean or max, not {self.head_reduction!r}")
        if self.softmax not in SOFTMAXES:
            raise AttentionFocusError(f"dit_softmax must be 'all keys' or 'text keys', not {self.softmax!r}")

    @property
    def branches(self) -> set[str]:
        return {"positive", "negative"} if self.branch == "both" else {self.branch}

    def meta(self, kind: str) -> dict[str, Any]:
        """The settings as maps-file metadata (``kind``: ``unet`` or ``dit``)."""
        return {"head_reduction": self.head_reduction, "softmax": self.softmax if kind == "dit" else "cross",
                "capture_layers": self.layers, "window": [self.start, self.end], "method": self.method}


class Region(NamedTuple):
    """Where a prompt acts on the latent: (height, width, top, left) in latent cells."""

    h: int
    w: int
    y: int
    x: int


@dataclass
class PromptInfo:
    """What the capture knows of one conditioning entry of a sampling run."""

    branch: str  # "positive" | "negative" | other guider key
    slot: int  # index within its branch
    length: int  # true context length (tokens)
    tokens: TokenTable | None
    note: str = ""  # why ``tokens`` is None (the conditioning was changed after encoding, …)
    regions: list[tuple[Region | None, torch.Tensor | None]] = field(default_factory=list)  # (area, mask)
    signature: list[float] | None = None  # prompt_signature of the conditioning tensor


@dataclass
class MapSet:
    """Aggregated maps of one branch: (batch, tokens, H, W) float32 (H, W: the latent grid, or DAAM's reference
    grid), plus labels and metadata. ``extra`` holds the optional analyses of the run, each described by the
    metadata entry of the same name: ``history`` (history.py), ``frames`` (video: per-frame maps,
    (batch, frames, tokens, H, W)), ``influence`` (influence.py)."""

    maps: torch.Tensor
    tokens: TokenTable | None
    meta: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, torch.Tensor] = field(default_factory=dict)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.maps, *self.extra.values()))


class CaptureStore:
    """Running sums of attention probabilities per (prompt uuid, region, layer)."""

    def __init__(self) -> None:
        self.sums: dict[tuple[str, Region | None, LayerKey], torch.Tensor] = {}
        self.members: dict[tuple[str, Region | None, LayerKey], set[LayerKey]] = {}
        self.evaluations: dict[str, set[int]] = {}
        self.heads: dict[tuple[str, Region | None, LayerKey], int] = {}  # per-head sums (method DAAM)
        self.frame_sums: dict[str, torch.Tensor] = {}  # videos: per prompt (B, frames, T, h, w) over all layers
        self.peak_bytes = 0

    def add(self, uid: str, layer: LayerKey, probs: torch.Tensor, hw: tuple[int, int], evaluation: int,
            merge_as: LayerKey | None = None, region: Region | None = None, heads: int = 1) -> None:
        """Add (batch, h·w, tokens) probabilities of one layer call to the running sum.

        ``evaluation`` numbers the sampler's model evaluation the call belongs to; ``merge_as`` sums layers
        that share one grid (all blocks of a DiT) into a single accumulator, so the store does not grow
        with the number of layers either; ``region`` is the prompt's area (None: the whole latent); ``heads`` > 1:
        ``probs`` holds each image's heads one after the other (B·heads rows), summed per head (method DAAM).
        """
        h, w = hw
        b, n, t = probs.shape
        if n != h * w:
            raise ValueError(f"{n} image tokens do not form the {h}x{w} grid of layer {layer.name()}")
        grid = probs.transpose(1, 2).reshape(b, t, h, w)
        key = (uid, region, merge_as if merge_as is not None else layer)
        cur = self.sums.get(key)
        if cur is None or cur.shape != grid.shape:
            self.sums[key] = grid.clone()
            self.members[key] = set()
            self.heads[key] = heads
            self.peak_bytes = max(self.peak_bytes, self.nbytes())
        else:
            cur.add_(grid)
        self.members[key].add(layer)
        self.evaluations.setdefault(uid, set()).add(evaluation)

    def add_frames(self, uid: str, probs: torch.Tensor, hw: tuple[int, int]) -> None:
        """Videos: add one layer call's (B, frames, h·w, tokens) probabilities to the prompt's per-frame sum."""
        b, f, n, t = probs.shape
        grid = probs.transpose(2, 3).reshape(b, f, t, *hw)
        cur = self.frame_sums.get(uid)
        if cur is None or cur.shape != grid.shape:
            self.frame_sums[uid] = grid.clone()
            self.peak_bytes = max(self.peak_bytes, self.nbytes())
        else:
            cur.add_(grid)

    def frame_maps(self, uid: str) -> torch.Tensor | None:
        """A video prompt's per-frame maps (B, frames, T, h, w): the per-frame sums divided by the layers summed."""
        cur = self.frame_sums.get(uid)
        if cur is None:
            return None
        layers = sum(len(ms) for k, ms in self.members.items() if k[0] == uid and k[1] is None)
        return cur / max(1, layers)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.sums.values(), *self.frame_sums.values()))

    def uids(self) -> list[str]:
        return list(dict.fromkeys(k[0] for k in self.sums))

    def layers(self, uid: str) -> list[LayerKey]:
        """The captured layers of a prompt (members of merged accumulators included)."""
        return sorted({m for k, ms in self.members.items() if k[0] == uid for m in ms})

    def steps(self, uid: str) -> int:
        """Model evaluations that contributed to a prompt's maps."""
        return len(self.evaluations.get(uid, ()))

    def aggregate(self, uid: str, latent_hw: tuple[int, int],
                  masks: dict[Region | None, torch.Tensor | None] | None = None) -> torch.Tensor:
        """Per-token maps of one prompt on the latent grid → (B, T, H, W).

        Per region: mean over layers of each layer's upsampled, clamped sum; placed at the region's offset
        (times its mask, if any); where several regions cover a cell, their mean.
        """
        regions = list(dict.fromkeys(k[1] for k in self.sums if k[0] == uid))
        if not regions:
            raise ValueError("nothing was captured for this prompt")
        H, W = latent_hw
        acc = cover = None
        for region in regions:
            parts = {k[2]: v for k, v in self.sums.items() if k[0] == uid and k[1] == region}
            counts = {k[2]: max(1, len(self.members[k])) for k in self.sums if k[0] == uid and k[1] == region}
            size = latent_hw if region is None else (region.h, region.w)
            local = aggregate_layers(parts, size, counts)
            placed, covered = place_region(local, region, latent_hw, (masks or {}).get(region))
            acc = placed if acc is None else acc + placed
            cover = covered if cover is None else cover + covered
        if len(regions) == 1:
            return acc
        return acc / cover.clamp(min=1)

    def aggregate_daam(self, uid: str, side: int) -> torch.Tensor:
        """DAAM's maps of one prompt from its per-head sums → (B, T, side, side) (``daam.aggregate``)."""
        from .daam import aggregate

        keys = [k for k in self.sums if k[0] == uid]
        return aggregate({k[2]: self.sums[k] for k in keys}, {k[2]: self.heads.get(k, 1) for k in keys}, side)


def place_region(maps: torch.Tensor, region: Region | None, latent_hw: tuple[int, int],
                 mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Put (B, T, h, w) region maps into a zero (B, T, H, W) latent grid; returns (maps, coverage (1,1,H,W)).

    ``mask`` is the conditioning's (1|B, H, W) latent mask: the placed maps are multiplied by it.
    """
    H, W = latent_hw
    b, t = maps.shape[:2]
    if region is None:
        out, cover = maps, torch.ones(1, 1, H, W, dtype=maps.dtype, device=maps.device)
    else:
        out = maps.new_zeros(b, t, H, W)
        cover = maps.new_zeros(1, 1, H, W)
        out[..., region.y:region.y + region.h, region.x:region.x + region.w] = maps
        cover[..., region.y:region.y + region.h, region.x:region.x + region.w] = 1
    if mask is not None:
        m = mask.to(out.device, out.dtype)
        m = m[:b] if m.shape[0] >= b else m[:1]
        out = out * m[:, None]
    return out, cover


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


def prompt_signature(cond: torch.Tensor) -> list[float]:
    """(B, T, D) conditioning → T floats: each position of the first row projected on a fixed vector
    cos(0.731·d), 6 significant digits. Two prompts that differ in any token differ here (a per-position mean
    would not: encoders end in a LayerNorm, whose outputs all have about the same mean)."""
    row = cond[0].detach().float().cpu()
    probe = torch.cos(torch.arange(row.shape[-1], dtype=torch.float32) * 0.731)
    return [float(f"{v:.6g}") for v in (row @ probe).tolist()]


def fingerprint(t: torch.Tensor) -> str:
    """A content hash of a tensor (dtype, shape and bytes), to tell one run's maps from another's."""
    raw = t.detach().cpu().contiguous()
    h = hashlib.blake2b(f"{raw.dtype}{tuple(raw.shape)}".encode(), digest_size=16)
    h.update(raw.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@dataclass(frozen=True)
class MapsRecord:
    """The maps of one finished sampling run: per branch one MapSet, plus where the run came from.

    Immutable once made: whatever runs later, a record keeps the maps of the run that made it.
    ``origin`` is the executing ComfyUI node (see ``provenance.Origin``), None outside a prompt execution.
    """

    branches: dict[str, MapSet]
    latent_hw: tuple[int, int]
    batch: int
    origin: Any = None
    content: str = ""  # fingerprint of the maps, to recognise two runs with the same maps

    def result(self, branch: str) -> MapSet:
        ms = self.branches.get(branch)
        if ms is None:
            have = ", ".join(sorted(self.branches)) or "nothing"
            raise AttentionFocusError(
                f"no attention was captured for the {branch} prompt (captured: {have}). Check the capture "
                "node's branch and step window, and that its layers exist in this model")
        return ms

    def nbytes(self) -> int:
        return sum(ms.nbytes() for ms in self.branches.values())


class AttentionMaps:
    """The ATTENTION_MAPS value passed between nodes.

    A capture handle names the capture (its settings and the node that made it); each finished sampling
    run with that capture leaves an immutable ``MapsRecord`` (kept by ``provenance.REGISTRY`` and, the
    newest, in ``latest``). A loaded handle wraps a MapSet read from a file. ``result()`` gives the newest
    run's maps of a branch — the node classes instead pick the run that made their image
    (``provenance.record_for_image``).
    """

    def __init__(self, settings: CaptureSettings | None = None, mapset: MapSet | None = None, *,
                 family: str = "", kind: str = "unet", node_id: str = "") -> None:
        self.settings = settings or CaptureSettings()
        self.family = family
        self.kind = kind
        self.node_id = node_id
        self.latest: MapsRecord | None = None
        self.last_run: Any = None  # the newest run's working state (store, prompts), for inspection
        self.runs = 0
        self._loaded = mapset

    def __deepcopy__(self, memo):  # a handle is an identity: clones of a model share it
        return self

    @property
    def loaded(self) -> MapSet | None:
        return self._loaded

    def result(self, branch: str = "positive") -> MapSet:
        """Maps of ``branch`` from the newest run; AttentionFocusError with a clear reason if there are none."""
        if self._loaded is not None:
            return self._loaded
        if self.latest is None:
            raise AttentionFocusError(
                "no generation has run with this capture yet: connect the capture node's MODEL output to "
                "the sampler and the decoded IMAGE of that sampler to this node")
        return self.latest.result(branch)
