"""Train the demo model (CPU, resumable) and write models/attention-focus-shapes.safetensors.

    bash scripts/train_demo_model.sh [options]     # = PYTHONPATH=scripts $AF_PYTHON -m demo_model.train [options]

Stages, each cached (data in ``$ATTENTION_FOCUS_CACHE/demo-model/data-…``, training state in
``…/demo-model/train-<name>``) so that an interrupted run continues where it stopped (the two training loops
checkpoint every few minutes):

1. ``clip``: the training captions (``dataset.build_scenes``) through the regenerated CLIP-L (textenc).
2. ``latents``: the latent space (a fixed projection, ``train_vae.PcaLatent``), every render of every caption
   in it, and which caption tokens name which object (the grounding targets).
3. ``dit``: the MMDiT by rectified flow (train_dit).
4. ``vae``: the TAESD decoder on crops of fresh renders; its encoder is set to the projection (train_vae).
5. ``export``: the fp16 checkpoint (MMDiT + TAESD) and a JSON recipe with this command, the seed, the stage
   times and the final losses.

Nothing is downloaded. Progress bars on stderr; loss logs in ``<work>/vae_loss.csv`` and ``dit_loss.csv``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))

# everything that changes the result (the work folder must have been made with the same values)
RECIPE_KEYS = ("seed", "captions", "renders", "vae_steps", "vae_crop", "vae_batch", "vae_lr", "depth", "dit_steps",
               "batch", "lr", "ground", "ground_classes", "ground_pixel", "pooled")


def parse(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--name", default="main", help="work folder name (default main)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--captions", type=int, default=2400, help="distinct training captions")
    ap.add_argument("--renders", type=int, default=3, help="drawings per caption")
    ap.add_argument("--vae-steps", type=int, default=600)
    ap.add_argument("--vae-crop", type=int, default=32)
    ap.add_argument("--vae-batch", type=int, default=16)
    ap.add_argument("--vae-lr", type=float, default=1e-3)
    ap.add_argument("--depth", type=int, default=2, help="MMDiT depth: hidden 64*depth, depth heads and blocks")
    ap.add_argument("--dit-steps", type=int, default=4000)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--ground", type=float, default=1.0, help="weight of the attention-grounding loss (0: off)")
    ap.add_argument("--ground-classes", default="shape,colour,size,relation",
                    help="word classes the grounding loss covers")
    ap.add_argument("--ground-pixel", type=float, default=0.0, help="weight of the grounding loss's coverage "
                    "term (a word's map / its maximum = the object's coverage; 0: off)")
    ap.add_argument("--pooled", type=int, default=1, help="1: the pooled CLIP-L vector conditions the MMDiT "
                    "through SD3's y_embedder (adaLN); 0: context tokens only")
    ap.add_argument("--threads", type=int, default=2, help="torch threads of the main process")
    ap.add_argument("--parallel-vae", type=int, default=1,
                    help="1: train the VAE decoder in a second process (1 thread) while the MMDiT trains")
    ap.add_argument("--out", default=str(REPO / "models" / "attention-focus-shapes.safetensors"))
    ap.add_argument("--stop-after", choices=["clip", "latents", "dit"], default=None)
    return ap.parse_args(argv)


def _chunked(path: Path, n: int, chunk: int, fn, desc: str):
    """Compute fn(start, stop) for consecutive chunks, each saved under ``path``.partK; returns the list."""
    import torch
    from tqdm import tqdm

    from .loop import save_atomic

    parts = []
    for k, start in enumerate(tqdm(range(0, n, chunk), desc=desc, dynamic_ncols=True)):
        part = path.with_name(f"{path.stem}.part{k}.pt")
        if part.is_file():
            parts.append(torch.load(part, weights_only=False))
            continue
        out = fn(start, min(n, start + chunk))
        save_atomic(out, part)
        parts.append(out)
    return parts


def _cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children."""
    import resource

    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _vae_child(work: str, pca_path: str, steps: int, crop: int, batch: int, lr: float, seed: int,
               threads: int = 1) -> None:
    """Stage "vae" (in its own process when parallel): writes ``work/vae_final.pt`` (the TAESD state)."""
    import torch

    torch.set_num_threads(threads)
    from harness.comfy_boot import boot

    boot()
    from .train_vae import PcaLatent, train_vae

    final = Path(work) / "vae_final.pt"
    if final.is_file():
        return
    taesd, seconds = train_vae(Path(work), PcaLatent.from_state(torch.load(pca_path)), steps, crop, batch, lr,
                               seed)
    torch.save(taesd.state_dict(), final)
    times = Path(work) / "vae_seconds.json"
    times.write_text(json.dumps({"vae": seconds}))


def main(argv=None) -> int:
    args = parse(argv)
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    from harness.comfy_boot import boot

    boot()
    from . import dataset, scenes as S, textenc
    from . import model as M
    from .loop import save_atomic

    work = textenc.cache_dir() / f"train-{args.name}"
    work.mkdir(parents=True, exist_ok=True)
    recipe = {k: getattr(args, k) for k in RECIPE_KEYS}
    cfg_path = work / "config.json"
    if cfg_path.is_file() and json.loads(cfg_path.read_text()) != recipe:
        sys.exit(f"{work} was made with other settings ({cfg_path}); use another --name or delete it")
    cfg_path.write_text(json.dumps(recipe, indent=1))
    times_path = work / "times.json"
    times = json.loads(times_path.read_text()) if times_path.is_file() else {}

    def timed(stage: str, t0: float) -> None:
        times[stage] = times.get(stage, 0.0) + time.time() - t0
        times_path.write_text(json.dumps(times, indent=1))

    # the data (captions, CLIP features, latents) depends only on these, so runs can share it
    data_dir = textenc.cache_dir() / f"data-s{args.seed}-c{args.captions}-r{args.renders}"
    data_dir.mkdir(exist_ok=True)
    wall0, cpu0 = time.time(), _cpu_seconds()

    # 0. the latent space (a PCA of pixel cells); the VAE decoder learns it in a second process meanwhile
    t0 = time.time()
    from .train_vae import PcaLatent

    pca_path = data_dir / "pca.pt"
    if not pca_path.is_file():
        save_atomic(PcaLatent.fit(args.seed + 100).state(), pca_path)
    pca = PcaLatent.from_state(torch.load(pca_path))
    timed("pca", t0)
    vae_args = (str(work), str(pca_path), args.vae_steps, args.vae_crop, args.vae_batch, args.vae_lr, args.seed)
    vae_proc = None
    if args.parallel_vae and args.stop_after is None:
        import multiprocessing

        vae_proc = multiprocessing.get_context("spawn").Process(target=_vae_child, args=vae_args)
        vae_proc.start()

    t0 = time.time()
    captions, drawn = dataset.build_scenes(args.captions, args.renders, args.seed)
    tok = textenc.tokenizer()

    # 1. CLIP features of the captions and of the empty prompt (last)
    ctx_path = data_dir / "clip.pt"
    if not ctx_path.is_file():
        clip = textenc.load_clip()
        allcaps = captions + [""]
        parts = _chunked(ctx_path, len(allcaps), 256,
                         lambda a, b: tuple(t.half() for t in textenc.encode(clip, allcaps[a:b])), "clip")
        save_atomic({"context": torch.cat([p[0] for p in parts]), "pooled": torch.cat([p[1] for p in parts])},
                    ctx_path)
        del clip
    clip_data = torch.load(ctx_path)
    timed("clip", t0)
    if args.stop_after == "clip":
        return 0

    # 2. latents and grounding targets of every render
    t0 = time.time()
    lat_path = data_dir / "latents.pt"
    flat = [(ci, sc) for ci, group in enumerate(drawn) for sc in group]
    if not lat_path.is_file():
        def encode_part(a: int, b: int) -> dict:
            scs = [sc for _, sc in flat[a:b]]
            imgs, masks = dataset.render_batch(scs)
            tg, cl = zip(*(dataset.grounding_targets(sc, m, textenc.token_positions(tok, sc.caption))
                           for sc, m in zip(scs, masks, strict=True)), strict=True)
            return {"latents": (pca.encode(imgs) / pca.model_std).half(),
                    "target": torch.from_numpy(np.stack(tg)).half(), "word_class": torch.from_numpy(np.stack(cl))}

        parts = _chunked(lat_path, len(flat), 1024, encode_part, "latents")
        data = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
        data["image_caption"] = torch.tensor([ci for ci, _ in flat])
        save_atomic(data, lat_path)
    data = torch.load(lat_path)
    data.update(clip_data)
    classes = [S.WORD_CLASSES.index(c) for c in args.ground_classes.split(",") if c]
    data["sup"] = torch.isin(data["word_class"].long(), torch.tensor(classes, dtype=torch.long))
    z = data["latents"].float()
    print(f"[latents] {tuple(z.shape)}, mean {z.mean():.3f}, std {z.std():.3f}; "
          f"{int(data['sup'].sum())} supervised word tokens")
    timed("latents", t0)
    if args.stop_after == "latents":
        return 0

    # 3. MMDiT
    t0 = time.time()
    from .train_dit import train_dit

    ema, _ = train_dit(work, data, args.depth, args.dit_steps, args.batch, args.lr, args.ground, args.seed,
                       pooled=bool(args.pooled), ground_pixel=args.ground_pixel)
    timed("dit", t0)
    if args.stop_after == "dit":
        return 0

    # 4. VAE decoder (the encoder is set, see train_vae)
    t0 = time.time()
    if vae_proc is not None:
        vae_proc.join()
        if vae_proc.exitcode != 0:
            sys.exit(f"the VAE process failed (exit code {vae_proc.exitcode})")
    else:
        _vae_child(*vae_args, threads=args.threads)
    taesd = M.build_taesd(device="meta")
    taesd.load_state_dict(torch.load(work / "vae_final.pt"), assign=True)
    timed("vae_wait" if vae_proc is not None else "vae", t0)
    times["wall_total"] = times.get("wall_total", 0.0) + time.time() - wall0
    times["cpu_total"] = times.get("cpu_total", 0.0) + _cpu_seconds() - cpu0
    times_path.write_text(json.dumps(times, indent=1))

    # 5. export
    out = Path(args.out)
    losses = {}
    for name in ("vae", "dit"):
        log = work / f"{name}_loss.csv"
        rows = log.read_text().strip().splitlines() if log.is_file() else []
        if len(rows) > 1:
            losses[name] = dict(zip(rows[0].split(","), rows[-1].split(","), strict=True))
    info = {
        "command": "bash scripts/train_demo_model.sh " + shlex.join(argv if argv is not None else sys.argv[1:]),
        "recipe": recipe,
        "stage_seconds": {k: round(v, 1) for k, v in times.items() if not k.endswith("_total")},
        "vae_loop_seconds": round(json.loads((work / "vae_seconds.json").read_text())["vae"], 1)
        if (work / "vae_seconds.json").is_file() else None,
        "wall_seconds_total": round(times["wall_total"], 1),
        "cpu_seconds_total": round(times["cpu_total"], 1),
        "final_losses": losses,
        "mmdit_params": sum(p.numel() for p in ema.parameters()),
        "taesd_decoder_params": sum(p.numel() for p in taesd.taesd_decoder.parameters()),
        "clip_l": {"seed": textenc.CLIP_SEED, "sha256": textenc.CLIP_SHA256},
        "torch": torch.__version__,
        "scenes": {"size": S.SIZE, "colours": list(S.COLOURS), "shapes": list(S.SHAPES),
                   "heldout": f"sha1(caption) % {S.HELDOUT_MOD} == 0"},
    }
    M.export(M.mmdit_export_state(ema), {k: v for k, v in taesd.state_dict().items() if k.startswith("taesd_")},
             out, {"attention_focus_demo": info}, latent_std=pca.model_std)
    info["file_bytes"] = out.stat().st_size
    info["file_sha256"] = hashlib.sha256(out.read_bytes()).hexdigest()
    Path(str(out).replace(".safetensors", ".json")).write_text(json.dumps(info, indent=1) + "\n")
    print(f"[export] {out} ({info['file_bytes'] / 2**20:.2f} MiB); training took {times['wall_total'] / 60:.1f} min "
          f"wall, {times['cpu_total'] / 60:.1f} min CPU: {info['stage_seconds']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
