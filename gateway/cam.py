"""Class activation maps from one image's activations A and gradients G = d logit / d A, both float32 [h, w, K].

Each method is a pure function `(A, G) -> raw non-negative [h, w] map`; normalising, upsampling and multi-layer fusion
live once here so every method is rendered and compared the same way. `compute_cam` is the single entry point.
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

CamFn = Callable[[np.ndarray, np.ndarray], np.ndarray]
Stage = tuple[np.ndarray, np.ndarray]

EPS = 1e-7


def _relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0.0)


def _weighted_sum(activations: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """relu(sum_k w_k A_k): the shared tail of the channel-weighting methods."""
    return _relu(activations @ weights).astype(np.float32)


def gradcam(activations: np.ndarray, gradients: np.ndarray) -> np.ndarray:
    """Grad-CAM: channels weighted by their spatially averaged gradient."""
    return _weighted_sum(activations, gradients.mean(axis=(0, 1)))


def gradcampp(activations: np.ndarray, gradients: np.ndarray) -> np.ndarray:
    """Grad-CAM++ (exponential-output form): per-position alphas favour locations with strong positive gradient."""
    g2, g3 = gradients**2, gradients**3
    s_k = activations.sum(axis=(0, 1))
    denom = 2.0 * g2 + s_k * g3 + EPS
    # Only positive gradients survive relu(G) below, so alpha elsewhere (incl. G == 0) is 0; this also avoids 0/0.
    alpha = np.divide(g2, denom, out=np.zeros_like(g2), where=(gradients > 0) & (denom != 0))
    return _weighted_sum(activations, (_relu(gradients) * alpha).sum(axis=(0, 1)))


def xgradcam(activations: np.ndarray, gradients: np.ndarray) -> np.ndarray:
    """XGrad-CAM: gradients averaged with the activations as weights (axiom-derived)."""
    s_k = activations.sum(axis=(0, 1))
    return _weighted_sum(activations, (gradients * activations).sum(axis=(0, 1)) / (s_k + EPS))


def layercam(activations: np.ndarray, gradients: np.ndarray) -> np.ndarray:
    """LayerCAM: per-position positive gradients, so it stays meaningful at shallow, high-resolution layers."""
    return _relu((_relu(gradients) * activations).sum(axis=-1)).astype(np.float32)


def hirescam(activations: np.ndarray, gradients: np.ndarray) -> np.ndarray:
    """HiResCAM: elementwise G*A, provably reflecting what the model used (no gradient averaging)."""
    return _relu((gradients * activations).sum(axis=-1)).astype(np.float32)


def eigencam(activations: np.ndarray, gradients: np.ndarray) -> np.ndarray:
    """Eigen-CAM: projection on the first right singular vector of A; class-agnostic, gradients are ignored.

    Uncentred, as in the paper (Muhammad & Yeasin 2020): for post-ReLU activations the projection is then positive
    wherever there is activation. Centring first (as some libraries do) and clipping blanks every below-average
    position, about half the map, whatever the content: on the committed model 41% of 300 test tiles got a map whose
    (even, even) / (odd, odd) cell ratio fell outside 0.8-1.25 that way, none uncentred.
    """
    del gradients
    h, w, k = activations.shape
    flat = activations.reshape(h * w, k).astype(np.float64)
    if not np.any(flat):
        return np.zeros((h, w), np.float32)
    _, _, vt = np.linalg.svd(flat, full_matrices=False)
    projection = flat @ vt[0]
    # A singular vector's sign is arbitrary: orient it along the total activation (for post-ReLU A it is all positive).
    sign = 1.0 if projection @ flat.sum(axis=1) >= 0 else -1.0
    return _relu(projection * sign).reshape(h, w).astype(np.float32)


METHODS: dict[str, CamFn] = {
    "gradcam": gradcam,
    "gradcam++": gradcampp,
    "xgradcam": xgradcam,
    "layercam": layercam,
    "hirescam": hirescam,
    "eigencam": eigencam,
    # Per-stage function; compute_cam applies it to every stage and fuses the results.
    "layercam-fused": layercam,
}
MULTI_LAYER = {"layercam-fused"}
DEFAULT_METHOD = "gradcam"


def normalize(cam: np.ndarray) -> np.ndarray:
    """Min-max scale one map to [0, 1]; a flat (or non-finite) map becomes zeros instead of NaN.

    The epsilon is relative, so a constant map with float round-off still counts as flat whatever its scale.
    """
    cam = np.nan_to_num(np.asarray(cam, np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    if cam.size == 0:
        return cam
    span = float(np.ptp(cam))
    if span <= 1e-6 * float(np.abs(cam).max()):
        return np.zeros_like(cam)
    return ((cam - cam.min()) / span).astype(np.float32)


def upsample(cam: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize to (H, W), clipped because interpolation may overshoot [0, 1] slightly."""
    height, width = size
    cam = np.asarray(cam, np.float32)
    if cam.shape != (height, width):
        cam = cv2.resize(cam, (width, height), interpolation=cv2.INTER_LINEAR)
    return np.clip(cam, 0.0, 1.0)


def fuse(maps: list[np.ndarray]) -> np.ndarray:
    """Geometric mean of normalised, same-size maps.

    Product-like on purpose: the fine stage contributes its sharp edges, but only where the deep, class-discriminative
    stage also has evidence, so no highlight appears that the last conv stage does not support (an arithmetic mean
    would keep the coarse blocks and the shallow layer's class-agnostic edges). If the maps do not overlap at all the
    product is blank, so fall back to the mean rather than return nothing.
    """
    stack = np.clip(np.stack(maps).astype(np.float64), 0.0, 1.0)
    fused = np.prod(stack, axis=0) ** (1.0 / len(maps))
    if float(fused.max()) < EPS:
        fused = stack.mean(axis=0)
    return normalize(fused)


def pool_to_cells(gradients: np.ndarray, cells: tuple[int, int]) -> np.ndarray:
    """Average [H, W, K] gradients over the input cells of a coarser [h, w] stage, then spread each mean back.

    Why: a high-resolution stage reaches the next one through a stride-2 projection block whose 1x1 shortcut reads only
    every second position, so its gradients are about 7x larger at (even, even) positions than at (odd, odd) ones, and
    a map weighted by them draws that lattice. The mean over a cell is the gradient of a change spread evenly over
    what one next-stage position reads: no lattice, while the activations keep the map at full resolution.
    """
    height, width = gradients.shape[:2]
    rows, cols = np.arange(height) * cells[0] // height, np.arange(width) * cells[1] // width
    pick_rows = (rows[None, :] == np.arange(cells[0])[:, None]).astype(np.float32)
    pick_cols = (cols[None, :] == np.arange(cells[1])[:, None]).astype(np.float32)
    pooled = np.einsum("ia,abk,jb->ijk", pick_rows / np.maximum(pick_rows.sum(1, keepdims=True), 1), gradients,
                       pick_cols / np.maximum(pick_cols.sum(1, keepdims=True), 1))
    return pooled[rows][:, cols].astype(np.float32)


def _check_stages(stages: list[Stage], needed: int) -> None:
    if len(stages) < needed:
        raise ValueError(f"this method needs {needed} stage(s) of (activations, gradients), got {len(stages)}")
    for i, (acts, grads) in enumerate(stages):
        if np.ndim(acts) != 3 or np.shape(acts) != np.shape(grads):
            raise ValueError(f"stage {i}: activations {np.shape(acts)} and gradients {np.shape(grads)} must be the "
                             "same [h, w, K] shape")


def compute_cam(method: str, stages: list[Stage]) -> np.ndarray:
    """Map of `method` in [0, 1] at the resolution of the highest-resolution stage it uses.

    stages[0] is the last conv stage; stages[1] an earlier, higher-resolution one (only methods in MULTI_LAYER use it).
    """
    if method not in METHODS:
        raise ValueError(f"unknown CAM method {method!r}; valid: {', '.join(sorted(METHODS))}")
    used = stages if method in MULTI_LAYER else stages[:1]
    _check_stages(used, 2 if method in MULTI_LAYER else 1)
    fn = METHODS[method]
    used = [(np.asarray(a, np.float32), np.asarray(g, np.float32)) for a, g in used]
    # Each higher-resolution stage's gradients are pooled over the cells of the stage after it (see pool_to_cells).
    used = used[:1] + [(a, pool_to_cells(g, used[i][0].shape[:2])) for i, (a, g) in enumerate(used[1:])]
    maps = [normalize(fn(a, g)) for a, g in used]
    if len(maps) == 1:
        return maps[0]
    size = max((m.shape for m in maps), key=lambda s: s[0] * s[1])
    return fuse([upsample(m, size) for m in maps])
