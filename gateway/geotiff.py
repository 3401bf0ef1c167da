"""GeoTIFF in and out with rasterio: read bands, CRS and ground resolution; write georeferenced class maps.

Input: 1 (grey), 3 (RGB) or 4 (RGB + alpha) bands of uint8 or uint16 (reduced to 8 bits with an integer shift).
Output: a tiled GeoTIFF (Cloud-Optimized, with overviews where the map is large enough) whose band 1 is the class
index (uint8), band 2 the confidence and, optionally, one band per class
probability, all uint8 scaled by 1/255 (GDAL's band scale), in the input's CRS with one cell per pixel. Class
names and colours are dataset tags (`class_names`, `class_colors`: a TIFF colour table needs a single-band file).
"""

from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import dataclass

import numpy as np
import rasterio
from affine import Affine
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.io import MemoryFile
from rasterio.shutil import copy as rio_copy

from gateway.decoding import ImageHeader
from gateway.errors import InvalidImage, PayloadTooLarge, UnsupportedMediaType

ACCEPTED = "1, 3 or 4 bands of uint8 or uint16"
METRES_PER_DEGREE = 111_320.0  # at the equator; longitude degrees shrink with cos(latitude)
# GDAL's block cache, bounded so a large raster streams through flat memory (the field notes measured +226 MB from 2048
# to 8192 px without it). Process-wide configuration: rasterio.Env is per thread, and rows are read in worker threads.
os.environ.setdefault("GDAL_CACHEMAX", "64")


@dataclass(frozen=True)
class GeoInfo:
    """Where an input lies: its CRS (None when it has none) and the affine transform of its pixel grid."""

    crs: rasterio.crs.CRS | None
    transform: Affine

    def gsd_m(self, shape: tuple[int, int]) -> tuple[float, float] | None:
        """(y, x) metres per pixel, or None when the units are unknown (no CRS)."""
        t = self.transform
        dx, dy = math.hypot(t.a, t.d), math.hypot(t.b, t.e)
        if self.crs is None:
            return None
        if self.crs.is_geographic:  # degrees: metres at the scene's centre latitude
            lat = math.radians((t * (shape[1] / 2, shape[0] / 2))[1])
            return dy * METRES_PER_DEGREE, dx * METRES_PER_DEGREE * max(math.cos(lat), 1e-6)
        factor = self.crs.linear_units_factor[1] if self.crs.linear_units_factor else 1.0
        return dy * factor, dx * factor

    def cell_transform(self, cell_px: tuple[float, float]) -> Affine:
        """The same origin, one pixel per cell of `cell_px` (h, w) input pixels."""
        return self.transform @ Affine.scale(cell_px[1], cell_px[0])


def is_georeferenced(dataset) -> bool:
    return dataset.crs is not None or not dataset.transform.is_identity


def open_dataset(source):
    """A rasterio dataset, with a broken file turned into one clear error (400)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            return rasterio.open(source)
    except RasterioError as exc:
        raise InvalidImage(f"the TIFF cannot be read: {str(exc).split(': ', 1)[-1][:200]}") from None


def check_layout(dataset) -> None:
    """Refuse, before reading pixels, what the model cannot take (415 with what is accepted)."""
    if dataset.count not in (1, 3, 4) or len(set(dataset.dtypes)) != 1 or dataset.dtypes[0] not in ("uint8", "uint16"):
        types = ", ".join(sorted(set(dataset.dtypes)))
        raise UnsupportedMediaType(f"the GeoTIFF has {dataset.count} band(s) of {types}; accepted: {ACCEPTED} "
                                   "(red, green, blue order)")


def to_rgb8(bands: np.ndarray) -> np.ndarray:
    """[bands, h, w] uint8/uint16 -> [h, w, 3] uint8: 16-bit by an integer shift, grey replicated, alpha dropped."""
    if bands.dtype == np.uint16:
        bands = (bands >> 8).astype(np.uint8)
    if bands.shape[0] == 1:
        bands = np.repeat(bands, 3, axis=0)
    return np.ascontiguousarray(np.moveaxis(bands[:3], 0, -1))


def read_geotiff(data: bytes, max_pixels: int) -> tuple[np.ndarray, GeoInfo]:
    """A GeoTIFF's pixels as RGB uint8 and where they lie, read in memory; size checked before any pixel is read."""
    with MemoryFile(data) as memfile:
        dataset = open_dataset(memfile.name)
        with dataset:
            check_layout(dataset)
            if dataset.width * dataset.height > max_pixels:
                raise PayloadTooLarge(f"the GeoTIFF has {dataset.width}x{dataset.height} pixels; the limit is "
                                      f"{max_pixels}: use `python -m gateway scene` for large rasters")
            try:
                bands = dataset.read()
            except RasterioError as exc:
                raise InvalidImage(f"the GeoTIFF's pixels cannot be read: {str(exc)[:200]}") from None
            return to_rgb8(bands), GeoInfo(dataset.crs, dataset.transform)


def probe(data: bytes, max_pixels: int) -> tuple[ImageHeader, tuple[float, float] | None] | None:
    """(header, metres per pixel) of a georeferenced TIFF, checked like any image header (layout 415, size 413)
    before a pixel is read; None for a TIFF without georeferencing (an ordinary image)."""
    with MemoryFile(data) as memfile:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                with rasterio.open(memfile.name) as dataset:
                    if not is_georeferenced(dataset):
                        return None
                    check_layout(dataset)
                    shape = (dataset.height, dataset.width)
                    geo = GeoInfo(dataset.crs, dataset.transform)
        except RasterioError as exc:
            raise InvalidImage(f"the TIFF cannot be read: {str(exc).split(': ', 1)[-1][:200]}") from None
    if shape[0] * shape[1] > max_pixels:
        raise PayloadTooLarge(f"the GeoTIFF has {shape[1]}x{shape[0]} pixels; the limit is {max_pixels}: use "
                              "`python -m gateway scene` for large rasters")
    return ImageHeader("geotiff", *shape), geo.gsd_m(shape)


def _blocksize(height: int, width: int) -> int:
    """COG block side: 512 for large maps, smaller for small ones, so that at least one overview level exists."""
    side = 512
    while side > 16 and side * 2 > max(height, width):
        side //= 2
    return side


def write_classmap(dst, classes: np.ndarray, confidence: np.ndarray, geo: GeoInfo | None,
                   cell_px: tuple[float, float], class_names: list[str], colors: list[tuple[int, int, int]],
                   probabilities: np.ndarray | None = None, tags: dict | None = None) -> None:
    """Write a class map as a Cloud-Optimized GeoTIFF to `dst` (a path or a MemoryFile's name)."""
    rows, cols = classes.shape
    bands = [classes.astype(np.uint8), _scaled(confidence)]
    descriptions = ["class", "confidence"]
    if probabilities is not None:
        bands += [_scaled(probabilities[..., i]) for i in range(probabilities.shape[-1])]
        descriptions += [f"probability:{name}" for name in class_names]
    transform = geo.cell_transform(cell_px) if geo else Affine.scale(cell_px[1], cell_px[0])
    profile = {"driver": "GTiff", "height": rows, "width": cols, "count": len(bands), "dtype": "uint8",
               "crs": geo.crs if geo else None, "transform": transform, "nodata": None}
    with MemoryFile() as staging:
        with staging.open(**profile) as ds:
            ds.write(np.stack(bands))
            for i, text in enumerate(descriptions, start=1):
                ds.set_band_description(i, text)
            ds.scales = [1.0] + [1 / 255] * (len(bands) - 1)
            ds.update_tags(class_names=json.dumps(class_names),
                           class_colors=json.dumps([f"#{r:02x}{g:02x}{b:02x}" for r, g, b in colors]), **(tags or {}))
        block = _blocksize(rows, cols)
        rio_copy(staging.name, dst, driver="COG", BLOCKSIZE=block, OVERVIEW_RESAMPLING="NEAREST",
                 COMPRESS="DEFLATE", OVERVIEWS="AUTO")


def write_heatmap(dst, heatmap: np.ndarray, geo: GeoInfo | None, value_px: tuple[float, float], tags: dict) -> None:
    """A scene heat map as a float32 Cloud-Optimized GeoTIFF, one value per `value_px` (h, w) input pixels."""
    transform = geo.cell_transform(value_px) if geo else Affine.scale(value_px[1], value_px[0])
    profile = {"driver": "GTiff", "height": heatmap.shape[0], "width": heatmap.shape[1], "count": 1,
               "dtype": "float32", "crs": geo.crs if geo else None, "transform": transform}
    with MemoryFile() as staging:
        with staging.open(**profile) as ds:
            ds.write(heatmap.astype(np.float32), 1)
            ds.set_band_description(1, "heat")
            ds.update_tags(**tags)
        rio_copy(staging.name, dst, driver="COG", BLOCKSIZE=_blocksize(*heatmap.shape), COMPRESS="DEFLATE",
                 OVERVIEW_RESAMPLING="AVERAGE", OVERVIEWS="AUTO")


def classmap_bytes(*args, **kwargs) -> bytes:
    """`write_classmap` into memory (the HTTP answer)."""
    with MemoryFile(ext=".tif") as out:
        write_classmap(out.name, *args, **kwargs)
        return out.read()


def _scaled(values: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(values, 0.0, 1.0) * 255).astype(np.uint8)
