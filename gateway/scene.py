"""Scenes for tile models: resample to the model's ground resolution, cover with tiles, stitch class and heat maps.

A tile model (EuroSAT: 64 px at 10 m) knows textures at one scale only, so a larger input is never squashed into one
tile: it is resampled to the model's GSD and covered by a regular grid of cells, one tile per cell. The HTTP routes,
the gRPC calls and the `python -m gateway scene` command all use this module, so the tile path exists once.

Grid: cells are `tile` pixels (at the model's GSD) from the top-left corner. A last row or column that does not fill
a whole tile is still a cell (never dropped): its tile is the window flush with the scene's edge, overlapping its
neighbour, so the model always sees real ground at the right scale. A scene narrower than one tile in a dimension is
padded by reflection in that dimension.

Seamless heat maps: a tile's CAM fades at its own border ("same" padding), so one tile per cell leaves a grid of dim
lines across a scene heat map. `BlendGrid` places windows every half tile over the scene reflect-padded by half a
tile, so each point lies in two windows per axis whose separable sin² weights sum to 1 (`BlendCanvas`): every point
is explained mostly by windows it sits in the middle of. That is about four times the CAM work, so it is an option.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import cv2
import numpy as np

from gateway import cam


@dataclass(frozen=True)
class Grid:
    """Cells of `tile` (h, w) model pixels over a scene of `size` (h, w) model pixels."""

    size: tuple[int, int]
    tile: tuple[int, int]

    @property
    def rows(self) -> int:
        return math.ceil(self.size[0] / self.tile[0])

    @property
    def cols(self) -> int:
        return math.ceil(self.size[1] / self.tile[1])

    def __len__(self) -> int:
        return self.rows * self.cols

    def _origin(self, i: int, axis: int) -> int:
        """Where the tile of cell `i` starts: at the cell, or flush with the edge for a partial last cell."""
        return max(0, min(i * self.tile[axis], self.size[axis] - self.tile[axis]))

    def tile_origin(self, row: int, col: int) -> tuple[int, int]:
        return self._origin(row, 0), self._origin(col, 1)

    def cell_extent(self, i: int, axis: int) -> int:
        """Model pixels of ground that cell `i` covers along `axis` (a last cell may be partial)."""
        return min(self.tile[axis], self.size[axis] - i * self.tile[axis])

    def cell_areas(self) -> np.ndarray:
        """[rows, cols] ground area of each cell in model pixels, to weight composition and the scene's mean."""
        heights = np.array([self.cell_extent(r, 0) for r in range(self.rows)], np.float64)
        widths = np.array([self.cell_extent(c, 1) for c in range(self.cols)], np.float64)
        return np.outer(heights, widths)

    def strip(self, row: int) -> tuple[int, int]:
        """Model-pixel rows [start, stop) that the tiles of grid row `row` read."""
        y0 = self._origin(row, 0)
        return y0, min(y0 + self.tile[0], max(self.size[0], self.tile[0]))

    def row_tiles(self, strip: np.ndarray, row: int) -> np.ndarray:
        """The tiles of one grid row, [cols, th, tw, 3], cut from its strip (model pixels, full scene width)."""
        th, tw = self.tile
        strip = pad_to(strip, (th, max(tw, strip.shape[1])))
        return np.stack([strip[:th, x0 : x0 + tw] for x0 in (self._origin(c, 1) for c in range(self.cols))])

    def tiles(self, image: np.ndarray) -> np.ndarray:
        """Every tile of a scene already at the model's GSD, row-major, [rows * cols, th, tw, 3]."""
        return np.concatenate([self.row_tiles(image[slice(*self.strip(r))], r) for r in range(self.rows)])


def reflect_index(index: np.ndarray, n: int) -> np.ndarray:
    """Positions along an axis of length `n` for any `index`, mirrored at both ends as BORDER_REFLECT_101 mirrors them
    (at any distance); an axis of one pixel repeats it."""
    if n == 1:
        return np.zeros_like(index)
    period = 2 * (n - 1)
    folded = np.mod(index, period)
    return np.where(folded < n, folded, period - folded)


@dataclass(frozen=True)
class BlendGrid:
    """Windows of `tile` (h, w) model pixels every half tile over a scene of `size`, reflect-padded by half a tile:
    window (r, c) reads scene rows from (r - 1) * half-height and columns from (c - 1) * half-width."""

    size: tuple[int, int]
    tile: tuple[int, int]

    def _count(self, axis: int) -> int:
        """Windows along `axis`: enough that every scene pixel is in two of them."""
        return (self.size[axis] - 1) // (self.tile[axis] // 2) + 2

    @property
    def rows(self) -> int:
        return self._count(0)

    @property
    def cols(self) -> int:
        return self._count(1)

    def __len__(self) -> int:
        return self.rows * self.cols

    def _span(self, i: int, axis: int) -> np.ndarray:
        start = (i - 1) * (self.tile[axis] // 2)
        return reflect_index(np.arange(start, start + self.tile[axis]), self.size[axis])

    def strip(self, row: int) -> tuple[int, int]:
        """Scene rows [start, stop) that the windows of row `row` read (rows past an edge are mirrors of these)."""
        rows = self._span(row, 0)
        return int(rows.min()), int(rows.max()) + 1

    def row_tiles(self, strip: np.ndarray, row: int) -> np.ndarray:
        """The windows of one row, [cols, th, tw, 3], cut from its strip (model pixels, full scene width)."""
        band = strip[self._span(row, 0) - self.strip(row)[0]]
        return np.stack([band[:, self._span(c, 1)] for c in range(self.cols)])


def sin2_window(n: int) -> np.ndarray:
    """sin² over n samples: shifted by n / 2 it is cos², so two half-overlapping windows sum to exactly 1."""
    return (np.sin(np.pi * (np.arange(n) + 0.5) / n) ** 2).astype(np.float32)


def pad_to(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Reflect-pad at the bottom/right up to `size` (h, w); a no-op when already that large."""
    dh, dw = max(0, size[0] - image.shape[0]), max(0, size[1] - image.shape[1])
    if not dh and not dw:
        return image
    if image.shape[0] == 1 or image.shape[1] == 1:  # reflection needs two pixels; replicate a 1-pixel edge
        return cv2.copyMakeBorder(image, 0, dh, 0, dw, cv2.BORDER_REPLICATE)
    while dh or dw:  # BORDER_REFLECT_101 cannot pad more than the image's own size at once
        step_h, step_w = min(dh, image.shape[0] - 1), min(dw, image.shape[1] - 1)
        image = cv2.copyMakeBorder(image, 0, step_h, 0, step_w, cv2.BORDER_REFLECT_101)
        dh, dw = dh - step_h, dw - step_w
    return image


def scale_factors(gsd_in: tuple[float, float], gsd_model: float) -> tuple[float, float]:
    """(y, x) factors from input pixels to model pixels: 5 m input -> 0.5 (halved), 20 m -> 2."""
    return gsd_in[0] / gsd_model, gsd_in[1] / gsd_model


def resampled_size(shape: tuple[int, int], factors: tuple[float, float]) -> tuple[int, int]:
    return max(1, round(shape[0] * factors[0])), max(1, round(shape[1] * factors[1]))


def resample(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """To (h, w) model pixels: area averaging when shrinking (what a coarser sensor records), bilinear when growing."""
    if image.shape[:2] == size:
        return image
    shrinking = size[0] * size[1] < image.shape[0] * image.shape[1]
    return cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def is_scene(size: tuple[int, int], tile: tuple[int, int]) -> bool:
    """More ground than one tile in either dimension (at the model's GSD)."""
    return size[0] > tile[0] or size[1] > tile[1]


@dataclass
class ClassMap:
    """What the model says about each cell; cell (r, c) is exactly the model's answer for tile (r, c)."""

    grid: Grid
    probabilities: np.ndarray  # [rows, cols, C]

    @property
    def classes(self) -> np.ndarray:
        return self.probabilities.argmax(axis=-1).astype(np.uint8)

    @property
    def confidence(self) -> np.ndarray:
        return self.probabilities.max(axis=-1).astype(np.float32)

    def distribution(self) -> np.ndarray:
        """The scene's class distribution: the cells' probabilities averaged by the ground each cell covers."""
        areas = self.grid.cell_areas()
        return (self.probabilities * areas[..., None]).sum(axis=(0, 1)) / areas.sum()

    def composition(self) -> np.ndarray:
        """Share of the scene's ground whose cell's top class is each class, [C], summing to 1."""
        areas = self.grid.cell_areas()
        shares = np.bincount(self.classes.ravel(), weights=areas.ravel(), minlength=self.probabilities.shape[-1])
        return shares / areas.sum()

    @classmethod
    def from_tiles(cls, grid: Grid, probabilities: np.ndarray) -> ClassMap:
        return cls(grid, np.asarray(probabilities, np.float32).reshape(grid.rows, grid.cols, -1))


def tile_heatmap(method: str, stages: list[tuple[np.ndarray, np.ndarray]], probability: float) -> np.ndarray:
    """One tile's map on the scene's common scale: its own [0, 1] map times its probability of the explained class.

    Normalising each tile alone would light up tiles where the class is absent; weighting by the tile's evidence for
    the class keeps them dark, and keeps every tile's own CAM detail.
    """
    return cam.compute_cam(method, stages) * np.float32(probability)


def paint_tiles(canvas, make, cells: Iterable[tuple[int, int]], stages: list[tuple[np.ndarray, np.ndarray]],
                probabilities: np.ndarray, method: str):
    """Paint explained tiles (or windows) at their (row, col) `cells`: tile i's map from its slice of `stages`, times
    its probability of the class. The canvas is `make(map_size)`'s on the first tile unless one is given; returned."""
    for i, (row, col) in enumerate(cells):
        tile_map = tile_heatmap(method, [(a[i], g[i]) for a, g in stages], float(probabilities[i]))
        canvas = canvas or make(tile_map.shape)
        canvas.paint(row, col, tile_map)
    return canvas


def map_extent(size: tuple[int, int], tile: tuple[int, int], map_size: tuple[int, int]) -> tuple[int, int]:
    """(h, w) of a scene heat map: one value per CAM cell's stride of model pixels, a last partial one included."""
    return math.ceil(size[0] * map_size[0] / tile[0]), math.ceil(size[1] * map_size[1] / tile[1])


class HeatmapCanvas:
    """A scene heat map at the CAM layer's resolution, filled one grid row at a time (the command streams rows)."""

    def __init__(self, grid: Grid, map_size: tuple[int, int]):
        self.grid = grid
        self.stride = (grid.tile[0] / map_size[0], grid.tile[1] / map_size[1])  # model pixels per map value
        self.map_size = map_size
        self.data = np.zeros(map_extent(grid.size, grid.tile, map_size), np.float32)

    def paint(self, row: int, col: int, tile_map: np.ndarray) -> None:
        """Put the part of a tile's map that covers its cell (all of it, unless the cell is a partial edge one)."""
        grid, (mh, mw) = self.grid, self.map_size
        tile_map = cv2.resize(tile_map, (mw, mh), interpolation=cv2.INTER_LINEAR) if tile_map.shape != (mh, mw) \
            else tile_map
        ch, cw = grid.cell_extent(row, 0), grid.cell_extent(col, 1)
        oh, ow = math.ceil(ch / self.stride[0]), math.ceil(cw / self.stride[1])
        if (oh, ow) != (mh, mw) or grid.tile_origin(row, col) != (row * grid.tile[0], col * grid.tile[1]):
            th, tw = grid.tile
            y0, x0 = grid.tile_origin(row, col)
            full = cv2.resize(tile_map, (tw, th), interpolation=cv2.INTER_NEAREST)
            dy, dx = row * th - y0, col * tw - x0
            tile_map = cv2.resize(full[dy : dy + ch, dx : dx + cw], (ow, oh), interpolation=cv2.INTER_AREA)
        self.data[row * mh : row * mh + oh, col * mw : col * mw + ow] = tile_map


class BlendCanvas:
    """A seamless scene heat map: the windows of a `BlendGrid`, each weighted by a sin² window, summed. Same size and
    scale as `HeatmapCanvas` over the cells' grid, so renderers and writers take either."""

    def __init__(self, grid: BlendGrid, map_size: tuple[int, int]):
        if map_size[0] % 2 or map_size[1] % 2:
            raise ValueError(f"a seamless heat map needs a CAM grid of even size, not {map_size[0]}x{map_size[1]}")
        self.map_size = map_size
        self.half = (map_size[0] // 2, map_size[1] // 2)
        self.weights = np.outer(sin2_window(map_size[0]), sin2_window(map_size[1]))
        self.padded = np.zeros(((grid.rows + 1) * self.half[0], (grid.cols + 1) * self.half[1]), np.float32)
        self.size = map_extent(grid.size, grid.tile, map_size)

    def paint(self, row: int, col: int, tile_map: np.ndarray) -> None:
        (mh, mw), (hh, hw) = self.map_size, self.half
        if tile_map.shape != (mh, mw):
            tile_map = cv2.resize(tile_map, (mw, mh), interpolation=cv2.INTER_LINEAR)
        self.padded[row * hh : row * hh + mh, col * hw : col * hw + mw] += self.weights * tile_map

    @property
    def data(self) -> np.ndarray:
        """The scene's part: the padding's half window cut off each side."""
        (hh, hw), (h, w) = self.half, self.size
        return self.padded[hh : hh + h, hw : hw + w]


def paint_classes(classes: np.ndarray, cell_px: tuple[float, float], colors: list[tuple[int, int, int]],
                  image_size: tuple[int, int], out_size: tuple[int, int]) -> np.ndarray:
    """RGB uint8 [out_h, out_w] of the class map over an input of `image_size` (h, w), cells at their true extent."""
    palette = np.asarray(colors, np.uint8)
    ys = np.minimum((np.arange(out_size[0]) + 0.5) * image_size[0] / out_size[0] // cell_px[0], classes.shape[0] - 1)
    xs = np.minimum((np.arange(out_size[1]) + 0.5) * image_size[1] / out_size[1] // cell_px[1], classes.shape[1] - 1)
    return palette[classes[ys.astype(int)][:, xs.astype(int)]]
