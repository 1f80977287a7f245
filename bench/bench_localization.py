"""Benchmark: do the heat maps lie on what their words name, and does reweighting a colour word change it?

    . scripts/setup_env.sh && $AF_PYTHON bench/bench_localization.py [--prompts 60] [--reweight 30] [--json f]

DAAM's COCO-Gen protocol in miniature, on the embedded demo model (models/attention-focus-shapes.safetensors,
an SD3-shaped MMDiT trained on procedurally drawn scenes; see scripts/demo_model/). For N held-out captions
(never seen in training) it generates one picture each through ComfyUI's loader, sampler and VAE with every
capture setting the pack offers on this model stacked on it (softmax over all keys / text keys × head mean /
max × all layers / each joint block, and the default over the first / second half of the steps), thresholds
each annotated word's map and computes its IoU with the ground truth:

* ground truth = the object as drawn, found in the generated picture by its colour (each object of a scene
  has its own palette colour on a neutral background); an object not drawn is left out, as in DAAM;
* shape nouns, colour and size words → their object ("a *red* circle above a blue square": the circle);
  position words ("on the *left*") → the object they place; relations ("*above*") → both objects;
* threshold: DAAM's τ = 0.4 on the bicubically upsampled, min–max normalised map, and the best single τ
  per class from a sweep (0.05 … 0.95).

Details and reasons: scripts/demo_model/evaluate.py. Generation fidelity is printed too: objects drawn at
all, and objects placed where the caption says.

Reweighting: for M of the cases, the same seed again with the first object's colour word weighted down
(``scale`` 0) and up (``scale`` 1.5; at 3 the picture changes more than the colour grows). Inside that
object's mask in the unweighted picture it reports the share of pixels of the word's colour and their mean
RGB distance to it, and over the whole picture the number of pixels of that colour.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
sys.path.insert(0, str(REPO / "tests"))

DOWN, UP = 0.0, 1.5


def localisation(demo, cases, settings):
    from demo_model import evaluate as E

    scores = E.Scores()
    images = []
    for scene, seed in cases:
        image, maps = E.generate(demo, scene.caption, seed, settings)
        scores.add(scene, image, maps)
        images.append(image)
    return scores, images


def reweighting(demo, cases, images) -> dict:
    import numpy as np

    from demo_model import evaluate as E
    from demo_model import scenes as S

    rows = []
    for (scene, seed), base in zip(cases, images, strict=True):
        obj = scene.objects[0]
        mask = S.colour_mask(base, obj.colour)
        if mask.sum() < E.MIN_PIXELS:
            continue
        row = {"caption": scene.caption, "word": obj.colour}
        for tag, w in (("base", None), ("down", DOWN), ("up", UP)):
            img = base if w is None else E.generate(demo, scene.caption, seed, reweight=[(obj.colour, w)])[0]
            share, dist = E.colour_effect(img, mask, obj.colour)
            row[tag] = {"share": share, "dist": dist, "pixels": int(S.colour_mask(img, obj.colour).sum())}
        rows.append(row)
    out = {"cases": len(rows)}
    for tag in ("base", "down", "up"):
        for k in ("share", "dist", "pixels"):
            out[f"{tag}_{k}"] = float(np.mean([r[tag][k] for r in rows])) if rows else float("nan")
    out["down_reduces_share"] = float(np.mean([r["down"]["share"] < r["base"]["share"] for r in rows]))
    out["up_raises_pixels"] = float(np.mean([r["up"]["pixels"] > r["base"]["pixels"] for r in rows]))
    out["up_closer_colour"] = float(np.mean([r["up"]["dist"] < r["base"]["dist"] for r in rows]))
    out["rows"] = rows
    return out


def report(scores, settings, classes) -> dict:
    res = {}
    head = f"{'capture setting':38s}" + "".join(f"{c:>22s}" for c in classes)
    print("\nmIoU at DAAM's τ = 0.4   [best τ: mIoU]   (n words)")
    print(head)
    for st in settings:
        cells, res[st.name] = [], {}
        for c in classes:
            m = scores.miou(st.name, c)
            bt, bm = scores.best(st.name, c)
            res[st.name][c] = {"miou_daam": m, "best_tau": bt, "miou_best": bm, "n": scores.count(st.name, c)}
            cells.append(f"{m:6.3f} [{bt:.2f}: {bm:.3f}]")
        print(f"{st.name:38s}" + "".join(f"{x:>22s}" for x in cells))
    print("(words scored per class: " + ", ".join(f"{c} {scores.count(settings[0].name, c)}" for c in classes) + ")")
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=60, help="held-out captions to generate")
    ap.add_argument("--reweight", type=int, default=30, help="of those, how many get the reweight pair")
    ap.add_argument("--seed", type=int, default=1234, help="picks the held-out cases and their seeds")
    ap.add_argument("--json", default=None, help="write every number to this file")
    ap.add_argument("--model", default=None, help="another demo-model file (default: the committed one)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="only the default capture setting and one per block")
    args = ap.parse_args()

    import torch

    from demo_model import evaluate as E
    from demo_model import scenes as S

    torch.set_num_threads(args.threads)
    t0 = time.time()
    demo = E.load_demo(Path(args.model) if args.model else None)
    settings = E.capture_settings(demo.depth)
    if args.quick:
        settings = [st for st in settings if st.window == (0.0, 1.0) and (st.head, st.softmax) == ("mean", "all")
                    or (st.layers, st.head, st.window) == ("all", "mean", (0.0, 1.0))]
    cases = E.heldout_cases(args.prompts, args.seed)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}; demo model loaded in "
          f"{time.time() - t0:.1f}s; {len(cases)} held-out prompts, {len(settings)} capture settings; sampling "
          f"{E.STEPS} steps {E.SAMPLER}/{E.SCHEDULER} cfg {E.CFG} at {S.SIZE} px")
    t1 = time.time()
    scores, images = localisation(demo, cases, settings)
    print(f"generated and scored in {time.time() - t1:.1f}s")
    print(f"objects drawn (found by colour): {scores.present}/{scores.objects} "
          f"({scores.present / scores.objects:.1%}); placed as the caption says: {scores.placed}/"
          f"{scores.placed_total} ({scores.placed / max(1, scores.placed_total):.1%})")
    res = {"localisation": report(scores, settings, S.WORD_CLASSES),
           "fidelity": {"objects": scores.objects, "present": scores.present, "placed": scores.placed,
                        "placed_total": scores.placed_total}}
    if args.reweight:
        t2 = time.time()
        rw = reweighting(demo, cases[: args.reweight], images[: args.reweight])
        print(f"\nreweighting the first object's colour word (scale {DOWN:g} / none / {UP:g}, same seed), "
              f"{rw['cases']} prompts, {time.time() - t2:.1f}s:")
        print(f"  share of the object's mask in its colour: {rw['down_share']:.3f} / {rw['base_share']:.3f} / "
              f"{rw['up_share']:.3f}   (down lower in {rw['down_reduces_share']:.0%} of prompts)")
        print(f"  mean RGB distance to the colour in the mask: {rw['down_dist']:.3f} / {rw['base_dist']:.3f} / "
              f"{rw['up_dist']:.3f}   (up closer in {rw['up_closer_colour']:.0%})")
        print(f"  pixels of that colour in the picture: {rw['down_pixels']:.0f} / {rw['base_pixels']:.0f} / "
              f"{rw['up_pixels']:.0f}   (up more in {rw['up_raises_pixels']:.0%})")
        res["reweight"] = rw
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    print(f"\ntotal {time.time() - t0:.1f}s")


if __name__ == "__main__":
    main()
