"""The capture's history during a run: planning it within the budget at the run's start, feeding it each
captured call, and its metadata at the end (the buffers themselves: history.py)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import torch

from .capture_store import Region
from .history import History, plan_history
from .hook_state import CallInfo

if TYPE_CHECKING:
    from .capture import Capture, CaptureRun

log = logging.getLogger("attention_focus")


def start_history(cap: CaptureRun, capture: Capture, sig: list[float]) -> None:
    """Plan the run's history within the budget (history.py); a budget too small for one frame: a warning."""
    settings = capture.settings
    steps = sum(1 for x in sig[:-1] if cap.sigma_lo <= x <= cap.sigma_hi) or 1
    H, W = cap.latent_hw
    if capture.maps.kind == "dit":
        fine = (-(-H // capture.patch), -(-W // capture.patch))
    else:
        level = min(k.level for k in capture.order)
        fine = (H, W)
        for _ in range(level):
            fine = (-(-fine[0] // 2), -(-fine[1] // 2))
    offsets: dict[str, tuple[str, int, torch.Tensor]] = {}
    tokens: dict[str, int] = {}
    kept_positions: dict[str, list[int]] = {}
    for branch in sorted(settings.branches):
        start = 0
        for uid, p in sorted(((u, p) for u, p in cap.prompts.items() if p.branch == branch), key=lambda x: x[1].slot):
            keep = ([r.pos for r in p.tokens.rows if not r.special] if p.tokens is not None
                    and len(p.tokens) == p.length else list(range(p.length)))
            offsets[uid] = (branch, tokens.get(branch, 0), torch.tensor(keep, dtype=torch.long))
            tokens[branch] = tokens.get(branch, 0) + len(keep)
            kept_positions.setdefault(branch, []).extend(start + x for x in keep)
            start += p.length
    budget = int(settings.history_mb * 2**20)
    plan, why = plan_history(budget, steps, fine, capture.order, settings.history_groups, cap.batch, tokens,
                             settings.history_stride)
    if plan is None:
        log.warning("Attention Focus: no history for this run: %s", why)
        cap.history_meta = {"error": why}
        return
    log.info("Attention Focus %s", plan.describe())
    cap.history = History(plan, offsets)
    members: list[list[str]] = [[] for _ in plan.groups]
    for k in capture.order:
        members[plan.group_of[k]].append(k.name())
    cap.history_meta = {"grid": list(plan.grid), "groups": list(plan.groups), "group_layers": members,
                        "budget_bytes": budget, "schedule": sig, "planned_steps": steps,
                        "positions": kept_positions}


def history_meta(cap: CaptureRun, branch: str) -> dict:
    """The history's metadata for one branch (frames, stride, sizes, what was left out)."""
    h = cap.history
    meta = {k: v for k, v in cap.history_meta.items() if k != "positions"}
    meta["tokens"] = cap.history_meta.get("positions", {}).get(branch, [])
    meta.update({"stride": h.stride, "frames": [list(f) for f in h.frame_labels()], "bytes": h.plan.nbytes(),
                 "peak_bytes": h.peak_bytes, "evaluations": len(h.sigmas),
                 "summary": h.plan.describe().replace(f"up to {h.plan.frames} frames",
                                                      f"{len(h.frame_labels())} frames")})
    if h.stride != h.plan.stride:
        meta["summary"] += f" (stride raised to {h.stride}: more evaluations than planned)"
    if h.skipped:
        meta["left_out"] = sorted(h.skipped)
    return meta


def to_history(cap: CaptureRun, uid: str, region: Region | None, info: CallInfo, p, evaluation: int) -> None:
    if cap.history is None:
        return
    if region is not None:
        cap.history.skipped.add("area prompts (evaluated on a crop of the latent)")
        return
    cap.history.add(uid, info.layer, p, info.hw, evaluation, info.sigma)
