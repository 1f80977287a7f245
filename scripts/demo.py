"""The main job: a real ComfyUI server generates an image with attention capture and writes heat maps.

Run through scripts/demo.sh (which prepares the environment). Steps: put the embedded demo model into the
server's checkpoints (models/attention-focus-shapes.safetensors, a small SD3-shaped MMDiT trained on drawn
shapes, plus its CLIP-L text encoder regenerated from a seed; see scripts/demo_model/), start ComfyUI's own
main.py headless on loopback with this pack in custom_nodes, convert the bundled example workflow
(attention_focus_shapes.json: a held-out prompt, heat maps, masks, raw maps and a reweight pair) to an API
prompt with the server's /object_info, queue it over HTTP, wait, and list the files it wrote.

With AF_CHECKPOINT naming a real SD1.x checkpoint it runs attention_focus_heatmaps.json on that instead.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "scripts"))

from harness.server import ComfyServer, prepare_base  # noqa: E402
from workflow_api import to_api  # noqa: E402

WORKFLOW = REPO / "example_workflows" / "attention_focus_shapes.json"
WORKFLOW_SD15 = REPO / "example_workflows" / "attention_focus_heatmaps.json"
SHAPES_NAME = "attention-focus-shapes.safetensors"  # the loader's name in attention_focus_shapes.json


def checkpoint(base: Path) -> tuple[str, Path]:
    """Put the checkpoint into the server's models/checkpoints; returns its name for the loader and the
    workflow to run (the demo model's, or the SD1.5 one for AF_CHECKPOINT)."""
    ckdir = base / "models" / "checkpoints"
    real = os.environ.get("AF_CHECKPOINT")
    if real:
        src = Path(real).expanduser().resolve()
        if not src.is_file():
            sys.exit(f"AF_CHECKPOINT={real} is not a file")
        name, workflow = src.name, WORKFLOW_SD15
    else:
        from harness.comfy_boot import boot

        boot()  # the CLIP-L of the demo model is built with ComfyUI's own classes
        from demo_model.model import demo_checkpoint

        src, name, workflow = demo_checkpoint(), SHAPES_NAME, WORKFLOW
    dst = ckdir / name
    if dst.is_symlink() or dst.exists():
        dst.unlink()
    dst.symlink_to(src)
    return name, workflow


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default=os.environ.get("AF_DEMO_OUT", str(REPO / "out")),
                    help="output folder (default ./out)")
    ap.add_argument("--workflow", default=None, help="an editor-format workflow to run instead")
    args = ap.parse_args()
    comfyui = Path(os.environ["COMFYUI_PATH"])
    cache = Path(os.environ.get("ATTENTION_FOCUS_CACHE", Path.home() / ".cache" / "attention-focus"))
    base = prepare_base(cache / "demo-base")
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    ckpt, workflow = checkpoint(base)
    workflow = Path(args.workflow) if args.workflow else workflow
    t0 = time.time()
    with ComfyServer(base, comfyui, extra_args=["--output-directory", str(out)]) as srv:
        srv.base = base
        print(f"[demo] ComfyUI {srv.url} ready in {time.time() - t0:.1f}s (log: {srv.log_path})")
        info = srv.get("/object_info")
        missing = [n for n in ("AttentionFocusCapture", "AttentionFocusHeatmap") if n not in info]
        if missing:
            print(srv.log()[-3000:])
            return f"the pack did not load: {missing} missing from /object_info"
        prompt = to_api(json.loads(workflow.read_text()), info)
        for node in prompt.values():
            if node["class_type"] == "CheckpointLoaderSimple":
                node["inputs"]["ckpt_name"] = ckpt
        t1 = time.time()
        pid = srv.queue(prompt)
        hist = srv.wait(pid, timeout=900)
        status = hist["status"]
        if status.get("status_str") != "success":
            err = next((m[1] for m in status.get("messages", []) if m[0] == "execution_error"), {})
            print(f"[demo] the workflow failed: {err.get('exception_message', status)}")
            return 1
        print(f"[demo] {workflow.name} ran in {time.time() - t1:.1f}s with checkpoint {ckpt}")
    files = sorted(p for p in out.rglob("*") if p.is_file() and p.stat().st_mtime >= t1 - 1)
    print(f"[demo] wrote {len(files)} files into {out}:")
    for p in files:
        print(f"  {p.relative_to(out)}  ({p.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
