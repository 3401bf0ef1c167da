"""How good is a saliency map? Deletion / insertion on tiles, localization on assembled scenes, trivial baselines.

Deletion / insertion (Petsiuk et al. 2018, RISE) with a blurred copy as the "absent" image: deletion blurs the pixels
the map ranks highest first, and a faithful map makes the class probability fall fast (low AUC); insertion restores
them onto the blurred copy, and a faithful map makes it rise fast (high AUC). Blur rather than a flat colour, because
a flat patch is itself a strong out-of-distribution cue (water, shadow, a field) and its sharp edges are texture.

Localization: a scene is a mosaic of tiles where one class covers a known block; each tile is explained for that
class and the maps are stitched on one scale across tiles (`gateway.scene`, as the gateway does). A good map puts its
mass inside the block (`mass_inside`) and its maximum there (`pointing_hit`).
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

from gateway import scene
from gateway.cam import normalize, upsample

Predict = Callable[[np.ndarray], np.ndarray]


def importance_rank(cam: np.ndarray, size: tuple[int, int], seed: int = 0) -> np.ndarray:
    """Rank (0 = most important) of every image pixel under the upsampled map; ties in a seeded random order.

    Normalising first lets raw, unbounded maps survive upsample's clip to [0, 1] with their order intact. Random
    rather than raster order for ties, so a flat stretch of map (zeros after a relu, a uniform baseline) is not
    removed top row first.
    """
    flat = upsample(normalize(cam), size).ravel()
    order = np.lexsort((np.random.default_rng(seed).permutation(flat.size), -flat))
    rank = np.empty(flat.size, np.int64)
    rank[order] = np.arange(flat.size)
    return rank.reshape(size)


def pixel_fractions(n_pixels: int, steps: int) -> np.ndarray:
    """Fractions 0, 1/steps, ..., 1 rounded to whole pixels, so each step moves (almost exactly) the same count."""
    return np.rint(np.linspace(0, n_pixels, steps + 1)).astype(np.int64) / n_pixels


def trapezoid_auc(y: np.ndarray, x: np.ndarray) -> float:
    """Trapezoid integral (written out: np.trapz / np.trapezoid differ across NumPy versions)."""
    return float(np.sum((y[1:] + y[:-1]) * np.diff(x)) / 2.0)


def swap_top(top: np.ndarray, rest: np.ndarray, rank: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """One step image per count: pixels ranked below `count` from `top`, the others from `rest`, [N, H, W, 3]."""
    masks = rank[None, :, :, None] < counts[:, None, None, None]
    return np.where(masks, top[None], rest[None]).astype(np.uint8)


def deletion_insertion(predict: Predict, image: np.ndarray, cam: np.ndarray, class_index: int, steps: int = 16,
                       blur_sigma: float | None = None, patches: int = 16) -> tuple[float, float]:
    """(deletion AUC, insertion AUC) of `cam` for `class_index`, both in [0, 1] for probability outputs.

    The image is cut into `patches` x `patches` regions (4 px on a 64 px tile) ranked by the map, and whole regions
    move at each step (region perturbation, Samek et al. 2017). Moving single pixels instead rewards scattered
    orders: restoring a random half of the pixels restores most of a texture, so a random map "won" insertion.
    Pass the image at model-input size: all 2 * (steps + 1) step images go to `predict` in one batch. blur_sigma
    defaults to 1/16 of the longest side (4 px on a 64 px tile), which takes the committed model from p = 0.89 to
    0.11 for the predicted class on average: blurred enough to erase the texture a classifier keys on.
    """
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an RGB uint8 [H, W, 3] image, got {image.dtype} {image.shape}")
    if np.ndim(cam) != 2:
        raise ValueError(f"expected a 2-D map, got shape {np.shape(cam)}")
    height, width = image.shape[:2]
    if not 1 <= steps <= patches * patches or not 1 <= patches <= min(height, width):
        raise ValueError(f"need 1 <= patches <= the image's shorter side and 1 <= steps <= patches^2, got "
                         f"patches={patches}, steps={steps}")
    sigma = blur_sigma if blur_sigma is not None else max(height, width) / 16.0
    if sigma <= 0:
        raise ValueError(f"blur_sigma must be > 0, got {sigma}")
    cells = importance_rank(cam, (patches, patches)).astype(np.float32)
    rank = cv2.resize(cells, (width, height), interpolation=cv2.INTER_NEAREST).astype(np.int64)
    fractions = pixel_fractions(patches * patches, steps)
    counts = np.rint(fractions * patches * patches).astype(np.int64)
    blurred = cv2.GaussianBlur(image, (0, 0), sigmaX=sigma)
    batch = np.concatenate([swap_top(blurred, image, rank, counts), swap_top(image, blurred, rank, counts)])
    probs = np.asarray(predict(batch))
    if probs.ndim != 2 or probs.shape[0] != len(batch) or not 0 <= class_index < probs.shape[1]:
        raise ValueError(f"predict returned shape {probs.shape} for {len(batch)} images; class_index {class_index}")
    curve = probs[:, class_index].astype(np.float64)
    n = steps + 1
    return trapezoid_auc(curve[:n], fractions), trapezoid_auc(curve[n:], fractions)


# Trivial baselines: a saliency method is worth showing only where it beats all three.
def random_map(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Uniform noise at the map's resolution: the floor any real saliency map should beat."""
    return rng.random(shape, dtype=np.float32)


def uniform_map(shape: tuple[int, int]) -> np.ndarray:
    """Every position equal: no opinion (deletion / insertion then remove pixels in random order)."""
    return np.ones(shape, np.float32)


def center_gaussian_map(shape: tuple[int, int], sigma_fraction: float = 0.25) -> np.ndarray:
    """Centred Gaussian in [0, 1]: beating it shows the map is more than a photographer's centre bias."""
    height, width = shape
    ys = (np.arange(height) - (height - 1) / 2.0) / (sigma_fraction * height)
    xs = (np.arange(width) - (width - 1) / 2.0) / (sigma_fraction * width)
    return np.exp(-0.5 * (ys[:, None] ** 2 + xs[None, :] ** 2)).astype(np.float32)


# Localization on assembled scenes.
def scene_layout(labels: np.ndarray, rng: np.random.Generator, grid: int = 4, block: int = 2,
                 shifted: bool = False) -> tuple[np.ndarray, int, tuple[int, int]]:
    """Tile indices for a mosaic where one class covers a `block` x `block` square and no other tile has that class.

    Returns (indices [n, n], class, block's top-left cell). n = grid, or grid + 1 when `shifted` (the mosaic is then
    cropped by half a tile, see `assemble`, and the block is placed where it stays whole inside the crop).
    """
    classes, counts = np.unique(labels, return_counts=True)
    eligible = classes[counts >= block * block]
    if len(eligible) == 0 or len(classes) < 2:
        raise ValueError(f"need a class with at least {block * block} tiles and one other class")
    target = int(rng.choice(eligible))
    n = grid + 1 if shifted else grid
    first, last = (1, grid - block) if shifted else (0, grid - block)
    top, left = (int(v) for v in rng.integers(first, last + 1, size=2))
    others = np.flatnonzero(labels != target)
    indices = rng.choice(others, size=(n, n), replace=len(others) < n * n)
    indices[top : top + block, left : left + block] = rng.choice(np.flatnonzero(labels == target), (block, block),
                                                                 replace=False)
    return indices, target, (top, left)


def assemble(tiles: np.ndarray, indices: np.ndarray, corner: tuple[int, int], block: int = 2,
             shifted: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(scene RGB, mask of the block) from tiles [N, h, w, 3] laid out as `indices`.

    `shifted` crops half a tile off every side, so each tile the model later reads straddles four mosaic tiles and
    only a map that localizes inside a tile can put its mass on the block.
    """
    n, th, tw = indices.shape[0], tiles.shape[1], tiles.shape[2]
    image = tiles[indices].transpose(0, 2, 1, 3, 4).reshape(n * th, n * tw, 3)
    mask = np.zeros(image.shape[:2], bool)
    mask[corner[0] * th : (corner[0] + block) * th, corner[1] * tw : (corner[1] + block) * tw] = True
    if shifted:
        crop = (slice(th // 2, (n - 1) * th + th // 2), slice(tw // 2, (n - 1) * tw + tw // 2))
        image, mask = image[crop], mask[crop]
    return np.ascontiguousarray(image), mask


def tile_map(raw: np.ndarray, probability: float) -> np.ndarray:
    """A baseline tile map on the scene's common scale, like `scene.tile_heatmap` does for a CAM: max 1, times p."""
    raw = np.asarray(raw, np.float32)
    peak = float(raw.max())
    return (raw / peak if peak > 0 else raw) * np.float32(probability)


def stitch(grid: scene.Grid, tile_maps: list[np.ndarray]) -> np.ndarray:
    """Scene map from per-tile maps (row-major), through the gateway's own canvas."""
    canvas = scene.HeatmapCanvas(grid, tile_maps[0].shape)
    for i, tile in enumerate(tile_maps):
        canvas.paint(i // grid.cols, i % grid.cols, tile)
    return canvas.data


def _on_mask(scene_map: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The map at the mask's resolution (each map cell covers whole pixels); a blank map counts as uniform."""
    scene_map = np.asarray(scene_map, np.float32)
    if not scene_map.any():
        scene_map = np.ones_like(scene_map)
    return cv2.resize(scene_map, mask.shape[::-1], interpolation=cv2.INTER_NEAREST)


def mass_inside(scene_map: np.ndarray, mask: np.ndarray) -> float:
    """Share of the map's (non-negative) mass that lies inside the mask: the block's area share for a uniform map."""
    full = np.maximum(_on_mask(scene_map, mask), 0)
    return float(full[mask].sum() / full.sum())


def pointing_hit(scene_map: np.ndarray, mask: np.ndarray) -> float:
    """Pointing game: 1 if the map's maximum lies inside the mask, else 0; tied maxima count as the share inside."""
    full = _on_mask(scene_map, mask)
    return float(mask[full == full.max()].mean())
