"""The README's picture of the demo model (docs/demo_model.jpg), from the files `bash scripts/demo.sh` wrote:

    bash scripts/demo.sh && . scripts/setup_env.sh && "$AF_PYTHON" scripts/demo_picture.py [--out ./out]

Top: the heat-map grid of the held-out prompt (the picture, then one overlay per word); below: the reweight
strip (the colour word weighted x0 | plain | x3, one seed). Both scaled up 2x (nearest), with a caption line.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
PICTURE = REPO / "docs" / "demo_model.jpg"
SCALE = 2


def newest(folder: Path, prefix: str) -> Path:
    found = sorted(folder.glob(f"{prefix}*.png"), key=lambda p: p.stat().st_mtime)
    if not found:
        sys.exit(f"no {prefix}*.png in {folder}: run `bash scripts/demo.sh` first")
    return found[-1]


def caption(width: int, text: str) -> Image.Image:
    band = Image.new("RGB", (width, 26), "white")
    ImageDraw.Draw(band).text((8, 6), text, fill="black", font=ImageFont.load_default())
    return band


def main() -> int:
    from example_shapes import DOWN, SHAPES_COLOUR, SHAPES_PROMPT, UP, SHAPES_SEED

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.environ.get("AF_DEMO_OUT", str(REPO / "out")), help="the demo's output")
    ap.add_argument("--picture", default=str(PICTURE))
    args = ap.parse_args()
    folder = Path(args.out) / "attention_focus"
    grid = Image.open(newest(folder, "heatmap_grid_")).convert("RGB")
    strip = Image.open(newest(folder, f"reweight_{SHAPES_COLOUR}_")).convert("RGB")
    parts = [caption(grid.width * SCALE, f'"{SHAPES_PROMPT}" (held out), seed {SHAPES_SEED}: heat maps per word'),
             grid.resize((grid.width * SCALE, grid.height * SCALE), Image.NEAREST),
             caption(grid.width * SCALE, f'"{SHAPES_COLOUR}" weighted x{DOWN:g} | plain | x{UP:g} (same seed)'),
             strip.resize((strip.width * SCALE, strip.height * SCALE), Image.NEAREST)]
    width = max(p.width for p in parts)
    out = Image.new("RGB", (width, sum(p.height for p in parts)), "white")
    y = 0
    for p in parts:
        out.paste(p, (0, y))
        y += p.height
    picture = Path(args.picture)
    picture.parent.mkdir(parents=True, exist_ok=True)
    out.save(picture, quality=88)
    print(f"[picture] {picture} ({picture.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
