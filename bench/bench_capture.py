"""Benchmark: sampling time with capture / reweight ÷ without, and the capture store's memory.

    bash scripts/setup_env.sh && $AF_PYTHON bench/bench_capture.py [--steps 3] [--rounds 2] [--full]

Everything is measured in one process on the same model, rounds interleaved, best round kept:
- ``sd15@512``: SD1.5 topology (4 levels, 16 cross-attention layers, 8 heads, 77-token context) at a
  64×64 latent (512² image).
- ``sdxl@1024``: SDXL topology (3 levels, transformer depths 2/10, 70 cross-attention layers, 64-dim
  heads, 2048-wide context) at a 128×128 latent (1024² image).
Widths are reduced (model_channels 160 / 128 instead of 320, unless --full) so a CPU run stays in
minutes; the attention token counts, layer counts and head layout are the real ones. Weights are
random (timings do not depend on them). CPU timings; add --device cuda on a GPU machine.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "bench"))


def build(family: str, full: bool, device):
    import comfy.model_patcher
    import comfy.supported_models as sm
    import torch

    base = {"use_checkpoint": False, "image_size": 32, "in_channels": 4, "out_channels": 4,
            "use_spatial_transformer": True, "use_temporal_attention": False, "use_temporal_resblock": False}
    if family == "sd15":  # ComfyUI's SD15 detection config, optionally narrower
        unet = {**base, "adm_in_channels": None, "model_channels": 320 if full else 160,
                "num_res_blocks": [2, 2, 2, 2], "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
                "channel_mult": [1, 2, 4, 4], "transformer_depth_middle": 1, "use_linear_in_transformer": False,
                "context_dim": 768, "num_heads": 8,
                "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0]}
        conf = sm.SD15
    else:  # ComfyUI's SDXL detection config, optionally narrower
        unet = {**base, "num_classes": "sequential", "adm_in_channels": 2816, "model_channels": 320 if full else 128,
                "num_res_blocks": [2, 2, 2], "transformer_depth": [0, 0, 2, 2, 10, 10], "channel_mult": [1, 2, 4],
                "transformer_depth_middle": 10, "use_linear_in_transformer": True, "context_dim": 2048,
                "num_head_channels": 64, "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10]}
        conf = sm.SDXL
    model_conf = conf(unet)
    torch.manual_seed(0)
    model = model_conf.get_model({}, device=device)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    model.eval()
    return comfy.model_patcher.ModelPatcher(model, load_device=device, offload_device=device)


def conds(family: str, seed: int):
    import torch

    g = torch.Generator().manual_seed(seed)
    width = 768 if family == "sd15" else 2048
    extra = {} if family == "sd15" else {"pooled_output": torch.randn(1, 1280, generator=g)}
    return [[torch.randn(1, 77, width, generator=g), extra]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--full", action="store_true", help="full SD1.5/SDXL widths (slow on CPU)")
    ap.add_argument("--only", choices=["sd15", "sdxl"], default=None)
    ap.add_argument("--history-mb", type=float, default=256.0, help="budget of the 'capture + history' variant")
    ap.add_argument("--history-only", action="store_true", help="only baseline, capture and capture + history")
    args = ap.parse_args()

    from harness.comfy_boot import boot
    from timing import best_times, print_ratios

    boot()
    import comfy.sample
    import torch

    from harness import pack as cp

    device = torch.device("cpu")
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, steps {args.steps}, "
          f"rounds {args.rounds} (best kept)")
    cases = [("sd15", 64), ("sdxl", 128)]
    for family, side in cases:
        if args.only and family != args.only:
            continue
        mp = build(family, args.full, device)
        pos, neg = conds(family, 1), conds(family, 2)
        lat = torch.zeros(1, 4, side, side)
        noise = comfy.sample.prepare_noise(lat, 0)
        variants = {"baseline": mp}
        capm, maps = cp.add_capture(mp, "all", "positive", 0.0, 1.0, "mean")
        variants["capture"] = capm
        hism, hmaps = cp.add_capture(mp, "all", "positive", 0.0, 1.0, "mean", history_mb=args.history_mb)
        variants["capture + history"] = hism
        if not args.history_only:
            variants["reweight scale"] = cp.add_reweight(mp, [("#3", 2.0)], "scale", "all", "positive", 0, 1)
            variants["reweight renormalize"] = cp.add_reweight(mp, [("#3", 2.0)], "renormalize", "all",
                                                               "positive", 0, 1)

        def run(m, noise=noise, pos=pos, neg=neg, lat=lat):
            with torch.inference_mode():
                return comfy.sample.sample(m, noise, args.steps, 5.0, "euler", "normal", pos, neg, lat, seed=0,
                                           disable_pbar=True)

        best, outs = best_times(variants, run, args.rounds)
        assert torch.equal(outs["baseline"], outs["capture"]), "capture changed the output"
        assert torch.equal(outs["baseline"], outs["capture + history"]), "the history changed the output"
        res = maps.result("positive")
        n_layers = len(res.meta["layers"])
        print(f"\n{family}@{side * 8}: latent {side}x{side}, {n_layers} cross-attention layers")
        print_ratios(best)
        formula = 4 * res.maps.shape[0] * res.maps.shape[1] * sum(
            (-(-side // 2 ** lv)) ** 2 for lv in res.meta["levels"])
        store = maps.last_run.store
        print(f"  capture store: {store.nbytes() / 2**20:.2f} MiB (peak {store.peak_bytes / 2**20:.2f} "
              f"MiB; formula 4·B·T·Σhw = {formula / 2**20:.2f} MiB), independent of steps")
        report_history(hmaps, lambda m=capm: run(m), lambda m=hism: run(m))


def report_history(hmaps, run_capture, run_history) -> None:
    """The history's plan, its buffer's peak, and the measured peak resident memory it adds over the capture."""
    from timing import peak_rss_increase

    meta = hmaps.result("positive").meta["history"]
    hist = hmaps.last_run.history
    print(f"  {meta['summary']}")
    print(f"  history buffer: peak {hist.peak_bytes / 2**20:.2f} MiB (budget {meta['budget_bytes'] / 2**20:.0f} MiB)")
    cap, his = peak_rss_increase(run_capture), peak_rss_increase(run_history)
    if cap is not None and his is not None:
        print(f"  measured peak RSS during sampling: capture +{cap / 2**20:.1f} MiB, capture + history "
              f"+{his / 2**20:.1f} MiB → the history adds {(his - cap) / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
