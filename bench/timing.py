"""Shared timing loop of the benchmarks: interleaved rounds, best round kept."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


CPU: dict[str, float] = {}  # best process CPU seconds per variant, of the last best_times call


def best_times(variants: dict[str, Any], run: Callable[[Any], Any], rounds: int) -> tuple[dict, dict]:
    """Run every variant ``rounds`` times, interleaved; returns (best wall seconds, last output) per name.

    The best process CPU time (all threads) of each variant is kept in ``CPU``: on a machine shared with other
    jobs the wall time measures the neighbours as much as the work, the CPU time mostly the work.
    """
    best = {k: float("inf") for k in variants}
    CPU.clear()
    CPU.update({k: float("inf") for k in variants})
    outs: dict[str, Any] = {}
    for _ in range(rounds):
        for name, model in variants.items():
            t, c = time.perf_counter(), time.process_time()
            outs[name] = run(model)
            best[name] = min(best[name], time.perf_counter() - t)
            CPU[name] = min(CPU[name], time.process_time() - c)
    return best, outs


def print_ratios(best: dict[str, float]) -> None:
    for name, t in best.items():
        cpu = CPU.get(name)
        extra = f"   CPU {cpu:8.2f} s   ratio {cpu / CPU['baseline']:.3f}x" if cpu is not None and CPU.get("baseline") \
            else ""
        print(f"  {name:22s} wall {t:8.2f} s   ratio {t / best['baseline']:.3f}x{extra}")


def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0


def peak_rss_increase(fn: Callable[[], Any]) -> int | None:
    """Bytes by which the process's resident set peaked above its size before ``fn()`` (Linux: the high-water mark
    is reset through /proc/self/clear_refs); None where that is not available."""
    try:
        before = _status("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return None
    fn()
    return _status("VmHWM") - before
