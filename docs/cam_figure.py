"""Draws docs/layercam-fused-before-after.png: the fused map before and after pooling the hi-res gradients per cell.

`python docs/cam_figure.py` (committed model, sample tiles). "Before" is the old fusion, LayerCAM on the 16x16
stage with its raw gradients; "after" is `cam.compute_cam("layercam-fused", ...)` as the gateway serves it.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
TILES = ("Residential", "Highway", "River", "Industrial")
CELL = 160  # pixels per panel side


def panel(rgb_or_map: np.ndarray) -> np.ndarray:
    """A tile or a [0, 1] map as a CELL x CELL RGB panel, nearest-neighbour so every map cell stays visible."""
    if rgb_or_map.ndim == 2:
        levels = np.rint(np.clip(rgb_or_map, 0, 1) * 255).astype(np.uint8)
        rgb_or_map = cv2.cvtColor(cv2.applyColorMap(levels, cv2.COLORMAP_TURBO), cv2.COLOR_BGR2RGB)
    return cv2.resize(rgb_or_map, (CELL, CELL), interpolation=cv2.INTER_NEAREST)


def header(text: str, width: int) -> np.ndarray:
    bar = np.full((28, width, 3), 255, np.uint8)
    cv2.putText(bar, text, (6, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    return bar


def main() -> None:
    import tensorflow as tf

    from gateway import cam, render

    model = tf.saved_model.load("models/eurosat/1")
    images = np.stack([cv2.cvtColor(cv2.imread(f"tests/samples/{t}.jpg"), cv2.COLOR_BGR2RGB) for t in TILES])
    out = model.signatures["gradcam_multilayer"](images=tf.constant(images),
                                                 class_index=tf.constant(np.full(len(TILES), -1, np.int32)))
    out = {k: v.numpy() for k, v in out.items()}
    columns = ("tile", "before: map", "before: overlay", "after: map", "after: overlay")
    rows = [np.hstack([header(c, CELL) for c in columns])]
    for i in range(len(TILES)):
        coarse = (out["activations"][i], out["gradients"][i])
        fine = (out["activations_hires"][i], out["gradients_hires"][i])
        old_fine = cam.normalize(cam.layercam(*fine))
        before = cam.fuse([cam.upsample(cam.normalize(cam.layercam(*coarse)), (16, 16)), old_fine])
        after = cam.compute_cam("layercam-fused", [coarse, fine])
        shown = [render.overlay(images[i], m, max_side=CELL) for m in (before, after)]
        rows.append(np.hstack([panel(images[i]), panel(before), shown[0], panel(after), shown[1]]))
    Path("docs").mkdir(exist_ok=True)
    cv2.imwrite("docs/layercam-fused-before-after.png", cv2.cvtColor(np.vstack(rows), cv2.COLOR_RGB2BGR))


if __name__ == "__main__":
    main()
