"""Regenerate docs/methods.png and docs/overlay.png from the bundled held-out drive log.

Usage: python scripts/make_readme_figure.py [--frame N] [--out docs/methods.png] [--overlay-out docs/overlay.png]

docs/overlay.png: the frame as ``fastviz overlay --gauge`` draws it with the default method
(:data:`fastviz.overlay.DEFAULT_METHOD`): the map over the frame, the colour bar with its units and
the steering gauge (predicted and recorded), rendered by :func:`fastviz.write_overlay` itself.

docs/methods.png: one frame of the bundled held-out drive log under every method.

Top row: the frame as recorded; occlusion (|delta|, windows 8/16/32 at stride 4);
VisualBackProp; Grad-CAM with the steering-direction target; the focus display (occlusion's
salient area sharp over a blurred frame). Bottom row: gradient saliency; guided backprop;
hypercolumns; histogram-backprojection saliency (model-free); the crop of the region that
mattered (occlusion, threshold 0.5) outlined on the frame. CAM needs a conv -> global average
pool -> linear head, which PilotNet does not have, so it is not shown. Frames are 96x96 and
shown 4x larger; model maps cover only the part of the frame the model sees (the dashboard strip
at the bottom is cropped away by the model's preprocessing).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import cv2
import numpy as np

import fastviz as fv
from fastviz.methods.backprojection import backprojection_maps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frame", type=int, default=None, help="frame index (default: the sharpest turn)")
    ap.add_argument("--out", default="docs/methods.png")
    ap.add_argument("--overlay-out", default="docs/overlay.png")
    args = ap.parse_args()

    model = fv.models.load("pilotnet-carracing")
    log = fv.data.load_drive_log()
    i = int(np.argmax(np.abs(log.steering))) if args.frame is None else args.frame
    frame = log.frames[i]
    x = model.preprocess(frame[None])
    region = model.transform.region(*frame.shape[:2])
    steering = fv.targets.Steering()
    model_maps = {
        "occlusion |delta|": fv.occlusion(model, x, score="abs"),
        "VisualBackProp": fv.visual_backprop(model, x),
        "Grad-CAM (steering)": fv.grad_cam(model, x, target=steering),
        "saliency": fv.saliency(model, x),
        "guided backprop": fv.guided_backprop(model, x),
        "hypercolumns": fv.hypercolumns(model, x),
    }
    scale = 4

    def overlay(m: np.ndarray, reg=region) -> np.ndarray:
        return fv.render.render(frame, m, "overlay", region=reg, scale=scale, labels=False)

    occ = model_maps["occlusion |delta|"][0].numpy()
    _, (y0, y1, x0, x1) = fv.render.crop(frame, occ, threshold=0.5, region=region)
    outlined = fv.render.upscale(frame, scale).copy()
    cv2.rectangle(outlined, (x0 * scale, y0 * scale), (x1 * scale - 1, y1 * scale - 1), (255, 255, 0), 2)
    top = [
        (f"frame {i}: {np.degrees(log.steering[i]):+.1f} deg", fv.render.upscale(frame, scale)),
        *[(name, overlay(model_maps[name][0].numpy())) for name in ("occlusion |delta|", "VisualBackProp", "Grad-CAM (steering)")],
        ("focus (occlusion)", fv.render.render(frame, occ, "focus", region=region, scale=scale, labels=False)),
    ]
    bottom = [
        *[(name, overlay(model_maps[name][0].numpy())) for name in ("saliency", "guided backprop", "hypercolumns")],
        ("backprojection (no model)", overlay(backprojection_maps(frame[None])[0], reg=None)),
        ("crop (occlusion)", outlined),
    ]
    rows = [fv.render.side_by_side([p for _, p in r], labels=[t for t, _ in r]) for r in (top, bottom)]
    picture = np.concatenate(rows, axis=0)
    write_png(Path(args.out), picture)
    with tempfile.TemporaryDirectory() as tmp:
        fv.write_overlay(f"{tmp}/frames/", model=model, max_frames=i + 1, gauge=True, progress=False)
        shown = cv2.imread(f"{tmp}/frames/frame_{i:06d}.png")
    write_png(Path(args.overlay_out), cv2.cvtColor(shown, cv2.COLOR_BGR2RGB))
    import torch

    with torch.no_grad():
        pred = float(model(x)[0, 0])
    print(f"frame {i}: recorded {log.steering[i]:+.3f} rad, predicted {pred:+.3f} rad -> {args.out}, {args.overlay_out}")


def write_png(path: Path, picture: np.ndarray) -> None:
    """An RGB picture to a PNG file, all or nothing (:func:`fastviz.tempfiles.atomic_output`)."""
    ok, data = cv2.imencode(".png", cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))
    if not ok:
        raise SystemExit(f"cannot encode {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with fv.tempfiles.atomic_output(path, what="figure") as out:
        out.write(data.tobytes())


if __name__ == "__main__":
    main()
