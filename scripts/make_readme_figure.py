"""Regenerate docs/methods.png: one frame of the bundled held-out drive log under each method.

Usage: python scripts/make_readme_figure.py [--frame N] [--out docs/methods.png]

Panels (left to right): the frame as recorded; VisualBackProp overlay; occlusion (|delta|,
windows 8/16/32 at stride 4) overlay; Grad-CAM with the steering-direction target overlay;
the focus display (occlusion's salient area sharp over a blurred frame). Frames are
96x96 and shown 4x larger; maps cover only the part of the frame the model sees (the dashboard
strip at the bottom is cropped away by the model's preprocessing).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import cv2
import numpy as np

import fastviz as fv


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frame", type=int, default=None, help="frame index (default: the sharpest turn)")
    ap.add_argument("--out", default="docs/methods.png")
    args = ap.parse_args()

    model = fv.models.load("pilotnet-carracing")
    log = fv.data.load_drive_log()
    i = int(np.argmax(np.abs(log.steering))) if args.frame is None else args.frame
    frame = log.frames[i]
    x = model.preprocess(frame[None])
    region = model.transform.region(*frame.shape[:2])
    maps = {
        "VisualBackProp": fv.visual_backprop(model, x),
        "occlusion |delta|": fv.occlusion(model, x, score="abs"),
        "Grad-CAM (steering)": fv.grad_cam(model, x, target=fv.targets.Steering()),
    }
    scale = 4
    panels = [fv.render.upscale(frame, scale)]
    labels = [f"frame {i}: {np.degrees(log.steering[i]):+.1f} deg"]
    for name, m in maps.items():
        panels.append(fv.render.render(frame, m[0].numpy(), "overlay", region=region, scale=scale, labels=False))
        labels.append(name)
    panels.append(fv.render.render(frame, maps["occlusion |delta|"][0].numpy(), "focus", region=region, scale=scale, labels=False))
    labels.append("focus (occlusion)")
    picture = fv.render.side_by_side(panels, labels=labels)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.stem + ".tmp" + out.suffix)
    if not cv2.imwrite(str(tmp), cv2.cvtColor(picture, cv2.COLOR_RGB2BGR)):
        raise SystemExit(f"cannot write {out}")
    os.replace(tmp, out)
    with __import__("torch").no_grad():
        pred = float(model(x)[0, 0])
    print(f"frame {i}: recorded {log.steering[i]:+.3f} rad, predicted {pred:+.3f} rad -> {out}")


if __name__ == "__main__":
    main()
