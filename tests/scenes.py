"""Scenes assembled from EuroSAT test-split tiles (tests/scene_tiles/), with the true class of every tile.

Built as blocks of 2x2 same-class tiles, as land cover comes in patches larger than one tile. The tiles are 64 px at
10 m (Sentinel-2), so an assembled scene is a real 10 m image whose ground truth is known per 640 m cell.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from affine import Affine
from rasterio.io import MemoryFile

TILES = Path(__file__).resolve().parent / "scene_tiles"
CLASSES = sorted(p.name for p in TILES.iterdir() if p.is_dir())
TILE = 64
UTM_33N = "EPSG:32633"
ORIGIN = (400_000.0, 5_500_000.0)  # a corner in UTM 33N (metres)


def _tiles(name: str) -> list[np.ndarray]:
    return [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in sorted((TILES / name).glob("*.jpg"))]


def assemble(blocks: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(RGB image, true class index per tile [2R, 2C]) for a [R, C] array of class indices, one per 2x2 block.

    Every tile of a scene is a different test tile as far as the 16 per class allow.
    """
    rng = np.random.default_rng(seed)
    pools = {c: rng.permutation(len(_tiles(CLASSES[c]))).tolist() for c in np.unique(blocks)}
    cache = {c: _tiles(CLASSES[c]) for c in pools}
    truth = np.kron(blocks, np.ones((2, 2), int))
    image = np.zeros((truth.shape[0] * TILE, truth.shape[1] * TILE, 3), np.uint8)
    for (r, c), cls in np.ndenumerate(truth):
        if not pools[cls]:
            pools[cls] = rng.permutation(len(cache[cls])).tolist()
        image[r * TILE : (r + 1) * TILE, c * TILE : (c + 1) * TILE] = cache[cls][pools[cls].pop()]
    return image, truth


def random_blocks(rows: int, cols: int, seed: int) -> np.ndarray:
    """Class per 2x2 block, every class represented as evenly as the block count allows."""
    rng = np.random.default_rng(seed)
    n = rows * cols
    return rng.permutation(np.resize(rng.permutation(len(CLASSES)), n)).reshape(rows, cols)


def at_gsd(image: np.ndarray, gsd_m: float) -> np.ndarray:
    """The 10 m scene as a sensor at `gsd_m` would see it (5 m: twice the pixels, bicubic)."""
    factor = 10.0 / gsd_m
    size = (round(image.shape[1] * factor), round(image.shape[0] * factor))
    return cv2.resize(image, size, interpolation=cv2.INTER_CUBIC if factor > 1 else cv2.INTER_AREA)


def geotiff(image: np.ndarray, gsd_m: float, crs: str = UTM_33N, dtype: str = "uint8") -> bytes:
    """A GeoTIFF of an RGB image at `gsd_m` metres per pixel, top-left corner at ORIGIN."""
    bands = np.moveaxis(image, -1, 0)
    if dtype == "uint16":
        bands = bands.astype(np.uint16) * 257
    with MemoryFile() as memfile:
        with memfile.open(driver="GTiff", height=image.shape[0], width=image.shape[1], count=3, dtype=dtype, crs=crs,
                          transform=Affine.translation(*ORIGIN) @ Affine.scale(gsd_m, -gsd_m), tiled=True) as ds:
            ds.write(bands)
        return memfile.read()


def read_geotiff(data: bytes):
    """(bands [count, h, w], profile-like dict) of GeoTIFF bytes."""
    with MemoryFile(data) as memfile, memfile.open() as ds:
        return ds.read(), {"crs": ds.crs, "transform": ds.transform, "tags": ds.tags(), "scales": ds.scales,
                           "descriptions": ds.descriptions, "driver": ds.driver, "overviews": ds.overviews(1)}


def per_tile_accuracy(classes: np.ndarray, truth: np.ndarray) -> float:
    """Share of tiles whose cells' majority class is the tile's true class (cells = tiles at the model's GSD)."""
    rows, cols = truth.shape
    fy, fx = classes.shape[0] // rows, classes.shape[1] // cols
    hits = 0
    for (r, c), cls in np.ndenumerate(truth):
        cells = classes[r * fy : (r + 1) * fy, c * fx : (c + 1) * fx].ravel()
        hits += int(np.bincount(cells, minlength=len(CLASSES)).argmax() == cls)
    return hits / truth.size



