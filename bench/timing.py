"""Shared timing loop of the benchmarks: interleaved rounds, best round kept."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def best_times(variants: dict[str, Any], run: Callable[[Any], Any], rounds: int) -> tuple[dict, dict]:
    """Run every variant ``rounds`` times, interleaved; returns (best seconds, last output) per name."""
    best = {k: float("inf") for k in variants}
    outs: dict[str, Any] = {}
    for _ in range(rounds):
        for name, model in variants.items():
            t = time.perf_counter()
            outs[name] = run(model)
            best[name] = min(best[name], time.perf_counter() - t)
    return best, outs


def print_ratios(best: dict[str, float]) -> None:
    for name, t in best.items():
        print(f"  {name:22s} {t:8.2f} s   ratio {t / best['baseline']:.3f}x")
