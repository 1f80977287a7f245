"""A resumable training loop: periodic checkpoints, a CSV loss log, a tqdm progress bar, wall time kept."""

from __future__ import annotations

import csv
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch


def save_atomic(obj, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def run_loop(name: str, work: Path, total: int, step_fn: Callable[[int], dict[str, float]],
             get_state: Callable[[], dict], set_state: Callable[[dict], None], every_s: float = 180.0,
             log_every: int = 25, position: int = 0) -> float:
    """Run ``step_fn(step)`` for steps [start, total); returns the loop's wall time in seconds (all resumes).

    ``work/<name>.pt`` holds ``get_state()`` plus the step and elapsed time, written every ``every_s``
    seconds and at the end; a restart continues from it. ``work/<name>_loss.csv`` gets the mean of
    ``step_fn``'s values every ``log_every`` steps (step, elapsed_s, values…).
    """
    from tqdm import tqdm

    ckpt = work / f"{name}.pt"
    log_path = work / f"{name}_loss.csv"
    start, elapsed = 0, 0.0
    if ckpt.is_file():
        st = torch.load(ckpt, weights_only=False)
        set_state(st["state"])
        start, elapsed = st["step"], st["elapsed"]
        if start >= total:
            return elapsed
        print(f"[{name}] resuming at step {start}/{total} ({elapsed / 60:.1f} min done)")
    t0, last_save = time.time() - elapsed, time.time()
    acc: dict[str, float] = {}
    n_acc = 0
    fresh = not log_path.is_file() or start == 0
    with open(log_path, "w" if fresh else "a", newline="") as f:
        writer = None
        bar = tqdm(range(start, total), initial=start, total=total, desc=name, dynamic_ncols=True,
                   mininterval=2.0, position=position)
        for step in bar:
            vals = step_fn(step)
            for k, v in vals.items():
                acc[k] = acc.get(k, 0.0) + float(v)
            n_acc += 1
            if (step + 1) % log_every == 0 or step + 1 == total:
                row = {"step": step + 1, "elapsed_s": round(time.time() - t0, 1)}
                row.update({k: round(v / n_acc, 6) for k, v in acc.items()})
                if writer is None:
                    writer = csv.DictWriter(f, fieldnames=list(row))
                    if fresh:
                        writer.writeheader()
                writer.writerow(row)
                f.flush()
                bar.set_postfix({k: f"{v / n_acc:.4f}" for k, v in acc.items()})
                acc, n_acc = {}, 0
            if time.time() - last_save > every_s or step + 1 == total:
                save_atomic({"state": get_state(), "step": step + 1, "elapsed": time.time() - t0}, ckpt)
                last_save = time.time()
        bar.close()
    return time.time() - t0
