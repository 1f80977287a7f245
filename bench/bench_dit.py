"""Benchmark on Diffusion Transformers: sampling time with capture / reweight ÷ without, and memory.

    source scripts/setup_env.sh && $AF_PYTHON bench/bench_dit.py [--steps 2] [--rounds 3] [--only flux]

One process, same model, rounds interleaved, best round kept. Cases:
- ``flux@512``: the smallest Flux.1 that ComfyUI's loader detects (hidden 3072 = 24 heads × 128, one
  double block, no single block; detection forces the width), T5-length context of 256 tokens,
  64×64 latent (512² image) → 1024 image + 256 text tokens in the joint attention.
- ``flux2@512``: an in-process Flux.2 (the loader's smallest is 6144 wide — 48 heads × 128, forced by detection —
  about 1 B parameters per double block, too slow for a 2-core CPU): Flux.2's head geometry (heads of 128, RoPE
  axes 4 × 32, SwiGLU MLP ×3, global modulation, patch 1, Mistral-3 context width 15360) at 24 heads, one double
  and one single block; a 100-token prompt that the model_base pads on the left to 512, 32×32 latent of 128
  channels (512² image) → 1024 image + 512 text tokens.
- ``sd3@512``: SD3-Medium topology (hidden 1536 = 24 heads × 64, CLIP 77 + T5 77 = 154 text tokens,
  64×64 latent → 1024 image tokens) with 4 joint blocks instead of 24 unless ``--full``
  (per-block cost ratios do not depend on the depth).
Random weights (timings do not depend on them). CPU timings; ``--device cuda`` on a GPU machine.
Capture variants: ``all keys`` (exact joint softmax: log-sum-exp over all keys, query-chunked) and
``text keys`` (softmax over the prompt's tokens only).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "bench"))


def build(family: str, full: bool, device):
    import comfy.model_base as mb
    import comfy.model_patcher
    import comfy.supported_models as sm
    import torch

    if family == "flux2":
        cfg = dict(image_model="flux2", in_channels=128, out_channels=128, vec_in_dim=None, context_in_dim=15360,
                   hidden_size=3072, mlp_ratio=3.0, num_heads=24, depth=1, depth_single_blocks=1,
                   axes_dim=[32, 32, 32, 32], theta=2000, patch_size=1, qkv_bias=False, guidance_embed=True,
                   global_modulation=True, mlp_silu_act=True, ops_bias=False, default_ref_method="index",
                   ref_index_scale=10.0)
        from harness.dit_fixtures import _complete_params

        mc = sm.Flux2(_complete_params("flux", cfg))
        mc.set_inference_dtype(torch.float32, None)
        model = mb.Flux2(mc, device=device)
    elif family == "flux":
        cfg = dict(image_model="flux", in_channels=16, out_channels=16, vec_in_dim=768, context_in_dim=4096,
                   hidden_size=3072, mlp_ratio=4.0, num_heads=24, depth=1, depth_single_blocks=0,
                   axes_dim=[16, 56, 56], theta=10000, qkv_bias=True, guidance_embed=True, patch_size=2)
        mc = sm.Flux(cfg)
        mc.set_inference_dtype(torch.float32, None)
        model = mb.Flux(mc, device=device)
    else:
        cfg = dict(in_channels=16, out_channels=16, patch_size=2, depth=24, num_blocks=24 if full else 4,
                   input_size=None, adm_in_channels=2048, pos_embed_max_size=192, num_patches=192 * 192,
                   pos_embed_scaling_factor=None,
                   context_embedder_config={"target": "torch.nn.Linear",
                                            "params": {"in_features": 4096, "out_features": 1536}})
        mc = sm.SD3(cfg)
        mc.set_inference_dtype(torch.float32, None)
        model = mb.SD3(mc, device=device)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    model.eval()
    return comfy.model_patcher.ModelPatcher(model, load_device=device, offload_device=device)


def conds(family: str, seed: int):
    import torch

    g = torch.Generator().manual_seed(seed)
    if family == "flux2":  # a 100-token Mistral-3 prompt (3 hidden layers of 5120): padded to 512 by the model
        return [[torch.randn(1, 100, 15360, generator=g), {"pooled_output": None, "guidance": 4.0}]]
    if family == "flux":
        return [[torch.randn(1, 256, 4096, generator=g), {"pooled_output": torch.randn(1, 768, generator=g),
                                                          "guidance": 3.5}]]
    return [[torch.randn(1, 154, 4096, generator=g), {"pooled_output": torch.randn(1, 2048, generator=g)}]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--full", action="store_true", help="SD3-Medium's full 24 blocks (slow on CPU)")
    ap.add_argument("--only", choices=["flux", "flux2", "sd3"], default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--history-mb", type=float, default=256.0, help="budget of the 'capture + history' variant")
    ap.add_argument("--history-only", action="store_true", help="only baseline, capture and capture + history")
    args = ap.parse_args()

    from harness.comfy_boot import boot
    from timing import best_times, print_ratios

    boot()
    import comfy.sample
    import torch

    from attention_focus.nodes import attention_math as am
    from bench_capture import report_history
    from harness import pack as cp

    device = torch.device(args.device)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, steps {args.steps}, "
          f"rounds {args.rounds} (best kept)")
    for family in ("flux", "flux2", "sd3"):
        if args.only and family != args.only:
            continue
        mp = build(family, args.full, device)
        pos, neg = conds(family, 1), conds(family, 2)
        lat = torch.zeros(1, 128, 32, 32) if family == "flux2" else torch.zeros(1, 16, 64, 64)
        grid = lat.shape[-2] * lat.shape[-1] // (1 if family == "flux2" else 4)
        noise = comfy.sample.prepare_noise(lat, 0)
        variants = {"baseline": mp}
        capm, maps = cp.add_capture(mp, "all", "positive", 0.0, 1.0, "mean", "all")
        variants["capture (all keys)"] = capm
        hism, hmaps = cp.add_capture(mp, "all", "positive", 0.0, 1.0, "mean", "all", history_mb=args.history_mb)
        variants["capture + history"] = hism
        if not args.history_only:
            capt, maps_t = cp.add_capture(mp, "all", "positive", 0.0, 1.0, "mean", "text")
            variants["capture (text keys)"] = capt
            word = "#415" if family == "flux2" else "#3"  # Flux.2: the prompt's 4th token after 412 padding positions
            variants["reweight scale"] = cp.add_reweight(mp, [(word, 2.0)], "scale", "all", "positive", 0, 1)
            variants["reweight renormalize"] = cp.add_reweight(mp, [(word, 2.0)], "renormalize", "all",
                                                               "positive", 0, 1)

        def run(m, noise=noise, pos=pos, neg=neg, lat=lat):
            with torch.inference_mode():
                return comfy.sample.sample(m, noise, args.steps, 3.5, "euler", "simple", pos, neg, lat, seed=0,
                                           disable_pbar=True)

        best, outs = best_times(variants, run, args.rounds)
        assert torch.equal(outs["baseline"], outs["capture (all keys)"]), "capture changed the output"
        assert torch.equal(outs["baseline"], outs["capture + history"]), "the history changed the output"
        res = maps.result("positive")
        n_txt = res.maps.shape[1]  # prompt positions as the model sees them (Flux.2: padded to 512)
        print(f"\n{family}@512: latent {lat.shape[-2]}x{lat.shape[-1]}, {len(res.meta['layers'])} joint layers, "
              f"{n_txt} text + {grid} image tokens; log-sum-exp path: {am.lse_path(device.type)}")
        print_ratios(best)
        heads = 24
        lk = n_txt + grid
        print(f"  capture store: {maps.last_run.store.nbytes() / 2**20:.2f} MiB (formula 4·B·T·h·w = "
              f"{4 * n_txt * grid / 2**20:.2f} MiB: one accumulator for all layers, independent of steps)")
        print(f"  transient per call: ≤ {am.MAX_LOGITS * 4 / 2**20:.0f} MiB of logits (query chunks) + "
              f"4·B·n_img·T = {4 * grid * n_txt / 2**20:.2f} MiB; the full joint matrix would be "
              f"4·B·H·L² = {4 * heads * lk * lk / 2**20:.0f} MiB per layer")
        report_history(hmaps, lambda m=capm: run(m), lambda m=hism: run(m))


if __name__ == "__main__":
    main()
