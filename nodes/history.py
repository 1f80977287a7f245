"""The maps over steps and over layers, within a fixed memory budget (the capture's opt-in history).

A history is one fp32 buffer per captured branch::

    (frames T, layer groups G, batch B, kept tokens K, rh, rw)        bytes = 4 · T · G · B · K · rh · rw ≤ budget

- K: the prompt's word tokens (padding, BOS/EOS and template tokens are left out; all positions when the prompt
  carries no token table), summed over the prompts of the branch;
- G: the layer groups — each layer (``input 4``, ``output 5.1``, ``double 3``, ``single 12``), each block, or each
  resolution level;
- (rh, rw): the finest layer grid halved j times, j the smallest for which T = ⌈steps / stride⌉ frames fit the
  budget; if even the coarsest grid (long side ≥ 8 cells, or the layer grid if smaller) does not fit them, the
  stride grows instead: T = ⌊budget / (4·G·B·K·rh·rw)⌋ frames of ⌈steps / T⌉ evaluations each;
- a frame is the *sum* over its evaluations of each layer's probabilities, resampled linearly (area mean down,
  bilinear up) to (rh, rw) and summed over the group's layers. Sums commute with linear resampling, so the sum of
  the history over frames equals each group's running-sum maps resampled to (rh, rw).

The buffer is allocated once (when a branch is first captured) and never grows: a sampler that makes more
evaluations than planned (heun, dpm_2, restarts) makes the history merge neighbouring frames in place (stride ×2).
Nothing here imports ComfyUI.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .layer_spec import LayerKey

MIN_SIDE = 8  # the coarsest history grid keeps a long side of at least this many cells


def group_layers(layers: list[LayerKey], mode: str) -> tuple[list[str], dict[LayerKey, int]]:
    """(group names, layer → group index) for ``mode`` ``layer`` | ``block`` | ``level``, in layer order.

    Names follow ComfyUI's block names: ``input 4``, ``output 5.1`` (depth 1 of a block with several), ``middle 0``,
    ``double 3``, ``single 12``, ``block 7``; levels are ``L0``, ``L1``…; a DiT's levels are one group, ``all``.
    """
    depths: dict[tuple[str, int], int] = {}
    for k in layers:
        depths[(k.block, k.index)] = depths.get((k.block, k.index), 0) + 1
    names: list[str] = []
    group_of: dict[LayerKey, int] = {}
    for k in layers:
        if mode == "level":
            name = "all" if k.block in ("double", "single", "block") else f"L{k.level}"
        elif mode == "block" or depths[(k.block, k.index)] == 1:
            name = f"{k.block} {k.index}"
        else:
            name = f"{k.block} {k.index}.{k.depth}"
        if name not in names:
            names.append(name)
        group_of[k] = names.index(name)
    return names, group_of


def grids(fine: tuple[int, int]) -> list[tuple[int, int]]:
    """Candidate history grids, finest first: the finest layer grid ceil-halved while its long side stays ≥ 8."""
    out = [tuple(fine)]
    h, w = fine
    while max(-(-h // 2), -(-w // 2)) >= MIN_SIDE:
        h, w = -(-h // 2), -(-w // 2)
        out.append((h, w))
    return out


@dataclass(frozen=True)
class HistoryPlan:
    """What the budget allows: grid, frames, stride; the groups and the kept tokens per branch."""

    grid: tuple[int, int]
    frames: int
    stride: int
    groups: tuple[str, ...]
    group_of: dict[LayerKey, int]
    batch: int
    tokens: dict[str, int]  # branch → K (kept tokens of all its prompts)
    budget: int

    def nbytes(self) -> int:
        return 4 * self.frames * len(self.groups) * self.batch * sum(self.tokens.values()) * self.grid[0] * self.grid[1]

    def describe(self) -> str:
        every = "every evaluation" if self.stride == 1 else f"every {self.stride} evaluations"
        groups = f"{len(self.groups)} layer group{'s' if len(self.groups) != 1 else ''}"
        return (f"history: {self.grid[1]}x{self.grid[0]} cells, {groups}, up to "
                f"{self.frames} frames ({every}), {_mib(self.nbytes())} of {_mib(self.budget)}")


def plan_history(budget: int, steps: int, fine: tuple[int, int], layers: list[LayerKey], mode: str, batch: int,
                 tokens: dict[str, int], stride: int = 1) -> tuple[HistoryPlan | None, str]:
    """The finest grid at which ⌈steps/stride⌉ frames fit ``budget`` bytes (else a larger stride at the coarsest
    grid); (None, why) when not even one frame fits."""
    names, group_of = group_layers(layers, mode)
    per_cell = 4 * len(names) * batch * max(1, sum(tokens.values()))
    want = max(1, -(-max(1, steps) // stride))
    options = grids(fine)
    for g in options:
        if per_cell * g[0] * g[1] * want <= budget:
            return HistoryPlan(g, want, stride, tuple(names), group_of, batch, tokens, budget), ""
    g = options[-1]
    fit = budget // (per_cell * g[0] * g[1])
    if fit < 1:
        need = per_cell * g[0] * g[1]
        return None, (f"the history budget of {_mib(budget)} is below one frame ({_mib(need)} at "
                      f"{g[1]}x{g[0]} cells for {len(names)} layer groups, {sum(tokens.values())} tokens, batch "
                      f"{batch}): raise history_mb or group the layers by block or level")
    stride = max(stride, -(-max(1, steps) // fit))
    frames = -(-max(1, steps) // stride)
    return HistoryPlan(g, frames, stride, tuple(names), group_of, batch, tokens, budget), ""


def _mib(n: int) -> str:
    """Bytes as MiB with enough digits to be non-zero (0.01 MiB, 2.0 MiB, 256 MiB)."""
    v = n / 2**20
    return f"{v:.3g} MiB" if v < 10 else f"{v:.0f} MiB"


def resample(grid: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(N, C, h, w) → (N, C, *size), linearly: area means when shrinking, bilinear when growing."""
    if tuple(grid.shape[-2:]) == tuple(size):
        return grid
    if size[0] <= grid.shape[-2] and size[1] <= grid.shape[-1]:
        return F.adaptive_avg_pool2d(grid, size)
    return F.interpolate(grid, size=size, mode="bilinear", align_corners=False)


@dataclass
class History:
    """The history buffers of one run (see the module docstring)."""

    plan: HistoryPlan
    offsets: dict[str, tuple[str, int, torch.Tensor]]  # prompt uuid → (branch, first column, kept positions)
    buffers: dict[str, torch.Tensor] = field(default_factory=dict)  # branch → (T, G, B, K, rh, rw)
    order: dict[int, int] = field(default_factory=dict)  # sampler evaluation → its index in this run
    sigmas: list[float] = field(default_factory=list)  # per evaluation index
    stride: int = 0
    peak_bytes: int = 0
    skipped: set[str] = field(default_factory=set)  # why some calls are not in the history

    def __post_init__(self) -> None:
        self.stride = self.stride or self.plan.stride

    def nbytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in self.buffers.values())

    def _slot(self, evaluation: int, sigma: float) -> int:
        idx = self.order.get(evaluation)
        if idx is None:
            idx = self.order[evaluation] = len(self.order)
            self.sigmas.append(float(sigma))
            while idx // self.stride >= self.plan.frames:
                self._merge()
        return idx // self.stride

    def _merge(self) -> None:
        """Halve the time resolution in place: frame i ← frames 2i + 2i+1 (the sums stay exact)."""
        n = self.plan.frames
        for buf in self.buffers.values():
            for i in range(-(-n // 2)):
                buf[i].copy_(buf[2 * i])
                if 2 * i + 1 < n:
                    buf[i].add_(buf[2 * i + 1])
            buf[-(-n // 2):].zero_()
        self.stride *= 2

    def add(self, uid: str, layer: LayerKey, probs: torch.Tensor, hw: tuple[int, int], evaluation: int,
            sigma: float) -> None:
        """Add one layer call's (B, h·w, tokens) probabilities of a prompt to its frame and group."""
        where = self.offsets.get(uid)
        g = self.plan.group_of.get(layer)
        if where is None or g is None:
            return
        branch, col, keep = where
        slot = self._slot(evaluation, sigma)
        buf = self.buffers.get(branch)
        if buf is None:
            rh, rw = self.plan.grid
            shape = (self.plan.frames, len(self.plan.groups), self.plan.batch, self.plan.tokens[branch], rh, rw)
            buf = self.buffers[branch] = torch.zeros(shape, dtype=torch.float32, device=probs.device)
            self.peak_bytes = max(self.peak_bytes, self.nbytes())
        b, n, _ = probs.shape
        sel = probs.index_select(2, keep.to(probs.device)) if keep.numel() != probs.shape[2] else probs
        grid = sel.transpose(1, 2).reshape(b, -1, hw[0], hw[1]).float()
        buf[slot, g, :, col:col + grid.shape[1]].add_(resample(grid, self.plan.grid))

    def frame_labels(self) -> list[tuple[int, int, float, float]]:
        """Per used frame: (first evaluation, last evaluation, σ of the first, σ of the last), 0-based indices."""
        n = len(self.sigmas)
        out = []
        for s in range(0, n, self.stride):
            e = min(n, s + self.stride) - 1
            out.append((s, e, self.sigmas[s], self.sigmas[e]))
        return out

    def result(self, branch: str) -> torch.Tensor | None:
        """The used frames of a branch: a view (T_used, G, B, K, rh, rw), or None if it was never captured."""
        buf = self.buffers.get(branch)
        if buf is None:
            return None
        return buf[:max(1, math.ceil(len(self.sigmas) / self.stride))]
